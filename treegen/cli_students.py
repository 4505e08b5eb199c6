"""CLI: `data list`, `data fetch`, `train`, `eval`, `compare` (students and ID/OOD evaluation).

Also the progress renderer of the student and metrics commands (``progress_printer``): the
library reports ``on_progress(done, total, what)``, this draws it on stderr.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer

from treegen.render import LazyConsole
from treegen.errors import ConfigError, RunNotFoundError, StudentError

console = LazyConsole()
err_console = LazyConsole(stderr=True)

STUDENT_HELP = "Student: lexical, minilm-frozen or minilm-ft."
DATA_DIR_HELP = "Benchmark dataset folder (default: $TREEGEN_DATA_DIR, else ../shared/datasets)."
PLAIN_EVERY_S = 2.0  # without a terminal: a progress line per step, then at most one every 2 s


# ---------------------------------------------------------------- progress


@contextlib.contextmanager
def progress_printer(enabled: bool = True) -> Iterator[Callable[[int, int, str], None] | None]:
    """An ``on_progress(done, total, what)`` callback drawing on stderr, one row per ``what``.

    A terminal gets rich progress bars; a pipe or file gets plain lines: when a step starts,
    every ``PLAIN_EVERY_S`` seconds while it runs, and when one that took that long ends.
    """
    if not enabled:
        yield None
        return
    if err_console.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err_console.get(), transient=False) as prog:
            tasks: dict[str, Any] = {}

            def draw(done: int, total: int, what: str) -> None:
                if what not in tasks:
                    tasks[what] = prog.add_task(what, total=total)
                prog.update(tasks[what], completed=done, total=total)

            yield draw
        return

    started: dict[str, float] = {}
    last: dict[str, float] = {}

    def line(done: int, total: int, what: str) -> None:
        now = time.monotonic()
        if what not in started:
            started[what] = last[what] = now
            print(f"{what} ...", file=sys.stderr, flush=True)
            return
        took = now - started[what]
        if done >= total:
            if took >= PLAIN_EVERY_S:
                print(f"{what}: done in {took:.1f} s", file=sys.stderr, flush=True)
            started.pop(what)
            return
        if now - last[what] >= PLAIN_EVERY_S:
            last[what] = now
            print(f"{what}: {done:,}/{total:,} ({took:.0f} s)", file=sys.stderr, flush=True)

    yield line


# ---------------------------------------------------------------- output helpers


def _table(title: str, columns: list[str], right: tuple[str, ...] = ()) -> Any:
    """A table whose cells fold instead of being cut, however narrow the output."""
    table = _rich_table()(title=title)
    for col in columns:
        table.add_column(col, justify="right" if col in right else "left", overflow="fold")
    return table


def _echo_json(doc: Any) -> None:
    typer.echo(json.dumps(doc, indent=2, ensure_ascii=False, default=str))


def _student_kwargs(student: str, **flags: Any) -> dict[str, Any]:
    """The student options given as flags; ConfigError for a flag the student does not take."""
    from treegen.students import STUDENTS, student_options

    options = student_options(student)
    kwargs = {}
    for key, val in flags.items():
        if val is None:
            continue
        if key not in options:
            takers = [name for name, cls in STUDENTS.items() if key in cls.options]
            raise ConfigError(f"--{key.replace('_', '-')} applies to the {' and '.join(takers)} student"
                              f"{'s' if len(takers) > 1 else ''} only, not {student}.")
        kwargs[key] = val
    return kwargs


# ---------------------------------------------------------------- data


def data_list(
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON document instead of a table."),
) -> None:
    """List the benchmark groups, datasets, splits and sizes."""
    from treegen import datasets

    root = datasets.data_dir(data_dir)
    rows = datasets.list_datasets(root)
    if json_out:
        _echo_json({"data_dir": str(root), "datasets": rows,
                    "ood": {t: datasets.ood_tasks(t) for t in datasets.TASKS}})
        return
    table = _table(f"Benchmark datasets in {root}", ["group", "task", "train", "dev", "test", "note"],
                   right=("train", "dev", "test"))
    by_task: dict[str, dict] = {}
    for r in rows:
        d = by_task.setdefault(r["task"], {"group": r["group"], "notes": []})
        d[r["split"]] = "—" if r["rows"] is None else f"{r['rows']:,}"
        if r["note"]:
            d["notes"].append(f"{r['split']} {r['note']}")
    for task, d in by_task.items():
        table.add_row(d["group"], task, d["train"], d["dev"], d["test"], "; ".join(d["notes"]))
    console.print(table)
    console.print("OOD for a task = the test splits of the other tasks in its group.")


def data_fetch(
    url: str = typer.Option(None, "--url", help="Base URL of the data/ folder (default: microsoft/llm-data-creation on GitHub)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Where to write (default: $TREEGEN_DATA_DIR, else ../shared/datasets)."),
) -> None:
    """Download the public copies of the ten datasets and check every line."""
    from treegen import datasets

    rows = datasets.fetch(url or datasets.DEFAULT_FETCH_URL, data_dir)
    table = _table("Fetched", ["file", "rows", "sha256", "status"])
    for r in rows:
        table.add_row(r["path"], "—" if r["rows"] is None else f"{r['rows']:,}", r["sha256"][:16], r["status"])
    console.print(table)


# ---------------------------------------------------------------- train


def train_cmd(
    run: Optional[Path] = typer.Argument(None, metavar="RUN", help="Run folder to train on (its accepted examples)."),
    student: Optional[str] = typer.Option(None, "--student", "-s",
                                          help=STUDENT_HELP + " Default: minilm-frozen (the best that trains in minutes on a CPU)."),
    task: Optional[str] = typer.Option(None, "--task", help="Task the student is for (dev split for model selection)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Train on this JSONL file instead of a run."),
    human: Optional[str] = typer.Option(None, "--human", help="Train on this task's human training split (D_L)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for --data/--human students and results (default runs/students/...)."),
    seed: int = typer.Option(0, "--seed"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    model_path: Optional[str] = typer.Option(None, "--model-path", help="minilm-ft: a local Hugging Face model folder."),
    max_train: Optional[int] = typer.Option(None, "--max-train", help="minilm-frozen, minilm-ft: cap on training examples (default 3000, 2000)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="minilm-ft: epochs (default: 2 to 5, enough for about 100 optimizer steps)."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="minilm-ft: tokens per input (default 256 with a passage, else 128)."),
) -> None:
    """Train a student on a run, a data file (--data) or human data (--human)."""
    from treegen import evaluation
    from treegen.students import DEFAULT_STUDENT, student_class

    chosen = student or DEFAULT_STUDENT
    student_class(chosen)  # an unknown name stops here
    if sum(x is not None for x in (run, data, human)) != 1:
        raise ConfigError("Give exactly one source: a RUN folder, --data FILE.jsonl or --human TASK.")
    kwargs = _student_kwargs(chosen, model_path=model_path, max_train=max_train, epochs=epochs,
                             max_length=max_length)
    if run is not None:
        td = evaluation.run_training_data(run)
        folder = run
    elif data is not None:
        td = evaluation.file_training_data(data)
        folder = out or Path("runs/students") / f"data-{data.stem}"
    else:
        assert human is not None
        td = evaluation.human_training_data(human, data_dir)
        folder = out or Path("runs/students") / f"human-{td.source_ref}"
        task = task or td.source_ref
    task = task or evaluation.infer_task(td.fmt, folder)
    if student is None:
        err_console.print(f"Student: {chosen} (the default; --student lexical trains in seconds, "
                          "--student minilm-ft fine-tunes for tens of minutes).", highlight=False, soft_wrap=True)
    with progress_printer() as on_progress:
        trained = evaluation.train(td, chosen, task, folder, seed, data_dir, on_progress, **kwargs)
    if run is None:
        evaluation.results_store(folder).close()  # --data/--human: the folder's own treegen.db, for `treegen eval`
    mark = " [bold red](trained on SIMULATED data)[/]" if trained.simulated else ""
    default = " (the default student)" if student is None else ""
    console.print(f"Trained {chosen}{default} on {trained.n_train:,} {td.source} examples in "
                  f"{trained.train_seconds:.1f}s -> {trained.path}{mark}", highlight=False)
    info = trained.info or {}
    if "max_train" in info:
        console.print(f"max_train cap {info.get('max_train')}: used {info.get('n_train_used')} of "
                      f"{info.get('n_train_available')}.", highlight=False)
    if chosen == "minilm-ft":
        console.print(f"Best epoch {info.get('best_epoch')} on dev "
                      f"(dev accuracy by epoch {info.get('dev_accuracy_by_epoch')}).", highlight=False)
    if trained.note:
        console.print(f"Note: {trained.note}", highlight=False)


# ---------------------------------------------------------------- eval


def _results_table(rows: list[dict], title: str) -> Any:
    table = _table(title, ["source", "student", "seed", "dataset", "role", "split", "accuracy", "majority", "n",
                           "seconds", "data"], right=("seed", "accuracy", "majority", "n", "seconds"))
    for r in rows:
        table.add_row(r["source"], r["student"], str(r["seed"]), r["dataset"], r["role"].upper(), r["split"],
                      f"{r['accuracy'] * 100:.1f}%", f"{(r['majority'] or 0) * 100:.1f}%", f"{r['n']:,}",
                      f"{r['seconds']:.1f}", "[bold red]SIMULATED[/]" if r["simulated"] else "real")
    return table


def eval_cmd(
    run: Path = typer.Argument(..., metavar="RUN", help="Run folder (or a --out folder of `treegen train`)."),
    task: str = typer.Option(..., "--task", help="ID task; OOD = the other tasks of its group."),
    student: Optional[str] = typer.Option(None, "--student", "-s", help=STUDENT_HELP + " Default: every trained one (minilm-frozen if none)."),
    seed: int = typer.Option(0, "--seed", help="Seed used if a student has to be trained first."),
    split: str = typer.Option("test", "--split", help="test or dev."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate on a seeded random sample of N examples of each dataset."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON document instead of a table."),
) -> None:
    """Evaluate the run's students ID and OOD; store and print the results."""
    from treegen import datasets, evaluation
    from treegen.students import DEFAULT_STUDENT, student_class

    if split not in ("test", "dev"):
        raise ConfigError("--split must be test or dev.")
    if student is not None:
        student_class(student)
    task_name = datasets.get_task(task).name
    datasets.data_dir(data_dir)  # a missing dataset folder stops here, before anything is trained
    found = evaluation.find_trained(run, task_name, student)
    with progress_printer() as on_progress:
        if not found:
            chosen = student or DEFAULT_STUDENT
            try:
                td = evaluation.run_training_data(run)
            except RunNotFoundError:
                raise StudentError(
                    f"No {student or ''} student trained for {task_name} in {run}. Train one first, e.g. "
                    f"treegen train --human {task_name} --student {chosen} --out {run}"
                ) from None
            err_console.print(f"No trained student for {task_name} in {run}: training {chosen} first.",
                              highlight=False, soft_wrap=True)
            found = [evaluation.train(td, chosen, task_name, run, seed, data_dir, on_progress)]
        all_rows = []
        # Score everything first, then store: a failure half-way stores nothing.
        for trained in found:
            all_rows.extend(evaluation.evaluate(trained, None, split, data_dir, limit, on_progress))
    with evaluation.results_store(run) as store:
        store.insert_student_results(all_rows)
    if json_out:
        _echo_json({"task": task_name, "split": split, "simulated": any(r["simulated"] for r in all_rows),
                    "results": all_rows})
        return
    console.print(_results_table(all_rows, f"{task_name}: ID and OOD accuracy ({split})"))
    if any(r["simulated"] for r in all_rows):
        console.print("[bold red]SIMULATED:[/] these students were trained on simulator output, not model output.")


# ---------------------------------------------------------------- compare


def compare_cmd(
    runs: list[Path] = typer.Argument(..., metavar="RUN...", help="Run folders to compare."),
    task: str = typer.Option(..., "--task", help="ID task."),
    student: str = typer.Option("lexical", "--student", "-s", help=STUDENT_HELP),
    seeds: str = typer.Option("0", "--seeds", help="Comma-separated training seeds, e.g. 0,1,2."),
    out: Path = typer.Option(Path("runs/compare"), "--out", help="Folder for the md/csv/png and the human-data students."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    limit: Optional[int] = typer.Option(None, "--limit", help="Quick check: a seeded random sample of N test examples per dataset."),
    human_limit: Optional[int] = typer.Option(None, "--human-limit", help="Quick check: first N human training examples."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON document instead of a table."),
) -> None:
    """Compare runs for one task: cost, ID/OOD accuracy, PGR against the human-data student."""
    from treegen import compare, datasets
    from treegen.students import student_class

    student_class(student)
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be integers separated by commas, e.g. 0,1,2 (got {seeds!r}).") from None
    if not seed_list:
        raise ConfigError("--seeds needs at least one seed, e.g. --seeds 0.")
    datasets.data_dir(data_dir)
    with progress_printer() as on_progress:
        rows, files = compare.compare_runs(runs, task, student, seed_list, out, data_dir, on_progress,
                                           eval_limit=limit, human_limit=human_limit)
    task_name = datasets.get_task(task).name
    ood = datasets.ood_tasks(task_name)
    if json_out:
        _echo_json({"task": task_name, "student": student, "seeds": seed_list, "ood": ood,
                    "eval_limit": limit, "human_limit": human_limit,
                    "runs": [r.to_dict() for r in rows[:-1]], "human": rows[-1].to_dict(),
                    "files": {k: str(v) for k, v in files.items()}})
        return
    table_data = compare.table_rows(rows[:-1], rows[-1], {"ood": ood})
    # A terminal shows the columns that decide; the Markdown and CSV files (and --json) hold them all.
    keep = [c for c in table_data[0] if c in ("run", "data", "accepted", "dollars", "$/accepted", "ID acc %",
                                             "OOD mean %", "PGR %", "flag")] or list(table_data[0])
    table = _table(f"{task_name}: student {student}, seeds {seeds}", keep)
    for d in table_data:
        table.add_row(*[f"[bold red]{d[c]}[/]" if d[c] == "SIMULATED" or d[c].startswith("CONTAMINATED") else d[c]
                        for c in keep])
    console.print(table)
    console.print(f"Wrote {files['md']}, {files['csv']} and {files['png']}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add data list/fetch, train, eval and compare to ``app``."""
    data_app = typer.Typer(help="The ten benchmark datasets: list and fetch.", no_args_is_help=True)
    data_app.command("list")(data_list)
    data_app.command("fetch")(data_fetch)
    app.add_typer(data_app, name="data")
    app.command("train")(train_cmd)
    app.command("eval")(eval_cmd)
    app.command("compare")(compare_cmd)


def _rich_table() -> Any:
    """rich's Table class, imported when a table is drawn (not at every CLI start)."""
    from rich.table import Table

    return Table
