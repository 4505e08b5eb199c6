"""Start-up CPU of the treegen command (issue 12, goal 6: a `treegen run` of one call <= 0.6 s).

Measures the CPU (user + system, from wait4's rusage of the child) of:

- ``python -c pass`` (the interpreter and this machine's site hooks: the floor),
- ``treegen --version``, ``treegen run --help``,
- a one-call ``treegen run`` against the in-process simulator (``--backend sim``: the
  simulator's own start-up counts too),
- a one-call ``treegen run`` against a separate ``treegen sim serve`` on loopback
  (``--base-url``: only the run's own CPU),

median of N (default 5) per command and code variant, variants alternated, with the load
average before and after. ``--code label=path`` compares source trees (a path holding a
``treegen/`` package; default: this work tree). Each variant also gets one ``-X importtime``
run of the in-process one-call run, for the heavy packages it imports.

Bytecode: by default the children write and read their bytecode in a private cache
(``PYTHONPYCACHEPREFIX``) after one warm-up, as an installed treegen does; this machine sets
``PYTHONDONTWRITEBYTECODE=1``, which adds the compilation of treegen's own modules to every
start (``--as-env`` keeps that).

    python benchmarks/bench_startup.py
    python benchmarks/bench_startup.py --code before=/tmp/su/before --code after=. --repeat 5
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "examples" / "seeds.jsonl"
HEAVY = ("pandas", "pyarrow", "sklearn", "scipy", "networkx", "torch", "transformers", "matplotlib",
         "faiss", "trio", "sqlite_utils", "numpy", "openai", "tiktoken", "rich")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(code: Path, pyc: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(code)
    env.pop("OPENAI_BASE_URL", None)
    env["OPENAI_API_KEY"] = "sk-startup-bench"  # the simulator accepts any key
    if pyc is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pyc)
    return env


def cpu_seconds(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    """User + system CPU of one child process, which must exit 0."""
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}:\n{err[-2000:]}")
    return usage.ru_utime + usage.ru_stime


def commands(out: Path, base_url: str) -> dict[str, list[str]]:
    py = sys.executable
    run = [py, "-m", "treegen", "run", str(SEEDS), "--max-calls", "1", "-q", "--out", str(out)]
    return {
        "`python -c pass`": [py, "-c", "pass"],
        "`treegen --version`": [py, "-m", "treegen", "--version"],
        "`treegen run --help`": [py, "-m", "treegen", "run", "--help"],
        "`treegen run` of one call, `--backend sim` (in-process simulator)": run + ["--backend", "sim"],
        "`treegen run` of one call, `--base-url` to a `treegen sim serve`": run + [
            "--backend", "openai", "--base-url", base_url, "--model", "gpt-4o-mini"],
    }


def heavy_imports(code: Path, env: dict[str, str], cwd: Path, out: Path) -> tuple[list[str], float]:
    """The heavy top-level packages a one-call in-process sim run imports, and the summed
    self time of every import (-X importtime, microseconds -> seconds)."""
    argv = [sys.executable, "-X", "importtime", "-m", "treegen", "run", str(SEEDS), "--max-calls", "1", "-q",
            "--out", str(out), "--backend", "sim"]
    res = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=True)
    names, total = set(), 0
    for line in res.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if m:
            total += int(m.group(1))
            names.add(m.group(2))
    # A masked import (sys.modules[name] = None) still prints a line for the name itself:
    # a package counts as loaded when any of its submodules was (every package in HEAVY has some).
    loaded = [h for h in HEAVY if any(n.startswith(h + ".") for n in names)]
    return loaded, total / 1e6


# One process, the run's start-up in the CLI's order, CPU per stage (getrusage), the cyclic GC
# paused as `treegen run` pauses it. Prints "seconds<TAB>stage" lines.
_STAGES = r"""
import gc, resource, sys
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
t0 = cpu()
def mark(name):
    global t0
    t = cpu()
    print(f"{t - t0:.3f}\t{name}")
    t0 = t
gc.disable()
import treegen.cli; mark("import treegen.cli (typer, config, command registration)")
import treegen.api, treegen.engine; mark("import treegen.api and treegen.engine")
import openai
try:
    from treegen.client import import_sdk; import_sdk()
except ImportError:
    pass
import httpx2; mark("import the openai SDK (and its transport)")
import rich.console, treegen.reports, treegen.render; mark("import rich console, reports, render")
from treegen.tokens import encoding_name_for_model, get_encoding
get_encoding(encoding_name_for_model("gpt-4o-mini")); mark("tokenizer: build o200k_base (tiktoken)")
from treegen.api import prepare_run
store, cfg = prepare_run(sys.argv[1], dict(backend="openai", base_url=sys.argv[2], model="gpt-4o-mini",
                         max_calls=1, out=sys.argv[3]), "sk-startup-bench")
mark("prepare_run: config, run folder, database and migrations")
gc.freeze(); gc.enable()
import asyncio
from treegen.api import execute_async
with store:
    asyncio.run(execute_async(store, cfg, "sk-startup-bench"))
mark("execute: the one call (client, event loop, SQL)")
"""


def stages(env: dict[str, str], cwd: Path, base_url: str, out: Path) -> list[tuple[str, float]]:
    res = subprocess.run([sys.executable, "-c", _STAGES, str(SEEDS), base_url, str(out)], env=env, cwd=cwd,
                         capture_output=True, text=True, check=True)
    rows = [line.split("\t", 1) for line in res.stdout.splitlines() if "\t" in line]
    return [(name, float(sec)) for sec, name in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--code", action="append", default=[], metavar="LABEL=PATH",
                    help="a source tree to measure (repeatable); default: this work tree")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--as-env", action="store_true", help="keep PYTHONDONTWRITEBYTECODE as the environment sets it")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "startup.md")
    args = ap.parse_args()
    variants = [(c.split("=", 1)[0], Path(c.split("=", 1)[1]).resolve()) for c in args.code] or [("work tree", ROOT)]
    work = Path(tempfile.mkdtemp(prefix="treegen-startup-"))
    servers: list[subprocess.Popen[bytes]] = []
    try:
        load_before = os.getloadavg()
        setups = {}
        urls: dict[str, str] = {}
        for label, code in variants:
            pyc = None if args.as_env else work / f"pyc-{len(setups)}"
            env = _env(code, pyc)
            port = _free_port()
            server = subprocess.Popen([sys.executable, "-m", "treegen", "sim", "serve", "--port", str(port)],
                                      env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            servers.append(server)
            base_url = urls[label] = f"http://127.0.0.1:{port}/v1"
            for _ in range(100):  # wait for the server to listen
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            cmds = commands(work / f"runs-{len(setups)}", base_url)
            for argv in cmds.values():  # warm-up: bytecode cache, page cache
                cpu_seconds(argv, env, work)
            setups[label] = (env, cmds)
        samples: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.repeat):
            for label, (env, cmds) in setups.items():  # variants alternated
                for name, argv in cmds.items():
                    samples.setdefault((label, name), []).append(cpu_seconds(argv, env, work))
        heavy = {label: heavy_imports(code, setups[label][0], work, work / "runs-importtime")
                 for label, code in variants}
        staged: dict[str, list[list[tuple[str, float]]]] = {}
        for _ in range(3):
            for label, (env, cmds) in setups.items():
                staged.setdefault(label, []).append(stages(env, work, urls[label], work / "runs-stages"))
        load_after = os.getloadavg()
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)

    names = list(next(iter(setups.values()))[1])
    labels = [label for label, _ in variants]
    lines = [
        "# Start-up CPU of treegen (issue 12, goal 6) — SIMULATED endpoint",
        "",
        f"Machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, shared with other work "
        f"(load average {' '.join(f'{x:.2f}' for x in load_before)} before, "
        f"{' '.join(f'{x:.2f}' for x in load_after)} after). CPU = user + system of the child "
        f"process (wait4), median of {args.repeat}, variants alternated. Bytecode: "
        + ("as the environment sets it (PYTHONDONTWRITEBYTECODE=1: treegen's modules compiled on every start)."
           if args.as_env else "cached after one warm-up (as an installed treegen).")
        + " `treegen` is run as `python -m treegen`.",
        "",
        f"Command: `python benchmarks/bench_startup.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        "Code: " + "; ".join(f"`{label}` = {code}" for label, code in variants),
        "",
        "| command | " + " | ".join(f"{label}: CPU s (median; min–max)" for label in labels) + " |",
        "| --- | " + " | ".join("---:" for _ in labels) + " |",
    ]
    for name in names:
        cells = []
        for label in labels:
            xs = samples[(label, name)]
            cells.append(f"{statistics.median(xs):.2f} ({min(xs):.2f}–{max(xs):.2f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Heavy packages imported by a one-call in-process sim run (`python -X importtime`), and "
              "the summed import time of that single run:", "",
              "| code | heavy packages loaded | all imports, s (one run) |", "| --- | --- | ---: |"]
    for label in labels:
        loaded, total = heavy[label]
        lines.append(f"| {label} | {', '.join(loaded) or '—'} | {total:.2f} |")
    stage_names = [name for name, _ in staged[labels[0]][0]]
    lines += ["", "Where the CPU of a one-call `--base-url` run goes, stage by stage in one process "
              "(getrusage; the GC paused as `treegen run` pauses it; median of 3; interpreter start "
              "not included):", "",
              "| stage | " + " | ".join(f"{label}: CPU s" for label in labels) + " |",
              "| --- | " + " | ".join("---:" for _ in labels) + " |"]
    for i, name in enumerate(stage_names):
        lines.append(f"| {name} | " + " | ".join(
            f"{statistics.median(run[i][1] for run in staged[label]):.3f}" for label in labels) + " |")
    lines.append("| total | " + " | ".join(
        f"{statistics.median(sum(t for _, t in run) for run in staged[label]):.3f}" for label in labels) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        marker = "<!-- bench_startup.py writes above this line -->"
        tail = ""
        if args.out.exists() and marker in args.out.read_text():
            tail = args.out.read_text().split(marker, 1)[1]
        args.out.write_text(text + "\n" + marker + tail)


if __name__ == "__main__":
    main()
