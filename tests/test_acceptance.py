"""The one acceptance rule, without a database or a network: pure functions on parsed candidates."""

from __future__ import annotations

import json

from treegen import acceptance
from treegen.acceptance import JudgeContext, judge, rescreen, screen, split_cost
from treegen.parsing import parse_reply
from treegen.task import TaskFormat, dedup_key, example_from_dict

YESNO = TaskFormat.parse("yesno_close")
MCQA = TaskFormat.parse("mcqa_3")


def reply(*objs: object) -> list:
    return parse_reply("\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs))


def q(text: str, label: str = "True") -> dict:
    return {"question": text, "options": ["True", "False"], "label": label}


def test_screen_gives_each_candidate_its_reason_in_reply_order() -> None:
    seen = {dedup_key(example_from_dict(q("Is the sky blue?"), YESNO))}
    out = screen(reply(q("Is the sky blue?"), q("Is grass green?"), q("Is grass  GREEN?"),
                       {"question": "No label", "options": ["True", "False"]}, '{"question": "cut off'),
                 YESNO, seen)
    assert [s.reason for s in out] == ["duplicate", None, "duplicate", "missing-field", "truncated"]
    assert out[1].key == dedup_key(out[1].example)


def test_multiple_choice_answer_by_number_is_read_as_its_label() -> None:
    out = screen(reply({"question": "Which is a fruit?", "options": ["car", "apple", "rock"], "answer": 2}),
                 MCQA, set())
    assert out[0].reason is None and out[0].example.label == "apple"
    bad = screen(reply({"question": "Which?", "options": ["a", "b", "c"], "answer": 7}), MCQA, set())
    assert bad[0].reason is not None


def test_rescreen_catches_what_was_accepted_meanwhile() -> None:
    first = screen(reply(q("Is ice cold?"), q("Is fire hot?")), YESNO, set())
    later = rescreen(first, {first[1].key})
    assert [s.reason for s in later] == [None, "duplicate"]


def test_judge_applies_near_duplicates_the_target_and_splits_the_cost() -> None:
    screened = screen(reply(q("A?"), q("B?"), q("C?"), q("D?")), YESNO, set())
    sims = {0: 0.2, 1: 0.95, 2: 0.3, 3: 0.1}
    decisions = judge(screened, sims, JudgeContext(open_slots=2, near_dup=0.9, cost_micro=10))
    assert [d.reason for d in decisions] == [None, "near-duplicate", None, "over-target"]
    assert [d.accepted for d in decisions] == [True, False, True, False]
    assert [d.cost_share_micro for d in decisions] == [3, 3, 2, 2] and sum(split_cost(10, 4)) == 10
    assert decisions[0].novelty == 0.8 and decisions[0].raw is None and decisions[1].raw
    assert decisions[0].key == screened[0].key


def test_without_a_target_or_index_every_valid_candidate_is_accepted() -> None:
    screened = screen(reply(q("A?"), "not json at all {oops: }", q("B?")), YESNO, set())
    decisions = judge(screened, {}, JudgeContext(open_slots=None, near_dup=None, cost_micro=0))
    assert sum(d.accepted for d in decisions) == 2
    assert all(d.novelty is None for d in decisions)
    assert acceptance.NO_EXAMPLES == "no-examples-in-reply"
