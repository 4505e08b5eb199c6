"""Verification: the prompt hides labels, the schema is strict, replies are read robustly, votes tally."""

from __future__ import annotations

import json
import time

import pytest

from treegen.errors import ConfigError, TreegenError
from treegen.task import Example, TaskFormat, load_examples
from treegen.verify import (
    VERIFY_LAST_LINE,
    VERIFY_SCHEMA_NAME,
    Verdict,
    json_values,
    parse_verdicts,
    tally,
    verify_max_tokens,
    verify_messages,
    verify_response_format,
)

MCQA3 = TaskFormat("mcqa", 3, False)
YESNO_OPEN = TaskFormat("yesno", 2, True)
YESNO = TaskFormat("yesno", 2, False)
NUMERIC = TaskFormat("numeric", 0, False)  # TaskFormat.parse("numeric") is being added; the kind is what counts

CAPITALS = [
    Example("Capital of France?", ("Berlin", "Paris", "Rome"), "Paris"),
    Example("Capital of Italy?", ("Rome", "Madrid", "Oslo"), "Rome"),
    Example("Capital of Norway?", ("Lisbon", "Vienna", "Oslo"), "Oslo"),
]
SUMS = [
    Example("Ann has 12 apples and buys 7 more, three times over in total. How many?", (), "57"),
    Example("Half of 7?", (), "3.5"),
]


def _user_objects(messages):
    lines = messages[1]["content"].splitlines()
    assert lines[-1] == VERIFY_LAST_LINE
    return [json.loads(line) for line in lines[:-1]]


# --- the prompt -----------------------------------------------------------------------

def test_messages_hide_the_label_and_number_the_candidates():
    messages = verify_messages(CAPITALS, MCQA3)
    assert [m["role"] for m in messages] == ["system", "user"]
    objects = _user_objects(messages)
    assert [o["id"] for o in objects] == [1, 2, 3]
    assert objects[0] == {"id": 1, "question": "Capital of France?", "options": ["Berlin", "Paris", "Rome"]}
    assert all("label" not in o and "answer" not in o for o in objects)
    # compact: no spaces after separators (every token is paid)
    assert '{"id":1,"question":"Capital of France?","options":["Berlin","Paris","Rome"]}' in messages[1]["content"]


def test_system_message_is_fixed_per_run_and_says_the_answer_form():
    a = verify_messages(CAPITALS[:1], MCQA3)[0]
    b = verify_messages(CAPITALS[1:], MCQA3)[0]
    assert a == b  # one cacheable prefix
    assert "number of the correct option" in a["content"]
    yes = verify_messages([Example("Is ice cold?", ("True", "False"), "True")], YESNO)[0]["content"]
    assert '"True" or "False"' in yes
    num = verify_messages(SUMS, NUMERIC)[0]["content"]
    assert "arithmetic expression" in num
    assert len(a["content"]) < 200  # short: paid on every request


def test_plain_mode_asks_for_the_json_object_and_structured_mode_does_not():
    plain = verify_messages(CAPITALS, MCQA3, structured=False)[0]["content"]
    structured = verify_messages(CAPITALS, MCQA3, structured=True)[0]["content"]
    assert '"verdicts"' in plain and '"verdicts"' not in structured


def test_context_comes_after_the_question_and_evidence_last():
    ex = Example("Is the sky green?", ("True", "False"), "False", context="The sky is blue.")
    messages = verify_messages([ex], YESNO_OPEN, evidence=[["Rayleigh scattering makes the sky blue."]],
                               task_description="Science facts")
    line = messages[1]["content"].splitlines()[0]
    assert list(json.loads(line)) == ["id", "question", "context", "options", "evidence"]
    assert "Use the evidence." in messages[0]["content"]
    assert messages[0]["content"].startswith("Task: Science facts")


def test_numeric_questions_have_no_options_line():
    objects = _user_objects(verify_messages(SUMS, NUMERIC))
    assert objects[1] == {"id": 2, "question": "Half of 7?"}


def test_evidence_must_match_the_candidates():
    with pytest.raises(ValueError):
        verify_messages(CAPITALS, MCQA3, evidence=[["one"]])
    with pytest.raises(ValueError):
        verify_messages([], MCQA3)


def test_real_examples_round_trip_through_the_prompt(datasets_dir):
    path = datasets_dir / "yesno_open" / "pubmedqa" / "train.jsonl"
    if not path.exists():
        pytest.skip(f"{path} missing")
    examples, fmt = load_examples(path)
    batch = examples[:5]
    objects = _user_objects(verify_messages(batch, fmt))
    assert [o["question"] for o in objects] == [ex.question for ex in batch]
    assert [o["context"] for o in objects] == [ex.context for ex in batch]
    # a reply that answers every question with its true label reads back as the labels
    reply = json.dumps({"verdicts": [{"id": i, "answer": ex.label} for i, ex in enumerate(batch, 1)]})
    assert parse_verdicts(reply, batch, fmt) == [ex.label for ex in batch]


# --- the schema -----------------------------------------------------------------------

def _strict(node):
    """Every object of the schema lists all its properties as required and forbids others."""
    if isinstance(node, dict):
        if node.get("type") == "object":
            assert node["additionalProperties"] is False
            assert sorted(node["required"]) == sorted(node["properties"])
        for value in node.values():
            _strict(value)
    elif isinstance(node, list):
        for value in node:
            _strict(value)


@pytest.mark.parametrize("fmt, answer", [
    (MCQA3, {"type": "integer", "enum": [1, 2, 3]}),
    (YESNO, {"type": "string", "enum": ["True", "False"]}),
    (NUMERIC, {"type": "string"}),
])
def test_schema_is_strict_with_exactly_n_items(fmt, answer):
    rf = verify_response_format(fmt, 4, "json_schema")
    assert rf["type"] == "json_schema"
    assert rf["json_schema"]["name"] == VERIFY_SCHEMA_NAME and rf["json_schema"]["strict"] is True
    schema = rf["json_schema"]["schema"]
    _strict(schema)
    verdicts = schema["properties"]["verdicts"]
    assert verdicts["minItems"] == verdicts["maxItems"] == 4
    assert verdicts["items"]["properties"]["id"]["enum"] == [1, 2, 3, 4]
    assert verdicts["items"]["properties"]["answer"] == answer


def test_replies_validate_against_the_schema_and_wrong_ones_do_not():
    jsonschema = pytest.importorskip("jsonschema")
    schema = verify_response_format(MCQA3, 2, "json_schema")["json_schema"]["schema"]
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate({"verdicts": [{"id": 1, "answer": 3}, {"id": 2, "answer": 1}]}, schema)
    for bad in (
        {"verdicts": [{"id": 1, "answer": 3}]},  # one item short
        {"verdicts": [{"id": 1, "answer": 4}, {"id": 2, "answer": 1}]},  # no option 4
        {"verdicts": [{"id": 1, "answer": 3}, {"id": 3, "answer": 1}]},  # no candidate 3
        {"verdicts": [{"id": 1, "answer": 3, "why": "x"}, {"id": 2, "answer": 1}]},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_dialects():
    obj = verify_response_format(NUMERIC, 2, "json_object")
    assert obj["type"] == "json_object"
    assert obj["schema"]["properties"]["verdicts"]["items"]["properties"]["answer"]["maxLength"] == 200
    assert verify_response_format(MCQA3, 2, "off") is None
    with pytest.raises(ConfigError):
        verify_response_format(MCQA3, 2, "xml")
    with pytest.raises(ConfigError):
        verify_response_format(MCQA3, 0, "json_schema")


def test_max_tokens_grows_with_n_and_is_larger_for_expressions():
    assert verify_max_tokens(MCQA3, 8) > verify_max_tokens(MCQA3, 1) > 0
    assert verify_max_tokens(NUMERIC, 4) > verify_max_tokens(MCQA3, 4)
    # room for the structured reply itself: about 10 characters per token at worst is plenty
    reply = json.dumps({"verdicts": [{"id": i, "answer": 3} for i in range(1, 9)]})
    assert verify_max_tokens(MCQA3, 8) * 2 > len(reply) / 2


# --- reading replies ------------------------------------------------------------------

def test_parse_maps_option_numbers_to_option_text():
    reply = '{"verdicts":[{"id":1,"answer":2},{"id":2,"answer":1},{"id":3,"answer":1}]}'
    assert parse_verdicts(reply, CAPITALS, MCQA3) == ["Paris", "Rome", "Lisbon"]


def test_parse_tolerates_order_missing_items_prose_and_fences():
    reply = (
        "Sure! Here are my answers:\n```json\n"
        '{"verdicts": [{"id": 3, "answer": 3}, {"id": 1, "answer": 2}]}\n```\nHope that helps.'
    )
    assert parse_verdicts(reply, CAPITALS, MCQA3) == ["Paris", None, "Oslo"]


def test_parse_falls_back_to_order_without_ids():
    reply = '[{"answer": 2}, {"answer": "Rome"}, {"answer": "c"}]'
    assert parse_verdicts(reply, CAPITALS, MCQA3) == ["Paris", "Rome", "Oslo"]


def test_parse_refuses_answers_it_cannot_map():
    reply = json.dumps({"verdicts": [
        {"id": 1, "answer": 4},  # out of range
        {"id": 2, "answer": True},  # not an option number
        {"id": 3, "answer": "Stockholm"},  # not an option
        {"id": 9, "answer": 1},  # no such candidate
    ]})
    assert parse_verdicts(reply, CAPITALS, MCQA3) == [None, None, None]


def test_parse_reads_a_reply_cut_off_by_the_token_limit():
    reply = '{"verdicts":[{"id":1,"answer":2},{"id":2,"answer":1},{"id":3,"ans'
    assert parse_verdicts(reply, CAPITALS, MCQA3) == ["Paris", "Rome", None]


def test_conflicting_answers_for_one_id_count_as_unreadable():
    reply = '{"verdicts":[{"id":1,"answer":2},{"id":1,"answer":3},{"id":2,"answer":1},{"id":2,"answer":"1"}]}'
    assert parse_verdicts(reply, CAPITALS, MCQA3) == [None, "Rome", None]


@pytest.mark.parametrize("reply", ["", "I don't know.", "{", "[]", '{"verdicts": "none"}', "null", "{}" * 1000,
                                   '{"verdicts":[{"id":Infinity,"answer":NaN},{"id":2,"answer":Infinity},{"id":3,"answer":1e400}]}',
                                   '{"verdicts":[{"id":1,"answer":' + "9" * 5000 + "}]}"])
def test_unreadable_replies_give_none_for_every_candidate(reply):
    assert parse_verdicts(reply, CAPITALS, MCQA3) == [None, None, None]


def test_hostile_replies_are_read_quickly():
    for reply in ("[" * 100_000, "{" * 100_000, '{"a":' * 50_000, "[{" * 50_000, "[" * 50_000 + "}" * 50_000,
                  '"' * 100_000, '{"verdicts":' * 20_000 + '{"id":1,"answer":2}'):
        start = time.perf_counter()
        assert parse_verdicts(reply, CAPITALS, MCQA3) == [None, None, None]
        assert time.perf_counter() - start < 2.0


def test_json_values_finds_json_among_prose_linearly():
    text = 'He said "hi [ok] {"a": 1} then [{"answer": 2}, {"answer": 3'
    assert json_values(text) == [{"a": 1}, {"answer": 2}]
    assert json_values('{"a": {"b": [1, {"c": 2}]}}') == [{"a": {"b": [1, {"c": 2}]}}]
    deep = "[" * 10 + "1" + "]" * 10  # deeper than a verdicts reply nests: only its shallow parts
    assert json_values(deep, max_height=6) == [json.loads("[" * 6 + "1" + "]" * 6)]
    assert json_values('x } ] { "s": "a } b" }') == [{"s": "a } b"}]


def test_parse_yesno_answers():
    exs = [Example(q, ("True", "False"), "True") for q in ("a?", "b?", "c?", "d?", "e?")]
    reply = json.dumps({"verdicts": [
        {"id": 1, "answer": "True"}, {"id": 2, "answer": "false"}, {"id": 3, "answer": False},
        {"id": 4, "answer": "Yes."}, {"id": 5, "answer": "maybe"},
    ]})
    assert parse_verdicts(reply, exs, YESNO) == ["True", "False", "False", "True", None]


def test_parse_numeric_evaluates_expressions_safely():
    exs = SUMS + [Example("q3?", (), "1"), Example("q4?", (), "2"), Example("q5?", (), "3")]
    reply = json.dumps({"verdicts": [
        {"id": 1, "answer": "(12+7)*3"},
        {"id": 2, "answer": "7/2"},
        {"id": 3, "answer": 12},
        {"id": 4, "answer": "__import__('os').getcwd()"},
        {"id": 5, "answer": "1/0"},
    ]})
    assert parse_verdicts(reply, exs, NUMERIC) == ["57", "3.5", "12", None, None]


# --- tally ----------------------------------------------------------------------------

PARIS = CAPITALS[0]


@pytest.mark.parametrize("mode", ["reject", "relabel"])
def test_one_vote_agreeing_keeps(mode):
    assert tally(PARIS, ["Paris"], mode, MCQA3) == Verdict(True, "Paris", "kept", ("Paris",))


def test_one_vote_disagreeing_rejects_or_relabels():
    assert tally(PARIS, ["Rome"], "reject", MCQA3) == Verdict(False, "Paris", "disputed", ("Rome",))
    assert tally(PARIS, ["Rome"], "relabel", MCQA3) == Verdict(True, "Rome", "relabelled", ("Rome",))


@pytest.mark.parametrize("mode", ["reject", "relabel"])
def test_all_votes_unreadable_is_unverified(mode):
    for votes in ([None], [None, None, None], []):
        verdict = tally(PARIS, votes, mode, MCQA3)
        assert verdict.outcome == "unverified" and not verdict.keep and verdict.label == "Paris"


@pytest.mark.parametrize("votes, keep, outcome", [
    (["Paris", "Paris", "Rome"], True, "kept"),
    (["Paris", "Rome", "Paris"], True, "kept"),
    (["Paris", "Rome", "Rome"], False, "disputed"),
    (["Paris", "Rome", "Berlin"], False, "disputed"),
    (["Paris", None, None], False, "unverified"),  # one confirmation of three is no majority, nobody disputed
    (["Paris", "Paris", None], True, "kept"),
    (["Paris", "Rome", None], False, "disputed"),
    (["Paris"] * 3 + ["Rome"] * 2, True, "kept"),
    (["Paris"] * 2 + ["Rome"] * 3, False, "disputed"),
    (["Paris"] * 2 + [None] * 3, False, "unverified"),
])
def test_three_and_five_votes_reject_mode(votes, keep, outcome):
    verdict = tally(PARIS, votes, "reject", MCQA3)
    assert (verdict.keep, verdict.outcome, verdict.label, verdict.votes) == (keep, outcome, "Paris", tuple(votes))


def test_a_tie_is_no_majority():
    assert tally(PARIS, ["Paris", "Rome"], "reject", MCQA3).outcome == "disputed"
    assert tally(PARIS, ["Paris", "Paris", "Rome", "Rome"], "relabel", MCQA3).outcome == "disputed"


@pytest.mark.parametrize("votes, keep, label, outcome", [
    (["Rome"] * 3, True, "Rome", "relabelled"),
    (["Rome"] * 5, True, "Rome", "relabelled"),
    (["Rome", "Rome", "Berlin"], False, "Paris", "disputed"),  # not all agree on one other label
    (["Rome", "Rome", None], False, "Paris", "disputed"),  # an unreadable vote is not agreement
    (["Rome"] * 4 + ["Paris"], False, "Paris", "disputed"),
    (["Paris", "Paris", "Rome"], True, "Paris", "kept"),
    (["Madrid"] * 3, False, "Paris", "disputed"),  # not one of the options: never a label
])
def test_relabel_mode_needs_every_vote_on_one_other_valid_label(votes, keep, label, outcome):
    verdict = tally(PARIS, votes, "relabel", MCQA3)
    assert (verdict.keep, verdict.label, verdict.outcome) == (keep, label, outcome)


def test_numeric_votes_compare_as_numbers_and_relabel_canonically():
    ex = Example("Half of 7?", (), "3.5")
    assert tally(ex, ["3.50", "7/2", "4"], "reject", NUMERIC).outcome == "kept"
    assert tally(ex, ["4.0", "4", "4"], "reject", NUMERIC).outcome == "disputed"
    relabelled = tally(ex, ["4.0", "4", "2*2"], "relabel", NUMERIC)
    assert (relabelled.keep, relabelled.label, relabelled.outcome) == (True, "4", "relabelled")
    assert tally(ex, ["abc"], "relabel", NUMERIC).outcome == "disputed"


def test_yesno_relabel():
    ex = Example("Is the sun cold?", ("True", "False"), "True")
    assert tally(ex, ["False"] * 3, "relabel", YESNO).label == "False"
    assert tally(ex, ["False"] * 3, "reject", YESNO).outcome == "disputed"


def test_unknown_mode_is_a_clear_error():
    with pytest.raises(ConfigError, match="reject, relabel"):
        tally(PARIS, ["Paris"], "vote", MCQA3)
    assert issubclass(ConfigError, TreegenError)


def test_verdict_json_is_what_nodes_store():
    verdict = tally(PARIS, ["Rome", None, "Paris"], "reject", MCQA3)
    assert json.loads(verdict.to_json()) == {"votes": ["Rome", None, "Paris"], "outcome": "disputed"}


def test_parse_then_tally_end_to_end():
    """Three verifier replies for the same batch: candidate 1 confirmed, 2 relabelled, 3 disputed."""
    replies = [
        '{"verdicts":[{"id":1,"answer":2},{"id":2,"answer":2},{"id":3,"answer":3}]}',
        'Answers: {"verdicts":[{"id":2,"answer":2},{"id":1,"answer":2},{"id":3,"answer":1}]}',
        '{"verdicts":[{"id":1,"answer":1},{"id":2,"answer":2},{"id":3,"answer":2}]}',
    ]
    per_reply = [parse_verdicts(r, CAPITALS, MCQA3) for r in replies]
    verdicts = [tally(ex, [votes[i] for votes in per_reply], "relabel", MCQA3) for i, ex in enumerate(CAPITALS)]
    assert [(v.outcome, v.label) for v in verdicts] == [("kept", "Paris"), ("relabelled", "Madrid"), ("disputed", "Oslo")]


# --- against the simulator, over real HTTP with the real openai client ------------------

def test_simulated_verifier_catches_flipped_labels(datasets_dir, tmp_path):
    """SIMULATED: a perfect verifier (the simulator knows each pool item's true label) disputes
    every flipped label in reject mode and restores it in relabel mode."""
    import dataclasses

    openai = pytest.importorskip("openai")
    from treegen.sim.server import SimConfig, SimServer

    if "verify_accuracy" not in {f.name for f in dataclasses.fields(SimConfig)}:
        pytest.skip("the simulator does not answer verification requests yet")
    path = datasets_dir / "mcqa_5" / "csqa" / "train.jsonl"
    if not path.exists():
        pytest.skip(f"{path} missing")
    pool = tmp_path / "pool.jsonl"  # a small real pool: the simulator starts in a moment
    pool.write_text("".join(path.read_text(encoding="utf-8").splitlines(keepends=True)[:60]), encoding="utf-8")
    examples, fmt = load_examples(pool)
    truth = examples[:12]
    flipped = {1, 4, 5, 9}
    shown = [
        Example(ex.question, ex.options, next(o for o in ex.options if o != ex.label), ex.context) if i in flipped else ex
        for i, ex in enumerate(truth)
    ]
    with SimServer(SimConfig(pool_path=str(pool), seed=3, verify_accuracy=1.0)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=60)
        for dialect in ("json_schema", "off"):
            reply = client.chat.completions.create(
                model="gpt-4o-mini", messages=verify_messages(shown, fmt, structured=dialect != "off"),
                max_tokens=verify_max_tokens(fmt, len(shown)),
                **({"response_format": rf} if (rf := verify_response_format(fmt, len(shown), dialect)) else {}),
            )
            assert reply.usage.completion_tokens <= verify_max_tokens(fmt, len(shown))
            votes = parse_verdicts(reply.choices[0].message.content, shown, fmt)
            assert votes == [ex.label for ex in truth]
            rejected = [tally(ex, [v], "reject", fmt) for ex, v in zip(shown, votes)]
            assert {i for i, v in enumerate(rejected) if v.outcome == "disputed"} == flipped
            relabelled = [tally(ex, [v], "relabel", fmt) for ex, v in zip(shown, votes)]
            assert [v.label for v in relabelled] == [ex.label for ex in truth]
            assert all(v.keep for v in relabelled)


def test_numeric_non_finite_answers_are_unreadable():
    reply = '{"verdicts":[{"id":1,"answer":Infinity},{"id":2,"answer":NaN}]}'
    assert parse_verdicts(reply, SUMS, NUMERIC) == [None, None]
