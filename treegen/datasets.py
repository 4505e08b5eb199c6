"""The ten benchmark datasets of Lee et al. (EMNLP 2023): registry, loading, seeds, fetching.

Layout (as in github.com/microsoft/llm-data-creation, folder ``data/``):
``<data dir>/<group>/<dataset>/<split>.jsonl``. BoolQ sits in two groups, so its task names are
``boolq_open`` and ``boolq_close`` (or ``yesno_open/boolq``); a bare ``boolq`` is ambiguous.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from treegen.errors import DatasetError
from treegen.task import DUPLICATE_OPTIONS, Example, InvalidExample, TaskFormat, example_from_dict, iter_jsonl

GROUPS: dict[str, list[str]] = {
    "mcqa_2": ["piqa", "winogrande"],
    "mcqa_5": ["csqa", "riddle_sense"],
    "yesno_open": ["boolq", "pubmedqa", "bioasq"],
    "yesno_close": ["boolq", "strategyqa", "creak"],
}
SPLITS = ("train", "dev", "test")
DEFAULT_FETCH_URL = "https://raw.githubusercontent.com/microsoft/llm-data-creation/main/data"
# The upstream repository ships no training file for these two (too large for it).
KNOWN_MISSING = {("mcqa_2", "piqa", "train"), ("yesno_open", "boolq", "train")}
# The paper's poster: RoBERTa-large trained on the human training set, test accuracy %.
PAPER_ROBERTA_LARGE = {
    "piqa": 80.95, "winogrande": 51.41, "csqa": 68.17, "riddle_sense": 56.48,
    "boolq_open": 85.62, "pubmedqa": 55.20, "bioasq": 87.14,
    "boolq_close": 65.68, "strategyqa": 49.56, "creak": 81.19,
}


@dataclass(frozen=True)
class Task:
    name: str  # canonical task name: csqa, boolq_open, ...
    group: str  # folder and task format: mcqa_5, yesno_open, ...
    dataset: str  # folder name inside the group

    @property
    def format(self) -> TaskFormat:
        return TaskFormat.parse(self.group)


def _build_tasks() -> dict[str, Task]:
    tasks: dict[str, Task] = {}
    for group, names in GROUPS.items():
        for ds in names:
            name = ds if ds != "boolq" else f"boolq_{group.split('_')[1]}"
            tasks[name] = Task(name, group, ds)
    return tasks


TASKS: dict[str, Task] = _build_tasks()


def get_task(task: str) -> Task:
    """Resolve ``csqa``, ``boolq_open`` or ``yesno_open/boolq`` to a Task; DatasetError otherwise."""
    key = task.strip().lower()
    if "/" in key:
        group, _, ds = key.partition("/")
        for t in TASKS.values():
            if t.group == group and t.dataset == ds:
                return t
    elif key in TASKS:
        return TASKS[key]
    elif key == "boolq":
        raise DatasetError(
            "`boolq` is in two groups: say boolq_open (with the passage) or boolq_close "
            "(question only), or yesno_open/boolq / yesno_close/boolq."
        )
    raise DatasetError(f"Unknown task {task!r}. Choose one of: {', '.join(TASKS)}.")


def task_group(task: str) -> str:
    return get_task(task).group


def ood_tasks(task: str) -> list[str]:
    """The other tasks of the same group: their test splits are the OOD evaluation."""
    t = get_task(task)
    return [o.name for o in TASKS.values() if o.group == t.group and o.name != t.name]


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def data_dir(explicit: str | Path | None = None) -> Path:
    """Dataset folder: the flag, else $TREEGEN_DATA_DIR, else ../shared/datasets beside the repo."""
    if explicit:
        path, origin = Path(explicit), "--data-dir"
    elif os.environ.get("TREEGEN_DATA_DIR"):
        path, origin = Path(os.environ["TREEGEN_DATA_DIR"]), "TREEGEN_DATA_DIR"
    else:
        path, origin = _repo_root().parent / "shared" / "datasets", "the default"
    if not path.is_dir():
        raise DatasetError(
            f"No dataset folder at {path} ({origin}). Download the datasets with "
            "`treegen data fetch --data-dir DIR`, then pass --data-dir DIR or set TREEGEN_DATA_DIR=DIR."
        )
    return path


def split_path(task: str, split: str, data_dir_: str | Path | None = None) -> Path:
    t = get_task(task)
    if split not in SPLITS:
        raise DatasetError(f"Unknown split {split!r}: use one of {', '.join(SPLITS)}.")
    return data_dir(data_dir_) / t.group / t.dataset / f"{split}.jsonl"


def benchmark_example(obj: object, fmt: TaskFormat | None = None) -> Example:
    """Like example_from_dict, but keeps benchmark rows whose options repeat (CSQA has a few):
    the test set is scored as published, not trimmed."""
    try:
        return example_from_dict(obj, fmt)
    except InvalidExample as exc:
        if exc.reason != DUPLICATE_OPTIONS or not isinstance(obj, dict):
            raise
        renamed = [f"{o} ({i})" for i, o in enumerate(obj["options"])]
        label = str(obj["label"]).strip()
        first = next((r for o, r in zip(obj["options"], renamed) if str(o).strip() == label), label)
        lenient = dict(obj, options=renamed, label=first)
        ex = example_from_dict(lenient, None if fmt is None else fmt)  # validates everything else
        options = tuple(str(o).strip() for o in obj["options"])
        return Example(ex.question, options, str(obj["label"]).strip(), ex.context)


def read_split_file(path: Path, fmt: TaskFormat, limit: int | None = None) -> tuple[list[Example], int]:
    """Examples of one file and the number of lines skipped as invalid for the format."""
    examples: list[Example] = []
    skipped = 0
    for _lineno, obj in iter_jsonl(path):
        try:
            examples.append(benchmark_example(obj, fmt))
        except InvalidExample:
            skipped += 1  # a benchmark row we cannot use (e.g. two equal options): left out, counted
        if limit is not None and len(examples) >= limit:
            break
    return examples, skipped


def load_split(
    task: str, split: str, data_dir: str | Path | None = None, limit: int | None = None, sample: bool = False
) -> tuple[list[Example], TaskFormat, str]:
    """The examples of one split, the task format, and a note (fallback used, rows skipped).

    ``limit`` keeps the first rows (fast, for training slices); with ``sample=True`` it keeps a
    seeded random sample in file order instead (for evaluation: some files are sorted by
    label, e.g. PubMedQA test starts with 276 True rows).
    """
    t = get_task(task)
    path = split_path(task, split, data_dir)
    note = ""
    if not path.is_file() and split == "train":
        dev = path.with_name("dev.jsonl")
        if dev.is_file():
            note = f"{t.name} has no train split here: using dev"
            path = dev
    if not path.is_file():
        fix = "run `treegen data fetch`" if (t.group, t.dataset, split) not in KNOWN_MISSING else "use another split"
        raise DatasetError(f"No {split} split for {t.name}: {path} is missing; {fix}.")
    examples, skipped = read_split_file(path, t.format, None if sample else limit)
    if sample and limit is not None and len(examples) > limit:
        keep = sorted(random.Random(0).sample(range(len(examples)), limit))
        examples = [examples[i] for i in keep]
        note = "; ".join(filter(None, [note, f"random sample of {limit} rows"]))
    if skipped:
        note = "; ".join(filter(None, [note, f"{skipped} invalid rows skipped"]))
    if not examples:
        raise DatasetError(f"{path} holds no usable {t.group} examples; re-download it with `treegen data fetch`.")
    return examples, t.format, note


def has_train(task: str, data_dir: str | Path | None = None) -> bool:
    """Whether the task has its own training file (else load_split falls back to dev)."""
    return split_path(task, "train", data_dir).is_file()


def sample_seeds(task: str, n: int, seed: int, data_dir: str | Path | None = None) -> list[Example]:
    """``n`` examples drawn reproducibly from the training split (dev where there is none)."""
    if n < 1:
        raise DatasetError(f"--n must be at least 1 (got {n}).")
    examples, _fmt, _note = load_split(task, "train", data_dir)
    if n > len(examples):
        raise DatasetError(f"{task} has {len(examples)} training examples, fewer than the {n} asked; lower --n.")
    return random.Random(seed).sample(examples, n)


def majority_accuracy(train: list[Example], test: list[Example]) -> float:
    """Accuracy of always answering the most frequent label (yes/no) or option position (mcqa)."""
    if not test:
        return 0.0
    if test[0].options == ("True", "False"):
        keys_train = [e.label for e in train] or [e.label for e in test]
        best = max(set(keys_train), key=keys_train.count)
        return sum(e.label == best for e in test) / len(test)
    pos_train = [e.label_index for e in train] or [e.label_index for e in test]
    best_pos = max(set(pos_train), key=pos_train.count)
    return sum(e.label_index == best_pos for e in test) / len(test)


def test_majority_floor(test: list[Example]) -> float:
    """The PGR floor: majority-class accuracy measured on the test split itself."""
    return majority_accuracy(test, test)


def list_datasets(data_dir_: str | Path | None = None) -> list[dict]:
    """One row per task and split: rows on disk (None when missing) and a note."""
    root = data_dir(data_dir_)
    rows = []
    for t in TASKS.values():
        for split in SPLITS:
            path = root / t.group / t.dataset / f"{split}.jsonl"
            n = None
            note = ""
            if path.is_file():
                with path.open("rb") as fh:
                    n = sum(1 for line in fh if line.strip())
            elif (t.group, t.dataset, split) in KNOWN_MISSING:
                note = "missing (not in the public copy): dev is used for training"
            else:
                note = "missing: run `treegen data fetch`"
            rows.append({"group": t.group, "task": t.name, "split": split, "rows": n, "note": note})
    return rows


def fetch(
    base_url: str = DEFAULT_FETCH_URL,
    dest: str | Path | None = None,
    manifest: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> list[dict]:
    """Download every split to ``dest``, check each line parses, and sha256 when ``manifest`` has it.

    Files go to a temporary name and are renamed only once checked. Known-missing upstream
    files are skipped. Returns one row per file: path, rows, sha256, status.
    """
    if dest is None:
        dest = Path(os.environ.get("TREEGEN_DATA_DIR") or _repo_root().parent / "shared" / "datasets")
    dest = Path(dest)
    base = base_url.rstrip("/")
    results: list[dict[str, Any]] = []
    for t in TASKS.values():
        for split in SPLITS:
            rel = f"{t.group}/{t.dataset}/{split}.jsonl"
            if (t.group, t.dataset, split) in KNOWN_MISSING:
                results.append({"path": rel, "rows": None, "sha256": "", "status": "not published upstream"})
                continue
            try:
                with urllib.request.urlopen(f"{base}/{rel}", timeout=timeout) as resp:
                    data = resp.read()
            except (urllib.error.URLError, OSError) as exc:
                raise DatasetError(f"Could not download {base}/{rel}: {exc}. Check --url and the network.") from None
            digest = hashlib.sha256(data).hexdigest()
            if manifest and rel in manifest and manifest[rel] != digest:
                raise DatasetError(f"{rel}: sha256 {digest} does not match the manifest; the mirror is corrupt or changed.")
            fmt = t.format
            n = 0
            for lineno, line in enumerate(data.decode("utf-8", errors="strict").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    benchmark_example(json.loads(line))
                except (json.JSONDecodeError, InvalidExample) as exc:
                    raise DatasetError(f"{base}/{rel} line {lineno} is not a valid {fmt.name} example ({exc}); "
                                       "the download is corrupt, try again or another --url.") from None
                n += 1
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".part")
            tmp.write_bytes(data)
            tmp.replace(target)
            results.append({"path": rel, "rows": n, "sha256": digest, "status": "ok"})
    return results
