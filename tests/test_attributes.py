"""Attributes: files validated with a fix, seeded sampling, the auto prompt and a tolerant reader."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from treegen.attributes import (
    ATTRIBUTES_LAST_LINE,
    ATTRIBUTES_SCHEMA_NAME,
    Attributes,
    attribute_line,
    auto_messages,
    auto_response_format,
    load_attributes,
    parse_auto,
    sample_attributes,
)
from treegen.errors import ConfigError, InputError
from treegen.prompts import render_example
from treegen.task import Example, TaskFormat, load_examples

ATTRS = Attributes((("topic", ("science", "history", "sport")), ("difficulty", ("easy", "hard"))))


def test_toml_and_json_files_load_to_the_same_attributes(tmp_path):
    toml = tmp_path / "a.toml"
    toml.write_text('topic = ["science", "history", "sport"]\ndifficulty = ["easy", "hard"]\n', encoding="utf-8")
    js = tmp_path / "a.json"
    js.write_text(json.dumps({"topic": ["science", "history", "sport"], "difficulty": ["easy", "hard"]}), encoding="utf-8")
    table = tmp_path / "b.toml"
    table.write_text('[attributes]\ntopic = ["science", "history", "sport"]\ndifficulty = ["easy", "hard"]\n', encoding="utf-8")
    reply_shape = tmp_path / "c"  # no suffix: JSON tried first; the auto reply's shape is read too
    reply_shape.write_text(json.dumps({"attributes": [
        {"name": "topic", "values": ["science", "history", "sport"]}, {"name": "difficulty", "values": ["easy", "hard"]},
    ]}), encoding="utf-8")
    assert load_attributes(toml) == load_attributes(js) == load_attributes(table) == load_attributes(reply_shape) == ATTRS


def test_values_are_stripped_and_repeats_dropped(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({" topic ": ["science", " Science ", "art", ""]}), encoding="utf-8")
    assert load_attributes(path).dimensions == (("topic", ("science", "art")),)


@pytest.mark.parametrize("content, says", [
    ("{}", "no dimensions"),
    ('{"topic": []}', "no non-empty value"),
    ('{"topic": ["", "  "]}', "no non-empty value"),
    ('{"topic": [1, 2]}', "list of strings"),
    ('{"": ["a"]}', "has no name"),
    ('{"a=b": ["x"]}', "Rename"),
    ('{"topic": ["a; b"]}', "Reword"),
    ('{"topic": ["a"], "Topic": ["b"]}', "listed twice"),
    ('["science", "art"]', "mapping each dimension"),
    ("{not json", "not valid JSON"),
])
def test_bad_json_files_are_input_errors_with_a_fix(tmp_path, content, says):
    path = tmp_path / "a.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=says) as info:
        load_attributes(path)
    assert str(path) in str(info.value)  # the message names the file


def test_bad_toml_and_missing_files(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text("topic = [science]\n", encoding="utf-8")
    with pytest.raises(InputError, match="not valid TOML"):
        load_attributes(path)
    with pytest.raises(InputError, match="no such attributes file"):
        load_attributes(tmp_path / "missing.toml")
    with pytest.raises(InputError, match="folder"):
        load_attributes(tmp_path)
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InputError, match="UTF-8"):
        load_attributes(tmp_path / "bin.json")


def test_json_round_trip():
    assert Attributes.from_json(ATTRS.to_json()) == ATTRS
    assert json.loads(ATTRS.to_json()) == {"topic": ["science", "history", "sport"], "difficulty": ["easy", "hard"]}
    with pytest.raises(InputError):
        Attributes.from_json("not json")


def test_sampling_is_seeded_and_covers_every_value():
    a = [sample_attributes(ATTRS, random.Random(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    rng1, rng2 = random.Random(11), random.Random(11)
    seq1 = [sample_attributes(ATTRS, rng1) for _ in range(50)]
    seq2 = [sample_attributes(ATTRS, rng2) for _ in range(50)]
    assert seq1 == seq2
    assert all(list(choice) == ["topic", "difficulty"] for choice in seq1)
    counts = Counter(choice["topic"] for choice in seq1)
    assert set(counts) == {"science", "history", "sport"}
    assert len({tuple(c.items()) for c in seq1}) == 6  # every combination comes up in 50 draws


def test_attribute_line():
    assert attribute_line({"topic": "science", "difficulty": "hard"}) == "Attributes: topic=science; difficulty=hard"
    assert attribute_line({}) == ""


def test_auto_messages_show_the_seeds_and_ask_for_the_list():
    fmt = TaskFormat("mcqa", 3, False)
    seeds = [Example("Capital of France?", ("Berlin", "Paris", "Rome"), "Paris"),
             Example("Largest planet?", ("Mars", "Jupiter", "Venus"), "Jupiter")]
    messages = auto_messages(seeds, fmt, "Geography quiz")
    system, user = messages[0]["content"], messages[1]["content"]
    assert system.startswith("Task: Geography quiz")
    for word in ("3-5", "3-6", "topic", "difficulty", '"attributes"'):
        assert word in system
    assert user.splitlines() == [render_example(s, fmt) for s in seeds] + [ATTRIBUTES_LAST_LINE]
    many = auto_messages(seeds * 30, fmt, max_seeds=5)[1]["content"].splitlines()
    assert len(many) == 6
    with pytest.raises(InputError):
        auto_messages([], fmt)


def test_auto_messages_on_real_seeds(datasets_dir):
    path = datasets_dir / "yesno_close" / "strategyqa" / "train.jsonl"
    if not path.exists():
        pytest.skip(f"{path} missing")
    examples, fmt = load_examples(path)
    lines = auto_messages(examples[:4], fmt)[1]["content"].splitlines()
    assert [json.loads(line)["question"] for line in lines[:-1]] == [ex.question for ex in examples[:4]]


def test_auto_response_format_is_strict_and_named():
    rf = auto_response_format("json_schema")
    assert rf["json_schema"]["name"] == ATTRIBUTES_SCHEMA_NAME and rf["json_schema"]["strict"] is True
    schema = rf["json_schema"]["schema"]
    assert schema["additionalProperties"] is False and schema["required"] == ["attributes"]
    items = schema["properties"]["attributes"]
    assert (items["minItems"], items["maxItems"]) == (3, 5)
    item = items["items"]
    assert item["additionalProperties"] is False and sorted(item["required"]) == ["name", "values"]
    assert (item["properties"]["values"]["minItems"], item["properties"]["values"]["maxItems"]) == (3, 6)
    assert auto_response_format("json_object")["schema"] == schema
    assert auto_response_format("off") is None
    with pytest.raises(ConfigError):
        auto_response_format("yaml")


def test_parse_auto_reads_the_reply_among_prose():
    reply = (
        "Here are attributes that fit:\n```json\n"
        '{"attributes": [{"name": "topic", "values": ["geography", "astronomy", "history"]},'
        ' {"name": "difficulty", "values": ["easy", "medium", "hard"]},'
        ' {"name": "style", "values": ["direct", "riddle; playful", "  "]}]}\n```\nLet me know!'
    )
    attrs = parse_auto(reply)
    assert attrs.dimensions == (
        ("topic", ("geography", "astronomy", "history")),
        ("difficulty", ("easy", "medium", "hard")),
        ("style", ("direct", "riddle, playful")),  # separators made safe, empty value dropped
    )


def test_parse_auto_reads_the_file_shape_and_bounds_what_a_model_rambles():
    reply = json.dumps({f"dim{i}": [f"v{j}" for j in range(30)] + ["x" * 200] for i in range(20)})
    attrs = parse_auto(reply)
    assert len(attrs.dimensions) == 8
    assert all(len(values) == 12 and all(len(v) < 80 for v in values) for _, values in attrs.dimensions)


@pytest.mark.parametrize("reply", ["", "I cannot help with that.", '{"attributes": []}', '{"attributes": [{"name": "x", "values": []}]}',
                                   '{"attributes": [{"name": "topic", "values": ["a", ', "[1, 2, 3]"])
def test_parse_auto_refuses_unusable_replies(reply):
    with pytest.raises(InputError, match="--attributes FILE"):
        parse_auto(reply)


def test_auto_drops_placeholders_a_small_model_copies():
    """SmolLM2-135M answered the auto request with "...", "value_1" and the labels as values
    (REAL, benchmarks/results/quality.md): those are not attributes."""
    from treegen.attributes import parse_auto
    from treegen.errors import InputError

    reply = ('{"attributes":[{"name":"topic","values":["...","True","value_1"]},'
             '{"name":"style","values":["formal","playful","True","…"]}]}')
    attrs = parse_auto(reply)
    assert attrs.dimensions == (("style", ("formal", "playful")),)
    with pytest.raises(InputError):
        parse_auto('{"attributes":[{"name":"topic","values":["...","True","value_1"]}]}')
