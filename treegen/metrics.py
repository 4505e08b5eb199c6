"""Quality measures of a created dataset against a reference (the task's human data).

Diversity (distinct-n at a fixed token budget, self-BLEU, remote-clique, APS), conformity
(MAUVE), faithfulness / complexity / performance (a student), label balance, length
distribution, drift from the root seed per depth (runs only), and contamination with the
benchmark's test and dev splits. ``docs/metrics.md`` gives each formula and parameter.

Every measure is a pure function of examples or embeddings; ``measure`` runs them all
(reporting each step to an ``on_progress(done, total, what)`` callback; nothing here prints)
and ``store_metrics`` writes the figures into a run's ``metrics`` table through ``RunStore``.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from treegen.errors import InputError
from treegen.neardup import NearDuplicateIndex
from treegen.task import YESNO_OPTIONS, Example, dedup_key

if TYPE_CHECKING:
    from treegen.store import RunStore

# on_progress(done, total, what), as the students report it (treegen.students.ProgressCallback).
ProgressCallback = Callable[[int, int, str], None]
EMBED_CHUNK = 1024  # texts embedded between two progress reports

# Defaults; each is a parameter of `measure` and is recorded with the figure it produced.
DISTINCT_BUDGET = 3_000  # K tokens for distinct-n: a 300-item yes/no run has about 3,400
SELF_BLEU_ITEMS = 1_000  # self-BLEU subsample (BLEU rises with the number of references)
PAIRWISE_ITEMS = 5_000  # remote-clique subsample above this size (O(n^2 d))
MAUVE_ITEMS = 2_000  # per side: k-means cost grows with the square of it (k = n / 10)
MAUVE_MAX_DIMS = 256  # PCA cap; MiniLM needs fewer for 90 % of the variance, 2,048-d hashing over 1,000
STUDENT_TRAIN_ITEMS = 4_000  # faithfulness's reference sample and each complexity half; not performance
NEAR_THRESHOLD = 0.9
CONTAMINATION_FLAG = 0.05  # the rate `treegen compare` flags  # cosine similarity for contamination_near
BLEU_EPSILON = 0.1  # smoothing of zero n-gram matches (Chen & Cherry 2014, method 1)
_BLOCK = 2048

_TOKEN = re.compile(r"\w+|[^\w\s]")


@dataclass
class Metric:
    name: str
    value: float
    n_items: int
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class MetricsReport:
    source: str
    reference: str
    n_items: int
    simulated: bool
    metrics: list[Metric]
    notes: list[str]
    timings: dict[str, float]

    def get(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN (a measure undefined on this set) becomes None."""
        return _clean({
            "source": self.source,
            "reference": self.reference,
            "n_items": self.n_items,
            "simulated": self.simulated,
            "metrics": {m.name: {"value": m.value, "n_items": m.n_items, "params": m.params} for m in self.metrics},
            "notes": self.notes,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
        })


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if math.isnan(obj) or math.isinf(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


# ---------------------------------------------------------------- text


def item_text(ex: Example) -> str:
    """Context, question and options; yes/no options are left out (the same on every item)."""
    parts = [ex.context or "", ex.question]
    if tuple(ex.options) != YESNO_OPTIONS:
        parts.append(" | ".join(ex.options))
    return "\n".join(p for p in parts if p)


def tokenize(text: str) -> list[str]:
    """Lower-cased words and punctuation marks."""
    return _TOKEN.findall(text.lower())


def label_key(ex: Example) -> str:
    """The label for balance measures: its text for yes/no, its position for multiple choice
    (an option's text is specific to its question; the answer slot is what a model can exploit)."""
    if tuple(ex.options) == YESNO_OPTIONS:
        return ex.label
    if not ex.options:
        return "number"  # numeric answers: no answer slot to balance
    return f"option {ex.label_index + 1}"


def _sample(n: int, limit: int, seed: int) -> list[int]:
    if n <= limit:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


# ---------------------------------------------------------------- diversity: lexical


def distinct_n(
    token_lists: Sequence[Sequence[str]], n_values: Sequence[int] = (1, 2, 3, 4), budget: int = DISTINCT_BUDGET,
    seed: int = 0,
) -> tuple[dict[int, float], int]:
    """({n: unique n-grams / n-grams}, K) over the first K tokens of the shuffled, concatenated items.

    K = ``budget``, or the number of tokens available when fewer (then it is reported).
    """
    order = list(range(len(token_lists)))
    random.Random(seed).shuffle(order)
    stream: list[str] = []
    for i in order:
        stream.extend(token_lists[i])
        if len(stream) >= budget:
            break
    stream = stream[:budget]
    out: dict[int, float] = {}
    for n in n_values:
        total = len(stream) - n + 1
        out[n] = len({tuple(stream[i : i + n]) for i in range(total)}) / total if total > 0 else 0.0
    return out, len(stream)


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def self_bleu(
    token_lists: Sequence[Sequence[str]], max_items: int = SELF_BLEU_ITEMS, seed: int = 0, epsilon: float = BLEU_EPSILON
) -> tuple[float, int]:
    """(mean BLEU-4 of each item against all other items of the sample, sample size).

    BLEU-4: uniform weights over n = 1..4, multi-reference clipped counts, brevity penalty
    against the closest reference length (shorter on ties), zero matches smoothed to
    ``epsilon`` (method 1). Orders longer than the hypothesis are left out and the weights
    renormalised. Linear time: per n-gram the two highest counts over the sample (and who holds
    the highest) give the best count over "everyone but me".
    """
    idx = [i for i in _sample(len(token_lists), max_items, seed) if len(token_lists[i]) > 0]
    toks = [list(token_lists[i]) for i in idx]
    m = len(toks)
    if m < 2:
        return float("nan"), m
    counts = [[_ngrams(t, n) for t in toks] for n in range(1, 5)]
    best: list[dict[tuple, tuple[int, int, int]]] = []  # gram -> (top count, holder, second count)
    for per_item in counts:
        table: dict[tuple, tuple[int, int, int]] = {}
        for j, grams in enumerate(per_item):
            for g, k in grams.items():
                top, holder, second = table.get(g, (0, -1, 0))
                if k > top:
                    table[g] = (k, j, top)
                elif k > second:
                    table[g] = (top, holder, k)
        best.append(table)
    lengths = sorted(len(t) for t in toks)
    length_count = Counter(lengths)
    scores = []
    for i, t in enumerate(toks):
        c = len(t)
        log_p, weights = 0.0, 0
        for n_idx in range(4):
            total = max(0, c - n_idx)
            if total == 0:
                continue
            clipped = 0
            table = best[n_idx]
            for g, k in counts[n_idx][i].items():
                top, holder, second = table[g]
                clipped += min(k, second if holder == i else top)
            log_p += math.log((clipped if clipped > 0 else epsilon) / total)
            weights += 1
        r = _closest_other_length(lengths, length_count, c)
        bp = 1.0 if c > r else math.exp(1 - r / c)
        scores.append(bp * math.exp(log_p / weights))
    return float(np.mean(scores)), m


def _closest_other_length(lengths: list[int], count: Counter, c: int) -> int:
    """Reference length closest to c among the sample without one item of length c."""
    if count[c] >= 2:
        return c
    pos = bisect_left(lengths, c)  # lengths[pos] == c is the item itself
    below = lengths[pos - 1] if pos > 0 else None
    above = lengths[pos + 1] if pos + 1 < len(lengths) else None
    candidates = [x for x in (below, above) if x is not None]
    return min(candidates, key=lambda x: (abs(x - c), x))


# ---------------------------------------------------------------- diversity: embeddings


def _unit(emb: np.ndarray) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float32)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.where(norms > 0, norms, 1.0)


def mean_pairwise_cosine(emb: np.ndarray) -> float:
    """Mean cosine similarity over ordered pairs i != j: (|sum x|^2 - n) / (n(n-1)), exact, O(n d)."""
    x = _unit(emb).astype(np.float64)
    n = len(x)
    if n < 2:
        return float("nan")
    s = x.sum(axis=0)
    self_sims = float((x * x).sum())  # n, less any zero rows
    return float((s @ s - self_sims) / (n * (n - 1)))


def remote_clique(emb: np.ndarray) -> float:
    """Mean Euclidean distance over pairs i != j, in row blocks (O(n^2 d) time, O(block n) memory)."""
    x = np.asarray(emb, dtype=np.float32)
    n = len(x)
    if n < 2:
        return float("nan")
    sq = (x * x).sum(axis=1)
    total = 0.0
    for start in range(0, n, _BLOCK):
        blk = x[start : start + _BLOCK]
        d2 = sq[start : start + _BLOCK, None] + sq[None, :] - 2.0 * (blk @ x.T)
        np.maximum(d2, 0.0, out=d2)
        # The diagonal is 0 up to rounding; zero it so it adds nothing.
        rows = np.arange(len(blk))
        d2[rows, start + rows] = 0.0
        total += float(np.sqrt(d2, dtype=np.float64).sum())
    return total / (n * (n - 1))


def label_cosines(emb: np.ndarray, labels: Sequence[str]) -> tuple[float, float]:
    """(mean cosine over pairs with the same label, over pairs with different labels)."""
    x = _unit(emb).astype(np.float64)
    labels = list(labels)
    groups: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        groups.setdefault(lab, []).append(i)
    n = len(x)
    total_sum = x.sum(axis=0)
    all_pairs = float(total_sum @ total_sum - (x * x).sum())
    within_sum, within_pairs = 0.0, 0
    for idx in groups.values():
        g = x[idx]
        s = g.sum(axis=0)
        within_sum += float(s @ s - (g * g).sum())
        within_pairs += len(idx) * (len(idx) - 1)
    across_pairs = n * (n - 1) - within_pairs
    within = within_sum / within_pairs if within_pairs else float("nan")
    across = (all_pairs - within_sum) / across_pairs if across_pairs else float("nan")
    return within, across


# ---------------------------------------------------------------- distributions


def label_distribution(examples: Sequence[Example]) -> dict[str, float]:
    c = Counter(label_key(e) for e in examples)
    n = sum(c.values())
    return {k: v / n for k, v in sorted(c.items())} if n else {}


def total_variation(p: dict[str, float], q: dict[str, float]) -> float:
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys)


def ks_statistic(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(np.asarray(a, dtype=float), np.asarray(b, dtype=float)).statistic)


# ---------------------------------------------------------------- drift and contamination


def drift_by_depth(emb: np.ndarray, depths: Sequence[int], root_emb: np.ndarray) -> dict[int, tuple[float, int]]:
    """{depth: (mean cosine distance 1 - cos(node, its root seed), nodes)}; ``root_emb`` row i is node i's root."""
    x, r = _unit(emb), _unit(root_emb)
    dist = 1.0 - (x * r).sum(axis=1)
    out: dict[int, tuple[float, int]] = {}
    depths_arr = np.asarray(depths)
    for d in sorted(set(int(v) for v in depths_arr)):
        mask = depths_arr == d
        out[d] = (float(dist[mask].mean()), int(mask.sum()))
    return out


def contamination(
    created: Sequence[Example], created_emb: np.ndarray, bench: Sequence[Example], bench_emb: np.ndarray,
    threshold: float = NEAR_THRESHOLD,
) -> dict[str, Any]:
    """Created items that are exact (same dedup key) or near (cosine >= threshold) copies of bench items.

    ``near`` counts items at or above the threshold that are not exact copies; ``rate`` is
    (exact + near) / n.
    """
    keys = {dedup_key(e) for e in bench}
    exact = np.array([dedup_key(e) in keys for e in created], dtype=bool)
    sims = np.full(len(created), -np.inf, dtype=np.float32)
    if len(bench) and len(created):
        index = NearDuplicateIndex(bench_emb.shape[1], threshold, exact_below=None)  # a check: exact
        index.add(_unit(bench_emb))
        sims = index.max_similarity(_unit(created_emb))
    near = (sims >= threshold) & ~exact
    n = len(created)
    return {
        "exact": int(exact.sum()),
        "near": int(near.sum()),
        "rate": float((exact | near).sum() / n) if n else 0.0,
        "max_similarity": float(sims.max()) if n else float("nan"),
        "flagged": [i for i in range(n) if exact[i] or near[i]],
    }


# ---------------------------------------------------------------- students


def _student_accuracy(student_name: str, train: list[Example], test: list[Example], seed: int,
                      on_progress: ProgressCallback | None = None) -> float:
    from treegen.students import accuracy, get_student

    student = get_student(student_name)
    student.fit(train, seed=seed, on_progress=on_progress)
    return accuracy(student, test)


def complexity(student_name: str, examples: list[Example], seed: int = 0, max_half: int | None = None,
               on_progress: ProgressCallback | None = None) -> float:
    """1 - accuracy of a student trained on one seeded half of the set and tested on the other.

    ``max_half`` caps the size of each half (a seeded subsample of the set, for speed).
    """
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    half = len(order) // 2
    if max_half is not None:
        half = min(half, max_half)
    train = [examples[i] for i in order[:half]]
    test = [examples[i] for i in order[half : 2 * half]]
    return 1.0 - _student_accuracy(student_name, train, test, seed, on_progress)


# ---------------------------------------------------------------- all together


@dataclass
class Reference:
    """The human data a created set is measured against."""

    name: str  # task name, or "file:<path>"
    examples: list[Example]  # distribution reference (the task's train split, or the file)
    contamination_pool: list[Example] | None = None  # test + dev of the task
    test: list[Example] | None = None  # ID test split, for performance
    notes: list[str] = field(default_factory=list)


def load_reference(
    task: str | None, reference_file: str | Path | None, data_dir: str | Path | None = None
) -> Reference:
    """The reference from a task name (train / test / dev splits) and/or a JSONL file.

    With both, the file is the distribution reference and the task gives contamination and
    performance.
    """
    from treegen.datasets import get_task, load_split
    from treegen.task import load_examples

    if not task and not reference_file:
        raise InputError(
            "Nothing to measure against: give --reference TASK (e.g. csqa, creak) or --reference-file human.jsonl."
        )
    notes: list[str] = []
    examples: list[Example] = []
    pool = test = None
    name = ""
    if task:
        t = get_task(task)
        name = t.name
        examples, _fmt, note = load_split(t.name, "train", data_dir)
        notes += [f"reference: {note}"] if note else []
        test, _fmt, note = load_split(t.name, "test", data_dir)
        notes += [f"test split: {note}"] if note else []
        dev, _fmt, note = load_split(t.name, "dev", data_dir)
        notes += [f"dev split: {note}"] if note else []
        pool = test + dev
    if reference_file:
        examples, file_fmt = load_examples(reference_file)
        if task and file_fmt != get_task(task).format:
            raise InputError(
                f"--reference-file {reference_file} is {file_fmt.name} but --reference {task} is "
                f"{get_task(task).format.name}; give a reference file and task of the same format."
            )
        name = f"file:{reference_file}" if not task else f"{name}+file:{reference_file}"
    return Reference(name=name, examples=examples, contamination_pool=pool, test=test, notes=notes)


@dataclass
class RunNodes:
    """Accepted nodes of a run with what drift needs."""

    examples: list[Example]
    depths: list[int]
    root_ids: list[int]
    roots: dict[int, Example]  # seed node id -> its example


def measure(
    created: list[Example],
    reference: Reference,
    *,
    source: str = "",
    embedder: str = "minilm",
    student: str | None = "lexical",
    seed: int = 0,
    simulated: bool = False,
    run_nodes: RunNodes | None = None,
    distinct_budget: int = DISTINCT_BUDGET,
    self_bleu_items: int = SELF_BLEU_ITEMS,
    pairwise_items: int = PAIRWISE_ITEMS,
    mauve_items: int = MAUVE_ITEMS,
    near_threshold: float = NEAR_THRESHOLD,
    student_items: int = STUDENT_TRAIN_ITEMS,
    on_progress: ProgressCallback | None = None,
) -> MetricsReport:
    """Every measure of ``created`` against ``reference``; nothing is written.

    ``on_progress(done, total, what)`` hears of each step as ``(0, 1, step)`` when it starts and
    ``(1, 1, step)`` when it ends, and of embedding and student training as they advance.
    """
    from treegen.embedders import get_embedder

    n = len(created)
    if n < 2:
        raise InputError(
            f"{source or 'The created set'} holds {n} example(s); the measures need at least 2. "
            "Measure a larger run or file."
        )
    ref = reference.examples
    if not ref:
        raise InputError(f"The reference {reference.name} holds no examples.")
    c_fmt, r_fmt = created[0].infer_format(), ref[0].infer_format()
    if c_fmt != r_fmt:
        raise InputError(
            f"The created set is {c_fmt.name} but the reference {reference.name} is {r_fmt.name}; "
            "measure against a reference task of the same format (see `treegen data list`)."
        )
    timings: dict[str, float] = {"embedding": 0.0}
    notes = list(reference.notes)
    out: list[Metric] = []
    t_start = time.perf_counter()
    step = _Steps(on_progress)

    # Lexical diversity, created and reference at the same K.
    step("distinct-n")
    c_tokens = [tokenize(item_text(e)) for e in created]
    r_tokens = [tokenize(item_text(e)) for e in ref]
    budget = min(distinct_budget, sum(map(len, c_tokens)))
    dist_c, k_used = distinct_n(c_tokens, budget=budget, seed=seed)
    dist_r, _ = distinct_n(r_tokens, budget=k_used, seed=seed)
    if k_used < distinct_budget:
        notes.append(f"distinct-n at K = {k_used} tokens (the set has fewer than the {distinct_budget} asked)")
    for k in (1, 2, 3, 4):
        out.append(Metric(f"distinct_{k}", dist_c[k], n, {"K": k_used, "seed": seed, "reference_value": dist_r[k]}))
    out.append(Metric("distinct_k_tokens", float(k_used), n, {"asked": distinct_budget}))
    step("self-BLEU")
    sb, sb_n = self_bleu(c_tokens, self_bleu_items, seed)
    sb_r, sb_rn = self_bleu(r_tokens, min(self_bleu_items, sb_n), seed)
    out.append(Metric("self_bleu", sb, sb_n, {"max_items": self_bleu_items, "seed": seed, "epsilon": BLEU_EPSILON,
                                               "reference_value": sb_r, "reference_items": sb_rn}))
    if n > self_bleu_items:
        notes.append(f"self-BLEU on a seeded subsample of {sb_n} of {n} items")

    # Embeddings: created set, reference sample, contamination pool, seeds.
    step(f"loading the {embedder} embedder")
    t = time.perf_counter()
    emb = get_embedder(embedder)  # loading the model counts as embedding time
    step("embedding the created items")
    c_emb = _embed(emb, [item_text(e) for e in created], on_progress, "embedding the created items")
    r_idx = _sample(len(ref), mauve_items, seed)
    step("embedding the reference items")
    r_emb = _embed(emb, [item_text(ref[i]) for i in r_idx], on_progress, "embedding the reference items")
    timings["embedding"] += time.perf_counter() - t
    step("remote-clique and APS")
    labels = [label_key(e) for e in created]

    aps = mean_pairwise_cosine(c_emb)
    within, across = label_cosines(c_emb, labels)
    p_idx = _sample(n, pairwise_items, seed)
    rc = remote_clique(c_emb[p_idx])
    emb_params = {"embedder": embedder}
    out.append(Metric("remote_clique", rc, len(p_idx), {**emb_params, "max_items": pairwise_items, "seed": seed,
                                                        "reference_value": remote_clique(r_emb[_sample(len(r_emb), pairwise_items, seed)])}))
    if n > pairwise_items:
        notes.append(f"remote-clique on a seeded subsample of {pairwise_items} of {n} items")
    out.append(Metric("aps", aps, n, {**emb_params, "reference_value": mean_pairwise_cosine(r_emb)}))
    out.append(Metric("aps_within_label", within, n, {**emb_params, "label": "yes/no text or answer position"}))
    out.append(Metric("aps_across_label", across, n, {**emb_params, "label": "yes/no text or answer position"}))
    out.append(Metric("mean_cosine_distance", 1.0 - aps, n, emb_params))

    # Conformity.
    from treegen.mauve import compute_mauve

    m_idx = _sample(n, mauve_items, seed)
    step("MAUVE")
    t = time.perf_counter()
    res = compute_mauve(c_emb[m_idx], r_emb, seed=seed, max_dims=MAUVE_MAX_DIMS)
    timings["mauve"] = time.perf_counter() - t
    out.append(Metric("mauve", res.mauve, len(m_idx), {**emb_params, "reference_items": len(r_emb), "buckets": res.num_buckets,
                                                     "pca_dims": res.pca_dims, "max_pca_dims": MAUVE_MAX_DIMS,
                                                     "scaling_factor": 5, "seed": seed}))
    if n > mauve_items or len(ref) > mauve_items:
        notes.append(f"MAUVE on seeded subsamples of at most {mauve_items} items per side")

    # Distributions.
    step("label balance and length")
    out.append(Metric("label_balance_tv", total_variation(label_distribution(created), label_distribution(ref)), n,
                      {"created": label_distribution(created), "reference": label_distribution(ref)}))
    c_len = [len(t_) for t_ in c_tokens]
    r_len = [len(t_) for t_ in r_tokens]
    out.append(Metric("length_mean", float(np.mean(c_len)), n, {"unit": "tokens", "reference_value": float(np.mean(r_len))}))
    out.append(Metric("length_std", float(np.std(c_len)), n, {"unit": "tokens", "reference_value": float(np.std(r_len))}))
    out.append(Metric("length_ks", ks_statistic(c_len, r_len), n, {"reference_items": len(r_len)}))

    # Students.
    if student and created and not created[0].options:
        notes.append("students skipped: they need a multiple-choice or yes/no task, and this one's answers are numbers")
    elif student:
        t = time.perf_counter()
        _student_measures(out, notes, student, created, reference, seed, student_items, step, on_progress)
        timings["students"] = time.perf_counter() - t

    # Contamination.
    if reference.contamination_pool:
        pool = reference.contamination_pool
        step("embedding the test+dev items")
        t = time.perf_counter()
        pool_emb = _embed(emb, [item_text(e) for e in pool], on_progress, "embedding the test+dev items")
        timings["embedding"] += time.perf_counter() - t
        step("contamination")
        con = contamination(created, c_emb, pool, pool_emb, near_threshold)
        cp = {**emb_params, "threshold": near_threshold, "pool": f"{reference.name} test+dev", "pool_items": len(pool)}
        out.append(Metric("contamination_exact", float(con["exact"]), n, cp))
        out.append(Metric("contamination_near", float(con["near"]), n, cp))
        out.append(Metric("contamination_rate", con["rate"], n, {**cp, "max_similarity": con["max_similarity"]}))
        if con["rate"] > CONTAMINATION_FLAG:
            notes.append(f"CONTAMINATED: {con['rate']:.1%} of the items copy or nearly copy {reference.name} "
                         f"test/dev items (more than {CONTAMINATION_FLAG:.0%}); do not evaluate on that benchmark")
    else:
        notes.append("contamination not measured: give --reference TASK to check against its test and dev splits")

    # Drift from the root seed, per depth.
    if run_nodes is not None and run_nodes.examples:
        root_ids = sorted(run_nodes.roots)
        step("drift from the root seeds")
        t = time.perf_counter()
        seed_emb = _embed(emb, [item_text(run_nodes.roots[r]) for r in root_ids], on_progress,
                          "embedding the root seeds")
        timings["embedding"] += time.perf_counter() - t
        where = {r: i for i, r in enumerate(root_ids)}
        keep = [i for i, r in enumerate(run_nodes.root_ids) if r in where]
        drift = drift_by_depth(c_emb[keep], [run_nodes.depths[i] for i in keep],
                               seed_emb[[where[run_nodes.root_ids[i]] for i in keep]])
        for d, (value, count) in drift.items():
            out.append(Metric(f"drift_depth_{d}", value, count, {**emb_params, "distance": "1 - cosine to root seed"}))

    step.finish()
    total = time.perf_counter() - t_start
    timings["measures"] = total - timings["embedding"]
    return MetricsReport(source=source, reference=reference.name, n_items=n, simulated=simulated, metrics=out,
                         notes=notes, timings=timings)


class _Steps:
    """Reports the end of the previous step and the start of the next one to ``on_progress``."""

    def __init__(self, on_progress: ProgressCallback | None):
        self.on_progress = on_progress
        self.current: str | None = None

    def __call__(self, what: str) -> None:
        self.finish()
        self.current = what
        if self.on_progress is not None:
            self.on_progress(0, 1, what)

    def finish(self) -> None:
        if self.current is not None and self.on_progress is not None:
            self.on_progress(1, 1, self.current)
        self.current = None


def _embed(emb: Any, texts: list[str], on_progress: ProgressCallback | None, what: str) -> np.ndarray:
    """``emb.embed(texts)`` in chunks, reporting the texts done (one call when there is no callback)."""
    if on_progress is None or len(texts) <= EMBED_CHUNK:
        return np.asarray(emb.embed(texts))
    parts = []
    for start in range(0, len(texts), EMBED_CHUNK):
        parts.append(np.asarray(emb.embed(texts[start : start + EMBED_CHUNK])))
        on_progress(min(len(texts), start + EMBED_CHUNK), len(texts), f"{what}: texts")
    return np.vstack(parts)


def _student_measures(out: list[Metric], notes: list[str], student: str, created: list[Example],
                      reference: Reference, seed: int, max_train: int = STUDENT_TRAIN_ITEMS,
                      step: Callable[[str], None] | None = None,
                      on_progress: ProgressCallback | None = None) -> None:
    from treegen.errors import StudentError
    from treegen.students import min_train_examples

    n = len(created)
    sp = {"student": student, "seed": seed}
    ref = reference.examples
    judge = [ref[i] for i in _sample(len(ref), max_train, seed)]
    if len(judge) < len(ref):
        notes.append(f"faithfulness: student trained on a seeded subsample of {len(judge)} of {len(ref)} reference items")
    step = step or (lambda what: None)
    step(f"faithfulness ({student} student)")
    try:
        out.append(Metric("faithfulness", _student_accuracy(student, judge, created, seed, on_progress), n,
                          {**sp, "trained_on": f"{reference.name} ({len(judge)} items)", "max_train": max_train}))
    except StudentError as exc:
        notes.append(f"faithfulness not measured: {exc}")
    if n // 2 >= min_train_examples(student):
        if n // 2 > max_train:
            notes.append(f"complexity: halves of {max_train} items each, from a seeded shuffle of {n}")
        step(f"complexity ({student} student)")
        try:
            out.append(Metric("complexity", complexity(student, created, seed, max_train, on_progress),
                              min(n, 2 * max_train),
                              {**sp, "split": "seeded halves", "max_half": max_train}))
        except StudentError as exc:
            notes.append(f"complexity not measured: {exc}")
    else:
        notes.append(f"complexity not measured: a half of {n} items is too small to train the {student} student")
    if reference.test:
        step(f"performance ({student} student)")
        try:
            out.append(Metric("performance", _student_accuracy(student, created, reference.test, seed, on_progress), n,
                              {**sp, "tested_on": f"{reference.name} test ({len(reference.test)} items)"}))
        except StudentError as exc:
            notes.append(f"performance not measured: {exc}")
    else:
        notes.append("performance not measured: give --reference TASK for its test split")


# ---------------------------------------------------------------- runs and storage


def load_run_nodes(store: RunStore) -> tuple[RunNodes, dict[str, Any]]:
    """Accepted nodes (creation order) and seeds of a run, and the run's row."""
    from treegen.store import NodeStatus, node_example

    row = store.run()
    accepted = store.nodes(statuses=(NodeStatus.ACCEPTED,))
    seeds = {r["id"]: node_example(r) for r in store.nodes(statuses=(NodeStatus.SEED,))}
    nodes = RunNodes(
        examples=[node_example(r) for r in accepted],
        depths=[int(r["depth"] or 0) for r in accepted],
        root_ids=[r["root_id"] for r in accepted],
        roots=seeds,
    )
    return nodes, row


def store_metrics(store: RunStore, report: MetricsReport) -> int:
    """Append the report's figures to the run's ``metrics`` table (one transaction); rows written."""
    from treegen.store import utcnow

    now = utcnow()
    rows = [
        {
            "created_at": now,
            "reference": report.reference,
            "name": m.name,
            "value": None if m.value is None or (isinstance(m.value, float) and math.isnan(m.value)) else float(m.value),
            "params": json.dumps(_clean(m.params), ensure_ascii=False, default=str),
            "n_items": m.n_items,
            "simulated": int(report.simulated),
        }
        for m in report.metrics
    ]
    return store.insert_metrics(rows)
