"""A run killed with SIGKILL mid-flight, then resumed: nothing lost, nothing counted twice."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from treegen.cli import app


def q(db: Path, sql: str):
    con = sqlite3.connect(db, timeout=10)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def start_run(tmp_path, seeds, pool, name, latency_ms, concurrency, target):
    """`treegen run` in a subprocess against the in-process simulator; returns (process, db path)."""
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "treegen", "run", str(seeds), "--backend", "sim", "--sim-pool", str(pool),
           "--sim-latency-ms", str(latency_ms), "-c", str(concurrency), "--target", str(target), "--max-usd", "1",
           "--out", str(out), "--name", name, "--quiet"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE), out / name / "treegen.db"


def wait_until(db: Path, min_ok: int, need_pending: bool) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            ok = q(db, "select count(*) from calls where status = 'ok'")[0][0] if db.exists() else 0
            pending = q(db, "select count(*) from calls where status = 'pending'")[0][0] if db.exists() else 0
        except sqlite3.OperationalError:  # the database is being created
            ok = pending = 0
        if ok >= min_ok and (pending > 0 or not need_pending):
            return
        time.sleep(0.05)
    raise AssertionError("the run made no progress")


def test_sigkill_then_resume(tmp_path, yesno_seeds, strategyqa_pool):
    proc, db = start_run(tmp_path, yesno_seeds, strategyqa_pool, "crash", 150, 6, 150)
    out = db.parent.parent
    try:
        wait_until(db, 5, need_pending=True)
        os.kill(proc.pid, signal.SIGKILL)  # no handler, no cleanup: as a power cut would
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()

    accepted_before = {r for r in q(db, "select id, question from nodes where status = 'accepted'")}
    ok_before = q(db, "select id, cost_micro, prompt_tokens, completion_tokens from calls where status = 'ok' order by id")
    pending_before = {r[0] for r in q(db, "select id from calls where status = 'pending'")}
    assert pending_before, "the kill should have caught requests in flight"
    # Every ok call's reply and nodes landed together: no call has fewer node rows than parsed.
    assert q(db, """select count(*) from calls c where status = 'ok'
                    and (select count(*) from nodes n where n.call_id = c.id) < c.n_parsed""")[0][0] == 0

    result = CliRunner().invoke(app, ["resume", str(out / "crash"), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output

    # Nothing accepted before the kill was lost; nothing paid for was counted twice.
    accepted_after = {r for r in q(db, "select id, question from nodes where status = 'accepted'")}
    assert accepted_before <= accepted_after
    assert q(db, "select count(*) from nodes where status = 'accepted'")[0][0] == 150
    ok_after = q(db, "select id, cost_micro, prompt_tokens, completion_tokens from calls where status = 'ok' order by id")
    assert ok_after[: len(ok_before)] == ok_before
    # The requests in flight at the kill are 'lost', counted at their reservation.
    lost = q(db, "select id, cost_micro, reserved_micro from calls where status = 'lost'")
    assert {r[0] for r in lost} == pending_before
    assert all(cost is None and reserved > 0 for _, cost, reserved in lost)
    assert q(db, "select count(*) from calls where status = 'pending'")[0][0] == 0
    # No duplicate examples across the two sessions.
    keys = q(db, "select dedup_key from nodes where status in ('seed','accepted')")
    assert len(keys) == len(set(keys))
    # Each request id appears once: the resumed session made new requests, it did not re-record old ones.
    ids = q(db, "select request_id from calls where request_id is not null")
    assert len(ids) == len(set(ids))
    # status (computed from the database) agrees with the rows.
    status = CliRunner().invoke(app, ["status", str(out / "crash"), "--json"], catch_exceptions=False)
    assert status.exit_code == 0
    import json

    summary = json.loads(status.stdout)
    spent = q(db, """select sum(case when cost_micro is not null then cost_micro else reserved_micro end)
                     from calls where status in ('ok','error','timeout','lost')""")[0][0]
    assert summary["spent_micro"] == spent
    assert summary["accepted"] == 150


def test_ctrl_c_finishes_the_requests_in_flight(tmp_path, yesno_seeds, strategyqa_pool):
    proc, db = start_run(tmp_path, yesno_seeds, strategyqa_pool, "int", 300, 4, 1000)
    wait_until(db, 3, need_pending=False)
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert b"treegen resume" in stdout
    assert q(db, "select status from runs")[0][0] == "interrupted"
    # The requests in flight at Ctrl-C were waited for and recorded, not abandoned.
    assert q(db, "select count(*) from calls where status in ('pending', 'lost')")[0][0] == 0


def test_a_paid_reply_left_unjudged_by_a_crash_is_judged_on_resume(tmp_path, yesno_seeds):
    """The reply is persisted (and counted) before its candidates are decided; a crash in
    between leaves an answered call with no nodes, which resume judges instead of losing."""
    import treegen

    result = treegen.run(yesno_seeds, backend="sim", strategy="naive", target=10, max_usd=1, out=tmp_path,
                         name="gap", embedder="hashing", concurrency=1)
    db = result.run_dir / "treegen.db"
    last = q(db, "select max(id) from calls where n_accepted > 0")[0][0]
    lost = sorted(r[0] for r in q(db, f"select question from nodes where call_id = {last} and status = 'accepted'"))
    assert lost
    con = sqlite3.connect(db)
    with con:  # the state a kill between the two transactions leaves
        con.execute(f"delete from nodes where call_id = {last}")
        con.execute(f"update calls set n_parsed = null, n_accepted = null where id = {last}")
        con.execute("update runs set status = 'running'")
    con.close()
    spent = q(db, "select sum(cost_micro) from calls")[0][0]
    treegen.resume(result.run_dir, max_calls=int(q(db, "select count(*) from calls")[0][0]))  # no new call
    back = sorted(r[0] for r in q(db, f"select question from nodes where call_id = {last} and status = 'accepted'"))
    assert back == lost
    assert q(db, "select sum(cost_micro) from calls")[0][0] == spent  # judged, not bought again


def test_a_call_left_pending_by_a_crash_counts_against_the_caps_on_resume(tmp_path, yesno_seeds):
    """A kill leaves a pending call whose reply may have been billed: resume counts its whole
    reservation before reserving anything new, so the caps still hold."""
    import treegen
    from treegen.store import RunStore

    result = treegen.run(yesno_seeds, backend="sim", target=5, max_tokens=100_000, out=tmp_path, name="pend",
                         embedder="hashing", concurrency=1)
    with RunStore.open(result.run_dir) as store:  # the state a kill mid-request leaves
        store.insert_call({"created_at": "t", "status": "pending", "attempt": 1, "request_key": "killed",
                           "parent_node_ids": "[1]", "depth": 1, "strategy": "tree", "reserved_tokens": 5_000,
                           "reserved_micro": 0, "reserved_prompt_tokens": 100})
        spent = store.ledger_totals()["tokens"]
    cap = spent + 5_000 + 1_500  # room for the lost call and about one more request
    treegen.resume(result.run_dir, max_tokens=cap, target=1_000)
    with RunStore.open(result.run_dir, readonly=True) as store:
        assert store.ledger_totals()["tokens"] <= cap
        assert {c["status"] for c in store.calls() if c["request_key"] == "killed"} == {"lost"}
