"""The hot path's structure (issue 12, goal 2): statements and commits per call, no statement
that grows with the run, and the fast parse of a well-formed reply giving exactly what the
tolerant scanner gives. No timing asserts: these hold on any machine."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from treegen.parsing import _parse_tolerant, _parse_well_formed, parse_reply
from treegen.task import Example, dedup_key, normalise_text, option_key

REPO = Path(__file__).resolve().parents[1]
SEEDS = REPO / "examples" / "seeds.jsonl"
CALLS = 30


@pytest.fixture(scope="module")
def traced_run(tmp_path_factory):
    """A small run against the simulator on loopback (the real client, real SQLite), with every
    statement the store's connection runs recorded from the first call on."""
    from treegen.api import execute_async, prepare_run
    from treegen.sim.server import SimConfig, SimServer

    out = tmp_path_factory.mktemp("hot")
    statements: list[str] = []
    with SimServer(SimConfig()) as srv:
        store, cfg = prepare_run(str(SEEDS), {"base_url": srv.base_url, "max_calls": CALLS, "k": 10, "concurrency": 4,
                                              "embedder": "hashing", "max_depth": 50, "out": str(out)}, "sk-test")
        store.conn.set_trace_callback(statements.append)
        with store:
            result = asyncio.run(execute_async(store, cfg, "sk-test"))
        run_dir = store.run_dir
    first = next(i for i, s in enumerate(statements) if s.startswith("insert into calls"))
    return result, statements[first:], run_dir


def test_statements_and_commits_per_call_stay_few(traced_run):
    result, statements, _ = traced_run
    assert result.calls == CALLS
    # Node inserts are one executemany per reply (sqlite3 traces each row): counted apart.
    node_rows = sum(s.startswith("insert into nodes") for s in statements)
    assert node_rows >= CALLS  # every reply recorded its candidates
    others = len(statements) - node_rows
    commits = sum(s == "commit" for s in statements)
    # Per call: pending row (begin, prompt, call, commit), reply (begin, update, commit), nodes
    # (begin, update, max id, parent expanded, commit) = 12, fewer when the reply is already in
    # turn (one transaction for both); a few more for the session's end and the elapsed time.
    assert others <= 12 * CALLS + 12, others
    assert commits <= 3 * CALLS + 4, commits
    # The per-reply `update runs set updated_at` is gone (the elapsed-time flush writes it).
    assert sum(s.startswith("update runs set updated_at") for s in statements) == 0


def test_no_statement_in_the_loop_scans_a_growing_table(traced_run):
    """CPU per call flat as the run grows: every statement the calls run finds its rows through
    a key or an index (SQLite's plan says SEARCH, never a SCAN of calls, nodes or prompts)."""
    _, statements, run_dir = traced_run
    loop = statements[: max(i for i, s in enumerate(statements) if s.startswith("insert into nodes")) + 1]
    con = sqlite3.connect(run_dir / "treegen.db")
    try:
        shapes: dict[str, str] = {}
        for s in loop:
            if s.split(" ", 1)[0] in ("select", "update", "delete"):
                shapes.setdefault(re.sub(r"\d+|'[^']*'", "?", s), s)
        assert any("max(id)" in s for s in shapes)  # the node id lookup is among them
        for s in shapes.values():
            plan = " | ".join(r[3] for r in con.execute("explain query plan " + s))
            # (``runs`` holds one row: scanning it costs the same at any size.)
            assert not re.search(r"\bSCAN (calls|nodes|prompts)\b", plan), (s, plan)
    finally:
        con.close()


def test_a_retried_prompt_is_not_written_twice(tmp_path):
    from treegen.store import RunStore

    store = RunStore.create(tmp_path / "treegen.db", {"id": "r", "created_at": "t", "updated_at": "t",
                                                      "status": "running", "config": "{}"},
                            [Example("Is ice cold?", ("True", "False"), "True")])
    seen: list[str] = []
    store.conn.set_trace_callback(seen.append)
    messages = [{"role": "user", "content": "hello"}]
    a = store.insert_call({"created_at": "t", "status": "pending", "attempt": 1}, messages=messages)
    b = store.insert_call({"created_at": "t", "status": "pending", "attempt": 2}, messages=messages)
    assert sum(s.startswith("insert or ignore into prompts") for s in seen) == 1
    assert store.call(a)["prompt_hash"] == store.call(b)["prompt_hash"]
    assert store.prompt_messages(store.call(b)["prompt_hash"]) == messages
    store.close()


# ---- the fast parse path against the tolerant scanner ---------------------------------

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)) | st.sampled_from('{}[]",:\\ \n'), max_size=30)
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), _text)
_example = st.fixed_dictionaries(
    {"question": _text, "options": st.lists(_text, max_size=4), "label": st.one_of(_text, st.booleans())},
    optional={"context": st.one_of(st.none(), _text), "examples": st.lists(_scalar, max_size=2),
              "extra": st.one_of(_scalar, st.dictionaries(_text, _scalar, max_size=2))},
)
_element = st.one_of(_example, st.dictionaries(_text, _scalar, max_size=3), _scalar,
                     st.lists(_example, max_size=2))


def _render(items, wrapped: bool, indent, sep) -> str:
    body = json.dumps(items, indent=indent, separators=sep, ensure_ascii=False)
    return f'{{"examples": {body}}}' if wrapped else body


_damage = st.sampled_from(["none", "none", "none", "cut", "trailing-comma", "prose", "extra-key", "fence"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(_element, max_size=6), wrapped=st.booleans(), indent=st.sampled_from([None, 1, 2]),
       sep=st.sampled_from([None, (",", ":")]), damage=_damage, cut=st.floats(0, 1))
def test_the_fast_parse_gives_what_the_tolerant_scanner_gives(items, wrapped, indent, sep, damage, cut):
    text = _render(items, wrapped, indent, sep)
    if damage == "cut":
        text = text[: int(len(text) * cut)]
    elif damage == "trailing-comma" and text.rstrip().endswith(("]", "}")):
        text = re.sub(r"\}(\s*\])", r"},\1", text, count=1)
    elif damage == "prose":
        text = "Here they are:\n" + text + "\nHope this helps!"
    elif damage == "extra-key" and wrapped:
        text = text[:-1] + ', "note": {"k": 1}}'
    elif damage == "fence":
        text = "```json\n" + text + "\n```"
    assert parse_reply(text) == _parse_tolerant(text)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(_example, min_size=1, max_size=8), wrapped=st.booleans(), indent=st.sampled_from([None, 2]))
def test_a_well_formed_reply_of_plain_objects_takes_the_fast_path(items, wrapped, indent):
    for item in items:  # plain text: no brace in any string, no object inside
        for key, value in list(item.items()):
            if isinstance(value, dict):
                del item[key]
            elif isinstance(value, str):
                item[key] = value.replace("{", "(").replace("}", ")")
            elif isinstance(value, list):
                item[key] = [v.replace("{", "(") if isinstance(v, str) else v for v in value]
    text = _render(items, wrapped, indent, None)
    fast = _parse_well_formed(text)
    assert fast is not None
    assert fast == _parse_tolerant(text)
    # Every example-like object comes back, with its exact text as raw.
    assert [c.obj for c in fast] == [i for i in items if "examples" not in i or not isinstance(i["examples"], list)
                                     or "question" in i]
    for c in fast:
        assert json.loads(c.raw) == c.obj and c.raw in text


def test_the_fast_path_declines_what_only_the_scanner_can_read():
    ok = {"question": "q", "options": ["True", "False"], "label": "True"}
    for text in ('{"examples": [' + json.dumps(ok) + ",]}",  # trailing comma
                 "Sure! " + json.dumps([ok]),  # prose
                 json.dumps({"examples": [ok], "meta": {"model": "x"}}),  # another key
                 json.dumps([{**ok, "nested": {"a": 1}}]),  # an object inside
                 json.dumps([[ok]])):  # an array inside
        assert _parse_well_formed(text) is None
        assert parse_reply(text) == _parse_tolerant(text)


# ---- validation shortcuts that must not change a result --------------------------------

@given(st.text(max_size=40))
def test_option_key_ascii_shortcut_matches_the_unicode_rule(text):
    assert option_key(text) == " ".join(unicodedata.normalize("NFKC", text).casefold().split())


@given(st.lists(st.text(max_size=15), min_size=2, max_size=5), st.text(max_size=30))
def test_dedup_key_is_the_same_for_cached_and_uncached_options(options, question):
    ex = Example(question, tuple(options), options[0])
    expected = (f"{normalise_text(None)}\n{normalise_text(question)}\n"
                + "|".join(sorted(normalise_text(o) for o in options)))
    assert dedup_key(ex) == expected
    assert dedup_key(Example(question, list(options), options[0])) == expected  # type: ignore[arg-type]
