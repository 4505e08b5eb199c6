"""Quality in the loop (issue 14): what verification, attributes and harder rewrites buy per dollar.

Three parts, each writing JSON rows to ``benchmarks/results/quality_<part>.jsonl``; ``render``
turns them into ``benchmarks/results/quality.md``:

    python benchmarks/bench_quality.py sim        # SIMULATED: label flips with known truth
    nice python benchmarks/bench_quality.py real  # REAL: SmolLM2-135M-Instruct Q4_1, local
    nice python benchmarks/bench_quality.py verifier  # REAL: the local model as a verifier of real labels
    python benchmarks/bench_quality.py render

``sim``: the simulator draws candidates from the CommonsenseQA training split (a real
dataset, so the truth of every label is known) and flips ``--flips`` of the labels; its
verifier answers right with probability ``--verify-accuracy``. Every run has the same token
budget. Rows: plain, --verify at 1, 3 and 5 votes, --verify relabel with 3 votes, then the
equal-budget table: +attributes auto, +verify+attributes, +harder. Measured: accepted
examples, dollars per accepted example (gpt-4o-mini list prices on the simulator's token
counts), the wrong-label share of the exported data, spend per module, diversity, and the
ID/OOD accuracy and PGR of the minilm-frozen student. The simulator makes the data: these
figures measure treegen's bookkeeping and the value of a verifier of a given accuracy, not a
model.

``real``: equal token budget on the local model, StrategyQA seeds: plain, +attributes auto,
+verify, +both, +harder 0.3. Measured: accepted, tokens per accepted, tokens per module, the
share of candidates the verifier rejects, distinct-2, self-BLEU, remote-clique (MiniLM),
similarity to the seed by depth (drift).

``verifier``: the local model answers real StrategyQA dev questions blind (treegen's verify
prompt, 5 a call); its answers are compared with the true labels, and with flipped labels, so
its accuracy and the share of wrong labels it would catch are measured directly.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import treegen  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
OUT = REPO / "runs" / "bench_quality"
# minilm-frozen trained on the human training split (benchmarks/results/students.md), test %.
DISTINCT_K = 1000  # tokens for distinct-2: the same K for every run
HUMAN = {"csqa": {"id": 38.8, "ood": 27.5}, "strategyqa": {"id": 53.5, "ood": 50.0}}

SIM_ROWS: list[tuple[str, dict[str, Any]]] = [
    ("plain", {}),
    ("verify x1", {"verify": "reject"}),
    ("verify x3", {"verify": "reject", "votes": 3}),
    ("verify x5", {"verify": "reject", "votes": 5}),
    ("relabel x3", {"verify": "relabel", "votes": 3}),
    ("+attributes", {"attributes": "auto"}),
    ("+verify+attributes", {"verify": "reject", "attributes": "auto"}),
    ("+harder 0.3", {"harder": 0.3}),
]
REAL_ROWS: list[tuple[str, dict[str, Any]]] = [
    ("plain", {}),
    ("+attributes", {"attributes": "auto"}),
    ("+verify", {"verify": "reject"}),
    ("+verify+attributes", {"verify": "reject", "attributes": "auto"}),
    ("+harder 0.3", {"harder": 0.3}),
]


def machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} cores, Python {platform.python_version()}, load average {load}"


def append(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if not k.startswith("_")}), flush=True)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


# ---------------------------------------------------------------- measuring a run


def measure(run_dir: Path, task: str, truth: dict[str, str] | None, embedder: Any, student: str | None,
            work: Path) -> dict[str, Any]:
    import numpy as np

    from treegen.metrics import distinct_n, drift_by_depth, item_text, load_run_nodes, remote_clique, self_bleu, \
        tokenize
    from treegen.store import call_spent_micro, call_spent_tokens
    from treegen.task import dedup_key

    store = treegen.open_run(run_dir)
    with store:
        nodes, run = load_run_nodes(store)
        calls = store.calls()
        reasons = store.rejection_reasons()
        statuses = store.node_status_counts()
    examples = nodes.examples
    n = len(examples)
    by_purpose: dict[str, dict[str, int]] = {}
    for c in calls:
        p = c.get("purpose") or "generate"
        slot = by_purpose.setdefault(p, {"calls": 0, "tokens": 0, "micro": 0})
        slot["calls"] += 1
        slot["tokens"] += call_spent_tokens(c)
        slot["micro"] += call_spent_micro(c)
    spent_tokens = sum(v["tokens"] for v in by_purpose.values())
    spent_micro = sum(v["micro"] for v in by_purpose.values())
    candidates = sum(int(c["n_parsed"] or 0) for c in calls)
    row: dict[str, Any] = {
        "run": run_dir.name, "status": run["status"], "stop_reason": run["stop_reason"], "accepted": n,
        "spent_tokens": spent_tokens, "spent_micro": spent_micro, "by_purpose": by_purpose,
        "tokens_per_accepted": spent_tokens / n if n else None,
        "usd_per_accepted": spent_micro / 1e6 / n if n else None, "candidates": candidates,
        "rejections": reasons, "node_status": statuses,
        "disputed_share": (reasons.get("label-disputed", 0) / candidates) if candidates else None,
    }
    if truth is not None:
        known = [truth.get(dedup_key(e)) for e in examples]
        pairs = [(e.label, t) for e, t in zip(examples, known) if t is not None]
        row["known"] = len(pairs)
        row["wrong_share"] = sum(a != b for a, b in pairs) / len(pairs) if pairs else None
    if n >= 2:
        tokens = [tokenize(item_text(e)) for e in examples]
        row["distinct2"] = distinct_n(tokens, (2,), budget=DISTINCT_K)[0][2]
        row["self_bleu"] = self_bleu(tokens)[0]
        emb = np.asarray(embedder.embed([item_text(e) for e in examples]))
        row["remote_clique"] = remote_clique(emb)
        roots = sorted(nodes.roots)
        seed_emb = np.asarray(embedder.embed([item_text(nodes.roots[r]) for r in roots]))
        where = {r: i for i, r in enumerate(roots)}
        drift = drift_by_depth(emb, nodes.depths, seed_emb[[where[r] for r in nodes.root_ids]])
        row["sim_to_seed_by_depth"] = {str(d): round(1.0 - v, 3) for d, (v, _c) in sorted(drift.items())}
    if student is not None and n >= 20:
        row["student"] = student_scores(examples, task, student, run_dir.name, work)
    return row


_MEMO: dict[str, Any] = {}


def _memo_minilm() -> None:
    """One embedding per text for the whole benchmark process: every row's student embeds the
    same test sets (the students' own caches live one student each)."""
    import numpy as np

    from treegen.students import minilm_frozen

    if getattr(minilm_frozen, "_bench_memo", False):
        return
    inner = minilm_frozen._minilm_embed

    def embed(texts: list[str]) -> Any:
        todo = [t for t in dict.fromkeys(texts) if t not in _MEMO]
        if todo:
            _MEMO.update(zip(todo, inner(todo)))
        return np.stack([_MEMO[t] for t in texts])

    minilm_frozen._minilm_embed = embed  # type: ignore[assignment]
    minilm_frozen._bench_memo = True  # type: ignore[attr-defined]


def student_scores(examples: list[Any], task: str, student: str, name: str, work: Path) -> dict[str, Any]:
    from treegen.evaluation import TrainingData, evaluate, train

    _memo_minilm()

    fmt = examples[0].infer_format()
    trained = train(TrainingData(examples, fmt, "run", name, False), student, task, work / name, seed=0)
    rows = evaluate(trained)
    id_row = next(r for r in rows if r["role"] == "id")
    ood = [r for r in rows if r["role"] == "ood"]
    human = HUMAN[task]["id"] / 100
    floor = id_row["majority"]
    ood_acc = sum(r["accuracy"] for r in ood) / len(ood) if ood else None
    return {
        "student": student, "id_acc": id_row["accuracy"], "id_floor": floor,
        "pgr": (id_row["accuracy"] - floor) / (human - floor) if human > floor else None,
        "ood_acc": ood_acc,
    }


# ---------------------------------------------------------------- parts


def part_sim(args: argparse.Namespace) -> None:
    from treegen.embedders import get_embedder
    from treegen.sim.server import SimConfig, SimServer
    from treegen.task import dedup_key, load_examples

    from treegen import datasets

    pool = datasets.split_path("csqa", "train")
    truth = {dedup_key(e): e.label for e in load_examples(pool)[0]}
    embedder = get_embedder("minilm")
    out = Path(args.out) / "sim"
    results = RESULTS / "quality_sim.jsonl"
    os.environ.setdefault("OPENAI_API_KEY", "sk-sim-bench")
    for seed in args.seeds:
        for name, flags in SIM_ROWS:
            run_name = f"{slug(name)}-s{seed}"
            if (out / run_name).exists():
                print(f"skip {run_name}", flush=True)
                continue
            cfg = SimConfig(pool_path=str(pool), label_flip_rate=args.flips, verify_accuracy=args.verify_accuracy,
                            seed=seed)
            t0 = time.perf_counter()
            with SimServer(cfg) as srv:
                res = treegen.run(seeds=None, seeds_from="csqa", n_seeds=3, base_url=srv.base_url, strategy="tree",
                                  max_tokens=args.max_tokens, seed=seed, out=str(out), name=run_name,
                                  concurrency=8, embedder="hashing", **flags)
            row = measure(out / run_name, "csqa", truth, embedder, args.student, out / "_students")
            row.update(part="sim", name=name, seed=seed, flags=flags, flips=args.flips,
                       verify_accuracy=args.verify_accuracy, max_tokens=args.max_tokens, status=res.status,
                       wall_s=round(time.perf_counter() - t0, 1), machine=machine())
            append(results, row)


def part_real(args: argparse.Namespace) -> None:
    from treegen.embedders import get_embedder

    embedder = get_embedder("minilm")
    out = Path(args.out) / "real"
    results = RESULTS / "quality_real.jsonl"
    for seed in args.seeds:
        for name, flags in REAL_ROWS:
            run_name = f"{slug(name)}-s{seed}"
            if (out / run_name).exists():
                print(f"skip {run_name}", flush=True)
                continue
            t0 = time.perf_counter()
            try:
                res = treegen.run(seeds=None, seeds_from="strategyqa", n_seeds=3, backend="local", strategy="tree",
                                  max_tokens=args.real_tokens, seed=seed, out=str(out), name=run_name,
                                  local_threads=args.threads, **flags)
                status = res.status
            except Exception as exc:  # noqa: BLE001 - recorded, the other rows go on
                append(results, {"part": "real", "name": name, "seed": seed, "error": f"{type(exc).__name__}: {exc}"})
                continue
            row = measure(out / run_name, "strategyqa", None, embedder, None, out / "_students")
            row.update(part="real", name=name, seed=seed, flags=flags, max_tokens=args.real_tokens, status=status,
                       wall_s=round(time.perf_counter() - t0, 1), machine=machine(),
                       model="SmolLM2-135M-Instruct", quantisation="Q4_1")
            append(results, row)


def part_verifier(args: argparse.Namespace) -> None:
    """The local model answers real questions blind; compared with the truth."""
    import asyncio

    from treegen import datasets
    from treegen.client import ChatClient
    from treegen.local import LocalServer
    from treegen.task import TaskFormat
    from treegen.verify import parse_verdicts, verify_max_tokens, verify_messages, verify_response_format

    fmt = TaskFormat.parse("yesno_close")
    examples, _fmt, _note = datasets.load_split("strategyqa", "test", limit=args.verifier_n, sample=True)
    per_call = 5
    results = RESULTS / "quality_verifier.jsonl"

    async def ask(client: ChatClient, batch: list[Any]) -> list[str | None]:
        reply = await client.chat(verify_messages(batch, fmt, structured=True), max_tokens=verify_max_tokens(fmt, len(batch)),
                                  temperature=0.0, top_p=None, seed=0, timeout=300,
                                  response_format=verify_response_format(fmt, len(batch), "json_object"))
        return parse_verdicts(reply.text, batch, fmt)

    t0 = time.perf_counter()
    with LocalServer(threads=args.threads) as server:
        async def go() -> list[str | None]:
            client = ChatClient(server.base_url, "not-needed", server.model_name, timeout=300)
            try:
                answers: list[str | None] = []
                for i in range(0, len(examples), per_call):
                    answers += await ask(client, examples[i:i + per_call])
                return answers
            finally:
                await client.aclose()

        answers = asyncio.run(go())
    truth = [e.label for e in examples]
    readable = [(a, t) for a, t in zip(answers, truth) if a is not None]
    accuracy = sum(a == t for a, t in readable) / len(readable) if readable else None
    says_true = sum(a == "True" for a, _ in readable) / len(readable) if readable else None
    # A flipped label is caught when the verifier's answer differs from it: i.e. when it agrees with the truth.
    row = {
        "part": "verifier", "n": len(examples), "readable": len(readable), "accuracy": accuracy,
        "share_answering_true": says_true, "true_share_in_data": sum(t == "True" for t in truth) / len(truth),
        "flipped_caught": accuracy, "true_kept": accuracy, "per_call": per_call, "wall_s": round(time.perf_counter() - t0, 1),
        "machine": machine(), "model": "SmolLM2-135M-Instruct", "quantisation": "Q4_1",
    }
    append(results, row)


# ---------------------------------------------------------------- rendering


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _f(x: Any, digits: int = 2, pct: bool = False) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.{max(digits - 1, 0)}f}%" if pct else f"{x:,.{digits}f}"


def render(args: argparse.Namespace) -> None:
    sim = _read(RESULTS / "quality_sim.jsonl")
    real = _read(RESULTS / "quality_real.jsonl")
    ver = _read(RESULTS / "quality_verifier.jsonl")
    lines = ["# Quality in the loop (issue 14)", ""]
    if sim:
        s0 = sim[0]
        lines += [
            "## SIMULATED: verification against label flips, equal token budget",
            "",
            f"Command: `python benchmarks/bench_quality.py sim --flips {s0['flips']} --verify-accuracy "
            f"{s0['verify_accuracy']} --max-tokens {s0['max_tokens']}`; machine: {s0['machine']}. The simulator draws "
            "candidates from CommonsenseQA's training split (real questions, so every label's truth is known) and "
            f"flips {100 * s0['flips']:.0f}% of labels; its verifier answers right with probability "
            f"{s0['verify_accuracy']}. Dollars: gpt-4o-mini list prices on the simulator's token counts. Student: "
            "minilm-frozen, CommonsenseQA test (ID) and RiddleSense test (OOD); PGR against the same student on the "
            "human training split. Means over seeds " + ", ".join(str(s) for s in sorted({r['seed'] for r in sim})) + ".",
            "",
            "| row | runs | accepted | $ per accepted | wrong labels | verify $ share | ID acc | OOD acc | PGR | distinct-2 | remote-clique |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, _flags in SIM_ROWS:
            rows = [r for r in sim if r["name"] == name]
            if not rows:
                continue
            lines.append(_sim_line(name, rows))
        lines.append("")
    if real:
        r0 = real[0]
        lines += [
            "## REAL: SmolLM2-135M-Instruct Q4_1 (local llama.cpp), StrategyQA seeds, equal token budget",
            "",
            f"Command: `nice python benchmarks/bench_quality.py real --real-tokens {r0.get('max_tokens')}`; machine: "
            f"{r0.get('machine')}. Tree strategy, 3 seeds drawn from StrategyQA train per run seed.",
            "",
            "| row | runs | accepted | tokens per accepted | tokens by module | verifier rejects | distinct-2 | self-BLEU | remote-clique | similarity to seed by depth |",
            "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for name, _flags in REAL_ROWS:
            rows = [r for r in real if r.get("name") == name and "error" not in r]
            if rows:
                lines.append(_real_line(name, rows))
        errors = [r for r in real if "error" in r]
        for e in errors:
            lines.append(f"\nError in {e['name']} seed {e['seed']}: {e['error']}")
        lines.append("")
    if ver:
        v = ver[-1]
        lines += [
            "## REAL: the local model as a verifier of real labels",
            "",
            f"Command: `nice python benchmarks/bench_quality.py verifier --verifier-n {v['n']}`; machine: {v['machine']}. "
            f"SmolLM2-135M-Instruct Q4_1 answers {v['n']} StrategyQA test questions blind, {v['per_call']} a call, "
            "with treegen's verify prompt and schema.",
            "",
            f"- readable answers: {v['readable']} of {v['n']}",
            f"- accuracy against the true labels: {_f(v['accuracy'], pct=True)} (the data has "
            f"{_f(v['true_share_in_data'], pct=True)} True; the model answered True {_f(v['share_answering_true'], pct=True)} of the time)",
            "- so with one vote it would keep a right label, and catch a flipped one, at about that rate: a verifier "
            "no better than chance removes right and wrong labels alike.",
            "",
        ]
    path = RESULTS / "quality.md"
    kept = path.read_text(encoding="utf-8").split(NOTES, 1)[1] if path.exists() and NOTES in path.read_text(
        encoding="utf-8") else "\n"
    lines += [NOTES]
    path.write_text("\n".join(lines) + kept, encoding="utf-8")
    print((RESULTS / "quality.md").read_text())


NOTES = "<!-- reading: written by hand below the tables -->"


def _mean(rows: list[dict[str, Any]], key: str, sub: str | None = None) -> float | None:
    vals = []
    for r in rows:
        v = r.get(key)
        if sub is not None:
            v = (v or {}).get(sub) if isinstance(v, dict) else None
        if v is not None:
            vals.append(float(v))
    return sum(vals) / len(vals) if vals else None


def _sim_line(name: str, rows: list[dict[str, Any]]) -> str:
    verify_share = []
    for r in rows:
        total = max(1, r["spent_micro"])
        verify_share.append(r["by_purpose"].get("verify", {}).get("micro", 0) / total)
    return (f"| {name} | {len(rows)} | {_f(_mean(rows, 'accepted'), 0)} | ${_f(_mean(rows, 'usd_per_accepted'), 6)} | "
            f"{_f(_mean(rows, 'wrong_share'), pct=True)} | {_f(sum(verify_share) / len(verify_share), pct=True)} | "
            f"{_f(_mean(rows, 'student', 'id_acc'), pct=True)} | {_f(_mean(rows, 'student', 'ood_acc'), pct=True)} | "
            f"{_f(_mean(rows, 'student', 'pgr'))} | {_f(_mean(rows, 'distinct2'), 3)} | {_f(_mean(rows, 'remote_clique'), 3)} |")


def _real_line(name: str, rows: list[dict[str, Any]]) -> str:
    purposes: dict[str, float] = {}
    for r in rows:
        for p, v in r["by_purpose"].items():
            purposes[p] = purposes.get(p, 0) + v["tokens"] / len(rows)
    by_module = ", ".join(f"{p} {v:,.0f}" for p, v in sorted(purposes.items()))
    depth = rows[0].get("sim_to_seed_by_depth") or {}
    drift = ", ".join(f"d{d} {v:.2f}" for d, v in list(depth.items())[:6])
    return (f"| {name} | {len(rows)} | {_f(_mean(rows, 'accepted'), 1)} | {_f(_mean(rows, 'tokens_per_accepted'), 0)} | "
            f"{by_module} | {_f(_mean(rows, 'disputed_share'), pct=True)} | {_f(_mean(rows, 'distinct2'), 3)} | "
            f"{_f(_mean(rows, 'self_bleu'), 3)} | {_f(_mean(rows, 'remote_clique'), 3)} | {drift} (seed {rows[0]['seed']}) |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=("sim", "real", "verifier", "render"))
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1])
    ap.add_argument("--flips", type=float, default=0.3)
    ap.add_argument("--verify-accuracy", type=float, default=0.85)
    ap.add_argument("--max-tokens", type=int, default=200_000)
    ap.add_argument("--student", default="minilm-frozen")
    ap.add_argument("--real-tokens", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--verifier-n", type=int, default=100)
    args = ap.parse_args()
    {"sim": part_sim, "real": part_real, "verifier": part_verifier, "render": render}[args.part](args)


if __name__ == "__main__":
    random.seed(0)
    main()
