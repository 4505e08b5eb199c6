"""`treegen metrics`: quality measures of a run or a JSONL file against a reference.

A run is read through a read-only ``RunStore``; the figures are stored through a writable one
opened only once every measure is computed. Progress of each step goes to stderr.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from treegen.render import LazyConsole
from treegen.errors import ConfigError, InputError

console = LazyConsole()

_HELP = """Measure a created dataset against the task's human data: diversity (distinct-n, self-BLEU,
remote-clique, APS), conformity (MAUVE), faithfulness, complexity, performance (a student),
label balance, length, drift per depth (runs) and contamination with the test and dev splits.

For a run the figures are stored in its database (table metrics); for a JSONL file nothing is stored.

  treegen metrics runs/<run> --reference csqa

  treegen metrics data.jsonl --reference-file human.jsonl --json

Intrinsic measures of a run (AgoraBench), alone or with the above: --judge scores a seeded sample
of the examples 1-10 with a model (each request a recorded call of the run, capped by
--judge-max-usd); --perplexity scores them under the local reference model (REAL, SmolLM2-135M Q4_1).
They refuse (exit 2, nothing written) while a run session holds the run.

  treegen metrics runs/<run> --judge --judge-sample 50

  treegen metrics runs/<run> --perplexity --sample 200
"""


def _is_sqlite(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(16) == b"SQLite format 3\x00"


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:.4f}"


def run_metrics(
    path: Path,
    reference: str | None,
    reference_file: Path | None,
    data_dir: Path | None,
    embedder: str,
    student: str | None,
    seed: int,
    near_threshold: float,
    distinct_tokens: int = 3_000,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> tuple[Any, dict]:
    """Measure and (for a run) store; returns (report, info about where it went)."""
    from treegen import metrics
    from treegen.embedders import EMBEDDERS
    from treegen.task import load_examples

    if embedder not in EMBEDDERS:
        raise ConfigError(f"Unknown embedder {embedder!r}. Choose one of: {', '.join(EMBEDDERS)}.")
    if student is not None:
        from treegen.students import STUDENTS

        if student not in STUDENTS:
            raise ConfigError(f"Unknown student {student!r}. Choose one of: {', '.join(STUDENTS)}, or none.")
    if not 0.0 < near_threshold <= 1.0:
        raise ConfigError(f"--near-threshold {near_threshold} is not a cosine similarity in (0, 1]; use e.g. 0.9.")
    if distinct_tokens < 10:
        raise ConfigError(f"--distinct-tokens {distinct_tokens} is too small to count n-grams; use e.g. 3000.")
    if not path.exists():
        raise InputError(f"{path} does not exist. Give a run folder (runs/<run-id>) or a JSONL file of examples.")

    is_run = path.is_dir() or _is_sqlite(path)
    ref = metrics.load_reference(reference, reference_file, data_dir)
    info: dict = {"kind": "run" if is_run else "file", "stored": False, "db": None}
    if is_run:
        from treegen.store import RunStore

        with RunStore.open(path, readonly=True) as store:
            nodes, row = metrics.load_run_nodes(store)
            db_path = store.path
        if len(nodes.examples) < 2:
            raise InputError(
                f"The run {row['id']} has {len(nodes.examples)} accepted example(s); the measures need at least 2. "
                "Let it run longer (`treegen run ... --resume`) or measure another run."
            )
        report = metrics.measure(
            nodes.examples, ref, source=str(path), embedder=embedder, student=student, seed=seed,
            simulated=bool(row.get("simulated")), run_nodes=nodes, near_threshold=near_threshold,
            distinct_budget=distinct_tokens, on_progress=on_progress,
        )
        # Stored only once everything is measured: bad input leaves the database as it was.
        lock = _run_lock(db_path)
        try:
            with RunStore.open(db_path) as store:
                info["rows"] = metrics.store_metrics(store, report)
        finally:
            lock.release()
        info["stored"] = True
        info["db"] = str(db_path)
    else:
        created, _fmt_ = load_examples(path)
        report = metrics.measure(
            created, ref, source=str(path), embedder=embedder, student=student, seed=seed,
            near_threshold=near_threshold, distinct_budget=distinct_tokens, on_progress=on_progress,
        )
    return report, info


def _run_lock(path: Path) -> Any:
    """The run's lock, or RunLockedError saying why metrics must wait: a run session writes to
    the database and reserves against its caps; a second writer would race it."""
    from treegen.errors import RunLockedError
    from treegen.runlock import RunLock
    from treegen.store import resolve_run_db

    lock = RunLock(resolve_run_db(path).parent)
    try:
        return lock.acquire()
    except RunLockedError as exc:
        raise RunLockedError(f"Metrics not measured, nothing written: {exc}") from None


def run_intrinsic(
    path: Path,
    *,
    judge: bool,
    perplexity: bool,
    judge_sample: int = 50,
    judge_model: str | None = None,
    judge_max_usd: float | None = None,
    judge_per_request: int = 10,
    backend: str | None = None,
    base_url: str | None = None,
    sample: int = 200,
    seed: int = 0,
    threads: int | None = None,
    http_client: Any = None,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """LLM-as-judge and/or perplexity of a run's accepted examples, stored as metrics rows.

    Holds the run's lock from the first judge call to the last row written. Returns a
    JSON-ready dict: ``judge`` and ``perplexity`` (figures, labels, spend), ``rows`` stored."""
    import os

    from treegen import intrinsic
    from treegen.prices import usd_to_micro
    from treegen.store import RunStore

    if not path.exists():
        raise InputError(f"{path} does not exist. Give a run folder (runs/<run-id>): --judge and --perplexity measure runs.")
    if not (path.is_dir() or _is_sqlite(path)):
        raise InputError(f"{path} is not a run: --judge and --perplexity measure a run folder (runs/<run-id>), "
                         "whose database records the judge's calls and the figures.")
    if judge_sample < 1 or sample < 1 or judge_per_request < 1:
        raise ConfigError("--judge-sample, --judge-per-request and --sample must be at least 1 (e.g. 50, 10, 200).")
    if judge_max_usd is not None and judge_max_usd <= 0:
        raise ConfigError(f"--judge-max-usd {judge_max_usd} must be a positive amount of dollars, e.g. 0.10.")
    api_key = os.environ.get("OPENAI_API_KEY")
    out: dict[str, Any] = {"kind": "run", "judge": None, "perplexity": None, "rows": 0}
    with RunStore.open(path, readonly=True) as ro:
        run = ro.run()
    endpoint = None
    cap = usd_to_micro(judge_max_usd if judge_max_usd is not None else intrinsic.JUDGE_MAX_USD)
    if judge:  # flags checked before anything starts
        endpoint = intrinsic.judge_endpoint(run, backend, base_url, judge_model, api_key, cap)
    lock = _run_lock(path)
    try:
        with RunStore.open(path) as store:
            out["run_id"] = run["id"]
            out["db"] = str(store.path)
            if endpoint is not None:
                settings = intrinsic.JudgeSettings(
                    model=endpoint.model, sample=judge_sample, seed=seed,
                    max_usd_micro=cap if endpoint.price is not None else None, per_request=judge_per_request,
                    task_description=run["config"].get("task_description"), dialect=endpoint.dialect,
                    timeout=endpoint.timeout)
                with intrinsic.serve_judge_endpoint(run, endpoint) as url:
                    result = intrinsic.judge_run(store, settings, url, api_key, endpoint.price,
                                                 simulated_endpoint=endpoint.simulated, http_client=http_client,
                                                 on_progress=on_progress)
                rows = intrinsic.judge_metric_rows(result, settings, endpoint.backend)
                out["rows"] += store.insert_metrics(rows)
                out["judge"] = {
                    "label": "SIMULATED" if result.simulated else "REAL", "model": result.model,
                    "backend": endpoint.backend, "mean": result.mean, "low_share": result.low_share,
                    "low_score": intrinsic.LOW_SCORE, "sample": judge_sample, "sampled": result.sampled,
                    "scored": result.n_scored, "calls": result.calls, "spent_micro": result.spent_micro,
                    "max_usd_micro": settings.max_usd_micro, "stopped": result.stopped, "notes": result.notes,
                }
            if perplexity:
                ppl = intrinsic.perplexity_run(store, sample, seed, threads=threads, on_progress=on_progress)
                out["rows"] += store.insert_metrics(intrinsic.perplexity_metric_rows(ppl, seed, sample))
                out["perplexity"] = {
                    "label": "REAL", "model_file": ppl.model_file, "quantisation": ppl.quantisation,
                    "mean": ppl.mean, "median": ppl.median, "sample": sample, "sampled": ppl.sampled,
                    "scored": len(ppl.values), "notes": ppl.notes,
                }
    finally:
        lock.release()
    return out


def _print_intrinsic(out: dict[str, Any]) -> None:
    from treegen.prices import format_usd
    from treegen.render import show, table

    rows: list[tuple[str, str, str, str]] = []
    j = out.get("judge")
    if j:
        who = f"{j['label'].upper()}: {j['model']} via {j['backend']}"
        rows.append(("judge_mean (1-10)", _fmt(j["mean"]), f"{j['scored']:,} of {j['sampled']:,}", who))
        rows.append((f"judge_low_share (score <= {j['low_score']})", _fmt(j["low_share"]),
                     f"{j['scored']:,} of {j['sampled']:,}", who))
    p = out.get("perplexity")
    if p:
        who = f"REAL: {p['model_file']} ({p['quantisation'] or 'quantisation unknown'})"
        rows.append(("ppl_mean", _fmt(p["mean"]), f"{p['scored']:,} of {p['sampled']:,}", who))
        rows.append(("ppl_median", _fmt(p["median"]), f"{p['scored']:,} of {p['sampled']:,}", who))
    c = console.get()
    show(c, table(f"Intrinsic measures of {out.get('run_id')}", ("measure", "value", "examples", "measured by"),
                  rows, c, right=("value", "examples")))
    if j:
        spent = ("simulated " if j["label"] == "SIMULATED" else "") + format_usd(j["spent_micro"])
        cap = "no cap (unpriced local model)" if j["max_usd_micro"] is None else f"cap {format_usd(j['max_usd_micro'])}"
        console.print(f"judge: {j['calls']:,} call(s), {spent} ({cap}), recorded in the run's calls (purpose judge)",
                      highlight=False, markup=False, soft_wrap=True)
        if j["stopped"]:
            console.print(f"judge stopped: {j['stopped']}", highlight=False, markup=False, soft_wrap=True)
        for note in j["notes"]:
            console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    for note in (p or {}).get("notes", []):
        console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    if not rows:
        console.print("No figure: nothing could be scored (see the notes).", highlight=False)
    console.print(f"Stored {out['rows']} figures in {out.get('db')} (table metrics).", highlight=False, markup=False,
                  soft_wrap=True)


def _print_report(report, info: dict) -> None:  # noqa: ANN001 - MetricsReport
    if report.simulated:
        console.print("[bold yellow]SIMULATED[/] run: the examples came from the simulator, not a model.")
    table = _rich_table()(title=f"{report.source} vs {report.reference} ({report.n_items:,} items)")
    table.add_column("measure", overflow="fold")
    table.add_column("value", justify="right", overflow="fold")
    table.add_column("reference", justify="right", overflow="fold")
    table.add_column("n", justify="right", overflow="fold")
    table.add_column("parameters", overflow="fold")
    shown = ("K", "max_items", "embedder", "student", "threshold", "buckets", "pca_dims", "seed")
    for m in report.metrics:
        if m.name.startswith("drift_depth_"):
            continue
        params = ", ".join(f"{k}={m.params[k]}" for k in shown if k in m.params)
        table.add_row(m.name, _fmt(m.value), _fmt(m.params.get("reference_value")), f"{m.n_items:,}", params)
    console.print(table)
    drift = [m for m in report.metrics if m.name.startswith("drift_depth_")]
    if drift:
        dt = _rich_table()(title="Drift from the root seed (1 - cosine)")
        dt.add_column("depth", justify="right", overflow="fold")
        dt.add_column("distance", justify="right", overflow="fold")
        dt.add_column("nodes", justify="right", overflow="fold")
        for m in drift:
            dt.add_row(m.name.rsplit("_", 1)[1], _fmt(m.value), f"{m.n_items:,}")
        console.print(dt)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)
    t = report.timings
    console.print(f"time: embedding {t.get('embedding', 0):.1f} s, measures {t.get('measures', 0):.1f} s", highlight=False)
    if info["stored"]:
        console.print(f"Stored {info['rows']} figures in {info['db']} (table metrics).", highlight=False)
    else:
        console.print("Not stored: a JSONL file has no run database (measure a run folder to keep the figures).")


def register(app: typer.Typer) -> None:
    """Add the `metrics` command to the treegen app."""

    @app.command("metrics", help=_HELP)
    def metrics_command(
        path: Path = typer.Argument(..., metavar="PATH", help="A run folder (runs/<run-id>), its treegen.db, or a JSONL file."),
        reference: Optional[str] = typer.Option(None, "--reference", help="Reference task: csqa, creak, boolq_close, ..."),
        reference_file: Optional[Path] = typer.Option(None, "--reference-file", help="Human examples (JSONL) to compare with."),
        data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Dataset folder (default: $TREEGEN_DATA_DIR or ../shared/datasets)."),
        embedder: str = typer.Option("minilm", "--embedder", help="minilm (all-MiniLM-L6-v2, offline; the engine's default) or hashing (fast, lexical)."),
        student: str = typer.Option("lexical", "--student", help="Student for faithfulness, complexity, performance; 'none' to skip."),
        json_out: bool = typer.Option(False, "--json", help="Print a JSON document instead of tables."),
        seed: int = typer.Option(0, "--seed", help="Seed of every subsample, shuffle and split."),
        near_threshold: float = typer.Option(0.9, "--near-threshold", help="Cosine similarity that counts as a near duplicate of a test/dev item."),
        distinct_tokens: int = typer.Option(3000, "--distinct-tokens", help="K: distinct-n counts n-grams in the first K tokens; use one K for every dataset you compare."),
        judge: bool = typer.Option(False, "--judge", help="LLM-as-judge: score a sample of the run's examples 1-10 (recorded, capped calls)."),
        judge_sample: int = typer.Option(50, "--judge-sample", help="Examples the judge scores (a seeded sample)."),
        judge_model: Optional[str] = typer.Option(None, "--judge-model", help="Judge model (default: the run's model)."),
        judge_max_usd: Optional[float] = typer.Option(None, "--judge-max-usd", help="Dollar cap of the judge's calls (default 0.10); a request whose worst case would cross it is not sent."),
        judge_per_request: int = typer.Option(10, "--judge-per-request", help="Examples scored per judge request."),
        backend: Optional[str] = typer.Option(None, "--backend", help="Judge endpoint: sim, local or openai (default: the run's)."),
        base_url: Optional[str] = typer.Option(None, "--base-url", help="Judge endpoint: an OpenAI-compatible server URL."),
        perplexity: bool = typer.Option(False, "--perplexity", help="Perplexity of the examples under the local reference model (llama.cpp, SmolLM2-135M-Instruct Q4_1)."),
        sample: int = typer.Option(200, "--sample", help="Examples scored by --perplexity (a seeded sample)."),
    ) -> None:
        from treegen.cli_students import progress_printer

        def intrinsic() -> dict[str, Any]:
            with progress_printer() as on_progress:
                return run_intrinsic(
                    path, judge=judge, perplexity=perplexity, judge_sample=judge_sample, judge_model=judge_model,
                    judge_max_usd=judge_max_usd, judge_per_request=judge_per_request, backend=backend,
                    base_url=base_url, sample=sample, seed=seed, on_progress=on_progress)

        if (judge or perplexity) and reference is None and reference_file is None:  # the intrinsic measures alone
            alone = intrinsic()
            if json_out:
                typer.echo(json.dumps(alone, indent=2, default=_json_default))
            else:
                _print_intrinsic(alone)
            return
        # The reference measures first: their input is checked before the judge spends anything.
        with progress_printer() as on_progress:
            report, info = run_metrics(
                path, reference, reference_file, data_dir, embedder,
                None if student.lower() == "none" else student, seed, near_threshold, distinct_tokens,
                on_progress=on_progress,
            )
        intrinsic_out = intrinsic() if judge or perplexity else None
        if json_out:
            out = report.to_dict()
            out.update(info)
            if report.simulated:
                out["label"] = "SIMULATED"
            if intrinsic_out is not None:
                out["intrinsic"] = intrinsic_out
            typer.echo(json.dumps(out, indent=2, default=_json_default))
        else:
            _print_report(report, info)
            if intrinsic_out is not None:
                _print_intrinsic(intrinsic_out)


def _json_default(obj: object) -> object:
    if hasattr(obj, "item"):
        return obj.item()  # numpy scalars
    return str(obj)


def _rich_table() -> Any:
    """rich's Table class, imported when a table is drawn (not at every CLI start)."""
    from rich.table import Table

    return Table
