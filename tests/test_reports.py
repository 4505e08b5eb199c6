"""Run reports computed from a real run database (see tests/factories.py for the scenario)."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from factories import SCENARIO, build_run
from treegen.render import render_status
from treegen.reports import by_depth, by_strategy, run_list, run_summary
from treegen.store import RunStore


@pytest.fixture(scope="module")
def sim_db(tmp_path_factory):
    with RunStore.open(build_run(tmp_path_factory.mktemp("sim") / "run-sim"), readonly=True) as store:
        yield store


@pytest.fixture(scope="module")
def real_db(tmp_path_factory):
    path = build_run(tmp_path_factory.mktemp("real") / "run-real", simulated=False, run_id="run-real")
    with RunStore.open(path, readonly=True) as store:
        yield store


def test_summary_counts_and_money(sim_db):
    s = run_summary(sim_db)
    assert s["simulated"] is True and s["model"] == "gpt-4o-mini" and s["format"] == "yesno_close"
    assert (s["seeds"], s["accepted"], s["rejected"]) == (SCENARIO["seeds"], SCENARIO["accepted"], SCENARIO["rejected"])
    assert s["rejected_by_reason"] == {"duplicate": 1, "invalid-json": 1, "label-not-in-options": 1, "near-duplicate": 1}
    assert s["rejection_rate"] == pytest.approx(4 / 9)
    assert s["calls"] == {"ok": 3, "error": 1, "timeout": 1, "lost": 1, "pending": 1}
    # Spent counts the timeout's and the lost call's whole reservations, not the pending one.
    assert s["spent_micro"] == SCENARIO["spent_micro"] == 2980
    assert s["unknown_billing_micro"] == SCENARIO["unknown_micro"]
    assert s["unknown_billing_share"] == pytest.approx(1600 / 2980)
    assert s["pending_reserved_micro"] == SCENARIO["pending_micro"]
    assert s["tokens_used"] == SCENARIO["tokens_used"]
    assert (s["prompt_tokens"], s["completion_tokens"], s["cached_tokens"]) == (3300, 1500, 200)
    assert s["cost_per_accepted_micro"] == 596  # 2980 / 5
    assert s["tokens_per_accepted"] == pytest.approx(8600 / 5)
    assert s["rejected_completion_share"] == pytest.approx(SCENARIO["rejected_completion"] / SCENARIO["completion_tokens"])
    assert s["max_depth"] == 2
    assert s["elapsed_seconds"] == pytest.approx(SCENARIO["elapsed_seconds"])
    assert s["calls_per_minute"] == pytest.approx(7 / 2)
    caps = s["caps"]
    assert caps["max_usd_micro"] == {"cap": 5000, "used": 2980, "held": 950, "fraction": pytest.approx(0.596)}
    assert caps["max_tokens"]["held"] == 1900
    assert s["prices"]["input"] == 150_000
    assert caps["max_calls"]["used"] == SCENARIO["calls"]
    assert caps["target"]["fraction"] == pytest.approx(0.5)


def test_breakdowns_add_up_to_the_totals(sim_db):
    s = run_summary(sim_db)
    depth = by_depth(sim_db)
    assert [r["depth"] for r in depth] == [0, 1, 2, 3]
    assert sum(r["cost_micro"] for r in depth) == SCENARIO["node_shares_micro"]
    assert sum(r["spent_micro"] for r in depth) == s["spent_micro"]
    assert sum(r["accepted"] for r in depth) == s["accepted"]
    assert sum(r["rejected"] for r in depth) == s["rejected"]
    d1 = depth[1]
    assert (d1["nodes"], d1["accepted"], d1["rejected"], d1["cost_micro"]) == (5, 3, 2, 855)
    assert d1["cost_per_accepted_micro"] == 285
    assert depth[0]["cost_per_accepted_micro"] is None and depth[0]["seeds"] == 3
    strat = {r["strategy"]: r for r in by_strategy(sim_db)}
    assert set(strat) == {"seed", "tree", "random"}
    assert strat["random"]["cost_micro"] == 405 and strat["random"]["accepted"] == 1
    assert sum(r["cost_micro"] for r in strat.values()) == SCENARIO["node_shares_micro"]
    assert sum(r["spent_micro"] for r in strat.values()) == s["spent_micro"]


def test_run_without_accepted_examples(tmp_path):
    db = RunStore.open(build_run(tmp_path / "r"))
    db.conn.execute("update nodes set status = 'rejected', reason = 'duplicate' where status = 'accepted'")
    s = run_summary(db)
    assert s["accepted"] == 0 and s["cost_per_accepted_micro"] is None and s["tokens_per_accepted"] is None
    # All candidates rejected: every completion token of a call with candidates was wasted.
    assert s["rejected_completion_share"] == pytest.approx(1.0)
    assert s["max_depth"] == 0


def test_elapsed_prefers_the_engines_tally(tmp_path):
    db = RunStore.open(build_run(tmp_path / "r"))
    db.conn.execute("update runs set elapsed_seconds = 90.0")
    # A finished session: the engine's tally, which leaves out pauses between sessions.
    assert run_summary(db)["elapsed_seconds"] == pytest.approx(90.0)
    assert run_summary(db)["calls_per_minute"] == pytest.approx(7 / 1.5)
    db.conn.execute("update runs set status = 'running'")
    # Still running: the tally is stale, so the span of recorded activity is used.
    assert run_summary(db)["elapsed_seconds"] == pytest.approx(SCENARIO["elapsed_seconds"])


def _render(db) -> str:
    buf = io.StringIO()
    render_status(run_summary(db), by_depth(db), by_strategy(db), Console(file=buf, width=140, color_system=None))
    return buf.getvalue()


def test_render_marks_simulated_runs(sim_db, real_db):
    out = _render(sim_db)
    assert "SIMULATED" in out
    assert "simulated $0.00298 (at gpt-4o-mini list prices)" in out
    assert "label-not-in-options" in out and "By depth" in out and "By strategy" in out
    real = _render(real_db)
    assert "SIMULATED" not in real and "simulated" not in real
    assert "$0.00298" in real and "$0.000596" in real


def test_cli_status(sim_db):
    from treegen.cli import app
    from treegen.cli_reports import register

    register(app)
    runner = CliRunner()
    path = str(sim_db.path)
    r = runner.invoke(app, ["status", path, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["spent_micro"] == 2980
    r = runner.invoke(app, ["status", str(path).rsplit("/", 1)[0]])
    assert r.exit_code == 0 and "SIMULATED" in r.output
    r = runner.invoke(app, ["status", "/nonexistent/run"])
    assert r.exit_code == 2 and "No treegen run" in r.output
