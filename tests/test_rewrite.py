"""Harder rewrites: one example in, the last line and schema name tell the kind, replies parse as generation."""

from __future__ import annotations

import json

import pytest

from treegen.acceptance import screen
from treegen.errors import ConfigError
from treegen.parsing import parse_reply
from treegen.prompts import render_example
from treegen.rewrite import HARDER_LAST_LINE, HARDER_SCHEMA_NAME, harder_messages, harder_response_format
from treegen.schema import example_schema
from treegen.task import Example, TaskFormat, load_examples

MCQA3 = TaskFormat("mcqa", 3, False)
YESNO_OPEN = TaskFormat("yesno", 2, True)
PARIS = Example("Capital of France?", ("Berlin", "Paris", "Rome"), "Paris")


@pytest.mark.parametrize("structured", [True, False])
def test_messages_show_the_one_example_then_the_last_line(structured):
    messages = harder_messages(PARIS, MCQA3, structured=structured)
    assert [m["role"] for m in messages] == ["system", "user"]
    lines = messages[1]["content"].splitlines()
    assert lines == [render_example(PARIS, MCQA3, structured), HARDER_LAST_LINE]
    shown = json.loads(lines[0])
    if structured:
        assert shown["answer"] == 2 and "label" not in shown  # the schema names the option by number
    else:
        assert shown["label"] == "Paris"
    system = messages[0]["content"]
    assert "harder" in system
    assert ("JSON object a line" in system) == (not structured)
    assert ("number of the correct option" in system) == structured


def test_system_message_carries_description_context_rule_and_constraints_last():
    ex = Example("Is the sky green?", ("True", "False"), "False", context="The sky is blue.")
    system = harder_messages(ex, YESNO_OPEN, "Science facts", structured=True,
                             constraints="Question at most 30 words.")[0]["content"]
    assert system.startswith("Task: Science facts")
    assert '"True" or "False"' in system and "The context must answer the question." in system
    assert system.endswith("Question at most 30 words.")
    # fixed per run: another example gives the same system message
    other = Example("Is water wet?", ("True", "False"), "True", context="Water is a liquid.")
    assert harder_messages(other, YESNO_OPEN, "Science facts", constraints="Question at most 30 words.")[0]["content"] == system


def test_response_format_is_the_one_example_schema_named_harder():
    rf = harder_response_format(MCQA3, "json_schema")
    assert rf["json_schema"]["name"] == HARDER_SCHEMA_NAME and rf["json_schema"]["strict"] is True
    assert rf["json_schema"]["schema"] == example_schema(MCQA3, 1)
    obj = harder_response_format(MCQA3, "json_object")
    assert obj["type"] == "json_object" and obj["schema"] == example_schema(MCQA3, 1, non_empty=True)
    assert harder_response_format(MCQA3, "off") is None
    with pytest.raises(ConfigError):
        harder_response_format(MCQA3, "xml")
    # the generation schema's own name is untouched (no shared dict was modified)
    from treegen.schema import SCHEMA_NAME, response_format
    assert response_format(example_schema(MCQA3, 1), "json_schema")["json_schema"]["name"] == SCHEMA_NAME


def test_a_structured_reply_parses_and_screens_like_a_generation_reply():
    reply = json.dumps({"examples": [{"question": "Which city hosts the Louvre, France's largest museum?",
                                      "options": ["Lyon", "Paris", "Nice"], "answer": 2}]})
    [screened] = screen(parse_reply(reply), MCQA3, set())
    assert screened.reason is None and screened.example is not None
    assert screened.example.label == "Paris"


def test_real_example_rewrite_prompt(datasets_dir):
    path = datasets_dir / "mcqa_5" / "csqa" / "train.jsonl"
    if not path.exists():
        pytest.skip(f"{path} missing")
    examples, fmt = load_examples(path)
    ex = examples[0]
    user = harder_messages(ex, fmt, structured=True)[1]["content"]
    shown = json.loads(user.splitlines()[0])
    assert shown["question"] == ex.question and shown["options"][shown["answer"] - 1] == ex.label
