"""`treegen batches RUN [--cancel]` and `treegen plan SEEDS --target N`: cost controls."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any, Optional

import typer

from treegen.errors import InputError


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def batches_cmd(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="The run folder."),
    cancel: bool = typer.Option(False, "--cancel", help="Cancel the batches in flight; their reservations are "
                                                        "released once the provider confirms."),
    wait: float = typer.Option(60.0, "--wait", help="--cancel: seconds to wait for the provider's confirmation."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """List a run's Batch jobs with their status and counts (or cancel those in flight)."""
    from treegen.batching import batch_summary, cancel_batches
    from treegen.config import RunConfig
    from treegen.store import RunStore

    if cancel:
        with RunStore.open(run_dir) as store:
            cfg = RunConfig.from_dict(store.run()["config"])
            confirmed = asyncio.run(cancel_batches(store, cfg, os.environ.get("OPENAI_API_KEY"), wait_s=wait))
            rows = batch_summary(store)
    else:
        with RunStore.open(run_dir, readonly=True) as store:
            rows = batch_summary(store)
        confirmed = None
    if as_json:
        doc: dict[str, Any] = {"batches": rows}
        if confirmed is not None:
            doc["cancelled"] = confirmed
        typer.echo(json.dumps(doc, indent=2))
        return
    console = _console()
    if not rows:
        console.print(f"{run_dir}: no Batch jobs (the run was not made with --batch).", markup=False)
        return
    from rich.table import Table

    from treegen.prices import format_usd

    table = Table(title=f"Batch jobs of {run_dir}")
    for col in ("wave", "batch id", "status", "requests", "completed", "failed", "calls", "held", "cost"):
        table.add_column(col, overflow="fold")
    for r in rows:
        calls = ", ".join(f"{k} {v}" for k, v in r["calls"].items())
        table.add_row(str(r["wave"]), r["batch_id"] or "", r["status"] or "", str(r["requests"] or 0),
                      str(r["completed"] or 0), str(r["failed"] or 0), calls, format_usd(r["held_micro"]),
                      format_usd(r["cost_micro"]))
    console.print(table)
    if confirmed is not None:
        still = [r for r in rows if r["status"] not in ("completed", "expired", "cancelled", "failed", "lost")]
        console.print(f"{len(confirmed)} batch(es) confirmed ended by the provider; "
                      f"{len(still)} still in flight (reservations kept).", markup=False)


def plan_cmd(
    seeds: Path = typer.Argument(..., metavar="SEEDS", help="JSONL file of seed examples."),
    target: int = typer.Option(..., "--target", help="Accepted examples to reach."),
    pilot_calls: Optional[int] = typer.Option(None, "--pilot-calls", help="Run a pilot of M real calls (capped, "
                                              "recorded in a run folder under --out) to measure the model."),
    from_run: Optional[Path] = typer.Option(None, "--from", help="Measure from an existing run of the same task."),
    strategy: Optional[str] = typer.Option(None, "--strategy", "-s", help="Strategy or preset."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name."),
    backend: Optional[str] = typer.Option(None, "--backend", help="openai, local or sim."),
    base_url: Optional[str] = typer.Option(None, "--base-url", envvar="OPENAI_BASE_URL", help="Server URL."),
    task_format: Optional[str] = typer.Option(None, "--format", help="Task format (inferred by default)."),
    task: Optional[str] = typer.Option(None, "--task-description", help="One sentence describing the task."),
    k: Optional[int] = typer.Option(None, "--k", help="New examples asked per request."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Sampling temperature."),
    max_output_tokens: Optional[int] = typer.Option(None, "--max-output-tokens", help="max_tokens per request."),
    structured: Optional[str] = typer.Option(None, "--structured", help="auto, json_schema, json_object or off."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", "-c", help="Requests in flight."),
    rpm: Optional[int] = typer.Option(None, "--rpm", help="Requests per minute limit."),
    tpm: Optional[int] = typer.Option(None, "--tpm", help="Tokens per minute limit."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the pilot run."),
    branching: Optional[int] = typer.Option(None, "--branching", help="tree/novelty: requests per node."),
    chains: Optional[int] = typer.Option(None, "--chains", help="Chain strategies: chains side by side."),
    batch_wave: Optional[int] = typer.Option(None, "--batch-wave", help="Chain strategies: requests per Batch job."),
    embedder: Optional[str] = typer.Option(None, "--embedder", help="minilm or hashing."),
    near_dup: Optional[float] = typer.Option(None, "--near-dup", help="Near-duplicate threshold."),
    prices: Optional[str] = typer.Option(None, "--prices", help="input=..,output=..: dollars per 1M tokens."),
    price_table: Optional[str] = typer.Option(None, "--price-table", help="A price table by name or path."),
    sim_pool: Optional[Path] = typer.Option(None, "--sim-pool", help="--backend sim: pool file."),
    sim_latency_ms: Optional[float] = typer.Option(None, "--sim-latency-ms", help="--backend sim: latency."),
    out: Path = typer.Option(Path("runs"), "--out", help="Parent folder of the pilot's run folder."),
    name: Optional[str] = typer.Option(None, "--name", help="The pilot's run folder name."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Forecast dollars, tokens, calls and time to reach --target, synchronous and Batch."""
    from treegen.api import load_seed_examples
    from treegen.config import from_options
    from treegen.forecast import forecast_from_run, run_pilot
    from treegen.store import RunStore

    if (pilot_calls is None) == (from_run is None):
        raise InputError("Give --pilot-calls M (run M real calls to measure the model) or --from RUN "
                         "(measure from an existing run), one of the two.")
    if pilot_calls is not None and pilot_calls < 1:
        raise InputError(f"--pilot-calls must be at least 1 (got {pilot_calls}).")
    if target < 1:
        raise InputError(f"--target must be at least 1 (got {target}).")
    options: dict[str, Any] = {
        "strategy": strategy, "model": model, "backend": backend, "base_url": base_url, "k": k,
        "temperature": temperature, "max_output_tokens": max_output_tokens, "structured": structured,
        "concurrency": concurrency, "rpm": rpm, "tpm": tpm, "seed": seed, "branching": branching, "chains": chains,
        "batch_wave": batch_wave, "embedder": embedder, "near_dup": near_dup, "prices": prices,
        "price_table": price_table, "sim_pool": sim_pool, "sim_latency_ms": sim_latency_ms,
        "task_description": task,
    }
    options = {key: v for key, v in options.items() if v is not None}
    api_key = os.environ.get("OPENAI_API_KEY")
    examples, fmt, _ = load_seed_examples(seeds, {"task_format": task_format})
    cfg = from_options(fmt.name, {**options, "target": target}, api_key=api_key)
    if cfg.price is None:
        raise InputError(f"No price known for {cfg.model!r}: pass --prices input=...,output=... to forecast dollars.")
    if pilot_calls is not None:
        store, _ = asyncio.run(run_pilot(seeds, {**options, "task_format": task_format, "out": out, "name": name},
                                         pilot_calls, api_key))
    else:
        assert from_run is not None
        store = RunStore.open(from_run, readonly=True)
    with store:
        fc = forecast_from_run(store, cfg, examples, target)
        doc = fc.to_dict()
        doc["measured_from"] = str(store.run_dir)
        doc["simulated"] = bool(store.run()["simulated"])
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    _print_plan(doc)


def _print_plan(doc: dict[str, Any]) -> None:
    from rich.table import Table

    console = _console()
    label = " (SIMULATED pilot)" if doc["simulated"] else ""
    table = Table(title=f"Forecast to {doc['target']:,} accepted examples, from {doc['pilot_calls']} calls of "
                        f"{doc['measured_from']}{label}; 95% range")
    for col in ("", "expected", "low", "high"):
        table.add_column(col, overflow="fold", justify="right" if col else "left")

    def row(name: str, d: dict[str, Any], fmt: str) -> None:
        table.add_row(name, *(fmt.format(d[x]) if d[x] is not None else "-" for x in ("expected", "low", "high")))

    row("dollars (synchronous)", doc["usd"], "${:,.4f}")
    row("dollars (Batch)", doc["batch"]["usd"], "${:,.4f}")
    row("tokens", doc["tokens"], "{:,.0f}")
    row("calls", doc["calls"], "{:,.0f}")
    row("seconds (synchronous)", doc["seconds"], "{:,.0f}")
    console.print(table)
    console.print(f"Batch: about {doc['batch']['waves']} Batch job(s) in sequence, each up to 24 h.", markup=False)


def register(app: typer.Typer) -> None:
    app.command("batches")(batches_cmd)
    app.command("plan")(plan_cmd)
