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
        with RunStore.open(db_path) as store:
            info["rows"] = metrics.store_metrics(store, report)
        info["stored"] = True
        info["db"] = str(db_path)
    else:
        created, _fmt_ = load_examples(path)
        report = metrics.measure(
            created, ref, source=str(path), embedder=embedder, student=student, seed=seed,
            near_threshold=near_threshold, distinct_budget=distinct_tokens, on_progress=on_progress,
        )
    return report, info


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
    ) -> None:
        from treegen.cli_students import progress_printer

        with progress_printer() as on_progress:
            report, info = run_metrics(
                path, reference, reference_file, data_dir, embedder,
                None if student.lower() == "none" else student, seed, near_threshold, distinct_tokens,
                on_progress=on_progress,
            )
        if json_out:
            out = report.to_dict()
            out.update(info)
            if report.simulated:
                out["label"] = "SIMULATED"
            typer.echo(json.dumps(out, indent=2, default=_json_default))
        else:
            _print_report(report, info)


def _json_default(obj: object) -> object:
    if hasattr(obj, "item"):
        return obj.item()  # numpy scalars
    return str(obj)


def _rich_table() -> Any:
    """rich's Table class, imported when a table is drawn (not at every CLI start)."""
    from rich.table import Table

    return Table
