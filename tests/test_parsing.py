"""parse_reply: every example object out of every reply shape models write."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treegen.parsing import Candidate, parse_reply

A = {"question": "Is a robin a kind of bird?", "context": None, "options": ["True", "False"], "label": "True"}
B = {"question": "What is {x} + 1 when x = 2?", "context": None, "options": ["3", "4"], "label": "3"}
C = {"question": 'He said "hi\\" }{ [" and left.', "context": "a\nb", "options": ["yes", "no"], "label": "no"}


def objs(cands: list[Candidate]) -> list[dict]:
    return [c.obj for c in cands if c.obj is not None]


def errors(cands: list[Candidate]) -> list[str]:
    return [c.error for c in cands if c.error]


def test_json_array() -> None:
    assert objs(parse_reply(json.dumps([A, B, C]))) == [A, B, C]


def test_one_object_per_line_and_blank_lines() -> None:
    assert objs(parse_reply("\n".join(json.dumps(o) for o in [A, B, C]))) == [A, B, C]
    assert objs(parse_reply("\n\n".join(json.dumps(o) for o in [A, B]))) == [A, B]


def test_pretty_printed_objects() -> None:
    text = "\n".join(json.dumps(o, indent=4) for o in [A, B, C])
    assert objs(parse_reply(text)) == [A, B, C]


def test_several_fenced_blocks_with_chatter() -> None:
    text = (
        "Sure! Here's the first one:\n```json\n" + json.dumps(A) + "\n```\n"
        'And two more (note the "quotes" and a stray [ bracket):\n```json\n[' + json.dumps(B) + ",\n"
        + json.dumps(C) + "]\n```\nHope that helps!"
    )
    cands = parse_reply(text)
    assert objs(cands) == [A, B, C]
    assert errors(cands) == []


def test_numbered_and_bulleted_lists() -> None:
    numbered = "Here are 3 new examples:\n" + "\n".join(f"{i}. {json.dumps(o)}" for i, o in enumerate([A, B, C], 1))
    bulleted = "\n".join(f"- {json.dumps(o)}" for o in [A, B, C])
    assert objs(parse_reply(numbered)) == [A, B, C]
    assert objs(parse_reply(bulleted)) == [A, B, C]


def test_wrapper_object_is_unwrapped_not_returned() -> None:
    cands = parse_reply(json.dumps({"examples": [A, B], "meta": {"model": "x"}}))
    assert objs(cands) == [A, B]
    assert len(cands) == 2


def test_trailing_commas() -> None:
    text = '[{"question": "q1", "options": ["a", "b",], "label": "a",},\n{"question": "q2", "options": ["a", "b"], "label": "b"},]'
    cands = parse_reply(text)
    assert [c.obj["question"] for c in cands] == ["q1", "q2"]
    assert errors(cands) == []


def test_truncated_reply_salvages_complete_objects() -> None:
    full = json.dumps([A, B, C])
    cut = full[: full.index("and left") + 3]
    cands = parse_reply(cut)
    assert objs(cands) == [A, B]
    assert errors(cands) == ["truncated"]
    assert cands[-1].raw.startswith('{"question": "He said')


def test_truncated_inside_wrapper() -> None:
    full = json.dumps({"examples": [A, B]})
    cands = parse_reply(full[:-20])
    assert objs(cands) == [A]
    assert errors(cands) == ["truncated"]


def test_broken_object_between_good_ones() -> None:
    bad = '{"question": "q", "options" ["a", "b"], "label": "a"}'
    cands = parse_reply("\n".join([json.dumps(A), bad, json.dumps(B)]))
    assert objs(cands) == [A, B]
    assert [(c.error, c.raw) for c in cands if c.error] == [("invalid-json", bad)]


def test_object_missing_its_closing_brace_does_not_hide_the_next() -> None:
    text = '{"question": "q", "options": ["a", "b"], "label": "a"\n' + json.dumps(B)
    cands = parse_reply(text)
    assert objs(cands) == [B]
    assert errors(cands) == ["invalid-json"]


def test_prose_only_and_prose_braces_give_nothing() -> None:
    assert parse_reply("I'm sorry, I can't help with that.") == []
    assert parse_reply("Use the format {k} or {} as you like.") == []


def test_non_example_objects_ignored_and_python_dicts_flagged() -> None:
    assert parse_reply('{"note": "nothing here"}') == []
    cands = parse_reply("{'question': 'q', 'options': ['a', 'b'], 'label': 'a'}")
    assert errors(cands) == ["invalid-json"]


# -- property: any list of objects in any supported shape parses back to the same objects --

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
_obj = st.fixed_dictionaries(
    {"question": _text, "options": st.lists(_text, min_size=2, max_size=5), "label": _text},
    optional={"context": st.none() | _text},
)
_CHATTER = ["", "Here are the new examples:", "Sure! I've written them \"as asked\":", "Done (hope it's OK)."]


def _render(objects: list[dict], shape: str, chatter: str, indent: int | None) -> str:
    dumps = [json.dumps(o, indent=indent, ensure_ascii=bool(indent)) for o in objects]
    if shape == "array":
        body = json.dumps(objects, indent=indent)
    elif shape == "array_trailing_comma":
        body = "[\n" + ",\n".join(dumps) + ",\n]"
    elif shape == "lines":
        body = "\n".join(dumps)
    elif shape == "blank_lines":
        body = "\n\n".join(dumps)
    elif shape == "fenced_blocks":
        body = f"\n{chatter}\n".join(f"```json\n{d}\n```" for d in dumps)
    elif shape == "fenced_array":
        body = "```json\n" + json.dumps(objects, indent=indent) + "\n```"
    elif shape == "numbered":
        body = "\n".join(f"{i}. {d}" for i, d in enumerate(dumps, 1))
    elif shape == "bulleted":
        body = "\n".join(f"* {d}" for d in dumps)
    elif shape == "wrapper":
        body = json.dumps({"examples": objects}, indent=indent)
    else:
        raise AssertionError(shape)
    return f"{chatter}\n{body}\n{chatter}"


@settings(max_examples=150, deadline=None)
@given(
    objects=st.lists(_obj, max_size=6),
    shape=st.sampled_from(
        ["array", "array_trailing_comma", "lines", "blank_lines", "fenced_blocks", "fenced_array", "numbered", "bulleted", "wrapper"]
    ),
    chatter=st.sampled_from(_CHATTER),
    indent=st.sampled_from([None, 2]),
)
def test_any_shape_round_trips(objects: list[dict], shape: str, chatter: str, indent: int | None) -> None:
    cands = parse_reply(_render(objects, shape, chatter, indent))
    assert [c.error for c in cands] == [None] * len(objects)
    assert objs(cands) == objects


@settings(max_examples=100, deadline=None)
@given(objects=st.lists(_obj, min_size=1, max_size=5), data=st.data())
def test_any_cut_keeps_every_complete_object(objects: list[dict], data: st.DataObject) -> None:
    text = "\n".join(json.dumps(o) for o in objects)
    cut = data.draw(st.integers(min_value=0, max_value=len(text)))
    cands = parse_reply(text[:cut])
    complete = [o for o, end in zip(objects, _ends(objects)) if end <= cut]
    assert objs(cands) == complete
    # Anything after the complete ones is a single cut-off fragment.
    assert len(cands) - len(complete) <= 1
    assert all(c.error == "truncated" for c in cands[len(complete):])


def _ends(objects: list[dict]) -> list[int]:
    ends, pos = [], 0
    for o in objects:
        pos += len(json.dumps(o))
        ends.append(pos)
        pos += 1
    return ends


# -- structured output, closed-book candidates, hostile replies --

def test_structured_output_wrapper_with_closed_book_candidates() -> None:
    """{"examples": [...]} as response_format json_schema returns it; no "context" keys."""
    from treegen.task import TaskFormat, example_from_dict

    closed = [{"question": "Can a penguin fly?", "options": ["True", "False"], "label": "False"},
              {"question": "Is water wet?", "options": ["True", "False"], "label": True}]
    for text in (json.dumps({"examples": closed}), json.dumps({"examples": closed}, indent=2)):
        cands = parse_reply(text)
        assert objs(cands) == closed and errors(cands) == []
        examples = [example_from_dict(o, TaskFormat.parse("yesno_close")) for o in objs(cands)]
        assert [e.context for e in examples] == [None, None] and examples[1].label == "True"


def test_wrapper_is_unwrapped_even_with_an_example_like_key() -> None:
    # {"label": ...} at the top would make the wrapper itself look like an example.
    text = json.dumps({"label": "batch 1", "examples": [A, B]})
    assert objs(parse_reply(text)) == [A, B]
    assert objs(parse_reply(json.dumps({"examples": []}))) == []


def test_duplicate_options_in_a_reply_make_the_candidate_invalid() -> None:
    from treegen.task import InvalidExample, TaskFormat, example_from_dict

    reply = json.dumps({"examples": [{"question": "Pick", "options": ["A", "a ", "B"], "label": "B"}]})
    (cand,) = parse_reply(reply)
    with pytest.raises(InvalidExample) as exc:
        example_from_dict(cand.obj, TaskFormat.parse("mcqa_3"))
    assert exc.value.reason == "duplicate-options"


@pytest.mark.parametrize(
    "text",
    [
        "{" * 100_000,
        "{" * 100_000 + "}" * 100_000,
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        "[" * 100_000 + "]" * 100_000,
        '{"question": ' + "[" * 100_000 + "]" * 100_000 + ', "options": ["a", "b"], "label": "a"}',
        "[" * 50_000 + "{}" * 25_000,
        "[" * 50_000 + "}" * 50_000,
        "{" + "a " * 100_000 + "}",
        '{"a": "' + '\\"' * 50_000 + '"}',
    ],
    ids=["open-braces", "nested-braces", "nested-objects", "nested-arrays", "deep-question",
         "arrays-then-objects", "arrays-then-closers", "long-words", "escaped-quotes"],
)
def test_hostile_nesting_never_raises_and_stays_fast(text: str) -> None:
    start = time.perf_counter()
    cands = parse_reply(text)
    assert time.perf_counter() - start < 5  # quadratic work on 200 KB would take minutes
    assert all(c.obj is None or isinstance(c.obj, dict) for c in cands)


def test_examples_next_to_deep_junk_are_still_found() -> None:
    text = json.dumps(A) + "\n" + '{"meta": ' * 5_000 + "0" + "}" * 5_000 + "\n" + json.dumps(B)
    assert objs(parse_reply(text)) == [A, B]


def test_huge_numbers_are_a_broken_fragment_not_an_exception() -> None:
    huge = '{"question": "q", "options": ["a", "b"], "label": ' + "9" * 5_000 + "}"
    cands = parse_reply(huge + "\n" + json.dumps(A))
    assert objs(cands) == [A] and errors(cands) == ["invalid-json"]


def test_bytes_none_and_lone_surrogates() -> None:
    assert objs(parse_reply(json.dumps(A).encode())) == [A]
    assert objs(parse_reply(b"\xff\xfe" + json.dumps(B).encode() + b"\x80")) == [B]
    assert parse_reply(None) == []
    cands = parse_reply('{"question": "a\ud800b", "options": ["x", "y"], "label": "x"}')
    # a raw lone surrogate cannot be stored: replaced, so the candidate and its raw text encode
    assert objs(cands)[0]["question"] == "a\ufffdb"
    cands[0].raw.encode("utf-8")
