"""The ``lexical`` student: hashed word n-grams and a small LSA space, logistic regression; seconds."""

from __future__ import annotations

import re
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from treegen.students.base import LinearStudent, ProgressCallback, filled_text, is_yesno
from treegen.task import Example


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

    name: ClassVar[str] = "lexical"
    min_train: ClassVar[int] = 8
    options: ClassVar[dict[str, type]] = {"C": float, "use_extra": bool}
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

    def _yesno_features(self, examples: list[Example], on_progress: ProgressCallback | None) -> Any:
        from sklearn.preprocessing import normalize

        X = self._yesno_raw(examples)
        if self.idf is not None and self.idf.shape[0] == X.shape[1]:
            X = X @ sp.diags(self.idf)
        return normalize(X)

    def _option_blocks(self, examples: list[Example], on_progress: ProgressCallback | None, extra: bool = True) -> tuple[Any, Any]:
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
