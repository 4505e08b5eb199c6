"""The engine end to end: real openai client, real HTTP on loopback, the simulator, real SQLite."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from treegen.cli import app
from treegen.sim.server import SimConfig, SimServer

runner = CliRunner()


def cli(*args: str, env: dict | None = None):
    return runner.invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)


def only_run(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def q(run_dir: Path, sql: str, params=()):
    con = sqlite3.connect(run_dir / "treegen.db")
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def spent_micro(run_dir: Path) -> int:
    """Spent as the schema defines it: known costs plus reservations of unknown outcomes."""
    return q(run_dir, """select coalesce(sum(case when cost_micro is not null then cost_micro
                         when status in ('timeout','lost','pending') then reserved_micro else 0 end), 0) from calls""")[0][0]


def test_run_over_loopback_with_the_openai_client(tmp_path, yesno_seeds, strategyqa_pool):
    """`--backend openai --base-url` against a standalone simulator: the path real servers take."""
    with SimServer(SimConfig(pool_path=str(strategyqa_pool), api_key="sk-test-secret-123")) as srv:
        result = cli("run", yesno_seeds, "--base-url", srv.base_url, "--target", 60, "--max-usd", 0.5,
                     "--out", tmp_path / "runs", "--quiet", "-c", 4,
                     env={"OPENAI_API_KEY": "sk-test-secret-123"})
        stats = srv.stats()
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path / "runs")
    accepted = q(run, "select count(*) from nodes where status = 'accepted'")[0][0]
    assert accepted == 60  # the target is met exactly, never overshot
    ok_calls = q(run, "select count(*) from calls where status = 'ok'")[0][0]
    assert ok_calls == stats["requests"]  # one row per HTTP attempt
    # The simulator signs its replies: the run is marked simulated although --backend was openai.
    assert q(run, "select simulated from runs")[0][0] == 1
    # Every ok call has usage and a cost; the nodes' cost shares add up to the calls' costs.
    assert q(run, "select count(*) from calls where status='ok' and (prompt_tokens is null or cost_micro is null)")[0][0] == 0
    assert q(run, "select sum(cost_share_micro) from nodes")[0][0] == q(run, "select sum(cost_micro) from calls")[0][0]
    # Every accepted child has a parent one level up, and no duplicate slipped in.
    assert q(run, """select count(*) from nodes c join nodes p on c.parent_id = p.id
                     where c.status = 'accepted' and c.depth != p.depth + 1""")[0][0] == 0
    keys = q(run, "select dedup_key from nodes where status in ('seed','accepted')")
    assert len(keys) == len(set(keys))
    # The API key is never written to the database.
    assert b"sk-test-secret-123" not in (run / "treegen.db").read_bytes()


def test_backend_sim_mcqa_runs_offline(tmp_path, csqa_seeds, datasets_dir):
    pool = datasets_dir / "mcqa_5" / "csqa" / "train.jsonl"
    result = cli("run", csqa_seeds, "--backend", "sim", "--sim-pool", pool, "-s", "tree", "--target", 40,
                 "--max-usd", 0.1, "--out", tmp_path, "--quiet")
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path)
    rows = q(run, "select options, label from nodes where status = 'accepted'")
    assert len(rows) == 40
    for options, label in rows:
        assert len(json.loads(options)) == 5 and label in json.loads(options)
    assert q(run, "select task_format, simulated from runs")[0] == ("mcqa_5", 1)


@pytest.mark.parametrize("strategy", ["naive", "random", "contrastive", "similar", "tree", "novelty"])
def test_every_strategy_reaches_its_target(tmp_path, yesno_seeds, strategyqa_pool, strategy):
    # Two chains (the default is 8, whatever -c is): 30 examples take them below depth 1.
    result = cli("run", yesno_seeds, "--backend", "sim", "--sim-pool", strategyqa_pool, "-s", strategy,
                 "--target", 30, "--max-usd", 0.1, "--out", tmp_path, "--quiet", "-c", 2, "--chains", 2)
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path)
    assert q(run, "select count(*) from nodes where status='accepted'")[0][0] == 30
    depths = {d for (d,) in q(run, "select depth from nodes where status='accepted'")}
    if strategy == "naive":
        assert depths == {1}  # always the seed in context
    elif strategy in ("random", "contrastive", "similar"):
        # a chain walks down: children of children
        assert max(depths) >= 2
    assert q(run, "select strategy from runs")[0][0] == strategy


def test_same_seed_same_run(tmp_path, yesno_seeds, strategyqa_pool):
    """Runs are reproducible from their seed (concurrency 1)."""
    texts = []
    for i in range(2):
        out = tmp_path / f"r{i}"
        result = cli("run", yesno_seeds, "--backend", "sim", "--sim-pool", strategyqa_pool, "-s", "tree",
                     "--target", 25, "--max-usd", 0.1, "--out", out, "--quiet", "-c", 1, "--seed", 7)
        assert result.exit_code == 0, result.output
        texts.append(q(only_run(out), "select question, parent_id, depth from nodes order by id"))
    assert texts[0] == texts[1]


def test_dollar_cap_holds_under_faults(tmp_path, yesno_seeds, strategyqa_pool):
    """429s, 500s, timeouts, malformed, truncated and wrong-count replies, concurrency 8:
    the run stops cleanly at the cap and what it counted never exceeds it."""
    cfg = SimConfig(pool_path=str(strategyqa_pool), error_rate=0.15, timeout_rate=0.05, hang_seconds=3,
                    malformed_rate=0.15, truncate_rate=0.15, wrong_count_rate=0.2, label_flip_rate=0.1,
                    duplicate_rate=0.1, rpm_limit=600, seed=3)
    with SimServer(cfg) as srv:
        result = cli("run", yesno_seeds, "--base-url", srv.base_url, "--max-usd", 0.004, "--out", tmp_path,
                     "--quiet", "-c", 8, "--timeout", 1, "--max-output-tokens", 400, "--max-retries", 3,
                     env={"OPENAI_API_KEY": "x"})
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path)
    status, reason = q(run, "select status, stop_reason from runs")[0]
    assert status == "stopped: budget reached" and "dollar cap" in reason
    assert spent_micro(run) <= 4000
    statuses = dict(q(run, "select status, count(*) from calls group by status"))
    assert statuses.get("ok", 0) > 0 and statuses.get("error", 0) > 0
    assert "pending" not in statuses  # every request in flight was waited for and recorded
    reasons = {r for (r,) in q(run, "select reason from nodes where status = 'rejected'")}
    assert reasons & {"invalid-json", "truncated", "no-examples-in-reply"}
    # Timeouts are counted at their full reservation (the server may have billed them).
    for reserved, cost in q(run, "select reserved_micro, cost_micro from calls where status = 'timeout'"):
        assert cost is None and reserved > 0


def test_truncated_replies_are_salvaged(tmp_path, yesno_seeds, strategyqa_pool):
    with SimServer(SimConfig(pool_path=str(strategyqa_pool), truncate_rate=1.0)) as srv:
        result = cli("run", yesno_seeds, "--base-url", srv.base_url, "--max-calls", 4, "--k", 6, "--out", tmp_path,
                     "--quiet", "-c", 2, env={"OPENAI_API_KEY": "x"})
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path)
    rows = q(run, "select finish_reason, n_accepted from calls where status = 'ok'")
    assert rows and all(f == "length" for f, _ in rows)
    assert sum(n for _, n in rows) > 0  # the complete objects before the cut were kept
    assert q(run, "select count(*) from nodes where reason = 'truncated'")[0][0] > 0


def test_rate_limit_retries_honour_retry_after(tmp_path, yesno_seeds, strategyqa_pool):
    import time

    with SimServer(SimConfig(pool_path=str(strategyqa_pool), rpm_limit=3)) as srv:
        started = time.monotonic()
        result = cli("run", yesno_seeds, "--base-url", srv.base_url, "--max-calls", 6, "--out", tmp_path,
                     "--quiet", "-c", 6, env={"OPENAI_API_KEY": "x"})
        elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path)
    rows = q(run, "select status, http_status, error from calls order by id")
    assert len(rows) == 6  # the call cap counts every HTTP attempt, retries included
    assert sum(1 for r in rows if r[:2] == ("error", 429)) == 3
    # The server asked for ~60 s: nobody retried early, and the run did not sit out the wait
    # once the call cap made retrying impossible.
    assert elapsed < 30
    assert q(run, "select status from runs")[0][0] == "stopped: budget reached"


def test_resume_raises_the_cap_and_counts_nothing_twice(tmp_path, yesno_seeds, strategyqa_pool):
    result = cli("run", yesno_seeds, "--backend", "sim", "--sim-pool", strategyqa_pool, "--max-usd", 0.001,
                 "--out", tmp_path, "--quiet")
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path)
    assert q(run, "select status from runs")[0][0] == "stopped: budget reached"
    calls_before = q(run, "select id, cost_micro from calls order by id")
    accepted_before = q(run, "select id from nodes where status = 'accepted'")
    result = cli("resume", run, "--max-usd", 0.003, "--quiet")
    assert result.exit_code == 0, result.output
    calls_after = q(run, "select id, cost_micro from calls order by id")
    assert calls_after[: len(calls_before)] == calls_before  # old rows untouched
    assert len(calls_after) > len(calls_before)
    assert set(accepted_before) <= set(q(run, "select id from nodes where status = 'accepted'"))
    assert spent_micro(run) <= 3000
    keys = q(run, "select dedup_key from nodes where status in ('seed','accepted')")
    assert len(keys) == len(set(keys))


def test_unknown_model_with_dollar_cap_is_refused(tmp_path, yesno_seeds):
    out = tmp_path / "runs"
    result = runner.invoke(app, ["run", str(yesno_seeds), "--base-url", "http://127.0.0.1:9/v1", "--model",
                                 "llama3:8b", "--max-usd", "1", "--out", str(out)], env={"OPENAI_API_KEY": "x"})
    assert result.exit_code == 2
    assert "--prices" in result.output
    assert not out.exists()  # no run created


def test_missing_api_key_is_refused(tmp_path, yesno_seeds):
    out = tmp_path / "runs"
    result = runner.invoke(app, ["run", str(yesno_seeds), "--max-usd", "1", "--out", str(out)],
                           env={"OPENAI_API_KEY": ""})
    assert result.exit_code == 2
    assert "OPENAI_API_KEY" in result.output
    assert not out.exists()


def test_wrong_key_fails_clearly_and_keeps_the_run(tmp_path, yesno_seeds, strategyqa_pool):
    with SimServer(SimConfig(pool_path=str(strategyqa_pool), api_key="right")) as srv:
        result = runner.invoke(app, ["run", str(yesno_seeds), "--base-url", srv.base_url, "--max-calls", "5",
                                     "--out", str(tmp_path), "--quiet"], env={"OPENAI_API_KEY": "wrong"})
    assert result.exit_code == 1
    assert "401" in result.output and "OPENAI_API_KEY" in result.output
    run = only_run(tmp_path)
    assert q(run, "select status from runs")[0][0] == "failed"


def test_prices_override_lets_an_unknown_model_run(tmp_path, yesno_seeds, strategyqa_pool):
    with SimServer(SimConfig(pool_path=str(strategyqa_pool))) as srv:
        result = cli("run", yesno_seeds, "--base-url", srv.base_url, "--model", "llama3:8b", "--max-usd", 0.01,
                     "--prices", "input=0.20,output=0.60", "--target", 10, "--out", tmp_path, "--quiet",
                     env={"OPENAI_API_KEY": "x"})
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path)
    p, c, cost = q(run, "select prompt_tokens, completion_tokens, cost_micro from calls where status='ok' limit 1")[0]
    assert cost == -(-(p * 200_000 + c * 600_000) // 1_000_000)


def test_max_depth_ends_the_tree(tmp_path, yesno_seeds, strategyqa_pool):
    result = cli("run", yesno_seeds, "--backend", "sim", "--sim-pool", strategyqa_pool, "-s", "tree",
                 "--max-depth", 1, "--k", 3, "--out", tmp_path, "--quiet")
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path)
    assert q(run, "select status from runs")[0][0] == "completed"
    assert q(run, "select max(depth) from nodes")[0][0] == 1
    assert q(run, "select count(*) from calls")[0][0] == 2  # one request per seed, nothing deeper


def test_near_duplicates_are_rejected_inside_the_loop(tmp_path, yesno_seeds, strategyqa_pool):
    import numpy as np

    from treegen.embedders import get_embedder
    from treegen.store import RunStore

    result = cli("run", yesno_seeds, "--backend", "sim", "--sim-pool", strategyqa_pool, "-s", "tree",
                 "--near-dup", 0.35, "--embedder", "hashing", "--target", 20, "--max-usd", 0.2, "--out", tmp_path, "--quiet", "-c", 2)
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path)
    assert q(run, "select count(*) from nodes where reason = 'near-duplicate'")[0][0] > 0
    # No two accepted examples (nor an accepted one and a seed) are at or above the threshold.
    examples = RunStore.open(run, readonly=True).examples(include_seeds=True)
    vecs = get_embedder("hashing").embed([e.text() for e in examples])
    sims = vecs @ vecs.T
    np.fill_diagonal(sims, 0)
    assert sims.max() < 0.35 + 1e-6
    # Every accepted node has its novelty recorded.
    assert q(run, "select count(*) from nodes where status = 'accepted' and novelty is null")[0][0] == 0
