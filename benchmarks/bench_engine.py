"""Engine benchmarks: throughput against the standalone simulator, local overhead as the tree
grows, tokens per accepted example, and the speed section (CPU per call, the knee,
embedding strategies, start-up). Writes benchmarks/results/engine.md (or engine_<only>.md).

    python benchmarks/bench_engine.py                # everything (about 25 minutes on 2 cores)
    python benchmarks/bench_engine.py --only throughput
    python benchmarks/bench_engine.py --only overhead --sizes 1000,10000
    python benchmarks/bench_engine.py --only speed   # CPU/call, knee, embedding strategies, start-up
    python benchmarks/bench_engine.py --only speed --against /path/to/other/checkout
        # side by side: each row run with this checkout's treegen and the other one's, alternated

Reads go through ``treegen.store.RunStore`` (read-only), runs through the ``treegen run`` CLI
(the path users take; the CLI is a thin wrapper over ``treegen.api``).

Every figure is simulated (the simulator stands in for the LLM); the dollars are what the
same tokens would cost at gpt-4o-mini list prices.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
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


class EndpointProcess:
    """An OpenAI-compatible endpoint started as its own process from ``cmd`` (``{port}`` in it
    is filled in), ready once it answers ``GET /v1/models``."""

    def __init__(self, cmd: list[str], cwd: Path | None = None):
        import urllib.request

        self.port = free_port()
        self.proc = subprocess.Popen([part.format(port=self.port) for part in cmd], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, cwd=str(cwd) if cwd else None)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.base_url + "/models", timeout=1).read()
                return
            except OSError:
                time.sleep(0.2)
        self.close()
        raise RuntimeError(f"the endpoint did not start: {' '.join(cmd)}")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class StandaloneSim(EndpointProcess):
    """`treegen sim serve` in its own process, as a user would run it."""

    def __init__(self, *args: str):
        super().__init__([sys.executable, "-m", "treegen", "sim", "serve", "--port", "{port}", *args])

    def stats(self) -> dict:
        import urllib.request

        return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/sim/stats").read())


def run_treegen(seeds: Path, out: Path, *args: str, code: Path | None = None) -> tuple[Path, dict]:
    """Run `treegen run` in a subprocess; return its run folder and its own CPU and wall time.

    ``code``: a folder holding another ``treegen`` package to run instead (side by side)."""
    env = dict(os.environ, OPENAI_API_KEY="bench", HF_HUB_OFFLINE="1")
    if code is not None:
        env["PYTHONPATH"] = str(code)
    name = f"r{time.monotonic_ns()}"
    t0 = time.monotonic()
    # cwd: ``python -m`` puts the working directory first on sys.path, ahead of PYTHONPATH, so
    # run from this checkout it would import this checkout's treegen whatever ``code`` says.
    proc = subprocess.Popen([sys.executable, "-m", "treegen", "run", str(seeds), "--out", str(out), "--name", name,
                             "--quiet", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=str(code) if code is not None else None)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    stdout, stderr = proc.stdout.read().decode(), proc.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"treegen run failed: {stderr or stdout}")
    return out / name, {"cpu": usage.ru_utime + usage.ru_stime, "wall": wall, "maxrss_mb": usage.ru_maxrss / 1024}


def run_counts(run: Path) -> dict:
    """Counts of a finished run, read through the store (read-only)."""
    from treegen.store import RunStore

    with RunStore.open(run, readonly=True) as store:
        statuses = store.node_status_counts()
        calls = store.calls()
        return {
            "accepted": statuses.get("accepted", 0),
            "nodes": sum(n for s, n in statuses.items() if s != "seed"),
            "calls": len(calls),
            "ok": sum(1 for c in calls if c["status"] == "ok"),
            "elapsed": float(store.run()["elapsed_seconds"] or 0.0),
            "created": [c["created_at"] for c in calls],
        }


def busiest_minute(run: Path) -> int:
    """Most requests sent in any 60 s window: what an RPM limit over a sliding minute caps."""
    from datetime import datetime

    times = sorted(datetime.fromisoformat(t).timestamp() for t in run_counts(run)["created"])
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - 60:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def seeds_file(tmp: Path, pool: Path = STRATEGYQA) -> Path:
    path = tmp / "seeds.jsonl"
    path.write_text(pool.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
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
            counts = run_counts(run)
            accepted, ok, elapsed = counts["accepted"], counts["ok"], counts["elapsed"]
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
                counts = run_counts(run)
                nodes, accepted, calls = counts["nodes"], counts["accepted"], counts["calls"]
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
    from treegen.store import RunStore

    sim = StandaloneSim("--pool", str(STRATEGYQA), "--malformed-rate", "0.05", "--truncate-rate", "0.05",
                        "--label-flip-rate", "0.0", "--duplicate-rate", "0.05", "--wrong-count-rate", "0.1")
    rows = ["| strategy | accepted | tokens / accepted | completion tokens on rejected output | cost / accepted (simulated, gpt-4o-mini prices) | rejection rate |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    try:
        for strategy in ("naive", "random", "contrastive", "similar", "tree", "novelty"):
            run, _ = run_treegen(seeds_file(tmp), tmp / "tok", "--base-url", sim.base_url, "-c", "8", "-s", strategy,
                                 "--target", str(target), "--max-usd", "5")
            with RunStore.open(run, readonly=True) as store:
                s = run_summary(store)
            rows.append(f"| {strategy} | {s['accepted']} | {s['tokens_per_accepted']:.0f} | "
                        f"{s['rejected_completion_share']:.1%} | ${s['cost_per_accepted_micro'] / 1e6:.6f} | "
                        f"{s['rejection_rate']:.1%} |")
            print(rows[-1], flush=True)
    finally:
        sim.close()
    return rows



# ---------------------------------------------------------------- speed (issue 12, goals 2, 3, 6)

def _codes(spec: list[str]) -> list[tuple[str, Path | None]]:
    """--code NAME=PATH pairs (PATH holds a ``treegen`` package); this checkout when none."""
    out: list[tuple[str, Path | None]] = []
    for item in spec:
        name, _, path = item.partition("=")
        out.append((name, Path(path).resolve()))
    return out or [("this checkout", None)]


def _cpu_of(cmd: list[str], code: Path | None) -> float:
    env = dict(os.environ, OPENAI_API_KEY="bench")
    if code is not None:
        env["PYTHONPATH"] = str(code)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"failed: {' '.join(cmd)}")
    return usage.ru_utime + usage.ru_stime


def bench_startup(tmp: Path, codes: list[tuple[str, Path | None]], reps: int = 5) -> list[str]:
    """Start-up CPU (user + system) of the CLI, median of ``reps``, the variants alternated."""
    sim = StandaloneSim("--pool", str(STRATEGYQA))
    seeds = seeds_file(tmp)
    cases = {
        "`treegen --version`": lambda: [sys.executable, "-m", "treegen", "--version"],
        "`treegen run --help`": lambda: [sys.executable, "-m", "treegen", "run", "--help"],
        "`treegen run` of one call (whole process)": lambda: [
            sys.executable, "-m", "treegen", "run", str(seeds), "--out", str(tmp / "su"), "--quiet",
            "--base-url", sim.base_url, "--max-calls", "1", "-s", "tree"],
    }
    rows = ["| command | " + " | ".join(f"{n}: CPU s (median of {reps})" for n, _ in codes) + " |",
            "| --- |" + " ---: |" * len(codes)]
    try:
        for label, cmd in cases.items():
            samples: dict[str, list[float]] = {n: [] for n, _ in codes}
            for _ in range(reps):
                for name, code in codes:
                    samples[name].append(_cpu_of(cmd(), code))
            rows.append(f"| {label} | " + " | ".join(f"{sorted(v)[len(v) // 2]:.2f}" for v in samples.values()) + " |")
            print(rows[-1], flush=True)
    finally:
        sim.close()
    return rows


def bench_cpu_per_call(tmp: Path, codes: list[tuple[str, Path | None]], calls: list[int]) -> list[str]:
    """Client CPU per call at latency 0: a run of N calls minus a run of one call (start-up)."""
    sim = StandaloneSim("--pool", str(STRATEGYQA))
    seeds = seeds_file(tmp)
    rows = ["| code | calls | nodes | client CPU s (start-up subtracted) | CPU ms / call | wall s | calls / s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    common = ["--base-url", sim.base_url, "-c", "8", "--k", "10", "-s", "tree", "--max-usd", "100",
              "--embedder", "hashing"]
    try:
        for n in calls:
            for name, code in codes:
                _, base = run_treegen(seeds, tmp / "cpu", *common, "--max-calls", "1", code=code)
                run, t = run_treegen(seeds, tmp / "cpu", *common, "--max-calls", str(n), code=code)
                c = run_counts(run)
                loop = t["cpu"] - base["cpu"]
                rows.append(f"| {name} | {c['calls']:,} | {c['nodes']:,} | {loop:.2f} | {loop / c['calls'] * 1000:.2f} | "
                            f"{t['wall']:.1f} | {c['calls'] / max(t['wall'] - base['wall'], 1e-9):.0f} |")
                print(rows[-1], flush=True)
    finally:
        sim.close()
    return rows


def bench_knee(tmp: Path, codes: list[tuple[str, Path | None]], latency_ms: int, seconds: float,
               concurrencies: list[int]) -> list[str]:
    """Calls per second against concurrency at a fixed latency: where more stops helping."""
    sim = StandaloneSim("--pool", str(STRATEGYQA), "--latency-ms", str(latency_ms))
    seeds = seeds_file(tmp)
    rows = ["| code | concurrency | calls | seconds | calls / s | ideal (c / latency) |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    try:
        for c in concurrencies:
            for name, code in codes:
                run, _ = run_treegen(seeds, tmp / "knee", "--base-url", sim.base_url, "-c", str(c), "--k", "10",
                                     "-s", "random", "--chains", str(c), "--max-seconds", str(seconds),
                                     "--max-usd", "100", "--embedder", "hashing", code=code)
                k = run_counts(run)
                rows.append(f"| {name} | {c} | {k['calls']:,} | {k['elapsed']:.1f} | {k['calls'] / k['elapsed']:.0f} | "
                            f"{c / (latency_ms / 1000):.0f} |")
                print(rows[-1], flush=True)
    finally:
        sim.close()
    return rows


def _second_half_rate(run: Path) -> float:
    """Calls per second over the second half of a run's calls' time span: the steady state,
    without the start-up (the MiniLM strategies load the model in their first seconds)."""
    from datetime import datetime

    times = sorted(datetime.fromisoformat(t).timestamp() for t in run_counts(run)["created"])
    if len(times) < 4:
        return 0.0
    mid = times[0] + (times[-1] - times[0]) / 2
    late = [t for t in times if t >= mid]
    return (len(late) - 1) / max(late[-1] - late[0], 1e-9)


def bench_embedding_strategies(tmp: Path, codes: list[tuple[str, Path | None]], seconds: float,
                               concurrency: int = 32, pool: Path = STRATEGYQA) -> list[str]:
    """Calls per second of the MiniLM strategies against tree, 300 ms latency. The code
    variants alternate row by row, so a change of the machine's load hits them alike.

    ``pool``: what the simulator draws from. StrategyQA's 2,061 questions run out within a
    40 s row at ~80 calls/s (contrastive/similar then stop: every child is a duplicate); a
    pool of 10,000 (CREAK) measures the steady state."""
    sim = StandaloneSim("--pool", str(pool), "--latency-ms", "300")
    seeds = seeds_file(tmp, pool)
    rows = ["| code | strategy | calls | seconds | calls / s | share of tree's | calls / s, 2nd half | share of tree's, 2nd half | accepted | peak RSS MB | load avg (1 min) before |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    tree_rate: dict[str, tuple[float, float]] = {}
    try:
        for strategy in ("tree", "contrastive", "similar", "novelty"):
            for name, code in codes:
                load = os.getloadavg()[0]
                run, t = run_treegen(seeds, tmp / "emb", "--base-url", sim.base_url, "-c", str(concurrency),
                                     "--chains", str(concurrency), "-s", strategy, "--embedder", "minilm",
                                     "--max-seconds", str(seconds), "--max-usd", "100", code=code)
                k = run_counts(run)
                rate, late = k["calls"] / k["elapsed"], _second_half_rate(run)
                base, base_late = tree_rate.setdefault(name, (rate, late))
                rows.append(f"| {name} | {strategy} | {k['calls']:,} | {k['elapsed']:.1f} | {rate:.1f} | "
                            f"{rate / base:.0%} | {late:.1f} | {late / max(base_late, 1e-9):.0%} | {k['accepted']:,} | "
                            f"{t['maxrss_mb']:.0f} | {load:.1f} |")
                print(rows[-1], flush=True)
    finally:
        sim.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["throughput", "overhead", "tokens", "speed"])
    ap.add_argument("--code", action="append", default=[], metavar="NAME=PATH",
                    help="speed: run each row with the treegen package in PATH too (side by side)")
    ap.add_argument("--calls", default="200,2000", help="speed: calls per CPU-per-call run")
    ap.add_argument("--knee", default="8,32,64,128", help="speed: concurrencies of the knee rows")
    ap.add_argument("--speed-seconds", type=float, default=25, help="speed: seconds per timed row")
    ap.add_argument("--speed-parts", default="startup,cpu,knee,embedding")
    ap.add_argument("--pool", type=Path, default=STRATEGYQA,
                    help="speed, embedding: the simulator's pool (e.g. yesno_close/creak/train.jsonl)")
    ap.add_argument("--out", type=Path, help="the Markdown file to write (default: results/engine[_ONLY].md)")
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
        if args.only == "speed":
            codes = _codes(args.code)
            parts = args.speed_parts.split(",")
            load = "load average %.2f %.2f %.2f at start" % os.getloadavg()
            if "startup" in parts:
                sections.append((f"Start-up CPU (user+system), {load}", bench_startup(tmp, codes)))
            if "cpu" in parts:
                sections.append(("CPU per call at latency 0: tree, k=10, -c 8, hashing embedder; a one-call run "
                                 f"subtracted; {load}", bench_cpu_per_call(tmp, codes, [int(c) for c in args.calls.split(",")])))
            if "knee" in parts:
                sections.append((f"The knee: random strategy (chains = concurrency), 100 ms latency, k=10, "
                                 f"{args.speed_seconds:g} s per row; {load}",
                                 bench_knee(tmp, codes, 100, args.speed_seconds, [int(c) for c in args.knee.split(",")])))
            if "embedding" in parts:
                sections.append((f"Embedding strategies (MiniLM) against tree: c=32, --chains 32, 300 ms latency, "
                                 f"{args.speed_seconds:g} s per row, pool {args.pool.parent.name}; {load}",
                                 bench_embedding_strategies(tmp, codes, args.speed_seconds, pool=args.pool)))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    text = [f"Command: `{cmd}`  ", f"Machine: {machine}  ", f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
            "All figures are SIMULATED (treegen's simulator plays the LLM).", ""]
    for title, rows in sections:
        text += [f"### {title}", "", *rows, ""]
    out = args.out or (RESULTS if args.only is None else RESULTS.with_name(f"engine_{args.only}.md"))
    out.write_text("\n".join(text), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
