"""Engine benchmarks: throughput against the standalone simulator, local overhead as the tree
grows, tokens per accepted example. Writes benchmarks/results/engine.md.

    python benchmarks/bench_engine.py                # everything (about 15 minutes on 2 cores)
    python benchmarks/bench_engine.py --only throughput
    python benchmarks/bench_engine.py --only overhead --sizes 1000,10000

Every figure is simulated (the simulator stands in for the LLM); the dollars are what the
same tokens would cost at gpt-4o-mini list prices.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TREEGEN_DATA_DIR", REPO.parent / "shared" / "datasets"))
STRATEGYQA = DATA / "yesno_close" / "strategyqa" / "train.jsonl"
RESULTS = REPO / "benchmarks" / "results" / "engine.md"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StandaloneSim:
    """`treegen sim serve` in its own process, as a user would run it."""

    def __init__(self, *args: str):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "treegen", "sim", "serve", "--port", str(self.port), *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        deadline = time.monotonic() + 300
        import urllib.request

        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.base_url + "/models", timeout=1).read()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("the simulator did not start")

    def stats(self) -> dict:
        import urllib.request

        return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/sim/stats").read())

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def run_treegen(seeds: Path, out: Path, *args: str) -> tuple[Path, dict]:
    """Run `treegen run` in a subprocess; return its run folder and its own CPU and wall time."""
    env = dict(os.environ, OPENAI_API_KEY="bench")
    name = f"r{time.monotonic_ns()}"
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "treegen", "run", str(seeds), "--out", str(out), "--name", name,
                             "--quiet", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    stdout, stderr = proc.stdout.read().decode(), proc.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"treegen run failed: {stderr or stdout}")
    return out / name, {"cpu": usage.ru_utime + usage.ru_stime, "wall": wall, "maxrss_mb": usage.ru_maxrss / 1024}


def q(run: Path, sql: str):
    con = sqlite3.connect(run / "treegen.db")
    try:
        return con.execute(sql).fetchone()
    finally:
        con.close()


def busiest_minute(run: Path) -> int:
    """Most requests sent in any 60 s window: what an RPM limit over a sliding minute caps."""
    from datetime import datetime

    con = sqlite3.connect(run / "treegen.db")
    times = sorted(datetime.fromisoformat(t).timestamp() for (t,) in con.execute("select created_at from calls"))
    con.close()
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - 60:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def seeds_file(tmp: Path) -> Path:
    path = tmp / "seeds.jsonl"
    path.write_text(STRATEGYQA.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    return path


def bench_throughput(tmp: Path, seconds: float, rpm: int) -> list[str]:
    rows = ["| concurrency | accepted | seconds | accepted / s | ok calls / min (mean) | requests in the busiest 60 s (share of the RPM limit) | 429s |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in (1, 8, 32):
        # A fresh server per row: its 60 s window must not hold the previous row's calls.
        sim = StandaloneSim("--pool", str(STRATEGYQA), "--latency-ms", "300", "--rpm", str(rpm))
        try:
            before = sim.stats()
            run, t = run_treegen(seeds_file(tmp), tmp / "tp", "--base-url", sim.base_url, "-c", str(c),
                                 "--rpm", str(rpm), "--max-seconds", str(seconds), "-s", "tree", "--k", "5")
            after = sim.stats()
            accepted = q(run, "select count(*) from nodes where status='accepted'")[0]
            ok = q(run, "select count(*) from calls where status='ok'")[0]
            elapsed = q(run, "select elapsed_seconds from runs")[0]
            limited = after.get("rate_limited", 0) - before.get("rate_limited", 0)
            per_min = ok / elapsed * 60
            busiest = busiest_minute(run)
            rows.append(f"| {c} | {accepted} | {elapsed:.1f} | {accepted / elapsed:.2f} | {per_min:.0f} | "
                        f"{busiest} ({busiest / rpm:.0%}) | {limited} |")
            print(rows[-1], flush=True)
        finally:
            sim.close()
    return rows


def bench_overhead(tmp: Path, sizes: list[int]) -> list[str]:
    """Client-side CPU per node and per accepted example, the simulator in another process."""
    from treegen.task import TaskFormat, write_jsonl
    from treegen.sim.pool import synthetic_pool

    pool = tmp / "pool.jsonl"
    n_pool = int(max(sizes) * 1.2)
    print(f"building a synthetic pool of {n_pool:,} items...", flush=True)
    write_jsonl(pool, (e.to_dict() for e in synthetic_pool(TaskFormat.parse("yesno_close"), n=n_pool)))
    sim = StandaloneSim("--pool", str(pool))
    seeds = tmp / "syn_seed.jsonl"
    seeds.write_text(pool.read_text().splitlines()[0] + "\n")
    rows = ["| strategy | nodes | accepted | calls | client CPU s | CPU ms / node | CPU ms / accepted | wall s | peak RSS MB |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    try:
        # Start-up (imports, tokenizer, database) is paid once per process: measured with a
        # one-call run and taken off, so the per-node figures are the loop's own cost.
        _, base = run_treegen(seeds, tmp / "ov", "--base-url", sim.base_url, "--max-calls", "1", "--k", "10")
        rows.insert(0, f"Start-up CPU of one `treegen run` process (one call), subtracted below: {base['cpu']:.2f} s\n")
        for strategy in ("random", "tree"):
            for size in sizes:
                # A size is a number of nodes (accepted + rejected candidates): k=10 per call,
                # so size/10 calls.
                run, t = run_treegen(seeds, tmp / "ov", "--base-url", sim.base_url, "-c", "8", "--k", "10",
                                     "-s", strategy, "--max-calls", str(size // 10), "--max-usd", "100",
                                     "--max-output-tokens", "1200", "--temperature", "1.0")
                nodes = q(run, "select count(*) from nodes where status != 'seed'")[0]
                accepted = q(run, "select count(*) from nodes where status='accepted'")[0]
                calls = q(run, "select count(*) from calls")[0]
                loop_cpu = t["cpu"] - base["cpu"]
                rows.append(f"| {strategy} | {nodes:,} | {accepted:,} | {calls:,} | {loop_cpu:.1f} | "
                            f"{loop_cpu / nodes * 1000:.2f} | {loop_cpu / accepted * 1000:.2f} | {t['wall']:.1f} | "
                            f"{t['maxrss_mb']:.0f} |")
                print(rows[-1], flush=True)
    finally:
        sim.close()
    rows.append("\nCPU per node is the loop's own cost; CPU per accepted example also moves with the acceptance "
                "rate (duplicates grow as the synthetic pool's neighbourhoods fill up).")
    return rows


def bench_tokens(tmp: Path, target: int) -> list[str]:
    from treegen.reports import run_summary
    from treegen.store import open_run

    sim = StandaloneSim("--pool", str(STRATEGYQA), "--malformed-rate", "0.05", "--truncate-rate", "0.05",
                        "--label-flip-rate", "0.0", "--duplicate-rate", "0.05", "--wrong-count-rate", "0.1")
    rows = ["| strategy | accepted | tokens / accepted | completion tokens on rejected output | cost / accepted (simulated, gpt-4o-mini prices) | rejection rate |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    try:
        for strategy in ("naive", "random", "contrastive", "similar", "tree", "novelty"):
            run, _ = run_treegen(seeds_file(tmp), tmp / "tok", "--base-url", sim.base_url, "-c", "8", "-s", strategy,
                                 "--target", str(target), "--max-usd", "5")
            s = run_summary(open_run(run))
            rows.append(f"| {strategy} | {s['accepted']} | {s['tokens_per_accepted']:.0f} | "
                        f"{s['rejected_completion_share']:.1%} | ${s['cost_per_accepted_micro'] / 1e6:.6f} | "
                        f"{s['rejection_rate']:.1%} |")
            print(rows[-1], flush=True)
    finally:
        sim.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["throughput", "overhead", "tokens"])
    ap.add_argument("--seconds", type=float, default=90)
    ap.add_argument("--rpm", type=int, default=300)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--target", type=int, default=500)
    args = ap.parse_args()
    machine = f"{platform.node()}: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}"
    cmd = "python benchmarks/bench_engine.py " + " ".join(sys.argv[1:])
    sections = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        if args.only in (None, "throughput"):
            sections.append((f"Throughput: standalone simulator, 300 ms latency, RPM limit {args.rpm} "
                             f"(client --rpm {args.rpm}), tree strategy, k=5, {args.seconds:g} s per row",
                             bench_throughput(tmp, args.seconds, args.rpm)))
        if args.only in (None, "overhead"):
            sizes = [int(s) for s in args.sizes.split(",")]
            sections.append(("Local overhead as the tree grows: simulator with no latency in its own process; "
                             "CPU time of the treegen process only, concurrency 8, k=10",
                             bench_overhead(tmp, sizes)))
        if args.only in (None, "tokens"):
            sections.append((f"Tokens per accepted example ({args.target} accepted, StrategyQA pool, 5% malformed, "
                             "5% truncated, 5% duplicates, 10% wrong counts)", bench_tokens(tmp, args.target)))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    text = [f"Command: `{cmd}`  ", f"Machine: {machine}  ", f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
            "All figures are SIMULATED (treegen's simulator plays the LLM).", ""]
    for title, rows in sections:
        text += [f"### {title}", "", *rows, ""]
    out = RESULTS if args.only is None else RESULTS.with_name(f"engine_{args.only}.md")
    out.write_text("\n".join(text), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
