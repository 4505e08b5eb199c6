"""Near-duplicate / novelty index: candidate indexes side by side on REAL MiniLM embeddings.

    HF_HUB_OFFLINE=1 python benchmarks/bench_index.py embed      # once: vectors cached under /tmp
    python benchmarks/bench_index.py run --sizes 1000,10000,30000,100000
    python benchmarks/bench_index.py run --only treegen            # the chosen NearDuplicateIndex

Data (read at run time from /work/shared/datasets, never copied; only float vectors are cached,
outside the repository):

- indexed rows: ``Example.text()`` of the training splits of yesno_close (creak, boolq,
  strategyqa), mcqa_5 (csqa, riddle_sense) and mcqa_2 (winogrande), shuffled with a fixed
  seed (33,834 texts; the open-book passages are left out: at MiniLM's 256 tokens they would
  make the one-off embedding take an hour on 2 cores). Beyond them, up to 100k, PERTURBED
  COPIES made in vector space (embedding 66k more texts takes longer than this benchmark's
  time on a shared 2-core machine): normalise(a + b + noise) of two random real rows a, b,
  with Gaussian noise of norm about 0.3, a point between two real questions (cosine about
  0.7 to each), not a near-duplicate of either.
- queries (one reply = 10 rows): per index size n, 1,000 NEAR-DUPLICATES made by small edits
  (1-3 of: drop a word, swap two neighbouring words, repeat a word, put in a word from another
  question, change the final punctuation) of real rows drawn uniformly from the first
  min(n, real rows), so the
  threshold region 0.85-0.99 is populated at every size; and 1,000 held-out dev-split texts
  (the typical candidate, whose novelty is 1 - its max similarity).

Figures: per-reply latency (median of the 200 replies of 10 queries), stored bytes per node,
add cost per node, near-duplicate decisions changed against an exact float32 scan at
thresholds 0.9 and 0.95, and the absolute error of max_similarity (mean, p99, max).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DATASETS = Path("/work/shared/datasets")
CACHE = Path(os.environ.get("TREEGEN_INDEX_BENCH_CACHE", "/tmp/treegen_index_bench"))
TRAIN = [
    "yesno_close/creak", "yesno_close/boolq", "yesno_close/strategyqa", "mcqa_5/csqa",
    "mcqa_5/riddle_sense", "mcqa_2/winogrande",
]
DEV = ["yesno_close/creak", "yesno_close/boolq", "mcqa_5/csqa", "mcqa_5/riddle_sense"]
SIZES = (1000, 10000, 30000, 100000)
QUERIES_EDITED = 1000
QUERIES_HELD_OUT = 1000
PART_ROWS = 1024
REPLY = 10  # candidates per reply: one max_similarity call
THRESHOLDS = (0.9, 0.95)


def _texts(split: str, groups: list[str]) -> list[str]:
    from treegen.task import load_examples

    out: list[str] = []
    for g in groups:
        path = DATASETS / g / f"{split}.jsonl"
        if path.exists():
            examples, _ = load_examples(path, max_file_bytes=1 << 30, max_example_chars=1 << 20)
            out += [e.text() for e in examples]
    return out


def _edit(text: str, donor: str, rng: random.Random) -> str:
    words = text.split(" ")
    donor_words = donor.split() or ["so"]
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(5)
        i = rng.randrange(len(words))
        if op == 0 and len(words) > 3:
            del words[i]
        elif op == 1 and i + 1 < len(words):
            words[i], words[i + 1] = words[i + 1], words[i]
        elif op == 2:
            words.insert(i, words[i])
        elif op == 3:
            words.insert(i, rng.choice(donor_words))
        else:
            words[-1] = re.sub(r"[?.!]*$", rng.choice(["", "?", ".", "!?"]), words[-1])
    return " ".join(words)


def cmd_embed(args: argparse.Namespace) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from treegen.embedders import get_embedder

    CACHE.mkdir(parents=True, exist_ok=True)
    rng = random.Random(20261122)
    base = _texts("train", TRAIN)
    rng.shuffle(base)
    n_real = len(base)
    rows = base
    held_out = _texts("dev", DEV)
    rng.shuffle(held_out)
    held_out = held_out[:QUERIES_HELD_OUT]
    edited: dict[int, tuple[np.ndarray, list[str]]] = {}
    for n in SIZES:
        origin = np.array(sorted(rng.sample(range(min(n, n_real)), QUERIES_EDITED)))
        edited[n] = (origin, [_edit(rows[i], rng.choice(base), rng) for i in origin])
    emb = get_embedder("minilm")
    t0 = time.time()

    def embed(texts: list[str], what: str) -> np.ndarray:
        # by length, so a batch is padded to texts of its own size; rows back in order after
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = []
        for s in range(0, len(texts), PART_ROWS):
            out.append(emb.embed([texts[i] for i in order[s : s + PART_ROWS]]))
            print(f"{what}: {s + len(out[-1])}/{len(texts)} ({time.time() - t0:.0f} s)", flush=True)
        result = np.empty((len(texts), emb.dim), dtype=np.float32)
        result[order] = np.vstack(out)
        return result

    if not (CACHE / "held_out.npy").exists():
        np.save(CACHE / "held_out.npy", embed(held_out, "held-out"))
    for n in SIZES:
        origin, texts = edited[n]
        if not (CACHE / f"edited_{n}.npy").exists():
            np.save(CACHE / f"edited_{n}.npy", embed(texts, f"edited@{n}"))
            np.save(CACHE / f"edited_{n}_origin.npy", origin)
        assert np.array_equal(np.load(CACHE / f"edited_{n}_origin.npy"), origin), "cache from other texts"
    # The rows in parts, the edited queries' originals first: a part is usable as soon as it is
    # written, so a run can start before the whole corpus is embedded (rows not yet embedded are
    # stood in for by perturbed copies, and the table says how many real rows there were).
    first = sorted({int(i) for n in SIZES for i in edited[n][0]})
    rest = sorted(set(range(n_real)) - set(first))
    order = first + rest
    for part, s in enumerate(range(0, len(order), PART_ROWS)):
        path = CACHE / f"rows_part{part:03d}.npz"
        if path.exists():
            continue
        idx = np.array(order[s : s + PART_ROWS])
        np.savez(path, index=idx, rows=embed([rows[i] for i in idx], f"rows part {part}"))
    (CACHE / "meta.txt").write_text(f"real={n_real} embed_s={time.time() - t0:.0f}\n")
    print(f"done: {n_real} real rows in {CACHE}")


# ---- the comparison ------------------------------------------------------------------------
def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def load_rows(n_max: int) -> tuple[np.ndarray, int]:
    """The indexed rows: the real embeddings at their places, and vector-space perturbed copies
    of real rows wherever no real row is embedded (places past the corpus, or parts the
    embedding has not reached yet). Returns the rows and how many of them are real."""
    dim = 384
    rows = np.zeros((n_max, dim), dtype=np.float32)
    real = np.zeros(n_max, dtype=bool)
    for path in sorted(CACHE.glob("rows_part*.npz")):
        part = np.load(path)
        keep = part["index"] < n_max
        rows[part["index"][keep]] = part["rows"][keep]
        real[part["index"][keep]] = True
    fill = np.flatnonzero(~real)
    if len(fill):
        rng = np.random.default_rng(7)
        donors = rows[real]
        a = donors[rng.integers(0, len(donors), len(fill))]
        b = donors[rng.integers(0, len(donors), len(fill))]
        noise = rng.normal(size=a.shape).astype(np.float32) * (0.3 / np.sqrt(dim))
        rows[fill] = _unit(a + b + noise)
    return rows, int(real.sum())


def load_queries(n: int) -> np.ndarray:
    return np.vstack([np.load(CACHE / f"edited_{n}.npy"), np.load(CACHE / "held_out.npy")]).astype(np.float32)


def exact_max(rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    for s in range(0, len(rows), 8192):
        np.maximum(best, (queries @ rows[s : s + 8192].T).max(axis=1), out=best)
    return best


class Candidate:
    """One index under test: add rows, answer one reply's max similarities."""

    name = ""

    def add(self, rows: np.ndarray) -> None:
        raise NotImplementedError

    def query(self, q: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def bytes_per_node(self, n: int) -> float:
        raise NotImplementedError


class FaissFlat(Candidate):
    def __init__(self, dim: int, qtype: str, train: np.ndarray | None = None):
        import faiss

        self.name = f"exact scan {qtype}"
        qt = {"fp16": faiss.ScalarQuantizer.QT_fp16, "int8": faiss.ScalarQuantizer.QT_8bit}[qtype]
        self.index = faiss.IndexScalarQuantizer(dim, qt, faiss.METRIC_INNER_PRODUCT)
        if not self.index.is_trained:
            assert train is not None
            self.index.train(train)

    def add(self, rows: np.ndarray) -> None:
        self.index.add(rows)

    def query(self, q: np.ndarray) -> np.ndarray:
        return self.index.search(q, 1)[0][:, 0]

    def bytes_per_node(self, n: int) -> float:
        return float(self.index.code_size)


class Hnsw(Candidate):
    """faiss HNSW over scalar-quantised rows, one row per add (the graph then depends only on
    the order of the rows, not on how the engine batches them). ``margin``: an exact scan of
    the stored rows for a query whose approximate best is within margin below the threshold."""

    def __init__(self, dim: int, qtype: str, m: int, ef_construction: int, train: np.ndarray | None = None):
        import faiss

        qt = {"fp16": faiss.ScalarQuantizer.QT_fp16, "int8": faiss.ScalarQuantizer.QT_8bit}[qtype]
        self.qtype, self.m = qtype, m
        self.index = faiss.IndexHNSWSQ(dim, qt, m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction
        if not self.index.is_trained:
            assert train is not None
            self.index.train(train)
        self.storage = faiss.downcast_index(self.index.storage)
        self.ef_search = 16
        self.margin = 0.0
        self.threshold = 0.9
        self.rechecked = 0

    @property  # type: ignore[override]
    def name(self) -> str:  # noqa: D401
        m = f" +exact within {self.margin} of {self.threshold}" if self.margin else ""
        return f"HNSW {self.qtype} M={self.m} efSearch={self.ef_search}{m}"

    def add(self, rows: np.ndarray) -> None:
        for i in range(len(rows)):
            self.index.add(rows[i : i + 1])

    def query(self, q: np.ndarray) -> np.ndarray:
        import faiss

        params = faiss.SearchParametersHNSW(efSearch=self.ef_search)
        best = self.index.search(q, 1, params=params)[0][:, 0]
        if self.margin:
            near = (best < self.threshold) & (best >= self.threshold - self.margin)
            if near.any():
                self.rechecked += int(near.sum())
                best[near] = self.storage.search(q[near], 1)[0][:, 0]
        return best

    def bytes_per_node(self, n: int) -> float:
        h = self.index.hnsw
        graph = h.neighbors.size() * 4 + h.offsets.size() * 8 + h.levels.size() * 4
        return self.storage.code_size + graph / n


class Ivf(Candidate):
    def __init__(self, dim: int, nlist: int, nprobe: int, train: np.ndarray):
        import faiss

        self.name = f"IVF fp16 nlist={nlist} nprobe={nprobe} (trained on first {len(train)})"
        self.quantizer = faiss.IndexFlatIP(dim)
        self.index = faiss.IndexIVFScalarQuantizer(self.quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16,
                                                   faiss.METRIC_INNER_PRODUCT)
        self.index.train(train)
        self.index.nprobe = nprobe
        self.nlist = nlist

    def add(self, rows: np.ndarray) -> None:
        self.index.add(rows)

    def query(self, q: np.ndarray) -> np.ndarray:
        return self.index.search(q, 1)[0][:, 0]

    def bytes_per_node(self, n: int) -> float:
        return self.index.code_size + 8 + self.nlist * self.index.d * 4 / n


class Treegen(Candidate):
    """The package's NearDuplicateIndex, added to in replies' small groups as the engine does."""

    def __init__(self, dim: int, threshold: float, **kwargs: int):
        from treegen.neardup import NearDuplicateIndex

        self.index = NearDuplicateIndex(dim, threshold, **kwargs)
        self.name = (f"treegen NearDuplicateIndex ({self.index.backend}, exact below {self.index.exact_below:,}, "
                     f"efSearch={self.index.ef_search})")

    def add(self, rows: np.ndarray) -> None:
        for s in range(0, len(rows), 4):
            self.index.add(rows[s : s + 4])
        # The engine's next reply links the rows into the graph (in its worker thread): counted
        # here as add cost, not as the first reply's (the benchmark adds thousands at once).
        self.index.link_pending()

    def query(self, q: np.ndarray) -> np.ndarray:
        return self.index.max_similarity(q)

    def bytes_per_node(self, n: int) -> float:
        return self.index.stored_bytes / n


def evaluate(cand: Candidate, sizes: list[int], rows: np.ndarray, refs: dict[int, tuple[np.ndarray, np.ndarray]],
             variants: list[dict] | None = None) -> list[dict]:
    """Grow ``cand`` through ``sizes``; at each, time the replies and compare with the exact answers."""
    out = []
    done = 0
    add_s = 0.0
    for n in sizes:
        t, c = time.perf_counter(), time.process_time()
        cand.add(np.ascontiguousarray(rows[done:n]))
        add_s += time.perf_counter() - t
        add_ms_node = (time.perf_counter() - t) * 1000 / (n - done)
        add_cpu_ms_node = (time.process_time() - c) * 1000 / (n - done)
        done = n
        q, ref, ref16 = refs[n]
        for var in variants or [{}]:
            for k, v in var.items():
                setattr(cand, k, v)
            if hasattr(cand, "rechecked"):
                cand.rechecked = 0  # type: ignore[attr-defined]
            times, cpu, got = [], [], []
            for s in range(0, len(q), REPLY):
                t, c = time.perf_counter(), time.process_time()
                got.append(np.asarray(cand.query(np.ascontiguousarray(q[s : s + REPLY])), dtype=np.float32))
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            sims = np.concatenate(got)
            err = np.abs(sims - ref)
            row = {
                "index": cand.name, "n": n, "reply_ms_median": 1000 * float(np.median(times)),
                "reply_ms_p90": 1000 * float(np.percentile(times, 90)),
                "reply_cpu_ms_mean": 1000 * float(np.mean(cpu)),
                "bytes_per_node": cand.bytes_per_node(n), "add_ms_per_node": add_ms_node, "add_cpu_ms_per_node": add_cpu_ms_node,
                "err_mean": float(err.mean()), "err_p99": float(np.percentile(err, 99)), "err_max": float(err.max()),
                "missed_nn": int((err > 0.01).sum()), "queries": len(q),
                "rechecked": getattr(cand, "rechecked", 0),
            }
            for thr in THRESHOLDS:
                row[f"changed_{thr}"] = int(((sims >= thr) != (ref >= thr)).sum())
                # against an exact scan of the same float16 rows: the changes the approximation makes
                row[f"changed16_{thr}"] = int(((sims >= thr) != (ref16 >= thr)).sum())
                row[f"dups_{thr}"] = int((ref >= thr).sum())
            out.append(row)
            print(_fmt(row), flush=True)
    return out


def _fmt(r: dict) -> str:
    return (f"| {r['index']} | {r['n']:,} | {r['reply_cpu_ms_mean']:.2f} | {r['reply_ms_median']:.2f} ({r['reply_ms_p90']:.2f}) | "
            f"{r['bytes_per_node']:.0f} | {r['add_cpu_ms_per_node']:.3f} ({r['add_ms_per_node']:.3f}) | "
            f"{r['changed_0.9']} ({r.get('changed16_0.9', '-')}) / {r['dups_0.9']} | "
            f"{r['changed_0.95']} ({r.get('changed16_0.95', '-')}) / {r['dups_0.95']} | "
            f"{r['err_mean']:.1e} / {r['err_p99']:.1e} / {r['err_max']:.1e} | {r['missed_nn']} | {r['rechecked']} |")


HEADER = ("| index | indexed n | CPU ms per reply of 10, mean | wall ms per reply, median (p90) | B/node | add CPU ms/node (wall) | "
          "changed @0.9 (vs exact fp16) / exact dups | changed @0.95 (vs exact fp16) / exact dups | "
          "|max-sim error| mean / p99 / max | "
          "queries off by > 0.01 | exact re-checks |\n|---|---|---|---|---|---|---|---|---|---|---|")


def cmd_run(args: argparse.Namespace) -> None:
    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows, n_real = load_rows(max(sizes))
    dim = rows.shape[1]
    refs = {}
    for n in sizes:
        q = load_queries(n)
        refs[n] = (q, exact_max(rows[:n], q), exact_max(rows[:n].astype(np.float16).astype(np.float32), q))
    train = rows[:min(10000, len(rows))]
    only = set(args.only.split(",")) if args.only else None
    results: list[dict] = []

    def want(key: str) -> bool:
        return only is None or key in only

    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} {platform.node()} cores={os.cpu_count()} "
          f"faiss={faiss.__version__} omp_threads={faiss.omp_get_max_threads()} load={os.getloadavg()} "
          f"real rows={n_real}", flush=True)
    print(HEADER, flush=True)
    if want("f32"):
        class F32(Candidate):
            name = "exact scan float32 (numpy)"

            def __init__(self) -> None:
                self.n = 0

            def add(self, r: np.ndarray) -> None:
                self.n += len(r)

            def query(self, q: np.ndarray) -> np.ndarray:
                return exact_max(rows[: self.n], q)

            def bytes_per_node(self, n: int) -> float:
                return 4.0 * dim
        results += evaluate(F32(), sizes, rows, refs)
    if want("flat"):
        results += evaluate(FaissFlat(dim, "fp16"), sizes, rows, refs)
        results += evaluate(FaissFlat(dim, "int8", train), sizes, rows, refs)
    if want("hnsw"):
        for qtype, m in [("fp16", 16), ("int8", 32)]:
            h = Hnsw(dim, qtype, m, 40, train if qtype == "int8" else None)
            variants = [{"ef_search": ef, "margin": 0.0} for ef in (16, 64, 128)]
            variants += [{"ef_search": 64, "margin": 0.05, "threshold": 0.9}]
            results += evaluate(h, sizes, rows, refs, variants)
            del h
            gc.collect()
    if want("ivf"):
        for nprobe in (16,):
            results += evaluate(Ivf(dim, 1024, nprobe, train), sizes, rows, refs)
    if want("treegen"):
        results += evaluate(Treegen(dim, 0.9), sizes, rows, refs)
    if want("treegen-graph"):  # the graph from the first row: its error at every size
        results += evaluate(Treegen(dim, 0.9, exact_below=0), sizes, rows, refs)
    if want("rss"):  # resident memory of the package's index at the largest size
        import gc as _gc

        def rss() -> int:
            return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        _gc.collect()
        libc.malloc_trim(0)
        before = rss()
        idx = Treegen(dim, 0.9)
        for s in range(0, len(rows), 4):  # as the engine does: a reply's accepted rows, linked at the next reply
            idx.index.add(rows[s : s + 4])
            idx.index.link_pending()
        _gc.collect()
        grown = rss() - before
        libc.malloc_trim(0)  # free heap pages the allocator kept
        print(f"# RSS growth for NearDuplicateIndex of {len(rows):,} rows added 4 at a time: {grown / len(rows):.0f} "
              f"B/node ({(rss() - before) / len(rows):.0f} B/node after malloc_trim; stored_bytes "
              f"{idx.index.stored_bytes / len(rows):.0f} B/node)", flush=True)
    print(f"# load after: {os.getloadavg()}", flush=True)
    if args.jsonl:
        import json

        with open(args.jsonl, "a") as f:
            for r in results:
                f.write(json.dumps({**r, "load": os.getloadavg()[0]}) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("embed", help="embed the texts once (MiniLM; cached under /tmp)")
    run = sub.add_parser("run", help="compare the indexes")
    run.add_argument("--sizes", default=",".join(map(str, SIZES)))
    run.add_argument("--only", default="", help="comma list of f32,flat,hnsw,ivf,treegen,treegen-graph,rss")
    run.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads (0: faiss's default)")
    run.add_argument("--jsonl", default="", help="append the result rows to this file")
    args = ap.parse_args()
    if args.cmd == "embed":
        cmd_embed(args)
    else:
        cmd_run(args)


if __name__ == "__main__":
    main()
