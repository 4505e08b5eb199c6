"""Near-duplicate / novelty index: candidate indexes side by side on REAL MiniLM embeddings.

    HF_HUB_OFFLINE=1 python benchmarks/bench_index.py embed      # once: vectors cached under /tmp
    python benchmarks/bench_index.py run --sizes 1000,10000,30000,100000
    python benchmarks/bench_index.py run --only treegen            # the chosen NearDuplicateIndex
    python benchmarks/bench_index.py run --only treegen,hnsw-ef --hnsw "16:100:24" --evict-mb 96   # caches cold
    python benchmarks/bench_index.py run --sizes 100000 --only rss [--heap-lists]                 # process RSS
    python benchmarks/bench_index.py run --only flat --ivf "128:16/none,24/3072;64:32/2048"       # IVF variants

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
EVICT: np.ndarray | None = None  # --evict-mb: a buffer written between replies (not timed)


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
    """The queries for an index of n rows. For a size with no queries of its own (e.g. 79,999:
    just before a re-partition), those of the next larger size whose edited rows are all among
    the first n."""
    cached = n
    if not (CACHE / f"edited_{n}.npy").exists():
        cached = min(s for s in SIZES if s > n and np.load(CACHE / f"edited_{s}_origin.npy").max() < n)
    return np.vstack([np.load(CACHE / f"edited_{cached}.npy"), np.load(CACHE / "held_out.npy")]).astype(np.float32)


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
        self.name_suffix = ""

    @property  # type: ignore[override]
    def name(self) -> str:  # noqa: D401
        m = f" +exact within {self.margin} of {self.threshold}" if self.margin else ""
        return f"HNSW {self.qtype} M={self.m}{self.name_suffix} efSearch={self.ef_search}{m}"

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

    @property  # type: ignore[override]
    def name(self) -> str:
        i = self.index
        below = "never" if i.exact_below is None else f"{i.exact_below:,}"
        budget = {0: i.nprobe * i.rows_per_list, None: "none"}.get(i.scan_budget, i.scan_budget)
        return (f"treegen NearDuplicateIndex ({i.backend}, exact below {below}, rows/list {i.rows_per_list}, "
                f"nprobe {i.nprobe}, scan budget {budget})")

    def __setattr__(self, key: str, value: object) -> None:
        if key in ("nprobe", "scan_budget"):  # variants: query settings of the index
            setattr(self.index, key, value)
        else:
            super().__setattr__(key, value)

    def add(self, rows: np.ndarray) -> None:
        for s in range(0, len(rows), 4):
            self.index.add(rows[s : s + 4])
        # The engine's next reply stores the rows (and re-partitions at a doubling), in its worker
        # thread: counted here as add cost, not as the first reply's (the benchmark adds thousands
        # at once).
        self.index.link_pending()

    def query(self, q: np.ndarray) -> np.ndarray:
        return self.index.max_similarity(q)

    def bytes_per_node(self, n: int) -> float:
        return self.index.stored_bytes / n

    def pauses(self) -> str:
        parts = [f"{n:,} rows -> {lists} lists: {cpu * 1000:.0f} ms CPU ({wall * 1000:.0f} wall)"
                 for n, lists, cpu, wall in self.index.repartitions]
        total = sum(cpu for _, _, cpu, _ in self.index.repartitions)
        return (f"# re-partitions of {self.name}: " + "; ".join(parts)
                + f". Total {total:.2f} s CPU = {total * 1000 / max(1, len(self.index)):.3f} ms per row added")


def evaluate(cand: Candidate, sizes: list[int], rows: np.ndarray, refs: dict[int, tuple[np.ndarray, np.ndarray]],
             variants: list[dict] | None = None) -> list[dict]:
    """Grow ``cand`` through ``sizes``; at each, time the replies and compare with the exact answers."""
    global EVICT
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
            import faiss

            faiss.cvar.indexIVF_stats.reset()
            faiss.cvar.hnsw_stats.reset()
            for s in range(0, len(q), REPLY):
                if EVICT is not None:  # as the engine's embedder does between replies: caches cold
                    EVICT += 1.0
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
                # rows whose similarity a query computed (IVF: rows of the lists scanned; HNSW: graph nodes)
                "scanned_per_query": (faiss.cvar.indexIVF_stats.ndis + faiss.cvar.hnsw_stats.ndis) / len(q),
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

    from treegen.neardup import NPROBE, ROWS_PER_LIST, SCAN_BUDGET

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    global EVICT
    if args.evict_mb:
        EVICT = np.zeros(args.evict_mb << 18, dtype=np.float32)
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
          f"real rows={n_real} evict between replies={args.evict_mb} MB", flush=True)
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
    if want("hnsw-ef"):  # session 5: lower efSearch, and what might keep its decisions (M, efConstruction)
        for spec in args.hnsw.split(";"):
            m, ef_c, efs = spec.split(":")
            h = Hnsw(dim, "fp16", int(m), int(ef_c))
            h.name_suffix = f" efConstruction={ef_c}"
            results += evaluate(h, sizes, rows, refs, [{"ef_search": int(ef)} for ef in efs.split(",")])
            del h
            gc.collect()
    ivf_configs = {  # key: rows per list, [(nprobe, scan budget)]: budget 0 = nprobe x rows per list
        "treegen": (ROWS_PER_LIST, [(NPROBE, SCAN_BUDGET)]),
    }
    for spec in args.ivf.split(";") if args.ivf else []:
        per_list, probes = spec.split(":")
        ivf_configs[f"ivf{per_list}"] = (int(per_list), [
            (int(p), None if b == "none" else int(b)) for p, b in (x.split("/") for x in probes.split(","))])
    for key, (per_list, probes) in ivf_configs.items():
        if want(key) or key.startswith("ivf"):
            t = Treegen(dim, 0.9, rows_per_list=per_list)
            results += evaluate(t, sizes, rows, refs, [{"nprobe": p, "scan_budget": b} for p, b in probes])
            print(t.pauses(), flush=True)
            del t
            gc.collect()
    if want("treegen-graph"):  # the lists from 256 rows on: their error at every size
        results += evaluate(Treegen(dim, 0.9, exact_below=0), sizes, rows, refs)
    if want("rss"):  # resident memory of the package's index at the largest size
        from treegen import neardup
        from treegen.neardup import release_freed_heap

        if args.heap_lists:  # as before session 5: glibc's own mmap threshold, lists in the heap
            neardup._mappings_set = True

        def rss() -> int:
            return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

        gc.collect()
        release_freed_heap()
        before = rss()
        peak = 0
        idx = Treegen(dim, 0.9)
        for s in range(0, len(rows), 4):  # as the engine does: a reply's accepted rows, stored at the next reply
            idx.index.add(rows[s : s + 4])
            idx.index.max_similarity(rows[s : s + 1])
            if s % 1000 == 0 or len(idx.index.repartitions) and idx.index.repartitions[-1][0] == s + 4:
                peak = max(peak, rss())
        gc.collect()
        grown = rss() - before
        release_freed_heap()  # free heap pages the allocator kept
        print(f"# RSS growth for {idx.name} of {len(rows):,} rows added 4 at a time, a query after each add: "
              f"{grown / len(rows):.0f} B/node ({(rss() - before) / len(rows):.0f} B/node after a final "
              f"malloc_trim; peak {(peak - before) / len(rows):.0f} B/node; stored_bytes "
              f"{idx.index.stored_bytes / len(rows):.0f} B/node)", flush=True)
    print(f"# load after: {os.getloadavg()}", flush=True)
    if args.jsonl:
        import json

        with open(args.jsonl, "a") as f:
            for r in results:
                f.write(json.dumps({**r, "load": os.getloadavg()[0]}) + "\n")


def cmd_embed_cost(args: argparse.Namespace) -> None:
    """CPU time of MiniLM embedding 64 real texts, optionally with glibc's mmap threshold fixed
    as NearDuplicateIndex fixes it (to see that the setting does not slow the embedder)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from treegen.embedders import get_embedder
    from treegen.neardup import put_large_blocks_in_own_mappings

    if args.own_mappings:
        assert put_large_blocks_in_own_mappings(), "not Linux/glibc"
    texts = _texts("dev", DEV)[:64]
    emb = get_embedder("minilm")
    emb.embed(texts)
    cpu = []
    for _ in range(args.repeat):
        c = time.process_time()
        emb.embed(texts)
        cpu.append(time.process_time() - c)
    print(f"MiniLM, 64 dev texts, own mappings={args.own_mappings}: CPU ms median {1000 * np.median(cpu):.1f} "
          f"(min {1000 * min(cpu):.1f}, max {1000 * max(cpu):.1f}) of {args.repeat}; load {os.getloadavg()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("embed", help="embed the texts once (MiniLM; cached under /tmp)")
    run = sub.add_parser("run", help="compare the indexes")
    run.add_argument("--sizes", default=",".join(map(str, SIZES)))
    run.add_argument("--only", default="", help="comma list of f32,flat,hnsw,hnsw-ef,ivf,treegen,treegen-graph,rss (the --ivf configurations run whenever given)")
    run.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads (0: faiss's default)")
    run.add_argument("--evict-mb", type=int, default=0,
                     help="write a buffer of this many MB between replies (untimed), as the embedder's "
                          "forward pass does in the engine: the index's caches are cold at each reply")
    run.add_argument("--hnsw", default="16:40:24,32,48,64,96,128;24:40:24,32,48,64;16:100:24,32,48,64",
                     help="hnsw-ef: M:efConstruction:efSearch,efSearch;...")
    run.add_argument("--ivf", default="", help="IVFs of the package's index: rows_per_list:nprobe/budget,...;... "
                     "(budget: rows scanned at most, 'none', or 0 for nprobe x rows_per_list)")
    run.add_argument("--heap-lists", action="store_true",
                     help="rss: leave glibc's mmap threshold alone (lists' spare capacity in the heap)")
    run.add_argument("--jsonl", default="", help="append the result rows to this file")
    cost = sub.add_parser("embed-cost", help="MiniLM's CPU time, with or without the index's malloc setting")
    cost.add_argument("--own-mappings", action="store_true")
    cost.add_argument("--repeat", type=int, default=8)
    args = ap.parse_args()
    if args.cmd == "embed":
        cmd_embed(args)
    elif args.cmd == "embed-cost":
        cmd_embed_cost(args)
    else:
        cmd_run(args)


if __name__ == "__main__":
    main()
