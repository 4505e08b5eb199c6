"""The treegen command line: parse, call the library, format, map errors to exit codes."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from typer.core import TyperGroup

from treegen.errors import ConfigError, InputError, TreegenError

console = Console()
err_console = Console(stderr=True)


class _TreegenGroup(TyperGroup):
    """Every TreegenError becomes its message on stderr and its exit code (2 for bad input)."""

    def invoke(self, ctx):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except TreegenError as exc:
            err_console.print(f"[bold red]Error:[/] {exc}", highlight=False, soft_wrap=True, markup=True)
            raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    cls=_TreegenGroup,
    help="Create labelled training data with an LLM from a handful of examples, under a hard cost limit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _usd_to_micro(value: float | None) -> int | None:
    if value is None:
        return None
    from treegen.prices import usd_to_micro

    return usd_to_micro(value)


def _caps(budget: str | None, max_usd, max_tokens, max_calls, target, max_depth, max_seconds, base=None):
    """Caps from a profile, then the flags on top (a flag given wins)."""
    from treegen.budget import Caps

    caps = base or Caps()
    if budget:
        from treegen.profiles import load_budget_profile

        prof = load_budget_profile(budget)
        caps = replace(
            caps,
            max_usd_micro=_usd_to_micro(prof["max_usd"]) if "max_usd" in prof else caps.max_usd_micro,
            **{k: prof[k] for k in ("max_tokens", "max_calls", "target", "max_depth", "max_seconds") if k in prof},
        )
    flags = {"max_tokens": max_tokens, "max_calls": max_calls, "target": target, "max_depth": max_depth,
             "max_seconds": max_seconds}
    caps = replace(caps, **{k: v for k, v in flags.items() if v is not None})
    if max_usd is not None:
        caps = replace(caps, max_usd_micro=_usd_to_micro(max_usd))
    return caps


def _price(model: str, prices: str | None, price_table: str | None, needed: bool) -> dict | None:
    """The price used for the run: --prices, else the table; None when unknown and not needed."""
    from dataclasses import asdict

    from treegen import prices as pm

    table = pm.load_price_table(pm.find_prices_file(price_table))
    if prices:
        return asdict(pm.require_price(model, table, prices))
    price = pm.price_for(model, table)
    if price is None and needed:
        pm.require_price(model, table)  # raises the explanatory error
    return asdict(price) if price else None


def _progress_printer(quiet: bool):
    """A rich live panel on a terminal; nothing otherwise (CI, pipes)."""
    if quiet or not console.is_terminal:
        return None, None
    from rich.live import Live

    from treegen.progress import render_progress

    live = Live(console=console, refresh_per_second=4, transient=False)
    return live, (lambda p: live.update(render_progress(p)))


@app.command()
def run(
    seeds: Optional[Path] = typer.Argument(None, help="JSONL file of seed examples (one is enough)."),
    seeds_from: Optional[str] = typer.Option(None, "--seeds-from", help="Draw the seeds from a dataset's training split instead, e.g. csqa."),
    n_seeds: int = typer.Option(1, "--n", help="With --seeds-from: how many seeds."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="With --seeds-from: datasets folder (default $TREEGEN_DATA_DIR or ../shared/datasets)."),
    strategy: str = typer.Option("tree", "--strategy", "-s", help="naive, random, contrastive, similar, tree, novelty, or a preset name/path from strategies/."),
    model: str = typer.Option("gpt-4o-mini", "--model", "-m"),
    backend: str = typer.Option("openai", "--backend", help="openai (any OpenAI-compatible server) or sim (the built-in simulator, offline, no cost)."),
    base_url: Optional[str] = typer.Option(None, "--base-url", envvar="OPENAI_BASE_URL", help="e.g. http://localhost:8000/v1 for vLLM, http://localhost:11434/v1 for Ollama."),
    task_format: Optional[str] = typer.Option(None, "--format", help="yesno_open, yesno_close or mcqa_K; inferred from the seeds by default."),
    task: Optional[str] = typer.Option(None, "--task-description", help="One sentence describing the task, put in the prompt."),
    k: Optional[int] = typer.Option(None, "--k", help="New examples asked per request (default 5)."),
    temperature: Optional[float] = typer.Option(None, "--temperature"),
    top_p: Optional[float] = typer.Option(None, "--top-p"),
    max_output_tokens: Optional[int] = typer.Option(None, "--max-output-tokens", help="max_tokens of each request (default 1024)."),
    concurrency: int = typer.Option(8, "--concurrency", "-c"),
    rpm: Optional[int] = typer.Option(None, "--rpm", help="Requests per minute limit."),
    tpm: Optional[int] = typer.Option(None, "--tpm", help="Tokens per minute limit."),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds to wait for one reply."),
    max_retries: int = typer.Option(5, "--max-retries"),
    seed: int = typer.Option(0, "--seed", help="Seed of the run: shuffles, picks and request seeds."),
    branching: Optional[int] = typer.Option(None, "--branching", help="tree/novelty: requests per expanded node."),
    chains: Optional[int] = typer.Option(None, "--chains", help="random/contrastive/similar: chains walked side by side (default: --concurrency)."),
    embedder: Optional[str] = typer.Option(None, "--embedder", help="minilm (all-MiniLM-L6-v2, offline; default) or hashing (fast, lexical)."),
    near_dup: Optional[float] = typer.Option(None, "--near-dup", help="Reject candidates whose cosine similarity to an accepted example is at least this, e.g. 0.9."),
    budget: Optional[str] = typer.Option(None, "--budget", help="A budget profile from budgets/ by name or path."),
    max_usd: Optional[float] = typer.Option(None, "--max-usd", help="Dollar cap."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Token cap (prompt + completion, all calls)."),
    max_calls: Optional[int] = typer.Option(None, "--max-calls", help="Cap on HTTP attempts."),
    target: Optional[int] = typer.Option(None, "--target", help="Stop at this many accepted examples."),
    max_depth: Optional[int] = typer.Option(None, "--max-depth"),
    max_seconds: Optional[float] = typer.Option(None, "--max-seconds"),
    prices: Optional[str] = typer.Option(None, "--prices", help="input=0.15,output=0.60[,cached_input=0.075]: dollars per 1M tokens."),
    price_table: Optional[str] = typer.Option(None, "--price-table", help="A price table from budgets/ by name or path."),
    sim_pool: Optional[Path] = typer.Option(None, "--sim-pool", help="--backend sim: JSONL pool the simulator draws from (default: a synthetic pool)."),
    sim_latency_ms: float = typer.Option(0.0, "--sim-latency-ms"),
    sim_error_rate: float = typer.Option(0.0, "--sim-error-rate"),
    out: Path = typer.Option(Path("runs"), "--out", help="Parent folder of the run folder."),
    name: Optional[str] = typer.Option(None, "--name", help="Run folder name (default: date-strategy-random)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Expand a search tree of new labelled examples from SEEDS, under caps."""
    from treegen.engine import RunConfig, create_run, run_engine
    from treegen.task import TaskFormat, load_seeds
    from treegen.presets import resolve_strategy
    from treegen.store import open_db

    # Everything is validated before the run folder is created or anything is spent.
    if (seeds is None) == (seeds_from is None):
        raise InputError("Give a seed file (treegen run seeds.jsonl) or --seeds-from TASK, not both or neither.")
    fmt = TaskFormat.parse(task_format) if task_format else None
    if seeds is not None:
        examples, fmt = load_seeds(seeds, fmt)
        source = str(seeds)
    else:
        from treegen.datasets import sample_seeds

        examples = sample_seeds(seeds_from, n_seeds, seed, data_dir)
        fmt = fmt or examples[0].infer_format()
        source = f"{seeds_from} train, n={n_seeds}, seed={seed}"
    preset = resolve_strategy(strategy)
    caps = _caps(budget, max_usd, max_tokens, max_calls, target,
                 max_depth if max_depth is not None else preset.get("max_depth"), max_seconds)
    if backend == "openai" and not os.environ.get("OPENAI_API_KEY") and not base_url:
        raise ConfigError(
            "No API key found: set OPENAI_API_KEY (export OPENAI_API_KEY=sk-...), or point --base-url at a "
            "local OpenAI-compatible server, or run offline with --backend sim."
        )
    price = _price(model, prices, price_table, needed=caps.max_usd_micro is not None)
    sim = None
    if backend == "sim":
        if sim_pool is not None:
            from treegen.task import load_examples

            load_examples(sim_pool)  # a bad pool is bad input: refuse it now
        sim = {"pool_path": str(sim_pool) if sim_pool else None, "latency_ms": sim_latency_ms,
               "error_rate": sim_error_rate, "seed": seed}

    def pick(flag, key, default):
        return flag if flag is not None else preset.get(key, default)

    cfg = RunConfig(
        task_format=fmt.name, strategy=preset["strategy"], model=model, backend=backend,
        base_url=None if backend == "sim" else base_url, k=pick(k, "k", 5),
        temperature=pick(temperature, "temperature", 1.0), top_p=pick(top_p, "top_p", None),
        max_output_tokens=pick(max_output_tokens, "max_output_tokens", 1024), concurrency=concurrency,
        rpm=rpm, tpm=tpm, timeout=timeout, max_retries=max_retries, seed=seed,
        branching=pick(branching, "branching", 1), chains=pick(chains, "chains", None),
        embedder=pick(embedder, "embedder", "minilm"), near_dup=pick(near_dup, "near_dup", None),
        task_description=task, caps=caps, price=price, sim=sim, seeds_source=source, seeds_from=seeds_from,
    )
    from treegen.embedders import EMBEDDERS

    if cfg.embedder not in EMBEDDERS:
        raise ConfigError(f"Unknown embedder {cfg.embedder!r}. Choose one of: {', '.join(EMBEDDERS)}.")
    run_id, run_dir = create_run(cfg, examples, out, name)
    db = open_db(run_dir / "treegen.db")
    label = " [bold magenta](SIMULATED: no LLM, no cost)[/]" if backend == "sim" else ""
    console.print(f"Run [bold]{run_id}[/] in {run_dir}{label}; caps: {caps.describe()}")
    _execute(db, cfg, quiet)


def _execute(db, cfg, quiet: bool) -> None:
    from treegen.engine import run_engine
    from treegen.reports import render_status

    live, on_progress = _progress_printer(quiet)
    try:
        if live is not None:
            with live:
                result = run_engine(db, cfg, os.environ.get("OPENAI_API_KEY"), on_progress)
        else:
            result = run_engine(db, cfg, os.environ.get("OPENAI_API_KEY"), None)
    finally:
        pass
    if not quiet:
        render_status(db, console)
    console.print(f"{result.status}: {result.stop_reason}" if result.stop_reason else result.status)
    if result.status == "interrupted":
        console.print(f"Continue with: treegen resume {result.run_dir}")
        raise typer.Exit(130)


@app.command()
def resume(
    run_dir: Path = typer.Argument(..., help="The run folder."),
    budget: Optional[str] = typer.Option(None, "--budget"),
    max_usd: Optional[float] = typer.Option(None, "--max-usd", help="New dollar cap (total for the run, raise it to go on)."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens"),
    max_calls: Optional[int] = typer.Option(None, "--max-calls"),
    target: Optional[int] = typer.Option(None, "--target"),
    max_depth: Optional[int] = typer.Option(None, "--max-depth"),
    max_seconds: Optional[float] = typer.Option(None, "--max-seconds"),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", "-c"),
    base_url: Optional[str] = typer.Option(None, "--base-url"),
    prices: Optional[str] = typer.Option(None, "--prices"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Continue a run from its database (after Ctrl-C, a crash, or a cap), caps raisable."""
    from treegen.engine import load_run_config, save_run_config
    from treegen.store import open_run

    db = open_run(run_dir)
    cfg = load_run_config(db)
    cfg.caps = _caps(budget, max_usd, max_tokens, max_calls, target, max_depth, max_seconds, base=cfg.caps)
    if concurrency is not None:
        cfg.concurrency = concurrency
    if base_url is not None and cfg.backend != "sim":
        cfg.base_url = base_url
    if prices is not None or (cfg.caps.max_usd_micro is not None and cfg.price is None):
        cfg.price = _price(cfg.model, prices, None, needed=True)
    if cfg.backend == "openai" and not os.environ.get("OPENAI_API_KEY") and not cfg.base_url:
        raise ConfigError("No API key found: set OPENAI_API_KEY to continue this run.")
    save_run_config(db, cfg)
    console.print(f"Resuming {run_dir}; caps: {cfg.caps.describe()}")
    _execute(db, cfg, quiet)


# The commands of the other areas live in their own modules.
from treegen import cli_metrics, cli_reports, cli_sim, cli_students  # noqa: E402

for _module in (cli_reports, cli_sim, cli_students, cli_metrics):
    _module.register(app)


def main() -> None:
    app()
