"""What every student shares: the interface, progress reporting, saving, and the linear machinery.

Multiple choice is modelled as choosing among the options of each question: every option gets
a feature vector, and a linear scorer is trained on the DIFFERENCE between the right option's
features and each wrong option's (pairwise ranking, symmetric, no intercept). Features shared
by all options of a question cancel, so the model learns what makes an option better than its
siblings — scoring (question, option) pairs independently gets CommonsenseQA below chance.
Scores are a softmax over the options of each question. Yes/no is a plain binary classifier
whose two scores are P(True), P(False).

This module imports no student and no registry (``treegen.students`` does): the student
modules import it, never each other, so there is no import cycle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, ClassVar, Collection, Protocol

import numpy as np
import scipy.sparse as sp

from treegen.errors import StudentError
from treegen.task import YESNO_OPTIONS, Example, TaskFormat

META_FILE = "treegen_student.json"
META_VERSION = 1

# on_progress(done, total, what): called as work advances; the CLI renders it, the library never prints.
ProgressCallback = Callable[[int, int, str], None]


class Student(Protocol):
    """A trainable model of one task format; ``min_train`` and ``options`` are class attributes."""

    name: ClassVar[str]
    min_train: ClassVar[int]  # fewest training examples it accepts
    options: ClassVar[dict[str, type]]  # keyword options of the constructor and their types
    info: dict[str, Any]

    def fit(self, train: list[Example], dev: list[Example] | None = None, seed: int = 0,
            on_progress: ProgressCallback | None = None) -> "Student": ...

    def score(self, examples: list[Example], on_progress: ProgressCallback | None = None) -> list[list[float]]: ...

    def predict(self, examples: list[Example], on_progress: ProgressCallback | None = None) -> list[str]: ...

    def save(self, path: str | Path) -> None: ...


# ---------------------------------------------------------------- progress


def progress_counter(on_progress: ProgressCallback | None, total: int, what: str) -> Callable[[int], None]:
    """``advance(n)``: adds n to a running count and reports it (a no-op without a callback)."""
    if on_progress is None:
        return _ignore
    done = 0
    on_progress(0, total, what)

    def advance(n: int = 1) -> None:
        nonlocal done
        done += n
        on_progress(done, total, what)

    return advance


def _ignore(n: int = 1) -> None:
    """``advance`` when nobody listens."""


# ---------------------------------------------------------------- helpers shared by students


def is_yesno(examples: list[Example]) -> bool:
    return bool(examples) and tuple(examples[0].options) == YESNO_OPTIONS


def require_choice_format(fmt: TaskFormat, what: str = "The data") -> None:
    """StudentError unless ``fmt`` has options: students choose among options, so a numeric
    task (a number for an answer, no options) cannot train or evaluate one."""
    if not fmt.has_options:
        raise StudentError(
            f"{what} is {fmt.name} (the answer is a number, there are no options): students need a "
            "multiple-choice or yes/no task. Train a student on an mcqa_K or yesno run, data file or --human task."
        )


def check_train(name: str, min_train: int, train: list[Example], dev: list[Example] | None = None) -> TaskFormat:
    """The task format of ``train``; StudentError when it cannot train the ``name`` student."""
    if train:
        require_choice_format(train[0].infer_format(), f"The training data of the {name} student")
    if len(train) < min_train:
        raise StudentError(
            f"The {name} student needs at least {min_train} training examples, got {len(train)}. "
            "Create more examples (a larger run) or train on --human data."
        )
    fmt = train[0].infer_format()
    kinds = {(tuple(e.options) == YESNO_OPTIONS) for e in train + list(dev or [])}
    if len(kinds) != 1:
        raise StudentError("The training examples mix yes/no and multiple-choice items; train on one task format.")
    if fmt.kind == "yesno" and len({e.label for e in train}) < 2:
        raise StudentError(
            f"All {len(train)} training examples have the label {train[0].label!r}; a classifier needs both "
            "True and False examples. Create more varied data."
        )
    return fmt


def softmax_rows(scores: list[np.ndarray]) -> list[list[float]]:
    out = []
    for s in scores:
        z = np.exp(s - s.max())
        out.append((z / z.sum()).tolist())
    return out


def argmax_options(examples: list[Example], scores: list[list[float]]) -> list[str]:
    return [ex.options[int(np.argmax(s))] for ex, s in zip(examples, scores)]


def filled_text(ex: Example, option: str) -> str:
    """The question completed by the option: into the blank (WinoGrande's ``_``) or appended."""
    q = ex.question
    text = q.replace("_", option, 1) if "_" in q else f"{q} {option}"
    return f"{ex.context} {text}" if ex.context else text


def option_offsets(examples: list[Example]) -> np.ndarray:
    """Row offsets of each example's options in a flat per-option feature matrix."""
    return np.concatenate([[0], np.cumsum([len(e.options) for e in examples])])


def pairwise_design(F: Any, examples: list[Example]) -> tuple[Any, np.ndarray]:
    """Symmetric pairwise-difference rows: right − wrong (label 1) and wrong − right (label 0)."""
    offs = option_offsets(examples)
    right, wrong = [], []
    for i, ex in enumerate(examples):
        r = offs[i] + ex.label_index
        for j, opt in enumerate(ex.options):
            if opt != ex.label:
                right.append(r)
                wrong.append(offs[i] + j)
    D = F[right] - F[wrong]
    X = sp.vstack([D, -D]).tocsr() if sp.issparse(D) else np.vstack([D, -D])
    y = np.concatenate([np.ones(len(right)), np.zeros(len(right))])
    return X, y


def grouped_scores(raw: np.ndarray, examples: list[Example]) -> list[list[float]]:
    offs = option_offsets(examples)
    return softmax_rows([raw[offs[i] : offs[i + 1]] for i in range(len(examples))])


def accuracy(student: Student, examples: list[Example]) -> float:
    if not examples:
        raise StudentError("No examples to evaluate on.")
    pred = student.predict(examples)
    return float(np.mean([p == e.label for p, e in zip(pred, examples)]))


def _fit_lr(X: Any, y: np.ndarray, C: float, seed: int, intercept: bool) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression

    solver = "liblinear" if sp.issparse(X) else "lbfgs"
    lr = LogisticRegression(C=C, fit_intercept=intercept, solver=solver, max_iter=2000, random_state=seed)
    lr.fit(X, y)
    coef = lr.coef_[0].astype(np.float64)
    # liblinear/lbfgs order classes [0, 1]; coef points towards class 1 (True / the right option).
    return coef, float(lr.intercept_[0]) if intercept else 0.0


# ---------------------------------------------------------------- saved students


def write_meta(path: Path, meta: dict[str, Any]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / META_FILE).write_text(json.dumps({"version": META_VERSION, **meta}, indent=2), encoding="utf-8")


def read_meta(path: str | Path, known: Collection[str] | None = None) -> dict[str, Any]:
    """The metadata of a saved student; StudentError for a missing or corrupt folder, or (with
    ``known``) one whose student name is not among them."""
    path = Path(path)
    meta_path = path / META_FILE
    if not path.is_dir():
        raise StudentError(f"No student folder at {path}. Train one with `treegen train RUN --student NAME`.")
    if not meta_path.is_file():
        raise StudentError(
            f"{path} is not a treegen student folder ({META_FILE} is missing). Retrain it with `treegen train`."
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StudentError(f"{meta_path} is corrupt ({exc}). Delete {path} and retrain with `treegen train`.") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("student"), str) or (
            known is not None and meta["student"] not in known):
        raise StudentError(f"{meta_path} names no known student. Delete {path} and retrain with `treegen train`.")
    return meta


# ---------------------------------------------------------------- linear students


class LinearStudent:
    """Shared machinery: per-option (mcqa) or per-example (yes/no) features + logistic regression.

    Multiple-choice features come in two blocks: a ``base`` block of relational features (how
    the option relates to the question) and an ``extra`` block that can also memorise which
    options tend to be right. Whether to use the extra block, and C, are chosen on dev (by 5-fold
    cross-validation on train when no dev set is given): on CommonsenseQA and
    RiddleSense, whose test questions share their option sets with training questions that have
    a different answer, memorising options pushes accuracy below chance, and dev shows it.
    """

    name: ClassVar[str] = "linear"
    min_train: ClassVar[int] = 8  # both labels, and something left to select C on
    options: ClassVar[dict[str, type]] = {"C": float, "use_extra": bool}
    C_GRID: tuple[float, ...] = (0.1, 0.3, 1.0)
    # Yes/no features are sparse and high-dimensional: weak regularisation is often best.
    YESNO_C_GRID: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
    CV_FOLDS = 5

    def __init__(self, C: float | None = None, use_extra: bool | None = None):
        self.C = C
        self.use_extra = use_extra
        self.fmt: TaskFormat | None = None
        self.coef: np.ndarray | None = None
        self.intercept = 0.0
        self.info: dict[str, Any] = {}
        self.seed = 0

    # features (subclasses) -----------------------------------------------
    def _yesno_features(self, examples: list[Example], on_progress: ProgressCallback | None) -> Any:
        raise NotImplementedError

    def _option_blocks(self, examples: list[Example], on_progress: ProgressCallback | None,
                       extra: bool = True) -> tuple[Any, Any]:
        """(base, extra) per-option feature blocks; extra is None when not asked for."""
        raise NotImplementedError

    def _prepare(self, train: list[Example]) -> None:
        """Fit any data-dependent featurizer state (idf weights, LSA) on the training examples."""

    def _features(self, examples: list[Example], on_progress: ProgressCallback | None, use_extra: bool) -> Any:
        assert self.fmt is not None
        if self.fmt.kind == "yesno":
            return self._yesno_features(examples, on_progress)
        return _join(*self._option_blocks(examples, on_progress, use_extra), use_extra)

    # interface -----------------------------------------------------------
    def fit(self, train: list[Example], dev: list[Example] | None = None, seed: int = 0,
            on_progress: ProgressCallback | None = None) -> "LinearStudent":
        self.fmt = check_train(self.name, self.min_train, train, dev)
        self.seed = seed
        yesno = self.fmt.kind == "yesno"
        dev = [e for e in (dev or []) if is_yesno([e]) == yesno]
        extras = [False] if yesno else ([self.use_extra] if self.use_extra is not None else [False, True])
        grid = [self.C] if self.C is not None else list(self.YESNO_C_GRID if yesno else self.C_GRID)
        candidates = [(C, ex) for ex in extras for C in grid]
        folds: list[tuple[list[Example], list[Example]]] = []
        if len(candidates) > 1 and dev:
            folds, selection = [(train, dev)], "dev split"
        elif len(candidates) > 1 and len(train) >= 50:
            # No dev set: k-fold cross-validation on train. One held-out fifth was tried first
            # and is too noisy on small sets (BoolQ-open: 327 rows, the grid within 3 answers).
            order = np.random.default_rng(seed).permutation(len(train))
            parts = np.array_split(order, self.CV_FOLDS)
            for k in range(self.CV_FOLDS):
                fit_idx = np.concatenate([parts[j] for j in range(self.CV_FOLDS) if j != k])
                folds.append(([train[i] for i in fit_idx], [train[i] for i in parts[k]]))
            selection = f"{self.CV_FOLDS}-fold cross-validation on train"
        else:
            candidates = [(grid[0] if self.C is not None else 1.0, extras[-1])]
            selection = "none"
        advance = progress_counter(on_progress, len(folds) * len(candidates) + 1, f"training {self.name}")
        acc_sums = np.zeros(len(candidates))
        fitted: list[tuple[np.ndarray, float]] = []
        for fit_on, held in folds:
            accs, fitted = self._try_candidates(fit_on, held, candidates, on_progress, advance)
            acc_sums += accs
        mean_acc = acc_sums / max(1, len(folds))
        best = int(np.argmax(mean_acc))  # first wins ties: the simpler model
        self.C, self.use_extra = candidates[best]
        if selection == "dev split":
            self.coef, self.intercept = fitted[best]  # already fitted on all of train
        else:
            self._prepare(train)
            X = self._features(train, on_progress, bool(self.use_extra))
            if yesno:
                y = np.array([e.label == "True" for e in train], dtype=float)
            else:
                X, y = pairwise_design(X, train)
            self.coef, self.intercept = _fit_lr(X, y, self.C, seed, intercept=yesno)
        advance(1)
        self.info = {
            "n_train": len(train), "C": self.C, "use_extra": self.use_extra, "selection": selection,
            "grid": [{"C": C, "extra": ex, "dev_accuracy": round(float(a), 4)}
                     for (C, ex), a in zip(candidates, mean_acc)] if folds else [],
        }
        return self

    def _try_candidates(self, fit_on: list[Example], held: list[Example], candidates: list[tuple[float, bool]],
                        on_progress: ProgressCallback | None,
                        advance: Callable[[int], None]) -> tuple[np.ndarray, list[tuple[np.ndarray, float]]]:
        """Accuracy on ``held`` of each (C, use_extra) fitted on ``fit_on``, and the fitted weights."""
        yesno = self.fmt is not None and self.fmt.kind == "yesno"
        self._prepare(fit_on)
        if yesno:
            X = self._yesno_features(fit_on, on_progress)
            y = np.array([e.label == "True" for e in fit_on], dtype=float)
            Xh = self._yesno_features(held, on_progress)
        else:
            need = any(ex for _c, ex in candidates)
            blocks = self._option_blocks(fit_on, on_progress, need)
            hblocks = self._option_blocks(held, on_progress, need)
        accs, fitted = [], []
        for C, ex in candidates:
            if not yesno:
                X, y = pairwise_design(_join(*blocks, ex), fit_on)
                Xh = _join(*hblocks, ex)
            self.coef, self.intercept = _fit_lr(X, y, C, self.seed, intercept=yesno)
            accs.append(self._accuracy_from(Xh, held))
            fitted.append((self.coef, self.intercept))
            advance(1)
        return np.array(accs), fitted

    def _raw(self, X: Any) -> np.ndarray:
        return np.asarray(X @ self.coef).ravel() + self.intercept

    def _scores_from(self, X: Any, examples: list[Example]) -> list[list[float]]:
        raw = self._raw(X)
        if self.fmt is not None and self.fmt.kind == "yesno":
            p = 1.0 / (1.0 + np.exp(-raw))
            return [[float(a), float(1 - a)] for a in p]
        return grouped_scores(raw, examples)

    def _accuracy_from(self, X: Any, examples: list[Example]) -> float:
        pred = argmax_options(examples, self._scores_from(X, examples))
        return float(np.mean([p == e.label for p, e in zip(pred, examples)]))

    def _check_ready(self, examples: list[Example]) -> None:
        if self.coef is None or self.fmt is None:
            raise StudentError(f"The {self.name} student is not trained: call fit() or load a saved one.")
        if examples:
            require_choice_format(examples[0].infer_format(), "The data to score")
        if examples and is_yesno(examples) != (self.fmt.kind == "yesno"):
            raise StudentError(
                f"This student was trained on {self.fmt.name} data and cannot score "
                f"{examples[0].infer_format().name} examples; evaluate it on a task of its format."
            )

    def score(self, examples: list[Example], on_progress: ProgressCallback | None = None) -> list[list[float]]:
        self._check_ready(examples)
        if not examples:
            return []
        return self._scores_from(self._features(examples, on_progress, bool(self.use_extra)), examples)

    def predict(self, examples: list[Example], on_progress: ProgressCallback | None = None) -> list[str]:
        return argmax_options(examples, self.score(examples, on_progress))

    # persistence -----------------------------------------------------------
    def _extra_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def _load_extra(self, arrays: Any, meta: dict[str, Any]) -> None:
        pass

    def _extra_meta(self) -> dict[str, Any]:
        return {}

    def save(self, path: str | Path) -> None:
        self._check_ready([])
        assert self.fmt is not None and self.coef is not None
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        # npz, not pickle: a saved student is data and loading it runs no code.
        np.savez_compressed(path / "weights.npz", coef=self.coef, intercept=np.array([self.intercept]),
                            **self._extra_arrays())  # type: ignore[arg-type]
        write_meta(path, {"student": self.name, "format": self.fmt.name, "C": self.C, "use_extra": self.use_extra,
                          "info": self.info, **self._extra_meta()})

    @classmethod
    def load(cls, path: str | Path) -> "LinearStudent":
        meta = read_meta(path, known=(cls.name,))
        student = cls(C=meta.get("C"), use_extra=meta.get("use_extra"))
        try:
            with np.load(Path(path) / "weights.npz", allow_pickle=False) as arrays:
                student.coef = arrays["coef"]
                student.intercept = float(arrays["intercept"][0])
                student._load_extra(arrays, meta)
            student.fmt = TaskFormat.parse(meta["format"])
        except Exception as exc:  # noqa: BLE001 - any unreadable file means a corrupt folder
            raise StudentError(f"{path}: the saved weights are missing or corrupt ({exc}). Retrain with `treegen train`.") from None
        student.info = meta.get("info", {})
        return student


def _join(base: Any, extra: Any, use_extra: bool) -> Any:
    if not use_extra:
        return base
    if sp.issparse(base) or sp.issparse(extra):
        return sp.hstack([sp.csr_matrix(base), extra]).tocsr()
    return np.hstack([base, extra])
