"""CPU per call on the hot path (issue 12, goal 2): side by side, alternated, with the load.

Every row runs the ``treegen run`` CLI in a child process against ``treegen sim serve`` in
another process (SIMULATED: the simulator stands in for the LLM), and measures the child's own
CPU (user + system, from ``os.wait4``):

    treegen run examples/seeds.jsonl --base-url http://127.0.0.1:PORT/v1 --max-calls N --k 10 -c 8
        --embedder hashing --max-depth 50 -q --out DIR

- ``cpu``: per call = (CPU of N calls - CPU of 1 call) / (N - 1), start-up subtracted, the
  median of ``--reps`` pairs; the code variants alternate pair by pair.
- ``knee``: calls per second of the engine's working time (``runs.elapsed_seconds``) at each
  concurrency, at each simulator latency; the simulator's own CPU per request is shown, since
  on a 2-core machine it competes with the client.
- ``flat``: one long run sampled every 0.5 s (the child's CPU from /proc, the calls made from
  the run's database, read-only): CPU per call over the first calls against the last ones.

    python benchmarks/bench_cpu.py --code before=/tmp/before --code after=.
    python benchmarks/bench_cpu.py --parts cpu --reps 3 --calls 2000
    python benchmarks/bench_cpu.py --parts knee --concurrency 8,16,32,64,128 --latency 0,50
    python benchmarks/bench_cpu.py --parts flat --flat-calls 10000

``--code NAME=PATH``: a folder holding a ``treegen`` package to run (PYTHONPATH, and the
working directory, so ``python -m`` imports it); default: this checkout. Writes the tables to
``benchmarks/results/cpu.md`` (``--out``) with the command, the machine and the load average.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_engine import EndpointProcess

REPO = Path(__file__).resolve().parents[1]
SEEDS = REPO / "examples" / "seeds.jsonl"
RESULTS = REPO / "benchmarks" / "results" / "cpu.md"
TICK = os.sysconf("SC_CLK_TCK")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process (clock ticks of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Sim(EndpointProcess):
    """The endpoint in its own process: `treegen sim serve` (this checkout's simulator for every
    variant), or with ``kind="standin"`` the light stand-in of ``benchmarks/standin.py``
    (~0.1-0.2 ms CPU a request, so a 2-core machine can show where the client itself saturates)."""

    def __init__(self, latency_ms: float = 0.0, kind: str = "sim"):
        if kind == "standin":
            cmd = [sys.executable, str(REPO / "benchmarks" / "standin.py"), "--port", "{port}"]
        else:
            cmd = [sys.executable, "-m", "treegen", "sim", "serve", "--port", "{port}", "--rpm", "1000000"]
        super().__init__(cmd + ["--latency-ms", str(latency_ms)], cwd=REPO)

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)


def run_args(base_url: str, calls: int, out: Path, concurrency: int = 8) -> list[str]:
    return ["run", str(SEEDS), "--base-url", base_url, "--max-calls", str(calls), "--k", "10",
            "-c", str(concurrency), "--embedder", "hashing", "--max-depth", "50", "-q", "--out", str(out)]


def start(code: Path | None, args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OPENAI_API_KEY="sk-test-x", HF_HUB_OFFLINE="1")
    if code is not None:
        env["PYTHONPATH"] = str(code)
    # cwd: ``python -m`` puts the working directory first on sys.path, ahead of PYTHONPATH.
    return subprocess.Popen([sys.executable, "-m", "treegen", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=str(code) if code is not None else str(REPO))


def finish(proc: subprocess.Popen, block: bool = True) -> float | None:
    """Wait for the child; its user + system CPU seconds (None: still running, ``block`` False)."""
    pid, status, usage = os.wait4(proc.pid, 0 if block else os.WNOHANG)
    if pid == 0:
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    out, err = proc.communicate()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"treegen run failed: {err.decode() or out.decode()}")
    return usage.ru_utime + usage.ru_stime


def run_folder(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir()]
    if len(runs) != 1:
        raise RuntimeError(f"expected one run in {out}, found {len(runs)}")
    return runs[0]


def run_stats(out: Path) -> dict:
    from treegen.store import RunStore

    with RunStore.open(run_folder(out), readonly=True) as store:
        totals = store.ledger_totals()
        nodes = sum(n for s, n in store.node_status_counts().items() if s != "seed")
        return {"calls": int(totals["calls"]), "elapsed": float(totals["elapsed"]), "nodes": nodes}


def codes_of(spec: list[str]) -> list[tuple[str, Path | None]]:
    out: list[tuple[str, Path | None]] = []
    for item in spec:
        name, _, path = item.partition("=")
        out.append((name, Path(path).resolve()))
    return out or [("this checkout", None)]


BARE_MODES = ("httpx2", "aiohttp", "sdk-httpx", "sdk-aiohttp")


def start_bare(mode: str, base_url: str, calls: int) -> subprocess.Popen:
    """A peer of ``bare_client.py``: the same request without treegen (``--bare``)."""
    return subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "bare_client.py"), "--base-url", base_url,
                             "--mode", mode, "--calls", str(calls), "-c", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(REPO))


def bench_cpu(tmp: Path, codes: list[tuple[str, Path | None]], calls: int, reps: int, server: str = "sim",
              bare: bool = False) -> list[str]:
    sim = Sim(0.0, server)
    samples: dict[str, list[tuple[float, float, int]]] = {n: [] for n, _ in codes}
    loads: list[str] = []
    try:
        for rep in range(reps):
            for name, code in codes:
                loads.append(load())
                one = tmp / f"cpu-{name}-{rep}-1"
                many = tmp / f"cpu-{name}-{rep}-{calls}"
                cpu1 = finish(start(code, run_args(sim.base_url, 1, one)))
                cpun = finish(start(code, run_args(sim.base_url, calls, many)))
                assert cpu1 is not None and cpun is not None
                made = run_stats(many)["calls"]
                samples[name].append((cpu1, cpun, made))
                print(f"  {name} rep {rep + 1}: 1 call {cpu1:.2f} s, {made} calls {cpun:.2f} s -> "
                      f"{(cpun - cpu1) / max(made - 1, 1) * 1000:.2f} ms/call (load {loads[-1]})", flush=True)
            for mode in BARE_MODES if bare else ():
                name = f"peer: {mode} (no treegen)"
                cpu1 = finish(start_bare(mode, sim.base_url, 1))
                cpun = finish(start_bare(mode, sim.base_url, calls))
                assert cpu1 is not None and cpun is not None
                samples.setdefault(name, []).append((cpu1, cpun, calls))
    finally:
        sim.close()
    rows = [f"| code | CPU of 1 call (s, median) | CPU of {calls:,} calls (s, median) | CPU ms / call, each rep | "
            "**CPU ms / call (median)** |", "| --- | ---: | ---: | --- | ---: |"]
    for name, s in samples.items():
        per = [(b - a) / max(n - 1, 1) * 1000 for a, b, n in s]
        rows.append(f"| {name} | {statistics.median(a for a, _, _ in s):.2f} | {statistics.median(b for _, b, _ in s):.2f} | "
                    f"{', '.join(f'{p:.2f}' for p in per)} | **{statistics.median(per):.2f}** |")
    rows.append("")
    rows.append(f"Load average (1/5/15 min) before each run: {'; '.join(loads)}.")
    return rows


def bench_knee(tmp: Path, codes: list[tuple[str, Path | None]], latency_ms: float, concurrencies: list[int],
               calls: int, server: str = "sim") -> list[str]:
    sim = Sim(latency_ms, server)
    endpoint = "`benchmarks/standin.py` (light stand-in)" if server == "standin" else "`treegen sim serve`"
    rows = [f"Endpoint {endpoint}, latency {latency_ms:g} ms, {calls:,} calls a row.", "",
            "| concurrency | " + " | ".join(f"{n}: calls / s" for n, _ in codes) + " | "
            + " | ".join(f"{n}: client CPU ms / call" for n, _ in codes) + " | endpoint CPU ms / request | load |",
            "| ---: |" + " ---: |" * (2 * len(codes) + 1) + " --- |"]
    try:
        # The start-up of each variant (one call; it also warms the simulator up), subtracted below.
        startup = {name: finish(start(code, run_args(sim.base_url, 1, tmp / f"knee-{latency_ms:g}-startup-{name}")))
                   for name, code in codes}
        for c in concurrencies:
            rates, cpus, sim_ms = [], [], []
            row_load = load()
            for name, code in codes:
                out = tmp / f"knee-{latency_ms:g}-{c}-{name}"
                sim0 = sim.cpu()
                cpu = finish(start(code, run_args(sim.base_url, calls, out, concurrency=c)))
                assert cpu is not None
                sim_ms.append((sim.cpu() - sim0) / calls * 1000)
                st = run_stats(out)
                rates.append(st["calls"] / max(st["elapsed"], 1e-9))
                cpus.append((cpu - startup[name]) / max(st["calls"] - 1, 1) * 1000)
            rows.append(f"| {c} | " + " | ".join(f"{r:.0f}" for r in rates) + " | "
                        + " | ".join(f"{x:.2f}" for x in cpus) + f" | {statistics.mean(sim_ms):.2f} | {row_load} |")
            print(rows[-1], flush=True)
    finally:
        sim.close()
    rows.append("")
    rows.append("Client CPU per call: the row's run minus a one-call run of the same code (start-up).")
    return rows


def bench_flat(tmp: Path, codes: list[tuple[str, Path | None]], calls: int, window: int,
               server: str = "sim") -> list[str]:
    """CPU per call over the first ``window`` calls and the last ones of one long run."""
    from treegen.store import RunStore

    sim = Sim(0.0, server)
    rows = [f"| code | calls | nodes at the end | CPU ms / call, calls 1-{window:,} | "
            f"CPU ms / call, calls {calls - window + 1:,}-{calls:,} | ratio last / first | load at start |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    try:
        for name, code in codes:
            out = tmp / f"flat-{name}"
            row_load = load()
            proc = start(code, run_args(sim.base_url, calls, out))
            trace: list[tuple[int, float]] = []
            store = None
            total_cpu = None
            while total_cpu is None:
                time.sleep(0.5)
                try:
                    cpu = proc_cpu(proc.pid)
                    if store is None:
                        store = RunStore.open(run_folder(out), readonly=True)
                    trace.append((int(store.ledger_totals()["calls"]), cpu))
                except (OSError, RuntimeError, FileNotFoundError):
                    continue
                except Exception:  # the database is still being created
                    pass
                total_cpu = finish(proc, block=False)
            if store is not None:
                store.close()
            st = run_stats(out)

            def cpu_at(n: int) -> float:
                # The CPU when the n-th call was made, interpolated between samples.
                for (n0, c0), (n1, c1) in zip(trace, trace[1:]):
                    if n0 <= n <= n1 and n1 > n0:
                        return c0 + (c1 - c0) * (n - n0) / (n1 - n0)
                raise RuntimeError(f"no sample around call {n}")

            first = (cpu_at(window) - cpu_at(1)) / (window - 1) * 1000
            last_lo = max(trace[-1][0] - window, 1)
            last = (cpu_at(trace[-1][0]) - cpu_at(last_lo)) / (trace[-1][0] - last_lo) * 1000
            rows.append(f"| {name} | {st['calls']:,} | {st['nodes']:,} | {first:.2f} | {last:.2f} | {last / first:.2f} | {row_load} |")
            print(rows[-1], flush=True)
    finally:
        sim.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--code", action="append", default=[], help="NAME=PATH of a folder holding a treegen package")
    ap.add_argument("--parts", default="cpu,knee,flat")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--concurrency", default="8,16,32,64,128")
    ap.add_argument("--latency", default="0,50", help="simulator latencies (ms) for the knee")
    ap.add_argument("--knee-calls", type=int, default=1500)
    ap.add_argument("--bare", action="store_true", help="cpu part: also the peers of benchmarks/bare_client.py")
    ap.add_argument("--server", "--knee-server", dest="server", choices=("sim", "standin"), default="sim",
                    help="the endpoint of the cpu and knee parts: the simulator, or the light stand-in "
                         "(benchmarks/standin.py)")
    ap.add_argument("--flat-calls", type=int, default=10000, help="calls of the long run (k=10: ~10 nodes a call)")
    ap.add_argument("--flat-window", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    codes = codes_of(args.code)
    parts = set(args.parts.split(","))
    started = time.monotonic()
    head = [
        "# CPU per call on the hot path (issue 12, goal 2) — SIMULATED stand-in endpoint", "",
        f"Command: `python benchmarks/{Path(__file__).name} {shlex.join(sys.argv[1:])}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, shared with "
        f"other jobs; load average at the start {load()}.  ",
        "Each row: `treegen run examples/seeds.jsonl --base-url http://127.0.0.1:PORT/v1 --max-calls N --k 10 -c C "
        "--embedder hashing --max-depth 50 -q --out DIR` against "
        + ("`benchmarks/standin.py` (a light stand-in endpoint, ~0.2 ms CPU a request)" if args.server == "standin"
           else "`treegen sim serve --rpm 1000000`") + " in another process; "
        "CPU = the child's user + system time (os.wait4). Variants: "
        + ", ".join(f"`{n}` = {p or REPO}" for n, p in codes) + ".", "",
    ]
    body: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmpdir:
        tmp = Path(tmpdir)
        if "cpu" in parts:
            print(f"## CPU per call, {args.calls} calls against 1, latency 0, -c 8", flush=True)
            body += [f"## CPU per call: {args.calls:,} calls minus 1 call, latency 0, -c 8, median of {args.reps} "
                     f"({args.server})", ""]
            body += bench_cpu(tmp, codes, args.calls, args.reps, args.server, args.bare) + [""]
            if args.bare:
                body += ["Peers (`benchmarks/bare_client.py`, -c 8, the same request body): `httpx2` and `aiohttp` "
                         "are the bare transports; `sdk-httpx` and `sdk-aiohttp` the openai SDK's request path as "
                         "treegen calls it, on each transport. treegen minus `sdk-aiohttp` is treegen's own work "
                         "per call (prompt, count, reserve, two commits, parse, judge, strategy).", ""]
        if "knee" in parts:
            for lat in (float(x) for x in args.latency.split(",")):
                print(f"## knee, latency {lat:g} ms", flush=True)
                body += [f"## The knee: calls / s against concurrency, latency {lat:g} ms ({args.server})", ""]
                body += bench_knee(tmp, codes, lat, [int(c) for c in args.concurrency.split(",")], args.knee_calls,
                                   args.server) + [""]
        if "flat" in parts:
            print(f"## flat: one run of {args.flat_calls} calls", flush=True)
            body += [f"## Flat as the run grows: one run of {args.flat_calls:,} calls (-c 8, latency 0, {args.server})", ""]
            body += bench_flat(tmp, codes, args.flat_calls, args.flat_window, args.server) + [""]
    body.append(f"Load average at the end {load()}; {time.monotonic() - started:.0f} s in all.")
    text = "\n".join(head + body) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
