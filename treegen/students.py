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
from treegen.task import YESNO_OPTIONS, Example, TaskFormat

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

    Multiple-choice features come in two blocks: a ``base`` block of relational features (how
    the option relates to the question) and an ``extra`` block that can also memorise which
    options tend to be right. Whether to use the extra block, and C, are chosen on dev (by 5-fold
    cross-validation on train when no dev set is given): on CommonsenseQA and
    RiddleSense, whose test questions share their option sets with training questions that have
    a different answer, memorising options pushes accuracy below chance, and dev shows it.
    """

    name = "linear"
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
    def _yesno_features(self, examples: list[Example], progress: bool) -> Any:
        raise NotImplementedError

    def _option_blocks(self, examples: list[Example], progress: bool, extra: bool = True) -> tuple[Any, Any]:
        """(base, extra) per-option feature blocks; extra is None when not asked for."""
        raise NotImplementedError

    def _prepare(self, train: list[Example]) -> None:
        """Fit any data-dependent featurizer state (idf weights, LSA) on the training examples."""

    def _features(self, examples: list[Example], progress: bool, use_extra: bool) -> Any:
        assert self.fmt is not None
        if self.fmt.kind == "yesno":
            return self._yesno_features(examples, progress)
        return _join(*self._option_blocks(examples, progress, use_extra), use_extra)

    # interface -----------------------------------------------------------
    def fit(self, train: list[Example], dev: list[Example] | None = None, seed: int = 0,
            progress: bool = False) -> "LinearStudent":
        self.fmt = check_train(self.name, train, dev)
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
        total = len(folds) * len(candidates) + 1
        with progress_bar(progress, f"training {self.name}", total) as advance:
            acc_sums = np.zeros(len(candidates))
            fitted: list[tuple[np.ndarray, float]] = []
            for fit_on, held in folds:
                accs, fitted = self._try_candidates(fit_on, held, candidates, progress, advance)
                acc_sums += accs
            mean_acc = acc_sums / max(1, len(folds))
            best = int(np.argmax(mean_acc))  # first wins ties: the simpler model
            self.C, self.use_extra = candidates[best]
            if selection == "dev split":
                self.coef, self.intercept = fitted[best]  # already fitted on all of train
            else:
                self._prepare(train)
                X = self._features(train, progress, bool(self.use_extra))
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
                        progress: bool, advance: Callable[[int], None]) -> tuple[np.ndarray, list[tuple[np.ndarray, float]]]:
        """Accuracy on ``held`` of each (C, use_extra) fitted on ``fit_on``, and the fitted weights."""
        yesno = self.fmt is not None and self.fmt.kind == "yesno"
        self._prepare(fit_on)
        if yesno:
            X = self._yesno_features(fit_on, progress)
            y = np.array([e.label == "True" for e in fit_on], dtype=float)
            Xh = self._yesno_features(held, progress)
        else:
            need = any(ex for _c, ex in candidates)
            blocks = self._option_blocks(fit_on, progress, need)
            hblocks = self._option_blocks(held, progress, need)
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
        if examples and is_yesno(examples) != (self.fmt.kind == "yesno"):
            raise StudentError(
                f"This student was trained on {self.fmt.name} data and cannot score "
                f"{examples[0].infer_format().name} examples; evaluate it on a task of its format."
            )

    def score(self, examples: list[Example], progress: bool = False) -> list[list[float]]:
        self._check_ready(examples)
        if not examples:
            return []
        return self._scores_from(self._features(examples, progress, bool(self.use_extra)), examples)

    def predict(self, examples: list[Example], progress: bool = False) -> list[str]:
        return argmax_options(examples, self.score(examples, progress))

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
                            **self._extra_arrays())
        write_meta(path, {"student": self.name, "format": self.fmt.name, "C": self.C, "use_extra": self.use_extra,
                          "info": self.info, **self._extra_meta()})

    @classmethod
    def load(cls, path: str | Path) -> "LinearStudent":
        meta = read_meta(path)
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


_TOKEN = re.compile(r"(?u)\b\w+\b")
_STOP = frozenset(
    "a an the of to in on at for from by with and or but is are was were be been being it its this that these those "
    "what which who whom whose where when why how do does did can could would should will shall may might must "
    "i you he she we they me him her us them my your his our their as if than then so not no there here into".split()
)


def _words(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class LexicalStudent(LinearStudent):
    """Hashed word n-grams and a small LSA space learnt from the training text; seconds per dataset.

    Multiple choice, base block: relatedness of question and option in an LSA space (50
    dimensions, fitted on the training questions and options, labels unused): their cosine and
    element-wise product, plus a few cues (overlap with the question, length, words shared with
    the sibling options, position). Extra block: n-grams (1-3) of the question completed by
    the option (after differencing only those touching the option survive) and
    question-word × option-word pairs. Yes/no: tf-idf weighted hashed n-grams of the question
    (and of the context, plus question words found in it).
    """

    name = "lexical"
    N_FEATURES = 2**18
    LSA_DIM = 50
    LSA_VOCAB = 30000

    def __init__(self, C: float | None = None, use_extra: bool | None = None):
        super().__init__(C, use_extra)
        self.idf: np.ndarray | None = None
        self.vocab: list[str] | None = None
        self.lsa_idf: np.ndarray | None = None
        self.lsa: np.ndarray | None = None  # (dim, vocab) SVD components

    def _hv(self, ngrams: tuple[int, int]) -> Any:
        from sklearn.feature_extraction.text import HashingVectorizer

        return HashingVectorizer(n_features=self.N_FEATURES, ngram_range=ngrams, alternate_sign=False,
                                 norm=None, binary=True, token_pattern=r"(?u)\b\w+\b")

    def _yesno_raw(self, examples: list[Example]) -> Any:
        hv = self._hv((1, 2))
        Xq = hv.transform([e.question for e in examples])
        parts = [Xq]
        if any(e.context for e in examples):
            # Context words in their own hash space ("c_" prefix) and question words found in it.
            parts.append(hv.transform([" ".join("c_" + w for w in _words(e.context or "")) for e in examples]))
            parts.append(hv.transform([
                " ".join("inctx_" + w for w in set(_words(e.question)) - _STOP if w in set(_words(e.context or "")))
                for e in examples
            ]))
        return sp.hstack(parts).tocsr()

    def _counts(self, texts: list[str]) -> Any:
        from sklearn.feature_extraction.text import CountVectorizer

        assert self.vocab is not None
        cv = CountVectorizer(vocabulary={w: i for i, w in enumerate(self.vocab)}, token_pattern=r"(?u)\b\w+\b")
        return cv.transform(texts)

    def _lsa_embed(self, texts: list[str]) -> np.ndarray:
        from sklearn.preprocessing import normalize

        assert self.lsa is not None and self.lsa_idf is not None
        X = self._counts(texts).astype(np.float64)
        X.data = 1.0 + np.log(X.data)  # sublinear tf
        X = normalize(X @ sp.diags(self.lsa_idf))
        return normalize(np.asarray(X @ self.lsa.T))

    def _prepare(self, train: list[Example]) -> None:
        self.idf = None
        if is_yesno(train):
            X = self._yesno_raw(train)
            df = np.bincount(X.indices, minlength=X.shape[1])
            self.idf = (np.log((1 + len(train)) / (1 + df)) + 1).astype(np.float32)
            return
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import CountVectorizer
        from sklearn.preprocessing import normalize

        # Documents: each question with all its options (right and wrong alike: no label used).
        docs = [f"{e.context or ''} {e.question} {' '.join(e.options)}" for e in train]
        cv = CountVectorizer(token_pattern=r"(?u)\b\w+\b", stop_words=sorted(_STOP), max_features=self.LSA_VOCAB)
        X = cv.fit_transform(docs).astype(np.float64)
        self.vocab = [w for w, _i in sorted(cv.vocabulary_.items(), key=lambda kv: kv[1])]
        df = np.bincount(X.indices, minlength=X.shape[1])
        self.lsa_idf = np.log((1 + len(docs)) / (1 + df)) + 1
        X.data = 1.0 + np.log(X.data)
        X = normalize(X @ sp.diags(self.lsa_idf))
        dim = max(1, min(self.LSA_DIM, X.shape[1] - 1, X.shape[0] - 1))
        self.lsa = TruncatedSVD(dim, random_state=self.seed).fit(X).components_

    def _yesno_features(self, examples: list[Example], progress: bool) -> Any:
        from sklearn.preprocessing import normalize

        X = self._yesno_raw(examples)
        if self.idf is not None and self.idf.shape[0] == X.shape[1]:
            X = X @ sp.diags(self.idf)
        return normalize(X)

    def _option_blocks(self, examples: list[Example], progress: bool, extra: bool = True) -> tuple[Any, Any]:
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
                    len(ow & q_set) / len(ow),  # option repeats the question
                    np.log1p(len(_words(opt))),
                    len(ow & others) / len(ow),  # shares words with its siblings
                    *pos,
                ])
        q = self._lsa_embed([f"{e.context or ''} {e.question}" for e in examples])
        o = self._lsa_embed([opt for e in examples for opt in e.options])
        qrep = np.repeat(q, [len(e.options) for e in examples], axis=0)
        base = np.hstack([(qrep * o).sum(1, keepdims=True) * 3.0, qrep * o * 3.0, np.array(dense)])
        if not extra:
            return base, None
        return base, sp.hstack([hv.transform(filled), hv.transform(cross)]).tocsr()

    def _extra_arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if self.idf is not None:
            out["idf"] = self.idf
        if self.lsa is not None and self.lsa_idf is not None and self.vocab is not None:
            out.update(lsa=self.lsa.astype(np.float32), lsa_idf=self.lsa_idf, vocab=np.array(self.vocab, dtype=str))
        return out

    def _load_extra(self, arrays: Any, meta: dict[str, Any]) -> None:
        self.idf = arrays["idf"] if "idf" in arrays.files else None
        if "lsa" in arrays.files:
            self.lsa = arrays["lsa"].astype(np.float64)
            self.lsa_idf = arrays["lsa_idf"]
            self.vocab = [str(w) for w in arrays["vocab"]]


_EMB_CACHE: dict[str, np.ndarray] = {}


class MiniLMFrozenStudent(LinearStudent):
    """Frozen all-MiniLM-L6-v2 sentence embeddings + a linear head (pairwise for mcqa).

    Multiple choice, base block: cosine of question and option embeddings and their
    element-wise product; extra block: the embedding of the question completed by the option
    and of the option alone. Yes/no: question embedding (with a context: context embedding and
    the product of the two too).
    """

    name = "minilm-frozen"
    C_GRID = (0.1, 0.3, 1.0, 3.0)
    CACHE_MAX = 200_000  # embeddings kept in memory (1.5 KB each): OOD sets are scored by several students

    def __init__(self, C: float | None = None, use_extra: bool | None = None, max_train: int | None = 3000):
        super().__init__(C, use_extra)
        self.max_train = max_train

    def fit(self, train: list[Example], dev: list[Example] | None = None, seed: int = 0,
            progress: bool = False) -> "MiniLMFrozenStudent":
        n_all = len(train)
        if self.max_train is not None and len(train) > self.max_train:
            # Embedding is the slow part on a CPU: a seeded sample, stated in info.
            idx = sorted(np.random.default_rng(seed).choice(len(train), self.max_train, replace=False))
            train = [train[i] for i in idx]
        if dev is not None and self.max_train is not None and len(dev) > self.max_train // 2:
            idx = sorted(np.random.default_rng(seed + 1).choice(len(dev), self.max_train // 2, replace=False))
            dev = [dev[i] for i in idx]
        super().fit(train, dev, seed, progress)
        self.info.update(n_train_available=n_all, n_train_used=len(train), max_train=self.max_train)
        return self

    def _embed(self, texts: list[str], progress: bool, what: str) -> np.ndarray:
        from treegen.embedders import get_embedder

        todo = list(dict.fromkeys(t for t in texts if t not in _EMB_CACHE))
        if todo:
            emb = get_embedder("minilm")
            chunk = 256
            with progress_bar(progress, f"embedding {what}", len(todo)) as advance:
                for start in range(0, len(todo), chunk):
                    part = todo[start : start + chunk]
                    for t, v in zip(part, emb.embed(part)):
                        if len(_EMB_CACHE) >= self.CACHE_MAX:
                            _EMB_CACHE.pop(next(iter(_EMB_CACHE)))
                        _EMB_CACHE[t] = v
                    advance(len(part))
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        return np.vstack([_EMB_CACHE[t] for t in texts])

    def _yesno_features(self, examples: list[Example], progress: bool) -> Any:
        q = self._embed([e.question for e in examples], progress, "questions")
        if not any(e.context for e in examples):
            return q
        c = self._embed([e.context or "" for e in examples], progress, "contexts")
        return np.hstack([q, c, q * c * 10.0])

    def _option_blocks(self, examples: list[Example], progress: bool, extra: bool = True) -> tuple[Any, Any]:
        questions = [(e.context + " " if e.context else "") + e.question for e in examples]
        q = self._embed(questions, progress, "questions")
        qrep = np.repeat(q, [len(e.options) for e in examples], axis=0)
        o = self._embed([opt for e in examples for opt in e.options], progress, "options")
        cos = (qrep * o).sum(1, keepdims=True)
        # Products of unit vectors are tiny: scaled up so that L2 does not silence them.
        base = np.hstack([cos * 10.0, qrep * o * 10.0])
        if not extra:
            return base, None
        f = self._embed([filled_text(e, opt) for e in examples for opt in e.options], progress, "question+option")
        return base, np.hstack([f, o])


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
