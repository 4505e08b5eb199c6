"""Soak test of the engine's guarantees against a faulty server, with kill -9 and resume.

Each trial starts a standalone simulator (SIMULATED: no model, no cost) with random faults,
runs ``treegen run --backend openai --base-url SIM`` in a subprocess with random caps of every
kind and a random concurrency (1-32), SIGKILLs it at a random moment in about half the
trials and then runs ``treegen resume``. After each trial it reads the run database and counts:

- overruns: what is counted as spent above a cap (dollars, tokens, calls; accepted above the
  target) -- must be 0;
- examples lost: accepted nodes seen before the kill missing after the resume -- must be 0;
- calls counted twice: the same (request_key, attempt) recorded twice -- must be 0;
- calls left pending after the last session -- must be 0;
- the share of a dollar or token cap left unspent when the run stopped on it, and whether it
  was more than one worst-case request (the largest reserved_micro / reserved_tokens of the run).

    python benchmarks/bench_soak.py --runs 200 [--seed 0] [--out /tmp/soak]

Prints a markdown table. Every figure is SIMULATED.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from treegen.prices import load_price_table, find_prices_file, price_for, usd_to_micro  # noqa: E402
from treegen.sim.server import SimConfig, SimServer  # noqa: E402
from treegen.store import RunStore, call_spent_micro, call_spent_tokens  # noqa: E402

FAKE_KEY = "sk-test-" + "soak" * 8
MODEL = "gpt-4o-mini"
DATA = Path(os.environ.get("TREEGEN_DATA_DIR") or REPO.parent / "shared" / "datasets")


@dataclass
class Trial:
    index: int
    faults: dict[str, Any]
    caps: dict[str, Any]
    concurrency: int
    kill_after: float | None
    exit_codes: list[int] = field(default_factory=list)
    status: str = ""
    stop_reason: str = ""
    overruns: list[str] = field(default_factory=list)
    lost_examples: int = 0
    double_counted: int = 0
    pending_left: int = 0
    unspent: dict[str, tuple[float, bool]] = field(default_factory=dict)  # cap -> (share, > one worst case)
    calls: int = 0
    accepted: int = 0
    seconds: float = 0.0
    time_over: float = 0.0
    tracebacks: int = 0
    traceback_tail: str = ""  # the last lines of the first output holding a Traceback
    quality: list[str] = field(default_factory=list)  # --quality: the modules' flags of this trial


def random_quality(rng: random.Random) -> list[str]:
    """Quality modules for a trial (``--quality``): their extra calls must keep every guarantee."""
    flags: list[str] = []
    if rng.random() < 0.7:
        flags += ["--verify", rng.choice(["reject", "relabel"]), "--votes", str(rng.choice([1, 1, 3]))]
    if rng.random() < 0.3:
        flags += ["--harder", "0.3"]
    if rng.random() < 0.3:
        flags += ["--attributes", "auto"]
    if rng.random() < 0.3:
        flags += ["--constraint", "question at most 25 words"]
    return flags


def random_faults(rng: random.Random) -> dict[str, Any]:
    faults: dict[str, Any] = {
        "seed": rng.randrange(1 << 30),
        "latency_ms": rng.choice([0, 20, 80, 200]),
        "jitter_ms": rng.choice([0, 50, 150]),
        "error_rate": rng.choice([0.0, 0.05, 0.2]),
        "hang_rate": rng.choice([0.0, 0.0, 0.02, 0.05]),
        "malformed_rate": rng.choice([0.0, 0.1, 0.3]),
        "truncate_rate": rng.choice([0.0, 0.1, 0.2]),
        "wrong_count_rate": rng.choice([0.0, 0.2]),
        "duplicate_rate": rng.choice([0.0, 0.1]),
    }
    if rng.random() < 0.3:
        faults["body_fault"] = rng.choice(["html", "empty", "notjson"])
        faults["body_fault_rate"] = rng.choice([0.02, 0.1])
    return faults


def random_caps(rng: random.Random) -> dict[str, Any]:
    caps: dict[str, Any] = {}
    kinds = rng.sample(["max_usd", "max_tokens", "max_calls", "target", "max_depth"], rng.randint(1, 3))
    for kind in kinds:
        if kind == "max_usd":
            caps[kind] = rng.choice([0.002, 0.005, 0.01, 0.03])
        elif kind == "max_tokens":
            caps[kind] = rng.choice([4000, 12000, 30000, 60000])
        elif kind == "max_calls":
            caps[kind] = rng.randint(2, 60)
        elif kind == "target":
            caps[kind] = rng.randint(3, 120)
        else:
            caps[kind] = rng.randint(1, 4)
    # A time cap in most trials (and always as a backstop, so that no trial runs long).
    caps["max_seconds"] = rng.choice([3, 6, 10, 20])
    return caps


def cap_flags(caps: dict[str, Any]) -> list[str]:
    return [x for k, v in caps.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def treegen(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OPENAI_API_KEY": FAKE_KEY}
    env.pop("OPENAI_BASE_URL", None)
    return subprocess.Popen([sys.executable, "-m", "treegen", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=REPO)


def q(db: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def accepted_set(db: Path) -> set[tuple]:
    return set(q(db, "select id, question, label from nodes where status = 'accepted'"))


def finish(proc: subprocess.Popen, trial: Trial, limit: float = 180.0) -> None:
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        trial.overruns.append("process did not end")
    trial.exit_codes.append(proc.returncode)
    said = (out + err).decode(errors="replace")
    trial.tracebacks += said.count("Traceback")
    if "Traceback" in said and not trial.traceback_tail:
        trial.traceback_tail = " | ".join(said.strip().splitlines()[-3:])


def run_trial(trial: Trial, seeds: Path, root: Path, rng: random.Random, price: Any) -> None:
    out = root / "runs"
    name = f"t{trial.index}"
    run_dir = out / name
    db = run_dir / "treegen.db"
    started = time.monotonic()
    with SimServer(SimConfig(**trial.faults)) as srv:
        args = ["run", str(seeds), "--backend", "openai", "--base-url", srv.base_url, "--model", MODEL,
                "--embedder", "hashing", "-c", str(trial.concurrency), "--timeout", "2", "--max-retries", "3",
                "--out", str(out), "--name", name, "--quiet", *cap_flags(trial.caps), *trial.quality]
        proc = treegen(args)
        before: set[tuple] = set()
        if trial.kill_after is not None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if db.exists() and q(db, "select count(*) from calls")[0][0] >= 1:
                        break
                except sqlite3.Error:
                    pass
                time.sleep(0.05)
            time.sleep(trial.kill_after)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
                trial.exit_codes.append(-9)
                if db.exists():
                    before = accepted_set(db)
                finish(treegen(["resume", str(run_dir), "--quiet"]), trial)
            else:
                finish(proc, trial)
        else:
            finish(proc, trial)
    trial.seconds = time.monotonic() - started
    if not db.exists():
        return
    with RunStore.open(run_dir, readonly=True) as store:
        run = store.run()
        calls = store.calls()
        accepted = accepted_set(db)
    trial.status, trial.stop_reason = run["status"], run["stop_reason"] or ""
    trial.calls, trial.accepted = len(calls), len(accepted)
    trial.lost_examples = len(before - accepted)
    trial.double_counted = sum(n - 1 for (n,) in q(db, "select count(*) from calls group by request_key, attempt "
                                                       "having count(*) > 1"))
    trial.pending_left = sum(c["status"] == "pending" for c in calls)
    spent_micro = sum(call_spent_micro(c) for c in calls)
    spent_tokens = sum(call_spent_tokens(c) for c in calls)
    caps = trial.caps
    if "max_usd" in caps:
        cap = usd_to_micro(caps["max_usd"])
        if spent_micro > cap:
            trial.overruns.append(f"usd {spent_micro}>{cap}")
        if "dollar cap" in trial.stop_reason:
            worst = max((c["reserved_micro"] or 0 for c in calls), default=0)
            trial.unspent["usd"] = ((cap - spent_micro) / cap, cap - spent_micro >= worst)
    if "max_tokens" in caps:
        cap = caps["max_tokens"]
        if spent_tokens > cap:
            trial.overruns.append(f"tokens {spent_tokens}>{cap}")
        if "token cap" in trial.stop_reason:
            worst = max((c["reserved_tokens"] or 0 for c in calls), default=0)
            trial.unspent["tokens"] = ((cap - spent_tokens) / cap, cap - spent_tokens >= worst)
    if "max_calls" in caps and len(calls) > caps["max_calls"]:
        trial.overruns.append(f"calls {len(calls)}>{caps['max_calls']}")
    if "target" in caps and len(accepted) > caps["target"]:
        trial.overruns.append(f"accepted {len(accepted)}>{caps['target']}")
    trial.time_over = max(0.0, float(run["elapsed_seconds"] or 0) - caps["max_seconds"])


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="Keep the runs here (default: a temp folder, removed).")
    parser.add_argument("--kill-share", type=float, default=0.5, help="Share of trials killed with SIGKILL.")
    parser.add_argument("--quality", action="store_true",
                        help="Also turn on quality modules at random (verify, votes, harder, attributes, constraints).")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = args.out or Path(tempfile.mkdtemp(prefix="treegen-soak-"))
    root.mkdir(parents=True, exist_ok=True)
    seeds = root / "seeds.jsonl"
    seeds.write_text("\n".join((DATA / "yesno_close" / "strategyqa" / "train.jsonl")
                               .read_text(encoding="utf-8").splitlines()[:2]) + "\n", encoding="utf-8")
    price = price_for(MODEL, load_price_table(find_prices_file(None)))
    load_before = os.getloadavg()
    t0 = time.monotonic()
    trials: list[Trial] = []
    for i in range(args.runs):
        trial = Trial(i, random_faults(rng), random_caps(rng), rng.choice([1, 2, 4, 8, 16, 32]),
                      rng.uniform(0.2, 3.0) if rng.random() < args.kill_share else None)
        if args.quality:
            trial.quality = random_quality(rng)
            trial.faults = {**trial.faults, "label_flip_rate": 0.2, "verify_accuracy": 0.9}
        run_trial(trial, seeds, root, rng, price)
        trials.append(trial)
        print(f"# {i + 1}/{args.runs} c={trial.concurrency} kill={trial.kill_after and round(trial.kill_after, 1)} "
              f"exit={trial.exit_codes} {trial.status}: {trial.stop_reason[:70]} calls={trial.calls} "
              f"accepted={trial.accepted} overruns={trial.overruns} lost={trial.lost_examples} "
              f"twice={trial.double_counted} pending={trial.pending_left} tb={trial.tracebacks}",
              file=sys.stderr, flush=True)
    wall = time.monotonic() - t0
    load_after = os.getloadavg()
    if args.out is None:
        shutil.rmtree(root, ignore_errors=True)

    killed = [t for t in trials if -9 in t.exit_codes]
    shares = {kind: [t.unspent[kind] for t in trials if kind in t.unspent] for kind in ("usd", "tokens")}
    statuses = Counter(t.status or "(no run)" for t in trials)
    exits = Counter(t.exit_codes[-1] if t.exit_codes else None for t in trials)
    print("SIMULATED: every reply comes from treegen's simulator (no model, no cost).\n")
    print(f"Command: `python benchmarks/bench_soak.py --runs {args.runs} --seed {args.seed}"
          f"{' --quality' if args.quality else ''}`  ")
    if args.quality:
        with_verify = sum("--verify" in t.quality for t in trials)
        print(f"Quality modules on at random: {with_verify} trials with --verify, "
              f"{sum('--harder' in t.quality for t in trials)} with --harder, "
              f"{sum('--attributes' in t.quality for t in trials)} with --attributes auto, "
              f"{sum('--constraint' in t.quality for t in trials)} with a constraint.  ")
    print(f"Machine: {machine()}; load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
          f"wall time {wall:.0f} s\n")
    print("| measure | value |")
    print("| --- | --- |")
    print(f"| trials (killed with SIGKILL, then resumed) | {len(trials)} ({len(killed)}) |")
    print(f"| calls recorded, total | {sum(t.calls for t in trials):,} |")
    print(f"| overruns (spent > cap, calls > cap, accepted > target) | {sum(len(t.overruns) for t in trials)} |")
    print(f"| examples lost across a kill | {sum(t.lost_examples for t in trials)} |")
    print(f"| calls counted twice (same request_key + attempt) | {sum(t.double_counted for t in trials)} |")
    print(f"| calls left pending after the last session | {sum(t.pending_left for t in trials)} |")
    print(f"| outputs with a Traceback | {sum(t.tracebacks > 0 for t in trials)} |")
    for kind, label in (("usd", "dollar"), ("tokens", "token")):
        vals = shares[kind]
        if vals:
            s = sorted(v for v, _ in vals)
            print(f"| {label} cap left unspent when it stopped the run (n={len(s)}): median / max share | "
                  f"{s[len(s) // 2]:.1%} / {s[-1]:.1%} |")
            print(f"| ... runs that left at least one worst-case request of it unspent | "
                  f"{sum(big for _, big in vals)} |")
    print(f"| time cap: largest elapsed_seconds over --max-seconds | {max((t.time_over for t in trials), default=0):.2f} s |")
    print(f"| final status | {', '.join(f'{k}: {v}' for k, v in statuses.most_common())} |")
    print(f"| final exit code | {', '.join(f'{k}: {v}' for k, v in exits.most_common())} |")
    bad = [t for t in trials if t.overruns or t.lost_examples or t.double_counted or t.pending_left or t.tracebacks]
    if bad:
        print("\nTrials that broke a guarantee:\n")
        for t in bad:
            print(f"- trial {t.index}: c={t.concurrency} caps={json.dumps(t.caps)} faults={json.dumps(t.faults)} "
                  f"kill_after={t.kill_after} exits={t.exit_codes} status={t.status!r} overruns={t.overruns} "
                  f"lost={t.lost_examples} twice={t.double_counted} pending={t.pending_left} tracebacks={t.tracebacks} "
                  f"{t.traceback_tail}")


if __name__ == "__main__":
    main()
