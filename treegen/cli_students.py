"""CLI: `data list`, `data fetch`, `train`, `eval`, `compare` (students and ID/OOD evaluation)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from treegen.errors import ConfigError, RunNotFoundError, StudentError

console = Console()

STUDENT_HELP = "Student: lexical, minilm-frozen or minilm-ft."
DATA_DIR_HELP = "Benchmark dataset folder (default: $TREEGEN_DATA_DIR, else ../shared/datasets)."


def _student_kwargs(model_path: Optional[str], max_train: Optional[int], epochs: Optional[int],
                    max_length: Optional[int], student: str) -> dict:
    kwargs = {}
    for key, val in (("model_path", model_path), ("max_train", max_train), ("epochs", epochs),
                     ("max_length", max_length)):
        if val is not None:
            if student != "minilm-ft":
                raise ConfigError(f"--{key.replace('_', '-')} applies to the minilm-ft student only.")
            kwargs[key] = val
    return kwargs


def data_list(data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP)) -> None:
    """List the benchmark groups, datasets, splits and sizes."""
    from treegen import datasets

    root = datasets.data_dir(data_dir)
    rows = datasets.list_datasets(root)
    table = Table(title=f"Benchmark datasets in {root}")
    for col in ("group", "task", "train", "dev", "test", "note"):
        table.add_column(col, justify="right" if col in ("train", "dev", "test") else "left")
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
    table = Table(title="Fetched")
    for col in ("file", "rows", "sha256", "status"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["path"], "—" if r["rows"] is None else f"{r['rows']:,}", r["sha256"][:16], r["status"])
    console.print(table)


def train_cmd(
    run: Optional[Path] = typer.Argument(None, help="Run folder to train on (its accepted examples)."),
    student: str = typer.Option("lexical", "--student", "-s", help=STUDENT_HELP),
    task: Optional[str] = typer.Option(None, "--task", help="Task the student is for (dev split for model selection)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Train on this JSONL file instead of a run."),
    human: Optional[str] = typer.Option(None, "--human", help="Train on this task's human training split (D_L)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for --data/--human students and results (default runs/students/...)."),
    seed: int = typer.Option(0, "--seed"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    model_path: Optional[str] = typer.Option(None, "--model-path", help="minilm-ft: a local Hugging Face model folder."),
    max_train: Optional[int] = typer.Option(None, "--max-train", help="minilm-ft: cap on training examples (default 2000)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="minilm-ft: epochs (default: 2 to 5, enough for about 100 optimizer steps)."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="minilm-ft: tokens per input (default 256 with a passage, else 128)."),
) -> None:
    """Train a student on a run, a data file (--data) or human data (--human)."""
    from treegen import evaluation
    from treegen.students import STUDENTS

    if student not in STUDENTS:
        raise ConfigError(f"Unknown student {student!r}. Choose one of: {', '.join(STUDENTS)}.")
    if sum(x is not None for x in (run, data, human)) != 1:
        raise ConfigError("Give exactly one source: a RUN folder, --data FILE.jsonl or --human TASK.")
    kwargs = _student_kwargs(model_path, max_train, epochs, max_length, student)
    if run is not None:
        td = evaluation.run_training_data(run)
        folder = run
    elif data is not None:
        td = evaluation.file_training_data(data)
        folder = out or Path("runs/students") / f"data-{data.stem}"
    else:
        td = evaluation.human_training_data(human, data_dir)
        folder = out or Path("runs/students") / f"human-{td.source_ref}"
        task = task or td.source_ref
    task = task or evaluation.infer_task(td.fmt, folder)
    trained = evaluation.train(td, student, task, folder, seed, data_dir, progress=True, **kwargs)
    if run is None:
        evaluation.results_db(folder)  # --data/--human: the folder's own treegen.db, for `treegen eval`
    mark = " [bold red](trained on SIMULATED data)[/]" if trained.simulated else ""
    console.print(f"Trained {student} on {trained.n_train:,} {td.source} examples in {trained.train_seconds:.1f}s "
                  f"-> {trained.path}{mark}", highlight=False)
    info = trained.info or {}
    if student == "minilm-ft":
        console.print(f"max_train cap {info.get('max_train')}: used {info.get('n_train_used')} of "
                      f"{info.get('n_train_available')}; best epoch {info.get('best_epoch')} on dev "
                      f"(dev accuracy by epoch {info.get('dev_accuracy_by_epoch')}).", highlight=False)
    if trained.note:
        console.print(f"Note: {trained.note}", highlight=False)


def _results_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for col in ("source", "student", "seed", "dataset", "role", "split", "accuracy", "majority", "n", "seconds", "data"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["source"], r["student"], str(r["seed"]), r["dataset"], r["role"].upper(), r["split"],
                      f"{r['accuracy'] * 100:.1f}%", f"{(r['majority'] or 0) * 100:.1f}%", f"{r['n']:,}",
                      f"{r['seconds']:.1f}", "[bold red]SIMULATED[/]" if r["simulated"] else "real")
    return table


def eval_cmd(
    run: Path = typer.Argument(..., help="Run folder (or a --out folder of `treegen train`)."),
    task: str = typer.Option(..., "--task", help="ID task; OOD = the other tasks of its group."),
    student: Optional[str] = typer.Option(None, "--student", "-s", help=STUDENT_HELP + " Default: every trained one (lexical if none)."),
    seed: int = typer.Option(0, "--seed", help="Seed used if a student has to be trained first."),
    split: str = typer.Option("test", "--split", help="test or dev."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate on a seeded random sample of N examples of each dataset."),
) -> None:
    """Evaluate the run's students ID and OOD; store and print the results."""
    from treegen import datasets, evaluation

    if split not in ("test", "dev"):
        raise ConfigError("--split must be test or dev.")
    task_name = datasets.get_task(task).name
    datasets.data_dir(data_dir)  # a missing dataset folder stops here, before anything is trained
    found = evaluation.find_trained(run, task_name, student)
    if not found:
        try:
            td = evaluation.run_training_data(run)
        except RunNotFoundError:
            raise StudentError(
                f"No {student or ''} student trained for {task_name} in {run}. Train one first, e.g. "
                f"treegen train --human {task_name} --student {student or 'lexical'} --out {run}"
            ) from None
        console.print(f"No trained student for {task_name} in {run}: training {student or 'lexical'} first.")
        found = [evaluation.train(td, student or "lexical", task_name, run, seed, data_dir, progress=True)]
    all_rows = []
    db = evaluation.results_db(run)
    # Score everything first, then store: a failure half-way stores nothing.
    for trained in found:
        all_rows.extend(evaluation.evaluate(trained, None, split, data_dir, limit, progress=True))
    db["student_results"].insert_all(all_rows)
    console.print(_results_table(all_rows, f"{task_name}: ID and OOD accuracy ({split})"))
    if any(r["simulated"] for r in all_rows):
        console.print("[bold red]SIMULATED:[/] these students were trained on simulator output, not model output.")


def compare_cmd(
    runs: list[Path] = typer.Argument(..., help="Run folders to compare."),
    task: str = typer.Option(..., "--task", help="ID task."),
    student: str = typer.Option("lexical", "--student", "-s", help=STUDENT_HELP),
    seeds: str = typer.Option("0", "--seeds", help="Comma-separated training seeds, e.g. 0,1,2."),
    out: Path = typer.Option(Path("runs/compare"), "--out", help="Folder for the md/csv/png and the human-data students."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    limit: Optional[int] = typer.Option(None, "--limit", help="Quick check: a seeded random sample of N test examples per dataset."),
    human_limit: Optional[int] = typer.Option(None, "--human-limit", help="Quick check: first N human training examples."),
) -> None:
    """Compare runs for one task: cost, ID/OOD accuracy, PGR against the human-data student."""
    from treegen import compare, datasets

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be integers separated by commas, e.g. 0,1,2 (got {seeds!r}).") from None
    if not seed_list:
        raise ConfigError("--seeds needs at least one seed, e.g. --seeds 0.")
    datasets.data_dir(data_dir)
    rows, files = compare.compare_runs(runs, task, student, seed_list, out, data_dir, progress=True,
                                       eval_limit=limit, human_limit=human_limit)
    header = {"ood": datasets.ood_tasks(task)}
    table_data = compare.table_rows(rows[:-1], rows[-1], header)
    table = Table(title=f"{datasets.get_task(task).name}: student {student}, seeds {seeds}")
    # A terminal shows the columns that decide; the Markdown and CSV files hold them all.
    keep = [c for c in table_data[0] if c in ("run", "data", "accepted", "dollars", "$/accepted", "ID acc %",
                                             "OOD mean %", "PGR %", "flag")] or list(table_data[0])
    for col in keep:
        table.add_column(col, overflow="fold")
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
