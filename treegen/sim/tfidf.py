"""The simulator's TF-IDF index with numpy alone: the numbers of scikit-learn's
``TfidfVectorizer(lowercase=True, sublinear_tf=True, dtype=np.float32, min_df=1)`` bit for bit
(its default token pattern, smoothed idf, L2-normalised rows, float32), so the simulator
picks the same items; without importing scikit-learn and SciPy (~0.9 s of CPU at start-up)."""
from __future__ import annotations

import re
from collections import Counter
import numpy as np

_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # sklearn's default token_pattern


def analyzer(text: str) -> list[str]:
    """The words of ``text`` as the vectorizer's analyzer gives them."""
    return _TOKEN.findall(text.lower())


class TfidfIndex:
    """Column-wise (CSC-like) L2-normalised TF-IDF rows of a fixed corpus."""

    def __init__(self, texts: list[str]):
        docs = [Counter(analyzer(t)) for t in texts]
        terms = sorted({term for d in docs for term in d})
        self.vocabulary: dict[str, int] = {t: i for i, t in enumerate(terms)}
        n_terms, n_docs = len(terms), len(texts)
        df = np.zeros(n_terms, dtype=np.float32)
        row_cols: list[np.ndarray] = []
        row_tf: list[np.ndarray] = []
        for d in docs:
            cols = np.fromiter((self.vocabulary[t] for t in d), dtype=np.int64, count=len(d))
            order = np.argsort(cols, kind="stable")  # CSR rows with sorted indices, as sklearn's
            cols = cols[order]
            tf = np.fromiter(d.values(), dtype=np.float32, count=len(d))[order]
            df[cols] += 1
            row_cols.append(cols)
            row_tf.append(tf)
        idf = np.full_like(df, fill_value=n_docs + 1, dtype=np.float32)
        idf /= df + np.float32(1.0)
        np.log(idf, out=idf)
        idf += np.float32(1.0)
        self.idf = idf
        indptr = np.zeros(n_docs + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([len(c) for c in row_cols])
        indices = np.concatenate(row_cols) if row_cols else np.zeros(0, dtype=np.int64)
        data = np.concatenate(row_tf) if row_tf else np.zeros(0, dtype=np.float32)
        np.log(data, out=data)
        data += np.float32(1.0)
        data *= idf[indices]
        for i in range(n_docs):  # sklearn's _inplace_csr_row_normalize_l2: float32 squares, double sum
            s, e = indptr[i], indptr[i + 1]
            sq = data[s:e] * data[s:e]
            total = 0.0
            for v in sq.tolist():
                total += v
            if total != 0.0:
                data[s:e] = (data[s:e].astype(np.float64) / np.sqrt(total)).astype(np.float32)
        rows = np.repeat(np.arange(n_docs, dtype=np.int64), np.diff(indptr))
        order = np.lexsort((rows, indices))  # to columns, rows ascending within each column
        self.col_rows = rows[order]
        self.col_data = data[order]
        self.col_ptr = np.zeros(n_terms + 1, dtype=np.int64)
        np.cumsum(np.bincount(indices, minlength=n_terms), out=self.col_ptr[1:])
        self.n_docs = n_docs

    def dot(self, cols: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Column slice times a dense vector, column by column as scipy's csc_matvec does."""
        out = np.zeros(self.n_docs, dtype=np.float32)
        for c, w in zip(cols.tolist(), weights):
            s, e = self.col_ptr[c], self.col_ptr[c + 1]
            out[self.col_rows[s:e]] += self.col_data[s:e] * w
        return out
