"""Train students on a run, a data file or human data; evaluate them ID and OOD; store results.

A trained student lives in ``<folder>/students/<student>-<task>-s<seed>/`` where ``<folder>`` is
the run folder (or the ``--out`` folder for ``--data`` / ``--human``), beside that folder's
``treegen.db``. ``training.json`` in the student folder says what it was trained on. Results
go to the ``student_results`` table of the same database, through ``RunStore`` (no SQL here).
Progress goes to an ``on_progress(done, total, what)`` callback; nothing here prints.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from treegen import datasets
from treegen.errors import RunNotFoundError, StudentError
from treegen.store import DB_NAME, RunStore, utcnow
from treegen.students import ProgressCallback, get_student, load_student, min_train_examples
from treegen.students.base import require_choice_format
from treegen.task import Example, TaskFormat, load_examples

TRAINING_FILE = "training.json"


@dataclass
class TrainingData:
    examples: list[Example]
    fmt: TaskFormat
    source: str  # run | data | human
    source_ref: str  # run id, file path or task
    simulated: bool
    note: str = ""


@dataclass
class Trained:
    path: Path  # the student folder
    student: str
    task: str
    seed: int
    source: str
    source_ref: str
    n_train: int
    train_seconds: float
    simulated: bool
    note: str = ""
    info: dict[str, Any] | None = None


def student_dir(folder: str | Path, student: str, task: str, seed: int) -> Path:
    return Path(folder) / "students" / f"{student}-{task}-s{seed}"


def check_task_matches(task: str, fmt: TaskFormat, what: str) -> str:
    """The canonical task name; StudentError when the task's format is not the data's."""
    require_choice_format(fmt, what)
    t = datasets.get_task(task)
    if t.format.name != fmt.name:
        raise StudentError(
            f"{what} is {fmt.name} but task {t.name} is {t.group}: a student can only be evaluated on a task "
            f"of its format. Choose a {fmt.name} task: "
            f"{', '.join(n for n, x in datasets.TASKS.items() if x.group == fmt.name) or '(none of the ten)'}."
        )
    return t.name


def run_training_data(run_dir: str | Path) -> TrainingData:
    """The accepted examples of a run (opened read-only) and its format."""
    with RunStore.open(run_dir, readonly=True) as store:
        run = store.run()
        examples = store.examples()
    fmt = TaskFormat.parse(run["task_format"]) if run.get("task_format") else (
        examples[0].infer_format() if examples else None)
    if fmt is None:
        raise StudentError(f"The run at {run_dir} has no task format and no examples; nothing to train on.")
    return TrainingData(examples, fmt, "run", str(run["id"]), bool(run.get("simulated")))


def file_training_data(path: str | Path) -> TrainingData:
    examples, fmt = load_examples(path)
    return TrainingData(examples, fmt, "data", str(path), False)


def human_training_data(task: str, data_dir: str | Path | None = None, limit: int | None = None) -> TrainingData:
    examples, fmt, note = datasets.load_split(task, "train", data_dir, limit=limit)
    return TrainingData(examples, fmt, "human", datasets.get_task(task).name, False, note)


def infer_task(fmt: TaskFormat, folder: str | Path) -> str:
    """The task for a run given without --task: the dataset its seeds came from (config
    ``seeds_from`` or ``task``), else the only dataset of its group, else an error."""
    require_choice_format(fmt, f"The data in {folder}")
    config: Any = {}
    if (Path(folder) / DB_NAME).is_file():
        try:
            with RunStore.open(folder, readonly=True) as store:
                config = store.run()["config"]
        except RunNotFoundError:  # a --data/--human folder's database: results, no run
            config = {}
    for key in ("seeds_from", "task"):
        name = config.get(key) if isinstance(config, dict) else None
        if isinstance(name, str) and name.strip():
            try:
                return check_task_matches(name, fmt, f"The run at {folder}")
            except (StudentError, datasets.DatasetError):
                break
    names = [n for n, t in datasets.TASKS.items() if t.group == fmt.name]
    if len(names) == 1:
        return names[0]
    raise StudentError(
        f"Say which task to train for with --task (the {fmt.name} data in {folder} fits: "
        f"{', '.join(names) or 'none of the ten benchmark tasks'})."
    )


def train(
    data: TrainingData,
    student: str,
    task: str,
    folder: str | Path,
    seed: int = 0,
    data_dir: str | Path | None = None,
    on_progress: ProgressCallback | None = None,
    **student_kwargs: Any,
) -> Trained:
    """Fit ``student`` on ``data`` (dev of ``task`` for model selection) and save it under ``folder``.

    Everything is checked before anything is written: a failed check leaves no folder.
    """
    task = check_task_matches(task, data.fmt, f"The {data.source} data ({data.source_ref})")
    need = min_train_examples(student)
    if len(data.examples) < need:
        raise StudentError(
            f"{data.source_ref} holds {len(data.examples)} examples; the {student} student needs at least {need}. "
            "Create more examples (raise the run's caps) or choose another source."
        )
    dev: list[Example] | None
    if data.source == "human" and not datasets.has_train(task, data_dir):
        dev = None  # the training pool IS the dev split: the student holds out part of it instead
    else:
        dev, _fmt, _dev_note = datasets.load_split(task, "dev", data_dir)
    model = get_student(student, **student_kwargs)
    t0 = time.perf_counter()
    model.fit(data.examples, dev, seed=seed, on_progress=on_progress)
    seconds = time.perf_counter() - t0
    path = student_dir(folder, student, task, seed)
    model.save(path)
    trained = Trained(path, student, task, seed, data.source, data.source_ref, len(data.examples), round(seconds, 3),
                      data.simulated, data.note, getattr(model, "info", None))
    meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(trained).items()}
    (path / TRAINING_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return trained


def read_trained(path: str | Path) -> Trained:
    path = Path(path)
    try:
        meta = json.loads((path / TRAINING_FILE).read_text(encoding="utf-8"))
        meta["path"] = path
        return Trained(**meta)
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise StudentError(f"{path} has no readable {TRAINING_FILE} ({exc}); retrain it with `treegen train`.") from None


def find_trained(folder: str | Path, task: str | None = None, student: str | None = None) -> list[Trained]:
    root = Path(folder) / "students"
    found = []
    for p in sorted(root.glob("*/" + TRAINING_FILE)) if root.is_dir() else []:
        t = read_trained(p.parent)
        if (task is None or t.task == datasets.get_task(task).name) and (student is None or t.student == student):
            found.append(t)
    return found


def results_store(folder: str | Path) -> RunStore:
    """The folder's database, writable: a run's, or one created for --data/--human results."""
    try:
        return RunStore.open_results(folder)
    except RunNotFoundError:
        # Workaround until RunStore.open_results reopens a results-only database (treegen's
        # tables, no run row: a --data/--human folder) instead of refusing it as "holds no run".
        folder = Path(folder)
        db_path = folder / DB_NAME if folder.suffix != ".db" else folder
        store = RunStore(sqlite3.connect(str(db_path), isolation_level=None), db_path)
        if not store.has_table("student_results"):
            store.close()
            raise
        return store


def evaluate(
    trained: Trained,
    store: RunStore | None = None,
    split: str = "test",
    data_dir: str | Path | None = None,
    limit: int | None = None,
    on_progress: ProgressCallback | None = None,
    datasets_to_eval: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Accuracy on the ID task and every OOD task of its group; rows stored in ``store`` when given.

    All splits are loaded and scored before the first row is written.
    """
    model = load_student(trained.path)
    names = datasets_to_eval or [trained.task, *datasets.ood_tasks(trained.task)]
    rows = []
    for name in names:
        examples, _fmt, note = datasets.load_split(name, split, data_dir, limit=limit, sample=True)
        t0 = time.perf_counter()
        pred = model.predict(examples, on_progress=on_progress)
        seconds = time.perf_counter() - t0
        acc = sum(p == e.label for p, e in zip(pred, examples)) / len(examples)
        rows.append({
            "created_at": utcnow(), "source": trained.source, "source_ref": trained.source_ref,
            "student": trained.student, "student_path": str(trained.path), "task": trained.task,
            "dataset": datasets.get_task(name).name, "role": "id" if name == trained.task else "ood",
            "split": split, "accuracy": acc, "n": len(examples),
            "majority": datasets.test_majority_floor(examples), "n_train": trained.n_train,
            "seed": trained.seed, "seconds": round(seconds, 3), "train_seconds": trained.train_seconds,
            "simulated": int(trained.simulated), "note": "; ".join(filter(None, [trained.note, note])),
        })
    if store is not None:
        store.insert_student_results(rows)
    return rows


def stored_results(store: RunStore, task: str | None = None, student: str | None = None) -> list[dict[str, Any]]:
    """Student results stored in ``store``, oldest first, for a task and/or student."""
    return store.student_results(task=datasets.get_task(task).name if task else None, student=student)
