"""treegen against a hostile server and hostile input, through the CLI.

Each test starts a standalone simulator (``treegen.sim.server.SimServer``) on loopback with one
of its hostile faults and points ``treegen run --backend openai --base-url`` at it with a fake
key, then checks the exit code, the message and what the run database holds. Everything the
server answers is SIMULATED.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
from typer.testing import CliRunner

from treegen.cli import app
from treegen.sim.server import SimConfig, SimServer
from treegen.store import RunStore, call_spent_micro, call_spent_tokens

KEY = "sk-test-" + "Zq7xW2" * 5  # 38 characters, never a real key
ENV = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": None}
DEAD_URL = "http://127.0.0.1:9/v1"  # never contacted: the flags are refused before any request


@contextmanager
def serve(**faults: Any) -> Iterator[SimServer]:
    server = SimServer(SimConfig(**faults)).start()
    try:
        yield server
    finally:
        server.stop()


def cli(*args: str) -> Any:
    return CliRunner(env=ENV).invoke(app, [str(a) for a in args])


def text_of(result: Any) -> str:
    return result.output + (result.stderr if result.stderr_bytes is not None else "")


def run_args(seeds: Path, url: str, out: Path, name: str, *extra: str) -> list[str]:
    return ["run", str(seeds), "--backend", "openai", "--base-url", url, "--embedder", "hashing",
            "--out", str(out), "--name", name, "--quiet", *extra]


def treegen_process(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    env.pop("OPENAI_BASE_URL", None)
    return subprocess.Popen([sys.executable, "-m", "treegen", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)


def q(db: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def wait_for(predicate, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except sqlite3.Error:  # the database is being created
            pass
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the run")


def calls_of(run_dir: Path) -> list[dict[str, Any]]:
    with RunStore.open(run_dir, readonly=True) as store:
        return store.calls()


def run_row(run_dir: Path) -> dict[str, Any]:
    with RunStore.open(run_dir, readonly=True) as store:
        return store.run()


def folder_is_empty(path: Path) -> bool:
    return not path.exists() or not any(path.iterdir())


# ---- 1. two processes on one run --------------------------------------------------------
def test_second_process_is_refused_until_the_first_dies(tmp_path, yesno_seeds):
    out = tmp_path / "runs"
    with serve(latency_ms=400) as srv:
        proc = treegen_process(*run_args(yesno_seeds, srv.base_url, out, "conc", "--target", "40", "-c", "1"))
        db = out / "conc" / "treegen.db"
        try:
            wait_for(lambda: db.exists() and q(db, "select count(*) from calls")[0][0] >= 1)
            second = cli("resume", out / "conc", "--quiet")
            assert second.exit_code == 2, text_of(second)
            assert f"process {proc.pid}" in text_of(second)
            assert proc.poll() is None  # the first one goes on undisturbed
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        after = cli("resume", out / "conc", "--quiet")
        assert after.exit_code == 0, text_of(after)
    assert run_row(out / "conc")["status"] == "completed"
    assert q(db, "select count(*) from nodes where status = 'accepted'")[0][0] >= 40


# ---- 2. depth alone bounds a chain strategy, not naive ----------------------------------
def test_random_with_max_depth_alone_ends_by_itself(tmp_path, yesno_seeds):
    out = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "treegen", "run", str(yesno_seeds), "--backend", "sim",
                           "--strategy", "random", "--max-depth", "2", "--chains", "3", "--embedder", "hashing",
                           "--out", str(out), "--name", "rnd", "--quiet"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "OPENAI_API_KEY": KEY})
    assert proc.returncode == 0, proc.stderr
    calls = calls_of(out / "rnd")
    # 3 chains x 2 levels x (1 try + 2 expansion retries), plus HTTP retries that never happen here.
    assert 0 < len(calls) <= 3 * 2 * 3
    assert max(c["depth"] for c in calls) <= 2
    assert run_row(out / "rnd")["status"] == "completed"


def test_naive_with_max_depth_alone_is_refused(tmp_path, yesno_seeds):
    out = tmp_path / "runs"
    result = cli("run", yesno_seeds, "--backend", "sim", "--strategy", "naive", "--max-depth", "2",
                 "--out", out, "--name", "nv")
    assert result.exit_code == 2, text_of(result)
    assert "--max-depth" in text_of(result) and "--target" in text_of(result)
    assert folder_is_empty(out)


# ---- 3. a server that reports more usage than was allowed -------------------------------
@pytest.mark.parametrize("faults", [{"ignore_max_tokens": True}, {"usage_inflate": 5_000_000}],
                         ids=["ignore-max-tokens", "usage-inflate"])
def test_usage_anomaly_is_recorded_as_reported_and_fails_the_run(tmp_path, yesno_seeds, faults):
    out = tmp_path / "runs"
    with serve(**faults) as srv:
        result = cli(*run_args(yesno_seeds, srv.base_url, out, "anom", "--max-calls", "5", "-c", "1"))
        served = srv.stats()
    assert result.exit_code == 1, text_of(result)
    assert srv.base_url in text_of(result) and "usage anomaly" in text_of(result)
    assert "Traceback" not in text_of(result)
    calls = calls_of(out / "anom")
    anomalies = [c for c in calls if c["status"] == "usage-anomaly"]
    assert len(anomalies) == 1 and len(calls) == 1  # the run stops at the first
    call = anomalies[0]
    import json

    max_tokens = json.loads(call["params"])["max_tokens"]
    assert call["completion_tokens"] > max_tokens
    # Recorded as the server reported it (that is the bill).
    assert call["completion_tokens"] == served["completion_tokens"]
    if "usage_inflate" in faults:
        assert call["completion_tokens"] == 5_000_000
    assert run_row(out / "anom")["status"] == "failed"


# ---- 4. nothing listening, and URLs that are not URLs -----------------------------------
def test_closed_port_fails_fast_and_spends_nothing(tmp_path, yesno_seeds):
    out = tmp_path / "runs"
    started = time.monotonic()
    result = cli(*run_args(yesno_seeds, "http://127.0.0.1:1/v1", out, "closed", "--max-usd", "1"))
    took = time.monotonic() - started
    assert result.exit_code == 1, text_of(result)
    assert "could not connect" in text_of(result) and "is the server running?" in text_of(result)
    assert took < 20
    calls = calls_of(out / "closed")
    assert calls and all(c["status"] == "refused" and c["cost_micro"] == 0 for c in calls)
    assert sum(call_spent_micro(c) for c in calls) == 0
    assert sum(call_spent_tokens(c) for c in calls) == 0


@pytest.mark.parametrize("url", ["notaurl", "ftp://x"])
def test_base_url_that_is_not_http_is_refused(tmp_path, yesno_seeds, url):
    out = tmp_path / "runs"
    result = cli(*run_args(yesno_seeds, url, out, "bad", "--max-calls", "3"))
    assert result.exit_code == 2, text_of(result)
    assert "--base-url" in text_of(result) and "http" in text_of(result)
    assert folder_is_empty(out)


# ---- 5. 200 replies whose body is not a chat completion ---------------------------------
@pytest.mark.parametrize("body", ["html", "empty", "notjson"])
def test_body_that_is_not_a_completion(tmp_path, yesno_seeds, body):
    out = tmp_path / "runs"
    with serve(body_fault=body) as srv:
        result = cli(*run_args(yesno_seeds, srv.base_url, out, "body", "--max-calls", "12", "--max-retries", "2"))
    said = text_of(result)
    assert result.exit_code == 1, said
    assert "Traceback" not in said
    assert ("HTML" in said or "not a JSON" in said) and "--base-url" in said
    calls = calls_of(out / "body")
    assert calls and not [c for c in calls if c["status"] == "pending"]
    assert all(c["cost_micro"] == 0 for c in calls)


# ---- 6. caps under concurrency ----------------------------------------------------------
@pytest.mark.parametrize("cap,errors", [(("--max-usd", "0.01"), 0.0), (("--max-tokens", "25000"), 0.0),
                                        (("--max-usd", "0.01"), 0.3)], ids=["usd", "tokens", "usd-with-retries"])
def test_caps_hold_under_concurrency(tmp_path, yesno_seeds, cap, errors):
    # With server errors, retries must wait for the requests in flight to settle, like first attempts.
    out = tmp_path / "runs"
    with serve(latency_ms=60, jitter_ms=60, error_rate=errors) as srv:
        result = cli(*run_args(yesno_seeds, srv.base_url, out, "caps", "-c", "8", "--max-retries", "5", *cap))
    assert result.exit_code == 0, text_of(result)
    calls = calls_of(out / "caps")
    assert len(calls) > 8
    if cap[0] == "--max-usd":
        limit, spent = 10_000, sum(call_spent_micro(c) for c in calls)
        worst = max(c["reserved_micro"] for c in calls)
    else:
        limit, spent = 25_000, sum(call_spent_tokens(c) for c in calls)
        worst = max(c["reserved_tokens"] for c in calls)
    assert spent <= limit
    assert limit - spent < worst, f"{limit - spent} of the cap left unspent, a request reserves up to {worst}"
    assert run_row(out / "caps")["status"] == "stopped: budget reached"


# ---- 7. the time cap against a server that never answers --------------------------------
def test_time_cap_against_a_hanging_server(tmp_path, yesno_seeds):
    out = tmp_path / "runs"
    with serve(hang_rate=1.0) as srv:
        started = time.monotonic()
        result = cli(*run_args(yesno_seeds, srv.base_url, out, "hang", "--max-seconds", "3", "--timeout", "60",
                               "--max-usd", "1"))
        took = time.monotonic() - started
    assert took < 6.5, f"the run took {took:.1f} s against a 3 s cap"
    assert result.exit_code in (0, 1), text_of(result)
    assert "Traceback" not in text_of(result)
    row = run_row(out / "hang")
    assert 2.5 <= row["elapsed_seconds"] <= 6.5
    calls = calls_of(out / "hang")
    assert calls and all(c["status"] == "timeout" for c in calls)
    # In flight at the end: billing unknown, counted at the whole reservation.
    assert all(c["cost_micro"] is None and call_spent_micro(c) == c["reserved_micro"] > 0 for c in calls)


def test_time_of_a_killed_process_counts(tmp_path, yesno_seeds):
    out = tmp_path / "runs"
    db = out / "killed" / "treegen.db"
    with serve(hang_rate=1.0) as srv:
        proc = treegen_process(*run_args(yesno_seeds, srv.base_url, out, "killed", "--max-seconds", "30"))
        try:
            wait_for(lambda: db.exists() and q(db, "select count(*) from calls")[0][0] >= 1)
            time.sleep(3.5)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert q(db, "select elapsed_seconds from runs")[0][0] >= 2


# ---- 8. bad flags: exit 2, a message, no run folder -------------------------------------
BAD_RUN_FLAGS = [
    (["--top-p", "7"], "--top-p"),
    (["--timeout", "0"], "--timeout"),
    (["--timeout", "-1"], "--timeout"),
    (["--rpm", "0"], "--rpm"),
    (["--tpm", "0"], "--tpm"),
    (["--chains", "0"], "--chains"),
    (["--max-retries", "-1"], "--max-retries"),
]


@pytest.mark.parametrize("flags,named", BAD_RUN_FLAGS, ids=[" ".join(f) for f, _ in BAD_RUN_FLAGS])
def test_bad_run_flag_is_refused(tmp_path, yesno_seeds, flags, named):
    out = tmp_path / "runs"
    result = cli(*run_args(yesno_seeds, DEAD_URL, out, "bad", "--max-calls", "3", *flags))
    assert result.exit_code == 2, text_of(result)
    assert named in text_of(result)
    assert "Traceback" not in text_of(result)
    assert folder_is_empty(out)


def test_bad_sim_error_rate_is_refused(tmp_path, yesno_seeds):
    out = tmp_path / "runs"
    result = cli("run", yesno_seeds, "--backend", "sim", "--sim-error-rate", "2", "--max-calls", "3",
                 "--out", out, "--name", "bad")
    assert result.exit_code == 2, text_of(result)
    assert "--sim-error-rate" in text_of(result)
    assert folder_is_empty(out)


@pytest.mark.parametrize("name", ["../../x", "/abs"])
def test_bad_run_name_is_refused(tmp_path, yesno_seeds, name):
    out = tmp_path / "a" / "b" / "runs"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    # Where the name would point (from --out, and from the working directory): compared before
    # and after, since a folder of that name may exist on the machine already.
    targets = [out / name, Path(name)]
    existed = [t.exists() and sorted(t.rglob("*")) for t in targets]
    result = cli(*run_args(yesno_seeds, DEAD_URL, out, name, "--max-calls", "3"))
    assert result.exit_code == 2, text_of(result)
    assert "--name" in text_of(result)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert [t.exists() and sorted(t.rglob("*")) for t in targets] == existed


def test_out_that_is_a_file_is_refused(tmp_path, yesno_seeds):
    out = tmp_path / "afile"
    out.write_text("keep me\n")
    result = cli(*run_args(yesno_seeds, DEAD_URL, out, "r", "--max-calls", "3"))
    assert result.exit_code == 2, text_of(result)
    assert "--out" in text_of(result)
    assert out.read_text() == "keep me\n"


def test_resume_with_concurrency_zero_is_refused(tmp_path, yesno_seeds):
    out = tmp_path / "runs"
    made = cli("run", yesno_seeds, "--backend", "sim", "--max-calls", "1", "--embedder", "hashing", "-c", "3",
               "--out", out, "--name", "r", "--quiet")
    assert made.exit_code == 0, text_of(made)
    config_before = run_row(out / "r")["config"]
    result = cli("resume", out / "r", "--concurrency", "0", "--max-calls", "2")
    assert result.exit_code == 2, text_of(result)
    assert "--concurrency" in text_of(result)
    assert run_row(out / "r")["config"] == config_before
    assert len(calls_of(out / "r")) == 1


def test_sim_serve_bad_port_is_refused():
    result = cli("sim", "serve", "--port", "99999")
    assert result.exit_code == 2, text_of(result)
    assert "port" in text_of(result).lower()


# ---- 9. damaged databases and databases that are not runs -------------------------------
@pytest.fixture
def finished_run(tmp_path, yesno_seeds) -> Path:
    out = tmp_path / "runs"
    made = cli("run", yesno_seeds, "--backend", "sim", "--target", "10", "--embedder", "hashing",
               "--out", out, "--name", "ok", "--quiet")
    assert made.exit_code == 0, text_of(made)
    assert not (out / "ok" / "treegen.db-wal").exists() or (out / "ok" / "treegen.db-wal").stat().st_size == 0
    return out / "ok"


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_database_is_refused(tmp_path, finished_run, damage):
    db = finished_run / "treegen.db"
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2] if damage == "truncated" else os.urandom(len(data)))
    for name in ("treegen.db-wal", "treegen.db-shm"):
        (finished_run / name).unlink(missing_ok=True)
    damaged = db.read_bytes()
    for args in (["status", finished_run], ["resume", finished_run, "--quiet"],
                 ["export", finished_run, "-o", tmp_path / "x.jsonl"]):
        result = cli(*args)
        assert result.exit_code == 2, (args, text_of(result))
        assert "damaged" in text_of(result), (args, text_of(result))
        assert "Traceback" not in text_of(result)
        assert db.read_bytes() == damaged
    assert not (tmp_path / "x.jsonl").exists()


def test_sqlite_file_that_is_not_a_run_is_left_untouched(tmp_path):
    db = tmp_path / "other.db"
    con = sqlite3.connect(db)
    con.execute("create table notes (id integer primary key, body text)")
    con.execute("insert into notes (body) values ('mine')")
    con.commit()
    con.close()
    original = db.read_bytes()
    for args in (["status", db], ["resume", db, "--quiet"], ["export", db, "-o", tmp_path / "x.jsonl"]):
        result = cli(*args)
        assert result.exit_code == 2, (args, text_of(result))
        assert "not a treegen run" in text_of(result)
        assert db.read_bytes() == original
        assert not Path(f"{db}-wal").exists() and not Path(f"{db}-shm").exists()


# ---- 10. the key never leaks ------------------------------------------------------------
@pytest.mark.parametrize("faults,extra", [
    ({"echo_auth": True, "error_rate": 1.0}, ["--max-calls", "4", "--max-retries", "1"]),
    ({"echo_auth": True, "refuse_response_format": ["json_schema", "json_object"]},
     ["--max-calls", "4", "--structured", "json_schema"]),
], ids=["server-errors", "fatal-400"])
def test_api_key_is_redacted_everywhere(tmp_path, yesno_seeds, faults, extra):
    out = tmp_path / "runs"
    with serve(**faults) as srv:
        result = cli(*run_args(yesno_seeds, srv.base_url, out, "sec", *extra))
    said = text_of(result)
    calls = calls_of(out / "sec")
    errors = [c["error"] for c in calls if c["error"]]
    assert errors and any("Authorization" in e for e in errors), errors  # the server did echo it
    assert KEY not in said
    assert all(KEY not in e for e in errors)
    assert KEY not in (run_row(out / "sec")["stop_reason"] or "")
    for f in (out / "sec").iterdir():
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f
    if "refuse_response_format" in faults:
        assert result.exit_code == 1, said
        assert "Authorization" in (run_row(out / "sec")["stop_reason"] or "")


# ---- 11. disk full ----------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    if not shutil.which("mount"):
        pytest.skip("no mount command")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_stops_the_run_and_resume_continues(small_disk, yesno_seeds):
    # A real process: asyncio's "Task exception was never retrieved" tracebacks reach stderr only there.
    out = small_disk / "runs"
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * 200_000)
    db = out / "full" / "treegen.db"
    with serve() as srv:
        proc = treegen_process(*run_args(yesno_seeds, srv.base_url, out, "full", "--max-calls", "100000", "-c", "2"))
        stdout, stderr = proc.communicate(timeout=60)
        said = stdout.decode() + stderr.decode()
        assert proc.returncode == 1, said
        assert "disk full" in said
        assert "Traceback" not in said
        filler.unlink()
        assert q(db, "select status from runs")[0][0] not in ("running", "completed")
        calls_before = len(calls_of(out / "full"))
        accepted_before = q(db, "select count(*) from nodes where status = 'accepted'")[0][0]
        again = cli("resume", out / "full", "--max-calls", str(calls_before + 3), "--quiet")
    assert again.exit_code == 0, text_of(again)
    calls = calls_of(out / "full")
    assert len(calls) == calls_before + 3
    assert not [c for c in calls if c["status"] == "pending"]
    assert q(db, "select count(*) from nodes where status = 'accepted'")[0][0] > accepted_before
