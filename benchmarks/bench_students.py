"""Students trained on the human training data (D_L) of each benchmark: ID/OOD test accuracy,
training seconds, peak memory. Writes benchmarks/results/students.md beside the paper's
RoBERTa-large figures.

    python benchmarks/bench_students.py                                  # lexical + minilm-frozen, all ten
    python benchmarks/bench_students.py --students minilm-ft --tasks csqa,strategyqa --max-train 1000
    python benchmarks/bench_students.py --eval-limit 500                 # cap test examples per dataset

Each (student, task) runs in its own process so that its peak resident memory (ru_maxrss) is
its own; results are appended to benchmarks/results/students.jsonl and the Markdown table is
rebuilt from all rows there (so separate invocations add up).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS_MD = REPO / "benchmarks" / "results" / "students.md"
RESULTS_JSONL = REPO / "benchmarks" / "results" / "students.jsonl"
sys.path.insert(0, str(REPO))


def one(student: str, task: str, seed: int, eval_limit: int | None, max_train: int | None,
        epochs: int | None) -> dict:
    from treegen import datasets
    from treegen.students import get_student

    train, _fmt, note = datasets.load_split(task, "train")
    dev = None if not datasets.has_train(task) else datasets.load_split(task, "dev")[0]
    kwargs = {}
    if student in ("minilm-ft", "minilm-frozen") and max_train is not None:
        kwargs["max_train"] = max_train or None  # 0: no cap
    if student == "minilm-ft" and epochs is not None:
        kwargs["epochs"] = epochs
    model = get_student(student, **kwargs)
    t0 = time.perf_counter()
    model.fit(train, dev, seed=seed)
    train_s = time.perf_counter() - t0
    row = {"student": student, "task": task, "seed": seed, "n_train": len(train), "note": note,
           "train_seconds": round(train_s, 1), "info": getattr(model, "info", {}), "eval_limit": eval_limit,
           "eval_sample": "random"}
    accs = {}
    t0 = time.perf_counter()
    for name in [task, *datasets.ood_tasks(task)]:
        test, _f, _n = datasets.load_split(name, "test", limit=eval_limit, sample=True)
        pred = model.predict(test)
        accs[name] = {"acc": sum(p == e.label for p, e in zip(pred, test)) / len(test), "n": len(test),
                      "majority": datasets.test_majority_floor(test)}
    row["eval_seconds"] = round(time.perf_counter() - t0, 1)
    row["results"] = accs
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0)
    return row


def render(rows: list[dict], command: str) -> str:
    from treegen.datasets import PAPER_ROBERTA_LARGE, TASKS, ood_tasks

    lines = [
        "# Students on human data (D_L)",
        "",
        "Each student trained on the task's human training split (dev where the public copy has no",
        "training file: piqa, boolq_open — model selection then by 5-fold cross-validation on it, or a held-out tenth for minilm-ft), selected",
        "on the dev split, evaluated on the test split of the task (ID) and of the other tasks in its",
        "group (OOD). Accuracy in %; the floor is the majority class of each test split. The paper's",
        "column is RoBERTa-large fine-tuned on the full human training set (its poster).",
        "",
        f"Machine: {os.cpu_count()} CPU cores (shared with other jobs while measured), no GPU, "
        f"{platform.python_implementation()} {platform.python_version()}, {platform.system()}.",
        f"Command: `{command}`",
        "",
        "| task | student | n train (used) | caps | ID acc | ID floor | beats floor & chance | OOD acc (each) | OOD mean | train s | eval s | peak RSS MB | paper RoBERTa-L |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    latest: dict[tuple[str, str], dict] = {}
    for r in rows:
        latest[(r["task"], r["student"])] = r
    order = {"lexical": 0, "minilm-frozen": 1, "minilm-ft": 2}
    for task in TASKS:
        for (t, s), r in sorted(latest.items(), key=lambda kv: order.get(kv[0][1], 9)):
            if t != task:
                continue
            res = r["results"]
            idr = res[task]
            k = 2 if TASKS[task].group.startswith(("yesno", "mcqa_2")) else 5
            ok = idr["acc"] > idr["majority"] and idr["acc"] > 1 / k
            ood = [f"{o} {res[o]['acc'] * 100:.1f}" for o in ood_tasks(task) if o in res]
            ood_mean = sum(res[o]["acc"] for o in ood_tasks(task)) / max(1, len(ood_tasks(task)))
            used = r["info"].get("n_train_used", r["n_train"])
            n_eval = f" (n={idr['n']})" if r.get("eval_limit") else ""
            caps = ", ".join(filter(None, [
                f"max_train {r['info']['max_train']}" if r["info"].get("max_train") else "",
                f"epochs {r['info']['epochs']}" if r["info"].get("epochs") else "",
                (f"test: random {r['eval_limit']}/dataset" if r.get("eval_sample") == "random"
                 else f"test: first {r['eval_limit']} rows/dataset") if r.get("eval_limit") else "",
            ])) or "none"
            lines.append(
                f"| {task} | {s} | {r['n_train']:,} ({used:,}) | {caps} | {idr['acc'] * 100:.1f}{n_eval} | "
                f"{idr['majority'] * 100:.1f} | {'yes' if ok else '**no**'} | {', '.join(ood)} | "
                f"{ood_mean * 100:.1f} | {r['train_seconds']:.0f} | {r['eval_seconds']:.0f} | "
                f"{r['peak_rss_mb']:.0f} | {PAPER_ROBERTA_LARGE[task]:.2f} |"
            )
    return "\n".join(lines) + "\n" + NOTES


NOTES = """
## Where a student does not beat chance and the majority class, and why

- **RiddleSense, lexical (below the 20% chance).** Memorising which options tend to be right is
  anti-predictive on this benchmark: an option-prior baseline (answer rate of each option text in
  train) scores 15.6% on RiddleSense test and 9.5% on CommonsenseQA test. The lexical student's
  relational features alone (LSA relatedness, overlap, length) stay at chance on riddles, which
  turn on wordplay; dev chose the block that can memorise (25.0% dev against 22.0% without) and
  that choice does not transfer to test.
- **CommonsenseQA.** Above chance only because the memorising block is left out (chosen on dev).
  1,037 of the 1,241 test questions share at least three options with a training question, and
  only 112 of those have their answer among those training questions' answers: CSQA builds
  several questions from one set of ConceptNet concepts, each with a different answer.
- **BoolQ (open) and BioASQ, lexical: equal to the majority class.** The student predicts the
  majority label. BoolQ-open trains on the 1,635 dev rows (no public training file) and its
  answer depends on reading the passage, which bag-of-words features do not do; BioASQ has 670
  training rows and 75 dev rows, about 82% True in both, against 67% True in its test split:
  every C on dev gives exactly the majority answer. The paper's RoBERTa-large
  gets 55.2 on PubMedQA, close to its majority class too.
- **WinoGrande: every student near 50%.** Winograd schemas are built so that word associations do
  not give the answer (the two options are names that fit the sentence equally), and there are
  160 training rows; the paper's RoBERTa-large gets 51.4.
- **StrategyQA, minilm-ft: at the floor** (49.6% with 200 examples and 1 epoch, and again with
  1,000 examples and 2 epochs): the fine-tuned MiniLM settles on one answer; the questions need
  multi-step world knowledge, and the paper's RoBERTa-large trained on all 2,061 gets 49.56.
- **BoolQ (closed), minilm-ft: at the floor** (65.0% = the share of True in the rows evaluated),
  with 1,000 examples and 2 epochs: it answers True throughout. Closed-book BoolQ asks for facts
  a 22M-parameter encoder does not hold; the paper's RoBERTa-large gets 65.68, near the 61.3%
  majority of the full test split, too.
- **BoolQ (open), minilm-frozen (57.5% against 59.5%).** A frozen sentence embedding of the
  question and one of the passage do not say whether the passage answers yes; 500 examples.
- **minilm-frozen on CREAK (55.5% against a 56.0% floor on the first 200 test rows) and
  WinoGrande (49.0%).** These ran with only 500 training examples (the CPU cap used here); on
  CREAK the lexical student with all 10,176 rows reaches 58.9%, so the cap is the likely cause
  there (not measured with a larger cap in this session). WinoGrande: see above.
- **OOD below the floor.** A student trained on one dataset of a group often falls below the
  floor of another (e.g. creak → strategyqa): label priors and topics differ between datasets.

What was run (wall-clock on 2 CPU cores shared with other engineers' jobs, load average about
6.5, so every time here is several times what an idle machine takes):
lexical on all ten datasets with no cap; minilm-frozen with `--max-train 500` (dev capped at
250) and 200 test examples per dataset (piqa: an earlier run with `--max-train 2000` and 500
test examples); minilm-ft only where listed, with the caps listed. Rows marked "first N rows"
were evaluated on the first N rows of each test file, before the switch to a seeded random
sample ("random N"): PubMedQA's test file is sorted by label (its first 276 rows are True), so
the rows that evaluate on PubMedQA were rerun with the random sample. The rows are in
`benchmarks/results/students.jsonl` (one JSON object per student and task, with the model
selection grid and the caps).
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--students", default="lexical,minilm-frozen")
    ap.add_argument("--tasks", default="")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-limit", type=int, default=None)
    ap.add_argument("--max-train", type=int, default=None, help="cap on training examples; 0 = none")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--one", nargs=2, metavar=("STUDENT", "TASK"), help=argparse.SUPPRESS)
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], args.seed, args.eval_limit, args.max_train, args.epochs)))
        return
    from treegen.datasets import TASKS

    command = "python benchmarks/bench_students.py " + " ".join(sys.argv[1:])
    if not args.render_only:
        tasks = [t for t in args.tasks.split(",") if t] or list(TASKS)
        for student in args.students.split(","):
            for task in tasks:
                cmd = [sys.executable, __file__, "--one", student, task, "--seed", str(args.seed)]
                for flag, val in (("--eval-limit", args.eval_limit), ("--max-train", args.max_train),
                                  ("--epochs", args.epochs)):
                    if val is not None:
                        cmd += [flag, str(val)]
                t0 = time.time()
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"{student} {task} FAILED:\n{proc.stderr[-2000:]}", flush=True)
                    continue
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                row["command"] = command
                with RESULTS_JSONL.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(f"{student:14} {task:13} ID {row['results'][task]['acc'] * 100:5.1f}% "
                      f"train {row['train_seconds']}s wall {time.time() - t0:.0f}s", flush=True)
                rows = [json.loads(l) for l in RESULTS_JSONL.read_text().splitlines() if l.strip()]
                RESULTS_MD.write_text(render(rows, command), encoding="utf-8")
    rows = [json.loads(l) for l in RESULTS_JSONL.read_text().splitlines() if l.strip()] if RESULTS_JSONL.exists() else []
    commands = sorted({r.get("command", "") for r in rows})
    RESULTS_MD.write_text(render(rows, " ; ".join(commands) or command), encoding="utf-8")


if __name__ == "__main__":
    main()
