"""Students: small models trained on created (or human) examples, one interface.

Multiple choice is modelled as choosing among the options of each question: every option gets
a feature vector, and a linear scorer is trained on the DIFFERENCE between the right option's
features and each wrong option's (pairwise ranking, symmetric, no intercept). Features shared
by all options of a question cancel, so the model learns what makes an option better than its
siblings — scoring (question, option) pairs independently gets CommonsenseQA below chance.
Scores are a softmax over the options of each question. Yes/no is a plain binary classifier
whose two scores are P(True), P(False).

Registry: ``lexical`` (hashed n-grams, seconds), ``minilm-frozen`` (frozen all-MiniLM-L6-v2
embeddings + the same linear heads), ``minilm-ft`` (fine-tuned transformer, in
``treegen/students_ft.py``).
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import scipy.sparse as sp

from treegen.errors import ConfigError, StudentError
from treegen.examples import YESNO_OPTIONS, Example, TaskFormat

META_FILE = "treegen_student.json"
META_VERSION = 1


class Student(Protocol):
    name: str

    def fit(
        self, train: list[Example], dev: list[Example] | None = None, seed: int = 0, progress: bool = False
    ) -> "Student": ...

    def score(self, examples: list[Example]) -> list[list[float]]: ...

    def predict(self, examples: list[Example]) -> list[str]: ...

    def save(self, path: str | Path) -> None: ...


# ---------------------------------------------------------------- helpers shared by students


def is_yesno(examples: list[Example]) -> bool:
    return bool(examples) and tuple(examples[0].options) == YESNO_OPTIONS


def check_train(name: str, train: list[Example], dev: list[Example] | None = None) -> TaskFormat:
    """The task format of ``train``; StudentError when it cannot train a student."""
    need = min_train_examples(name)
    if len(train) < need:
        raise StudentError(
            f"The {name} student needs at least {need} training examples, got {len(train)}. "
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


def min_train_examples(name: str) -> int:
    """Fewest training examples a student accepts (it needs both labels / a dev hold-out)."""
    if name not in STUDENTS:
        raise ConfigError(f"Unknown student {name!r}. Choose one of: {', '.join(STUDENTS)}.")
    return {"lexical": 8, "minilm-frozen": 8, "minilm-ft": 16}.get(name, 8)


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


@contextlib.contextmanager
def progress_bar(enabled: bool, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar when enabled; yields ``advance(n)`` (a no-op when disabled)."""
    if not enabled:
        yield lambda n=1: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=False) as prog:
        task = prog.add_task(description, total=total)
        yield lambda n=1: prog.advance(task, n)


def _fit_lr(X: Any, y: np.ndarray, C: float, seed: int, intercept: bool) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression

    solver = "liblinear" if sp.issparse(X) else "lbfgs"
    lr = LogisticRegression(C=C, fit_intercept=intercept, solver=solver, max_iter=2000, random_state=seed)
    lr.fit(X, y)
    coef = lr.coef_[0].astype(np.float64)
    # liblinear/lbfgs order classes [0, 1]; coef points towards class 1 (True / the right option).
    return coef, float(lr.intercept_[0]) if intercept else 0.0


def write_meta(path: Path, meta: dict[str, Any]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / META_FILE).write_text(json.dumps({"version": META_VERSION, **meta}, indent=2), encoding="utf-8")


def read_meta(path: str | Path) -> dict[str, Any]:
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
    if not isinstance(meta, dict) or meta.get("student") not in STUDENTS:
        raise StudentError(f"{meta_path} names no known student. Delete {path} and retrain with `treegen train`.")
    return meta


# ---------------------------------------------------------------- linear students


class LinearStudent:
    """Shared machinery: per-option (mcqa) or per-example (yes/no) features + logistic regression.

    Subclasses give ``_yesno_features`` and ``_option_features``; C is picked on dev when given.
    """

    name = "linear"
    C_GRID = (0.1, 0.3, 1.0, 3.0)

    def __init__(self, C: float | None = None):
        self.C = C
        self.fmt: TaskFormat | None = None
        self.coef: np.ndarray | None = None
        self.intercept = 0.0
        self.info: dict[str, Any] = {}

    # features ------------------------------------------------------------
    def _yesno_features(self, examples: list[Example], progress: bool) -> Any:
        raise NotImplementedError

    def _option_features(self, examples: list[Example], progress: bool) -> Any:
        raise NotImplementedError

    def _prepare(self, train: list[Example]) -> None:
        """Fit any data-dependent featurizer state (idf weights)."""

    # interface -----------------------------------------------------------
    def fit(self, train: list[Example], dev: list[Example] | None = None, seed: int = 0,
            progress: bool = False) -> "LinearStudent":
        self.fmt = check_train(self.name, train, dev)
        yesno = self.fmt.kind == "yesno"
        self._prepare(train)
        if yesno:
            X = self._yesno_features(train, progress)
            y = np.array([e.label == "True" for e in train], dtype=float)
        else:
            X, y = pairwise_design(self._option_features(train, progress), train)
        grid = [self.C] if self.C is not None else list(self.C_GRID)
        dev = [e for e in (dev or []) if is_yesno([e]) == yesno]
        if len(grid) > 1 and not dev:
            grid = [1.0]
        Xdev = None
        if len(grid) > 1:
            Xdev = self._yesno_features(dev, progress) if yesno else self._option_features(dev, progress)
        best: tuple[float, float, np.ndarray, float] | None = None
        with progress_bar(progress, f"training {self.name}", len(grid)) as advance:
            for C in grid:
                coef, b = _fit_lr(X, y, C, seed, intercept=yesno)
                acc = 0.0
                if Xdev is not None:
                    self.coef, self.intercept = coef, b
                    acc = self._accuracy_from(Xdev, dev)
                if best is None or acc > best[0]:
                    best = (acc, C, coef, b)
                advance(1)
        assert best is not None
        _acc, self.C, self.coef, self.intercept = best
        self.info = {"n_train": len(train), "C": self.C, "dev_accuracy": _acc if Xdev is not None else None}
        return self

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
        if examples and is_yesno(examples) != (self.fmt.kind == "yesno"):
            raise StudentError(
                f"This student was trained on {self.fmt.name} data and cannot score "
                f"{examples[0].infer_format().name} examples; evaluate it on a task of its format."
            )

    def score(self, examples: list[Example], progress: bool = False) -> list[list[float]]:
        self._check_ready(examples)
        if not examples:
            return []
        assert self.fmt is not None
        if self.fmt.kind == "yesno":
            return self._scores_from(self._yesno_features(examples, progress), examples)
        return self._scores_from(self._option_features(examples, progress), examples)

    def predict(self, examples: list[Example], progress: bool = False) -> list[str]:
        return argmax_options(examples, self.score(examples, progress))

    # persistence -----------------------------------------------------------
    def _extra_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def _load_extra(self, arrays: Any) -> None:
        pass

    def save(self, path: str | Path) -> None:
        self._check_ready([])
        assert self.fmt is not None and self.coef is not None
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        # npz, not pickle: a saved student is data and loading it runs no code.
        np.savez_compressed(path / "weights.npz", coef=self.coef, intercept=np.array([self.intercept]),
                            **self._extra_arrays())
        write_meta(path, {"student": self.name, "format": self.fmt.name, "C": self.C, "info": self.info})

    @classmethod
    def load(cls, path: str | Path) -> "LinearStudent":
        meta = read_meta(path)
        student = cls(C=meta.get("C"))
        try:
            with np.load(Path(path) / "weights.npz") as arrays:
                student.coef = arrays["coef"]
                student.intercept = float(arrays["intercept"][0])
                student._load_extra(arrays)
            student.fmt = TaskFormat.parse(meta["format"])
        except Exception as exc:  # noqa: BLE001 - any unreadable file means a corrupt folder
            raise StudentError(f"{path}: the saved weights are missing or corrupt ({exc}). Retrain with `treegen train`.") from None
        student.info = meta.get("info", {})
        return student


_TOKEN = re.compile(r"(?u)\b\w+\b")
_STOP = frozenset(
    "a an the of to in on at for from by with and or but is are was were be been being it its this that these those "
    "what which who whom whose where when why how do does did can could would should will shall may might must "
    "i you he she we they me him her us them my your his our their as if than then so not no there here into".split()
)


def _words(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class LexicalStudent(LinearStudent):
    """Hashed word n-grams (no vocabulary to store) + logistic regression; seconds per dataset.

    Multiple choice features of an option: n-grams (1-3) of the question completed by the option
    (after differencing only those touching the option survive), question-word × option-word
    pairs (associations such as "money" → "bank"), and a few dense cues (overlap with the
    question, length, words shared with the sibling options, position).
    """

    name = "lexical"
    N_FEATURES = 2**20

    def __init__(self, C: float | None = None):
        super().__init__(C)
        self.idf: np.ndarray | None = None

    def _hv(self, ngrams: tuple[int, int]) -> Any:
        from sklearn.feature_extraction.text import HashingVectorizer

        return HashingVectorizer(n_features=self.N_FEATURES, ngram_range=ngrams, alternate_sign=False,
                                 norm=None, binary=True, token_pattern=r"(?u)\b\w+\b")

    def _yesno_raw(self, examples: list[Example]) -> Any:
        hv = self._hv((1, 2))
        Xq = hv.transform([e.question for e in examples])
        parts = [Xq]
        if any(e.context for e in examples):
            # Context words in their own hash space ("c:" prefix) and question words found in it.
            parts.append(hv.transform([" ".join("c_" + w for w in _words(e.context or "")) for e in examples]))
            parts.append(hv.transform([
                " ".join("inctx_" + w for w in set(_words(e.question)) - _STOP if w in set(_words(e.context or "")))
                for e in examples
            ]))
        return sp.hstack(parts).tocsr()

    def _prepare(self, train: list[Example]) -> None:
        self.idf = None
        if is_yesno(train):
            X = self._yesno_raw(train)
            df = np.bincount(X.indices, minlength=X.shape[1])
            self.idf = (np.log((1 + len(train)) / (1 + df)) + 1).astype(np.float32)

    def _yesno_features(self, examples: list[Example], progress: bool) -> Any:
        from sklearn.preprocessing import normalize

        X = self._yesno_raw(examples)
        if self.idf is not None and self.idf.shape[0] == X.shape[1]:
            X = X @ sp.diags(self.idf)
        return normalize(X)

    def _option_features(self, examples: list[Example], progress: bool) -> Any:
        hv = self._hv((1, 3))
        filled, cross, dense = [], [], []
        for ex in examples:
            q_words = [w for w in _words(ex.question + " " + (ex.context or "")) if w not in _STOP]
            q_set = set(q_words)
            opt_sets = [set(_words(o)) for o in ex.options]
            for j, opt in enumerate(ex.options):
                filled.append(filled_text(ex, opt))
                o_words = [w for w in _words(opt) if w not in _STOP] or _words(opt)
                cross.append(" ".join(f"{q}x{o}" for q in q_words[:40] for o in o_words[:20]))
                others = set().union(*(s for k, s in enumerate(opt_sets) if k != j)) if len(opt_sets) > 1 else set()
                ow = opt_sets[j] or {""}
                pos = [0.0] * 5
                pos[min(j, 4)] = 1.0
                dense.append([
                    len(ow & q_set) / len(ow),  # option repeats the question: usually a distractor
                    np.log1p(len(_words(opt))),
                    len(ow & others) / len(ow),  # shares words with siblings: typical of the answer
                    *pos,
                ])
        X = sp.hstack([
            hv.transform(filled),
            hv.transform(cross),
            sp.csr_matrix(np.array(dense, dtype=np.float64)),
        ]).tocsr()
        return X

    def _extra_arrays(self) -> dict[str, np.ndarray]:
        return {"idf": self.idf} if self.idf is not None else {}

    def _load_extra(self, arrays: Any) -> None:
        self.idf = arrays["idf"] if "idf" in arrays.files else None


class MiniLMFrozenStudent(LinearStudent):
    """Frozen all-MiniLM-L6-v2 sentence embeddings + a linear head (pairwise for mcqa).

    Option features: embedding of the completed question, of the option, and the element-wise
    product of question and option embeddings, plus their cosine. Yes/no: question embedding
    (and, with a context, the context embedding and the product of the two).
    """

    name = "minilm-frozen"
    C_GRID = (0.3, 1.0, 3.0, 10.0)

    def _embed(self, texts: list[str], progress: bool, what: str) -> np.ndarray:
        from treegen.embedders import get_embedder

        emb = get_embedder("minilm")
        chunk = 512
        out = []
        with progress_bar(progress, f"embedding {what}", len(texts)) as advance:
            for start in range(0, len(texts), chunk):
                part = texts[start : start + chunk]
                out.append(emb.embed(part))
                advance(len(part))
        return np.vstack(out) if out else np.zeros((0, 384), dtype=np.float32)

    def _yesno_features(self, examples: list[Example], progress: bool) -> Any:
        q = self._embed([e.question for e in examples], progress, "questions")
        if not any(e.context for e in examples):
            return q
        c = self._embed([e.context or "" for e in examples], progress, "contexts")
        return np.hstack([q, c, q * c * 10.0])

    def _option_features(self, examples: list[Example], progress: bool) -> Any:
        questions = [(e.context + " " if e.context else "") + e.question for e in examples]
        q = self._embed(questions, progress, "questions")
        reps = [len(e.options) for e in examples]
        qrep = np.repeat(q, reps, axis=0)
        o = self._embed([opt for e in examples for opt in e.options], progress, "options")
        f = self._embed([filled_text(e, opt) for e in examples for opt in e.options], progress, "question+option")
        cos = (qrep * o).sum(1, keepdims=True)
        # The product is scaled up: unit vectors give tiny products that L2 would otherwise ignore.
        return np.hstack([f, o, qrep * o * 10.0, cos])


def _ft_class() -> Any:
    from treegen.students_ft import FineTunedStudent

    return FineTunedStudent


class _Lazy:
    """Registry entry that imports the fine-tuned student (torch, transformers) only when used."""

    def __init__(self, loader: Callable[[], Any]):
        self._loader = loader

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._loader()(*args, **kwargs)

    def load(self, path: str | Path) -> Any:
        return self._loader().load(path)


STUDENTS: dict[str, Any] = {
    "lexical": LexicalStudent,
    "minilm-frozen": MiniLMFrozenStudent,
    "minilm-ft": _Lazy(_ft_class),
}


def get_student(name: str, **kwargs: Any) -> Student:
    """A new, untrained student; ConfigError naming the choices for an unknown name."""
    if name not in STUDENTS:
        raise ConfigError(f"Unknown student {name!r}. Choose one of: {', '.join(STUDENTS)}.")
    try:
        return STUDENTS[name](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"Bad option for the {name} student: {exc}.") from None


def load_student(path: str | Path) -> Student:
    """A trained student saved with ``save``; StudentError for a missing or corrupt folder."""
    meta = read_meta(path)
    return STUDENTS[meta["student"]].load(path)


def accuracy(student: Student, examples: list[Example]) -> float:
    if not examples:
        raise StudentError("No examples to evaluate on.")
    pred = student.predict(examples)
    return float(np.mean([p == e.label for p, e in zip(pred, examples)]))
