"""The Python API: ``treegen.run``, ``treegen.arun``, ``treegen.resume``, ``treegen.open_run``.

The CLI's ``run`` and ``resume`` commands are thin wrappers over ``start_run`` and
``continue_run`` here, so a notebook gets exactly what the command line does::

    import treegen
    result = treegen.run("examples/seeds.jsonl", backend="sim", target=50, max_usd=0.05, out="runs")
    print(result.accepted, result.spent_usd, result.run_dir)
    examples = treegen.open_run(result.run_dir).examples()
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import threading
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from treegen.client import choose_transport
from treegen.config import RunConfig, apply_resume_options, check_run_location, from_options
from treegen.errors import BackendError, DiskFullError, InputError, OutputError
from treegen.runlock import RunLock
from treegen.store import DB_NAME, RunStatus, RunStore, utcnow
from treegen.task import Example, TaskFormat, example_from_dict

if TYPE_CHECKING:
    # The engine (numpy, the strategies, the client) is imported when a run executes, not
    # when a run is only prepared or opened (open_run, cli_batch, intrinsic's endpoint).
    from treegen.engine import Progress, RunResult

ProgressCallback = Callable[["Progress"], None]


def make_run_id(strategy: str) -> str:
    return f"{datetime.now():%Y%m%d-%H%M%S}-{strategy}-{secrets.token_hex(2)}"


def load_seed_examples(seeds: str | Path | Sequence[dict[str, Any] | Example] | None, options: dict[str, Any]
                       ) -> tuple[list[Example], TaskFormat, str]:
    """Seeds from a JSONL path, a list of dicts or Examples, or a benchmark task (``seeds_from``)."""
    fmt = TaskFormat.parse(options["task_format"]) if options.get("task_format") else None
    seeds_from = options.get("seeds_from")
    if (seeds is None) == (seeds_from is None):
        raise InputError("Give seeds (a JSONL file or a list of examples) or seeds_from=TASK (--seeds-from), "
                         "not both or neither.")
    if seeds_from is not None:
        from treegen.datasets import sample_seeds

        n, seed = int(options.pop("n_seeds", 1) or 1), int(options.get("seed") or 0)
        examples = sample_seeds(seeds_from, n, seed, options.pop("data_dir", None))
        return examples, fmt or examples[0].infer_format(), f"{seeds_from} train, n={n}, seed={seed}"
    if isinstance(seeds, (str, Path)):
        from treegen.task import load_seeds

        kwargs = {k: options.pop(k) for k in ("max_example_chars", "max_seed_bytes") if options.get(k) is not None}
        if "max_seed_bytes" in kwargs:
            kwargs["max_file_bytes"] = kwargs.pop("max_seed_bytes")
        examples, fmt = load_seeds(seeds, fmt, **kwargs)
        return examples, fmt, str(seeds)
    assert seeds is not None
    examples = [s if isinstance(s, Example) else example_from_dict(s, fmt) for s in seeds]
    if not examples:
        raise InputError("No seed examples given: pass at least one.")
    return examples, fmt or examples[0].infer_format(), f"{len(examples)} examples given in Python"


def create_run(cfg: RunConfig, seeds: Sequence[Example], out_dir: str | Path, name: str | None = None
               ) -> RunStore:
    """The run folder and database with its config and seed nodes; nothing half-written on failure."""
    cfg.validate()
    check_run_location(out_dir, name)
    run_id = name or make_run_id(cfg.strategy)
    run_dir = Path(out_dir) / run_id
    if run_dir.exists():
        raise InputError(f"{run_dir} exists already. Choose another --name, or continue it with "
                         f"`treegen resume {run_dir}`.")
    try:
        run_dir.mkdir(parents=True)
    except OSError as exc:
        raise OutputError(f"Cannot create the run folder {run_dir}: {exc.strerror}. Choose another --out.") from None
    try:
        now = utcnow()
        return RunStore.create(run_dir / DB_NAME, {
            "id": run_id, "created_at": now, "updated_at": now, "status": RunStatus.RUNNING, "stop_reason": None,
            "simulated": int(cfg.simulated), "task_format": cfg.task_format, "strategy": cfg.strategy,
            "model": cfg.model, "base_url": cfg.base_url, "seed": cfg.seed, "elapsed_seconds": 0.0,
            "config": cfg.to_json(),
        }, seeds)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)  # nothing half-written
        raise


@contextmanager
def endpoint(cfg: RunConfig) -> Iterator[str | None]:
    """The base URL the run talks to: the given server, the simulator or the local model,
    started here and stopped when the run ends, however it ends."""
    if cfg.backend == "sim":
        from treegen.sim.server import SimConfig, SimServer

        assert cfg.sim is not None
        server = SimServer(SimConfig(**cfg.sim.sim_config_kwargs())).start()
        try:
            yield server.base_url
        finally:
            server.stop()
    elif cfg.backend == "local":
        from treegen.local import DEFAULT_THREADS, LocalServer

        assert cfg.local is not None
        local = LocalServer(cfg.local.model_path, threads=cfg.local.threads or DEFAULT_THREADS,
                            n_ctx=cfg.local.n_ctx, model_name=cfg.model)
        with local:
            yield local.base_url
    else:
        yield cfg.base_url


def _describe_local(cfg: RunConfig) -> None:
    """Record the local model's file and sha256 in the config (a run is reproducible from it)."""
    if cfg.backend != "local" or cfg.local is None or cfg.local.model_sha256:
        return
    from treegen.local import default_model_path, file_sha256

    path = Path(cfg.local.model_path) if cfg.local.model_path else default_model_path()
    cfg.local.model_path = str(path)
    cfg.local.model_sha256 = file_sha256(path)


async def execute_async(store: RunStore, cfg: RunConfig, api_key: str | None = None,
                        on_progress: ProgressCallback | None = None, handle_signals: bool = False,
                        http_client: Any = None) -> RunResult:
    """Run the engine on an open run, holding its lock, with its endpoint up."""
    from treegen.engine import Engine

    with RunLock(store.run_dir), endpoint(cfg) as base_url:
        _keep_disk_reserve(store.run_dir)
        engine_cls: type[Engine] = Engine
        if cfg.batch:
            from treegen.batching import BatchEngine

            engine_cls = BatchEngine
        engine = engine_cls(store, cfg, base_url, api_key=api_key, on_progress=on_progress, http_client=http_client)
        loop = asyncio.get_running_loop()
        installed: list[int] = []
        presses = {"n": 0}

        def on_signal() -> None:
            presses["n"] += 1
            if presses["n"] == 1:
                engine.request_stop("Ctrl-C: the requests in flight were finished and recorded")
            else:
                engine.abandon()

        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, on_signal)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass
        try:
            result = await engine.run()
        except DiskFullError:
            _mark_stopped(store, "disk full: free space, then resume")
            raise
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
    if result.fatal:
        raise BackendError(
            f"{result.fatal}\nThe run is saved at {result.run_dir} (status: failed); fix the cause and continue it "
            f"with `treegen resume {result.run_dir}`."
        )
    return result


DISK_RESERVE = ".disk-reserve"
DISK_RESERVE_BYTES = 128 * 1024


def _keep_disk_reserve(run_dir: Path) -> None:
    """A little disk space held back in the run folder, given up when the disk fills so that
    the run's final status can still be written."""
    path = run_dir / DISK_RESERVE
    if not path.exists():
        try:
            path.write_bytes(b"\0" * DISK_RESERVE_BYTES)
        except OSError:
            path.unlink(missing_ok=True)


def _mark_stopped(store: RunStore, reason: str) -> None:
    (store.run_dir / DISK_RESERVE).unlink(missing_ok=True)
    try:
        store.set_status(RunStatus.FAILED, reason)
    except Exception:  # noqa: BLE001 - the disk may still be full; resume repairs the status
        pass


def _run_sync(coro_factory: Callable[[], Any]) -> Any:
    """asyncio.run, also from inside a running event loop (a notebook): then on a thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_factory())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = asyncio.run(coro_factory())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="treegen-run")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def prepare_run(seeds: Any, options: dict[str, Any], api_key: str | None = None) -> tuple[RunStore, RunConfig]:
    """Validate everything, then create the run folder: the first thing written."""
    options = dict(options)
    out = options.pop("out", None) or "runs"
    name = options.pop("name", None)
    examples, fmt, source = load_seed_examples(seeds, options)
    for used in ("n_seeds", "data_dir", "max_example_chars", "max_seed_bytes"):
        options.pop(used, None)
    options["seeds_source"] = source
    options["task_format"] = None
    cfg = from_options(fmt.name, {k: v for k, v in options.items() if k != "task_format"}, api_key=api_key)
    check_run_location(out, name)
    check_environment(cfg)
    _describe_local(cfg)
    return create_run(cfg, examples, out, name), cfg


def check_environment(cfg: RunConfig) -> None:
    """The TREEGEN_* settings a run reads later (HTTP transport, MiniLM threads and workers),
    checked now: a bad one is refused before a run folder exists or a resume writes anything."""
    choose_transport(max_calls=cfg.caps.max_calls)
    if cfg.embedder == "minilm":
        from treegen.embedders import embed_threads, embed_workers

        embed_threads()
        embed_workers()


def _api_key(options: dict[str, Any]) -> str | None:
    return options.pop("api_key", None) or os.environ.get("OPENAI_API_KEY")


async def arun(seeds: Any = None, *, on_progress: ProgressCallback | None = None, **options: Any) -> RunResult:
    """Create a run from ``seeds`` (a JSONL path or a list of example dicts) and run it.

    Options are named as the CLI flags in Python style: ``backend="sim"``, ``strategy="tree"``,
    ``model=``, ``target=``, ``max_usd=``, ``max_calls=``, ``out=``, ``name=``, ...
    """
    api_key = _api_key(options)
    store, cfg = prepare_run(seeds, options, api_key)
    with store:
        return await execute_async(store, cfg, api_key, on_progress)


def run(seeds: Any = None, *, on_progress: ProgressCallback | None = None, **options: Any) -> RunResult:
    """``arun`` for code without an event loop (and for notebooks, which have one)."""
    return _run_sync(lambda: arun(seeds, on_progress=on_progress, **options))


def resume(run_dir: str | Path, *, on_progress: ProgressCallback | None = None, **options: Any) -> RunResult:
    """Continue a run; caps may be raised (``max_usd=``, ``target=``...), ``concurrency=`` changed."""
    api_key = _api_key(options)
    store, cfg = prepare_resume(run_dir, options, api_key)

    async def go() -> RunResult:
        with store:
            return await execute_async(store, cfg, api_key, on_progress)

    return _run_sync(go)


def prepare_resume(run_dir: str | Path, options: dict[str, Any], api_key: str | None = None
                   ) -> tuple[RunStore, RunConfig]:
    from treegen.errors import ConfigError

    store = RunStore.open(run_dir)
    try:
        cfg = apply_resume_options(RunConfig.from_dict(store.run()["config"]), options)
        check_environment(cfg)
        if cfg.backend == "openai" and not api_key and not cfg.base_url:
            raise ConfigError("No API key found: set OPENAI_API_KEY to continue this run.")
        store.save_config(cfg.to_json())
    except BaseException:
        store.close()
        raise
    return store, cfg


def open_run(path: str | Path) -> RunStore:
    """A run's database, read-only: ``.examples()``, ``.nodes()``, ``.calls()``, ``.run()``."""
    return RunStore.open(path, readonly=True)
