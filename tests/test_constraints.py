"""Constraints: checkable forms are enforced and named, the rest only asked for, bad ones refused."""

from __future__ import annotations

import pytest

from treegen.constraints import (
    Constraint,
    constraint_sentences,
    load_constraints,
    parse_constraints,
    violated,
)
from treegen.errors import InputError
from treegen.task import Example, load_examples

SHORT = Example("What is the capital of France?", ("Paris", "Rome", "Oslo", "Bern"), "Paris")
LONG = Example(
    "Which of these cities, famous for its canals, bridges and glass made on a nearby island, is in Italy?",
    ("Venice", "Amsterdam", "Bruges", "Stockholm"), "Venice",
)
OPEN = Example("Is the sky blue?", ("True", "False"), "True", context="On a clear day the sky looks blue.")


def _one(text: str) -> Constraint:
    [constraint] = parse_constraints([text])
    return constraint


@pytest.mark.parametrize("text, short_ok, long_ok", [
    ("question at most 10 words", True, False),
    ("Question must be at most 10 words.", True, False),
    ("questions have no more than 10 words", True, False),
    ("question at least 10 words", False, True),
    ("question fewer than 6 words", False, False),  # SHORT has 6 words
    ("question under 7 words", True, False),
    ("question more than 6 words", False, True),
    ("question exactly 6 words", True, False),
    ("question at most 40 characters", True, False),
    ("QUESTION AT MOST 40 CHARS", True, False),
    ("each option at most 1 word", True, True),
    ("options at most 5 characters", True, False),  # Amsterdam, Stockholm
    ("label at most 5 characters", True, False),
])
def test_length_limits(text, short_ok, long_ok):
    c = _one(text)
    assert c.check is not None
    assert c.check(SHORT) is short_ok
    assert c.check(LONG) is long_ok


def test_context_limits_apply_to_a_context_and_not_to_its_absence():
    c = _one("context at most 20 characters")
    assert c.check is not None
    assert not c.check(OPEN)
    assert c.check(SHORT)  # a closed-book example has no context to measure


@pytest.mark.parametrize("text, short_ok, long_ok", [
    ("question must match /^What\\b/", True, False),
    ("question must not match /^What/", False, True),
    ("question must match /^what/i", True, False),
    ("question must match /^what/", False, False),  # case matters without the flag
    ("must match /Venice/", False, True),  # no field: any text of the example
    ("must not match /Paris/", False, True),
    ("options must match /^[A-Z]/", True, True),
    ("each option must not match /\\s/", True, True),
])
def test_patterns(text, short_ok, long_ok):
    c = _one(text)
    assert c.check is not None
    assert (c.check(SHORT), c.check(LONG)) == (short_ok, long_ok)


@pytest.mark.parametrize("text, short_ok, long_ok", [
    ('must not contain "paris"', False, True),  # case-insensitive, any text
    ("must not contain 'canals'", True, False),
    ('question must contain "capital"', True, False),
    ('question must not contain "Italy"', True, False),
    ('must contain “Rome”', True, False),
])
def test_contains(text, short_ok, long_ok):
    c = _one(text)
    assert c.check is not None
    assert (c.check(SHORT), c.check(LONG)) == (short_ok, long_ok)


def test_option_count():
    c = _one("exactly 4 options")
    assert c.check is not None and c.check(SHORT) and not c.check(OPEN)
    assert _one("must have exactly 2 options.").check(OPEN)  # type: ignore[misc]


@pytest.mark.parametrize("text", [
    "use British spelling",
    "questions about biology",
    "question must match the tone of a textbook",  # no slashes: a wish, not a pattern
    "at most 30 words",  # no field named
    "avoid trick questions",
])
def test_anything_else_is_prompt_only(text):
    c = _one(text)
    assert c.check is None and c.text == text
    assert violated(SHORT, [c]) is None


@pytest.mark.parametrize("text, says", [
    ("question must match /(unclosed/", "not a valid regular expression"),
    ("question must not match /[a-/", "not a valid regular expression"),
    ("question must match /abc/q", "unknown regex flag"),
])
def test_a_malformed_pattern_is_an_input_error_naming_the_constraint(text, says):
    with pytest.raises(InputError, match=says) as info:
        parse_constraints(["question at most 30 words", text])
    assert text in str(info.value)
    assert info.value.exit_code == 2


def test_empty_constraint_is_refused():
    with pytest.raises(InputError, match="empty"):
        parse_constraints(["  "])


def test_violated_names_the_first_broken_constraint():
    constraints = parse_constraints([
        "use simple words",  # prompt-only: never a rejection
        "question at most 12 words",
        'must not contain "venice"',
    ])
    assert violated(SHORT, constraints) is None
    assert violated(LONG, constraints) == "constraint: question at most 12 words"
    assert violated(LONG, constraints[2:]) == 'constraint: must not contain "venice"'


def test_sentences_for_the_system_message():
    constraints = parse_constraints(["question at most 30 words", "Use British spelling.", "avoid trick questions!"])
    assert constraint_sentences(constraints) == "Question at most 30 words. Use British spelling. Avoid trick questions!"
    assert constraint_sentences([]) == ""


def test_load_constraints_skips_comments_and_blank_lines(tmp_path):
    path = tmp_path / "constraints.txt"
    path.write_text("# house rules\n\nquestion at most 30 words\n  # indented comment\nmust match /#\\d+/\n", encoding="utf-8")
    texts = load_constraints(path)
    assert texts == ["question at most 30 words", "must match /#\\d+/"]
    assert [c.check is not None for c in parse_constraints(texts)] == [True, True]


@pytest.mark.parametrize("content, says", [
    (None, "no such"),
    ("# only comments\n\n", "holds no constraints"),
    (b"\xff\xfe\x00q", "not UTF-8"),
])
def test_load_constraints_errors_say_how_to_fix(tmp_path, content, says):
    path = tmp_path / "c.txt"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(InputError, match=says):
        load_constraints(path)
    with pytest.raises(InputError, match="folder"):
        load_constraints(tmp_path)


def test_on_real_examples_length_limits_split_a_dataset(datasets_dir):
    path = datasets_dir / "mcqa_5" / "csqa" / "train.jsonl"
    if not path.exists():
        pytest.skip(f"{path} missing")
    examples, _ = load_examples(path)
    examples = examples[:300]
    constraints = parse_constraints(["question at most 12 words"])
    rejected = [ex for ex in examples if violated(ex, constraints)]
    assert 0 < len(rejected) < len(examples)
    assert all(len(ex.question.split()) > 12 for ex in rejected)
