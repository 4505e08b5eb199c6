"""The prompt: short, fixed part first, no empty fields, and both reply modes round-trip real data."""

from __future__ import annotations

import json

import pytest

from treegen.parsing import parse_reply
from treegen.prompts import build_messages, read_prompt, render_example, system_prompt
from treegen.task import TaskFormat, example_from_dict, load_examples
from treegen.tokens import count_messages

FILES = {
    "yesno_close": "yesno_close/strategyqa/train.jsonl",
    "yesno_open": "yesno_open/pubmedqa/train.jsonl",
    "mcqa_5": "mcqa_5/csqa/train.jsonl",
    "mcqa_2": "mcqa_2/piqa/dev.jsonl",
}


@pytest.fixture(scope="module", params=sorted(FILES))
def real(request, datasets_dir):
    path = datasets_dir / FILES[request.param]
    if not path.exists():
        pytest.skip(f"{path} missing")
    examples, fmt = load_examples(path)
    assert fmt.name == request.param
    return examples[:60], fmt


def test_fixed_part_first_and_the_same_for_every_request(real):
    examples, fmt = real
    for structured in (False, True):
        a = build_messages([examples[0]], fmt, 5, structured=structured)
        b = build_messages(examples[1:3], fmt, 3, structured=structured)
        assert a[0]["role"] == "system" and a[0] == b[0]  # one cacheable prefix per run
        assert a[0]["content"] == system_prompt(fmt, structured)
        assert ("JSON object a line" in a[0]["content"]) == (not structured)  # the schema carries the format


def test_shown_examples_have_only_the_formats_fields(real):
    examples, fmt = real
    messages = build_messages(examples[:2], fmt, 4, "Trivia about science")
    user = messages[1]["content"]
    assert messages[0]["content"].startswith("Task: Trivia about science ")
    for ex in examples[:2]:
        assert render_example(ex, fmt) in user.splitlines()
    shown = [json.loads(line) for line in user.splitlines() if line.startswith("{")]
    assert all(("context" in obj) == fmt.has_context for obj in shown)
    assert ":null" not in user  # no empty fields shown for the model to copy
    assert user.endswith("Write 4 new examples.")


def test_read_prompt_recovers_examples_and_k(real):
    examples, fmt = real
    for shown, k in ((examples[:1], 5), (examples[3:6], 1), (examples[7:9], 12)):
        for structured in (False, True):
            objs, got_k = read_prompt(build_messages(shown, fmt, k, structured=structured))
            assert got_k == k
            assert [example_from_dict(o, fmt) for o in objs] == list(shown)


def test_read_prompt_still_reads_the_earlier_prompt_shape():
    ex = {"question": "Is water wet?", "context": None, "options": ["True", "False"], "label": "True"}
    old = [{"role": "system", "content": "You create training examples."},
           {"role": "user", "content": f"Here is an example of the task:\n<examples>\n{json.dumps(ex)}\n</examples>\n\n"
                                       "Write 7 new examples of the same task, in the same format."}]
    assert read_prompt(old) == ([ex], 7)
    assert read_prompt([{"role": "user", "content": "hello"}]) == ([], 1)


def test_replies_written_as_each_mode_asks_parse_back_to_the_examples(real):
    """Plain mode: one compact object a line, as shown. Structured: the schema's wrapper."""
    examples, fmt = real
    replies = examples[10:15]
    plain = "\n".join(render_example(r, fmt) for r in replies)
    wrapped = '{"examples":[' + ",".join(render_example(r, fmt) for r in replies) + "]}"
    chatty = "Sure! Here are 5 new examples:\n\n" + plain + "\n\nLet me know if you need more."
    for text in (plain, wrapped, chatty):
        parsed = [example_from_dict(c.obj, fmt) for c in parse_reply(text)]
        assert parsed == list(replies)


def test_prompt_is_short(datasets_dir):
    """Tokens per request on real data at k=5 (gpt-4o-mini counting). The earlier prompt
    measured 190 (StrategyQA) and 205 (CSQA); the bounds keep the new one well under."""
    bounds = {"yesno_close/strategyqa/train.jsonl": (72, 80), "mcqa_5/csqa/train.jsonl": (88, 96)}
    for rel, (structured_max, plain_max) in bounds.items():
        examples, fmt = load_examples(datasets_dir / rel)
        for structured, bound in ((True, structured_max), (False, plain_max)):
            counts = [count_messages(build_messages([ex], fmt, 5, structured=structured), "gpt-4o-mini")
                      for ex in examples[:100]]
            assert sum(counts) / len(counts) <= bound, (rel, structured, sum(counts) / len(counts))


def test_structured_prompt_leaves_the_format_to_the_schema():
    fmt = TaskFormat.parse("mcqa_4_open")
    plain, structured = system_prompt(fmt, False), system_prompt(fmt, True)
    assert plain.startswith(structured.removesuffix(".")[:40])
    assert "JSON" in plain and "JSON" not in structured
    assert "context" in structured  # what the schema cannot say: the context answers the question
    assert "context" not in system_prompt(TaskFormat.parse("mcqa_4"), True)
