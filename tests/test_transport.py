"""The SDK's two HTTP transports (httpx2, its default; aiohttp, its ``DefaultAioHttpClient``):
chosen by ``choose_transport``, and the same run and the same failure classes over both."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
from typer.testing import CliRunner

from treegen.cli import app
from treegen.client import AIOHTTP_MIN_CALLS, choose_transport
from treegen.errors import ConfigError
from treegen.sim.server import SimConfig, SimServer
from treegen.store import RunStore

TRANSPORTS = ["httpx", "aiohttp"]


def run_cli(seeds: Path, url: str, out: Path, name: str, *extra: str) -> Any:
    args = ["run", str(seeds), "--backend", "openai", "--base-url", url, "--embedder", "hashing",
            "--out", str(out), "--name", name, "--quiet", *extra]
    return CliRunner(env={"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": None}).invoke(app, args)


def said(result: Any) -> str:
    return result.output + (result.stderr if result.stderr_bytes is not None else "")


def calls_of(run_dir: Path) -> list[dict[str, Any]]:
    with RunStore.open(run_dir, readonly=True) as store:
        return store.calls()


def accepted(run_dir: Path) -> list[tuple[str, str, int]]:
    with RunStore.open(run_dir, readonly=True) as store:
        return [(r["question"], r["label"], r["depth"]) for r in store.nodes(statuses=("accepted",))]


@contextmanager
def dropping_server() -> Iterator[str]:
    """A port that accepts a connection, reads the request, and closes without answering."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    stop = threading.Event()

    def serve() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(65536)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        stop.set()
        thread.join(5)
        sock.close()


# ---- the choice ---------------------------------------------------------------------------
def test_auto_takes_aiohttp_when_installed_unless_the_run_is_small(monkeypatch):
    monkeypatch.delenv("TREEGEN_HTTP", raising=False)
    assert choose_transport() == "aiohttp"
    assert choose_transport(max_calls=AIOHTTP_MIN_CALLS) == "aiohttp"
    assert choose_transport(max_calls=AIOHTTP_MIN_CALLS - 1) == "httpx"
    monkeypatch.setenv("TREEGEN_HTTP", "httpx")
    assert choose_transport() == "httpx"
    monkeypatch.setenv("TREEGEN_HTTP", "AIOHTTP")
    assert choose_transport(max_calls=1) == "aiohttp"


def test_without_aiohttp_auto_falls_back_and_a_forced_aiohttp_says_how_to_fix(monkeypatch):
    import importlib.util

    original = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "aiohttp" else original(name, *a))
    monkeypatch.delenv("TREEGEN_HTTP", raising=False)
    assert choose_transport() == "httpx"
    with pytest.raises(ConfigError, match="pip install aiohttp"):
        choose_transport("aiohttp")


def test_a_bad_transport_is_refused_before_the_run_exists(tmp_path, yesno_seeds, monkeypatch):
    monkeypatch.setenv("TREEGEN_HTTP", "curl")
    out = tmp_path / "runs"
    result = run_cli(yesno_seeds, "http://127.0.0.1:9/v1", out, "bad", "--max-calls", "3")
    assert result.exit_code == 2, said(result)
    assert "TREEGEN_HTTP" in said(result) and "httpx" in said(result)
    assert not out.exists() or not any(out.iterdir())


def test_importing_the_sdk_leaves_aiohttp_unloaded_until_a_client_uses_it():
    code = ("import sys; from treegen.client import import_sdk, ChatClient; import_sdk(); "
            "assert 'aiohttp' not in sys.modules, 'loaded by the SDK import'; "
            "c = ChatClient('http://127.0.0.1:9/v1', 'k', 'm', transport='aiohttp'); "
            "assert 'aiohttp' in sys.modules; print(c.transport, type(c._client._client).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["aiohttp", "Httpx2AiohttpClient"]


# ---- the same run, the same failures, over both -------------------------------------------
def test_the_transport_does_not_change_a_run(tmp_path, yesno_seeds, monkeypatch):
    runs = {}
    server = SimServer(SimConfig(latency_ms=5, jitter_ms=5)).start()
    try:
        for transport in TRANSPORTS:
            monkeypatch.setenv("TREEGEN_HTTP", transport)
            out = tmp_path / transport
            result = run_cli(yesno_seeds, server.base_url, out, "same", "--max-calls", "12", "-c", "4",
                             "--seed", "3")
            assert result.exit_code == 0, said(result)
            runs[transport] = out / "same"
    finally:
        server.stop()
    assert accepted(runs["httpx"]) == accepted(runs["aiohttp"])
    assert len(accepted(runs["httpx"])) > 10
    usage = {t: [(c["status"], c["prompt_tokens"], c["completion_tokens"]) for c in calls_of(d)]
             for t, d in runs.items()}
    assert usage["httpx"] == usage["aiohttp"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_closed_port_is_refused_over_either_transport(tmp_path, yesno_seeds, monkeypatch, transport):
    monkeypatch.setenv("TREEGEN_HTTP", transport)
    result = run_cli(yesno_seeds, "http://127.0.0.1:1/v1", tmp_path / "runs", "closed", "--max-usd", "1")
    assert result.exit_code == 1, said(result)
    assert "is the server running?" in said(result)
    calls = calls_of(tmp_path / "runs" / "closed")
    assert calls and all(c["status"] == "refused" for c in calls)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_dropped_connection_is_a_connection_failure_not_a_timeout(tmp_path, yesno_seeds, monkeypatch,
                                                                    transport):
    # The server read the request: it may have billed it, so the call counts at its reservation.
    monkeypatch.setenv("TREEGEN_HTTP", transport)
    with dropping_server() as url:
        result = run_cli(yesno_seeds, url, tmp_path / "runs", "drop", "--max-calls", "3", "--max-usd", "1",
                         "--timeout", "30", "--max-retries", "0")
    assert "Traceback" not in said(result)
    calls = calls_of(tmp_path / "runs" / "drop")
    # Status "timeout" is the billing-unknown status; the error says what happened.
    assert calls and all(c["status"] == "timeout" for c in calls), [c["status"] for c in calls]
    assert all(c["error"].startswith("connection: the connection to") for c in calls), [c["error"] for c in calls]
    assert all(c["cost_micro"] is None and c["reserved_micro"] > 0 for c in calls)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_hanging_server_is_a_timeout_over_either_transport(tmp_path, yesno_seeds, monkeypatch, transport):
    monkeypatch.setenv("TREEGEN_HTTP", transport)
    server = SimServer(SimConfig(hang_rate=1.0)).start()
    try:
        result = run_cli(yesno_seeds, server.base_url, tmp_path / "runs", "hang", "--max-calls", "2",
                         "--timeout", "1", "--max-retries", "0", "-c", "1")
    finally:
        server.stop()
    assert "Traceback" not in said(result)
    calls = calls_of(tmp_path / "runs" / "hang")
    assert calls and all(c["status"] == "timeout" for c in calls), [c["status"] for c in calls]
    assert all(c["error"] == "timeout: no answer within 1 s" for c in calls), [c["error"] for c in calls]


# ---- connections are reused at high concurrency -------------------------------------------
_REPLY = json.dumps({
    "id": "x", "object": "chat.completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "[]"}}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()


class _Counting(asyncio.Protocol):
    """HTTP/1.1 keep-alive server that answers each request after 20 ms and counts connections."""
    opened = 0

    def connection_made(self, transport):
        _Counting.opened += 1
        self.transport, self.buf = transport, b""

    def data_received(self, data):
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            length = int(re.search(rb"(?i)content-length: *(\d+)", self.buf[:end]).group(1))
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length:]
            reply = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
                len(_REPLY), _REPLY)
            asyncio.get_running_loop().call_later(0.02, self.transport.write, reply)


@contextmanager
def counting_server() -> Iterator[str]:
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(_Counting, "127.0.0.1", 0, backlog=512))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_connections_are_kept_for_every_request_in_flight(transport):
    from treegen.client import ChatClient

    async def waves(url: str, keepalive: int) -> None:
        client = ChatClient(url, "k", "m", transport=transport, keepalive=keepalive)
        try:
            for _ in range(3):
                await asyncio.gather(*(client.chat([{"role": "user", "content": "hi"}], max_tokens=5, temperature=None,
                                                   top_p=None, seed=None, timeout=30) for _ in range(150)))
        finally:
            await client.aclose()

    opened = {}
    for keepalive in (100, 150):
        with counting_server() as url:
            _Counting.opened = 0
            asyncio.run(waves(url, keepalive))
            opened[keepalive] = _Counting.opened
    # Kept for all 150: no connection is reopened. The SDK's httpx2 default keeps 100, so every
    # later wave reopens the other 50; aiohttp's connector keeps every connection it has.
    assert opened[150] == 150, opened
    if transport == "httpx":
        assert opened[100] >= 150 + 2 * 50 - 10, opened
    else:
        assert opened[100] == 150, opened
