"""The output schema for k examples, its request dialects, and refusal detection."""

from __future__ import annotations

import json

import pytest

from treegen.errors import ConfigError
from treegen.parsing import parse_reply
from treegen.schema import (
    answer_to_label,
    example_schema,
    label_to_answer,
    fallback_dialects,
    is_response_format_refusal,
    response_format,
)
from treegen.task import TaskFormat, example_from_dict, load_examples

jsonschema = pytest.importorskip("jsonschema")

# The answer llama-cpp-python's server 0.3.36 gave on this machine to the json_schema
# dialect (status 500), shortened to its first line.
LLAMA_CPP_JSON_SCHEMA_ANSWER = (
    "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
    "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'"
)


def _real_rows(datasets_dir, rel: str, n: int) -> tuple[list[dict], TaskFormat]:
    examples, fmt = load_examples(datasets_dir / rel)
    rows = []
    for ex in examples[:n]:
        row = ex.to_dict()
        if not fmt.has_context:
            del row["context"]  # closed-book items have no context property at all
        if fmt.kind == "mcqa":
            row = label_to_answer(row)  # multiple choice answers by the option's number
        rows.append(row)
    return rows, fmt


@pytest.mark.parametrize(
    "rel",
    ["yesno_close/strategyqa/train.jsonl", "yesno_open/pubmedqa/train.jsonl", "mcqa_5/csqa/train.jsonl",
     "mcqa_2/piqa/dev.jsonl"],
)
def test_real_examples_fit_the_schema_and_parse_back(datasets_dir, rel):
    k = 3
    rows, fmt = _real_rows(datasets_dir, rel, k)
    schema = example_schema(fmt, k)
    jsonschema.Draft202012Validator.check_schema(schema)
    reply = json.dumps({"examples": rows})
    jsonschema.validate(json.loads(reply), schema)
    # What a constrained server returns goes through the ordinary parser and validator.
    cands = parse_reply(reply)
    assert [c.obj for c in cands] == rows
    parsed = [example_from_dict(answer_to_label(c.obj), fmt) for c in cands]
    assert [p.question for p in parsed] == [r["question"] for r in rows]


def test_schema_demands_exactly_k_examples(datasets_dir):
    rows, fmt = _real_rows(datasets_dir, "mcqa_5/csqa/train.jsonl", 3)
    schema = example_schema(fmt, 2)
    jsonschema.validate({"examples": rows[:2]}, schema)
    for wrong in (rows[:1], rows[:3]):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"examples": wrong}, schema)


def test_schema_refuses_what_the_task_format_refuses(datasets_dir):
    rows, fmt = _real_rows(datasets_dir, "mcqa_5/csqa/train.jsonl", 1)
    schema = example_schema(fmt, 1)
    row = rows[0]
    bad_rows = [
        {**row, "options": row["options"][:4]},  # wrong option count
        {**row, "context": "a passage"},  # closed book: no context property
        {k: v for k, v in row.items() if k != "answer"},  # answer missing
        {**row, "answer": 6},  # no sixth option
        {**{k: v for k, v in row.items() if k != "answer"}, "label": row["options"][0]},  # text, not a number
        {**row, "explanation": "because"},  # extra field
    ]
    for bad in bad_rows:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"examples": [bad]}, schema)


def test_yesno_options_and_label_are_fixed():
    schema = example_schema(TaskFormat.parse("yesno_open"), 1)
    item = schema["properties"]["examples"]["items"]
    assert item["required"] == ["question", "context", "options", "label"]
    assert item["additionalProperties"] is False
    good = {"question": "Is it?", "context": "It is.", "options": ["True", "False"], "label": "True"}
    jsonschema.validate({"examples": [good]}, schema)
    for bad in ({**good, "options": ["False", "True"]}, {**good, "options": ["Yes", "No"]},
                {**good, "label": "Yes"}, {**good, "label": "true"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"examples": [bad]}, schema)


def test_closed_book_schema_has_no_context_property():
    item = example_schema(TaskFormat.parse("yesno_close"), 2)["properties"]["examples"]["items"]
    assert "context" not in item["properties"]
    assert item["required"] == ["question", "options", "label"]


def test_k_below_one_is_refused():
    with pytest.raises(ConfigError, match="at least 1"):
        example_schema(TaskFormat.parse("mcqa_4"), 0)


def test_response_format_dialects():
    schema = example_schema(TaskFormat.parse("mcqa_4"), 2)
    assert response_format(schema, "json_schema") == {
        "type": "json_schema", "json_schema": {"name": "examples", "strict": True, "schema": schema},
    }
    assert response_format(schema, "json_object") == {"type": "json_object", "schema": schema}
    assert response_format(schema, "off") is None
    with pytest.raises(ConfigError, match="json_schema, json_object, off"):
        response_format(schema, "grammar")


def test_fallback_order():
    assert fallback_dialects("auto") == ["json_schema", "json_object", "off"]
    assert fallback_dialects("json_schema") == ["json_schema", "json_object", "off"]
    assert fallback_dialects("json_object") == ["json_object", "off"]
    assert fallback_dialects("off") == ["off"]
    with pytest.raises(ConfigError):
        fallback_dialects("xml")


@pytest.mark.parametrize(
    ("status", "message", "refusal"),
    [
        (500, LLAMA_CPP_JSON_SCHEMA_ANSWER, True),
        (400, "Invalid schema for response_format 'examples': In context=(), 'minItems' is not permitted.", True),
        (422, "json_schema is not supported by this backend", True),
        (400, "Unrecognized request argument supplied: response_format", True),
        (400, "This model's maximum context length is 2048 tokens.", False),
        (422, "messages: field required", False),
        (500, "Internal server error", False),
        (401, "Incorrect API key provided; the schema of keys changed", False),
        (404, "The model `x` does not exist (response_format)", False),
    ],
)
def test_response_format_refusal(status, message, refusal):
    assert is_response_format_refusal(status, message) is refusal


def test_a_multiple_choice_answer_by_number_becomes_its_label():
    obj = {"question": "Where?", "options": ["a", "b", "c"], "answer": 2}
    assert answer_to_label(obj) == {"question": "Where?", "options": ["a", "b", "c"], "label": "b"}
    for odd in ({**obj, "answer": 0}, {**obj, "answer": 4}, {**obj, "answer": True}, {**obj, "answer": "2"},
                {**obj, "label": "c"}):
        assert answer_to_label(odd) == odd  # left for validation to judge
    assert label_to_answer({"options": ["a", "b"], "label": "b"}) == {"options": ["a", "b"], "answer": 2}
