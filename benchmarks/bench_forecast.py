"""Forecast against actual: does the actual cost land in the forecast's range?

SIMULATED (the default mode): for each strategy, target and repetition, a pilot of PILOT calls
(seed s), the forecast from it, then a separate full run to the target (seed s + 1000); both on
the simulator with a synthetic pool. Writes the top of benchmarks/results/forecast.md.

    python benchmarks/bench_forecast.py [--reps 4] [--pilot 12]

REAL (the local model, SmolLM2-135M-Instruct Q4_1 through ``--backend local``): ``real-run``
runs, one at a time, for each seed, target and strategy, the CLI's ``treegen plan --pilot-calls``
(the pilot) then a separate ``treegen run --target`` (the actual run, another seed), and appends
one JSON line per pair to DIR/pairs.jsonl as soon as the pair is done (a stopped matrix keeps what
it measured; a restarted one skips the pairs it has). ``real-report`` recomputes every forecast
from its pilot's stored calls with the current ``treegen/forecast.py`` (the forecast is a pure
function of the pilot) and prints the coverage (Clopper-Pearson interval) and the range's width;
``--write`` puts them in the REAL section of forecast.md (a "## Reading" section after it, written
by hand, is kept). ``--legacy`` adds session 3's pairs, ``--baseline`` a second forecast.py to
compare on the same pairs, ``--frozen`` the time the estimator was last changed (pairs finished
after it are out of sample).

    nice -n 5 python benchmarks/bench_forecast.py real-run --dir /tmp/fcreal3 --strategies tree,random \
        --targets 30,60 --seeds 10-29 --pilot 3
    python benchmarks/bench_forecast.py real-report --dir /tmp/fcreal3 --legacy /tmp/fcreal2 \
        --frozen 03:52:48 --baseline /tmp/fcreal3/forecast_session3.py --write
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import treegen
from treegen.config import from_options
from treegen.forecast import forecast_from_run
from treegen.store import RunStore
from treegen.task import example_from_dict

REAL_HEADING = "## REAL"
REAL_NOTES = "## Reading"  # hand-written notes after the generated REAL tables: kept
SESSION3_COMMIT = "eea7020"
SEEDS = [{"question": "Is 12 divisible by 4?", "options": ["True", "False"], "label": "True"},
         {"question": "Is a sparrow a kind of fish?", "options": ["True", "False"], "label": "False"}]


def coverage_lower_bound(inside: int, runs: int) -> float:
    """One-sided 95% Clopper-Pearson lower bound on the share of runs inside the range."""
    from scipy import stats

    return 0.0 if inside == 0 else float(stats.beta.ppf(0.05, inside, runs - inside + 1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", nargs="?", default="sim", choices=["sim", "real-run", "real-report"])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/fcreal3"), help="real modes: the runs' parent folder")
    ap.add_argument("--seeds", default="10-29", help="real-run: pilot seeds, A-B or a,b,c")
    ap.add_argument("--prices", default=REAL_PRICES)
    ap.add_argument("--estimator", type=Path, default=None,
                    help="real-report: a forecast.py to use instead of treegen.forecast (e.g. `git show REV:treegen/forecast.py`)")
    ap.add_argument("--baseline", type=Path, default=None, help="real-report: a second forecast.py to compare")
    ap.add_argument("--frozen", default=None, help="real-report: HH:MM:SS UTC the estimator was frozen at")
    ap.add_argument("--write", action="store_true", help="real-report: write the REAL section of forecast.md")
    ap.add_argument("--legacy", type=Path, default=None,
                    help="real-report: also session 3's pairs (DIR/pilotS, DIR/actualS: tree, target 30, prices above)")
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--pilot", type=int, default=12)
    ap.add_argument("--strategies", default="tree,random,naive")
    ap.add_argument("--targets", default="50,150,400")
    args = ap.parse_args()
    if args.mode == "real-run":
        return real_run(args)
    if args.mode == "real-report":
        return real_report(args)
    examples = [example_from_dict(s) for s in SEEDS]
    rows = []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        seeds = Path(tmp) / "seeds.jsonl"
        seeds.write_text("".join(json.dumps(s) + "\n" for s in SEEDS))
        for strategy in args.strategies.split(","):
            for target in map(int, args.targets.split(",")):
                for rep in range(args.reps):
                    common = dict(backend="sim", strategy=strategy, embedder="hashing", out=tmp)
                    pilot = treegen.run(str(seeds), max_calls=args.pilot, seed=rep,
                                        name=f"p-{strategy}-{target}-{rep}", **common)
                    cfg = from_options("yesno_close", {"backend": "sim", "strategy": strategy, "embedder": "hashing",
                                                       "target": target})
                    with RunStore.open(pilot.run_dir, readonly=True) as store:
                        fc = forecast_from_run(store, cfg, examples, target, seed=rep)
                    actual = treegen.run(str(seeds), target=target, seed=rep + 1000,
                                         name=f"a-{strategy}-{target}-{rep}", **common)
                    inside = fc.usd.contains(actual.spent_usd)
                    rows.append({"strategy": strategy, "target": target, "rep": rep, "expected": fc.usd.expected,
                                 "low": fc.usd.low, "high": fc.usd.high, "actual": actual.spent_usd,
                                 "inside": inside, "width": (fc.usd.high - fc.usd.low) / fc.usd.expected,
                                 "calls_inside": fc.calls.contains(actual.calls)})
                    print(json.dumps(rows[-1]), flush=True)
    elapsed = time.time() - t0
    load = os.getloadavg()
    n_in = sum(r["inside"] for r in rows)
    lines = [
        "# Forecast against actual (SIMULATED)", "",
        f"Command: `python benchmarks/bench_forecast.py --reps {args.reps} --pilot {args.pilot} "
        f"--strategies {args.strategies} --targets {args.targets}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"shared with other jobs (load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} over "
        f"1/5/15 min); {elapsed:.0f} s in all.  ",
        "Simulator with its synthetic yesno_close pool, gpt-4o-mini list prices; pilot seed r, actual run seed "
        "r + 1000 (separate runs). Range: 95% predictive bootstrap over the pilot's calls with the yield per "
        "call refitted as a function of examples accepted, m0 * (1 + A/pool)^-gamma, half the replicates per "
        "gamma (naive: gamma 1 and 2, expected at their geometric mean; tree/chains: gamma 0, the expected, and "
        "0.5). Floors for small pilots: the acceptance share's spread topped up to its Beta(1+accepted, "
        "1+rejected) posterior's, at least binomial run-to-run spread of accepted per call. Completion tokens "
        "per billed call log-normal, centred on the median of the pilot's logs (one long call does not drag "
        "it), log-sd pooled with a prior of 0.2 worth 4 calls, expected exp(centre + pilot's own log-variance / "
        "2). Calls whole (the last one paid in full, +0.5 expected); widened by the t/normal ratio at pilot "
        "calls + 4. Width = (high - low) / expected.", "",
        f"**Actual dollars inside the range: {n_in}/{len(rows)} runs ({100 * n_in / len(rows):.0f}%).** "
        f"Calls inside: {sum(r['calls_inside'] for r in rows)}/{len(rows)}. One-sided 95% lower bound on the "
        f"coverage (Clopper-Pearson): {coverage_lower_bound(n_in, len(rows)):.3f}.", "",
        "| strategy | target | runs | inside | mean expected $ | mean actual $ | actual/expected min-max "
        "| mean width (high-low)/expected | mean high/expected |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    keys = sorted({(r["strategy"], r["target"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for s, t in keys:
        g = [r for r in rows if r["strategy"] == s and r["target"] == t]
        lines.append(f"| {s} | {t} | {len(g)} | {sum(r['inside'] for r in g)} | "
                     f"{sum(r['expected'] for r in g) / len(g):.5f} | {sum(r['actual'] for r in g) / len(g):.5f} | "
                     f"{min(r['actual'] / r['expected'] for r in g):.2f}-{max(r['actual'] / r['expected'] for r in g):.2f} | "
                     f"{sum(r['width'] for r in g) / len(g):.2f} | {sum(r['high'] / r['expected'] for r in g) / len(g):.2f} |")
    lines += ["", "By strategy: " + ", ".join(
        f"{s} {sum(r['inside'] for r in rows if r['strategy'] == s)}/{sum(r['strategy'] == s for r in rows)}"
        for s in args.strategies.split(","))]
    out = Path(__file__).resolve().parent / "results" / "forecast.md"
    # The REAL section (local model, run by hand: its commands are in it) is kept as it is.
    old = out.read_text() if out.exists() else ""
    real = old[old.index(REAL_HEADING):] if REAL_HEADING in old else ""
    out.write_text("\n".join(lines) + "\n" + ("\n" + real if real else ""))
    print(out.read_text())


# ---- REAL: the local model ---------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
REAL_SEEDS_FILE = "examples/seeds.jsonl"
# Notional prices (the local model is free): the dollars are a fixed linear function of the
# server's token counts, so "dollars inside" tests the token forecast at list-like weights.
REAL_PRICES = "input=0.15,output=0.60"


def seed_list(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(x) for x in text.split(",")]


def treegen_cmd(*args: str) -> list[str]:
    # Niceness is the runner's own (start it with `nice -n 5`): the children inherit it.
    return [sys.executable, "-m", "treegen", *args]


def actual_figures(run_dir: Path) -> dict[str, Any]:
    """What the actual run spent (the store's own spent rule) and whether it reached its target."""
    from treegen.forecast import samples_from_calls
    from treegen.store import call_spent_micro

    with RunStore.open(run_dir, readonly=True) as store:
        calls = store.calls()
        run = store.run()
        counts = store.node_status_counts()
        billed = [c for c in calls if c["completion_tokens"] is not None]
        return {"usd": sum(call_spent_micro(c) for c in calls) / 1e6, "calls": len(samples_from_calls(calls)),
                "accepted": counts.get("accepted", 0), "status": run["status"], "stop_reason": run["stop_reason"],
                "completion_mean": sum(c["completion_tokens"] for c in billed) / max(len(billed), 1),
                "seconds": run["elapsed_seconds"]}


def real_run(args: argparse.Namespace) -> None:
    """Pilot then actual run, for each seed x target x strategy; one JSON line per pair, at once."""
    import subprocess

    args.dir.mkdir(parents=True, exist_ok=True)
    log = args.dir / "pairs.jsonl"
    done = {(r["strategy"], r["target"], r["seed"]) for r in map(json.loads, log.read_text().splitlines())} \
        if log.exists() else set()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    targets = list(map(int, args.targets.split(",")))
    for seed in seed_list(args.seeds):
        for ti, target in enumerate(targets):
            for si, strategy in enumerate(args.strategies.split(",")):
                if (strategy, target, seed) in done:
                    continue
                # Distinct llama.cpp seeds for every run: a fixed seed repeats a run token for token,
                # and the first calls of tree and random are the same requests (each seed shown
                # alone), so the same seed would give two strategies the same pilot.
                pilot_seed = 1000 * ti + 500 * si + seed
                actual_seed = pilot_seed + 100
                pilot_name, actual_name = f"p-{strategy}-{target}-{seed}", f"a-{strategy}-{target}-{seed}"
                common = ["--backend", "local", "--strategy", strategy, "--prices", args.prices, "--out", str(args.dir)]
                plan = treegen_cmd("plan", REAL_SEEDS_FILE, "--target", str(target), "--pilot-calls", str(args.pilot),
                                   "--seed", str(pilot_seed), "--name", pilot_name, "--json", *common)
                run = treegen_cmd("run", REAL_SEEDS_FILE, "--target", str(target), "--max-usd", "0.01",
                                  "--seed", str(actual_seed), "--name", actual_name, "-q", *common)
                for stale in (args.dir / pilot_name, args.dir / actual_name):
                    if stale.exists():  # a pair cut short by a stopped runner: kept aside, not reused
                        aside = args.dir / "stale" / f"{stale.name}-{int(time.time())}"
                        aside.parent.mkdir(exist_ok=True)
                        stale.rename(aside)
                t0 = time.time()
                p = subprocess.run(plan, cwd=REPO, env=env, capture_output=True, text=True)
                t1 = time.time()
                if p.returncode != 0:
                    print(f"pilot failed: {' '.join(plan)}\n{p.stderr[-2000:]}", file=sys.stderr, flush=True)
                    continue
                a = subprocess.run(run, cwd=REPO, env=env, capture_output=True, text=True)
                t2 = time.time()
                if a.returncode != 0:
                    print(f"actual run failed: {' '.join(run)}\n{a.stderr[-2000:]}", file=sys.stderr, flush=True)
                    continue
                row = {"strategy": strategy, "target": target, "seed": seed, "pilot_seed": pilot_seed,
                       "actual_seed": actual_seed, "pilot_calls": args.pilot,
                       "pilot_dir": str(args.dir / pilot_name), "actual_dir": str(args.dir / actual_name),
                       "plan_at_run_time": json.loads(p.stdout)["usd"], "actual": actual_figures(args.dir / actual_name),
                       "wall_pilot_s": round(t1 - t0, 1), "wall_actual_s": round(t2 - t1, 1),
                       "load_1min": round(os.getloadavg()[0], 2), "finished_utc": time.strftime("%H:%M:%S", time.gmtime()),
                       "plan_cmd": "treegen " + " ".join(plan[3:]), "run_cmd": "treegen " + " ".join(run[3:])}
                with log.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)


def coverage_interval(inside: int, runs: int) -> tuple[float, float]:
    """Two-sided 95% Clopper-Pearson interval on the share of runs inside the range."""
    from scipy import stats

    lo = 0.0 if inside == 0 else float(stats.beta.ppf(0.025, inside, runs - inside + 1))
    hi = 1.0 if inside == runs else float(stats.beta.ppf(0.975, inside + 1, runs - inside))
    return lo, hi


def needed_scale(expected: float, low: float, high: float, actual: float) -> float:
    """How much of the range's half on the actual's side it took to hold the actual (over 1:
    outside). Were the range no wider than needed, about 95% of runs would need up to 1 and
    the largest share would be near 1, not far under it."""
    if actual >= expected:
        return (actual - expected) / (high - expected) if high > expected else math.inf
    return (expected - actual) / (expected - low) if expected > low else math.inf


def real_pairs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The matrix's pairs, and session 3's (``--legacy``) in the same shape."""
    log = args.dir / "pairs.jsonl"
    pairs = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    if args.legacy is not None:
        for s in range(8):
            pilot, actual = args.legacy / f"pilot{s}", args.legacy / f"actual{s}"
            if pilot.exists() and actual.exists():
                pairs.append({"strategy": "tree", "target": 30, "seed": s, "pilot_seed": s, "actual_seed": s + 100,
                              "pilot_dir": str(pilot), "actual_dir": str(actual), "actual": actual_figures(actual),
                              "legacy": True})
    return pairs


def real_forecast(pair: dict[str, Any], prices: str, estimator: Path | None = None) -> Any:
    """The forecast from the pair's pilot with the current estimator (as `treegen plan --from`),
    or with the ``forecast_from_run`` of another version of forecast.py."""
    from treegen.api import load_seed_examples

    fn = forecast_from_run
    if estimator is not None:
        import importlib.util

        spec = importlib.util.spec_from_file_location("forecast_under_test", estimator)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
        fn = module.forecast_from_run

    examples, fmt, _ = load_seed_examples(str(REPO / REAL_SEEDS_FILE), {})
    cfg = from_options(fmt.name, {"backend": "local", "strategy": pair["strategy"], "prices": prices,
                                  "target": pair["target"]})
    with RunStore.open(pair["pilot_dir"], readonly=True) as store:
        return fn(store, cfg, examples, pair["target"])


def real_rows(args: argparse.Namespace, estimator: Path | None) -> list[dict[str, Any]]:
    """One row per independent pair: the forecast from its pilot against its actual run."""
    from treegen.forecast import samples_from_calls

    rows = []
    seen_pilots: set[tuple[int, int]] = set()
    for pair in real_pairs(args):
        # A pilot seed used twice gave the same pilot (the first calls of every strategy are the
        # same requests): only its first pair counts, the coverage is over independent pairs.
        key = (int(pair.get("legacy", False)), pair["pilot_seed"])
        if key in seen_pilots:
            continue
        seen_pilots.add(key)
        fc = real_forecast(pair, args.prices, estimator)
        act = pair["actual"]
        with RunStore.open(pair["pilot_dir"], readonly=True) as store:
            pilot = samples_from_calls(store.calls())
        inside = fc.usd.contains(act["usd"])
        rows.append({**{k: pair[k] for k in ("strategy", "target", "seed", "pilot_seed", "actual_seed")},
                     "legacy": pair.get("legacy", False), "finished_utc": pair.get("finished_utc"),
                     "load_1min": pair.get("load_1min"), "wall_s": (pair.get("wall_pilot_s"), pair.get("wall_actual_s")),
                     "reached": act["accepted"] >= pair["target"], "actual_usd": act["usd"], "actual_calls": act["calls"],
                     "actual_completion_mean": round(act["completion_mean"], 1),
                     "pilot_accepted": [c.accepted for c in pilot], "pilot_completion": [c.completion_tokens for c in pilot],
                     "expected": fc.usd.expected, "low": fc.usd.low, "high": fc.usd.high, "inside": inside,
                     "side": "" if inside else ("low" if act["usd"] < fc.usd.low else "high"),
                     "calls": [fc.calls.expected, fc.calls.low, fc.calls.high],
                     "calls_inside": fc.calls.contains(act["calls"]),
                     "ratio": fc.usd.high / fc.usd.low if fc.usd.low > 0 else math.inf,
                     "needed": needed_scale(fc.usd.expected, fc.usd.low, fc.usd.high, act["usd"]),
                     "width": (fc.usd.high - fc.usd.low) / fc.usd.expected})
    return rows


def coverage_summary(g: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    k = sum(r["inside"] for r in g)
    lo, hi = coverage_interval(k, len(g))
    return {"runs": len(g), "inside": k, "ci": (lo, hi), "lower_one_sided": coverage_lower_bound(k, len(g)),
            "calls_inside": sum(r["calls_inside"] for r in g),
            "ratio_median": float(np.median([r["ratio"] for r in g])), "ratio_min": min(r["ratio"] for r in g),
            "ratio_max": max(r["ratio"] for r in g), "width_mean": float(np.mean([r["width"] for r in g])),
            "needed_median": float(np.median([r["needed"] for r in g])),
            "needed_p90": float(np.percentile([r["needed"] for r in g], 90)),
            "needed_max": max(r["needed"] for r in g),
            "actual_over_expected": [min(r["actual_usd"] / r["expected"] for r in g),
                                     float(np.median([r["actual_usd"] / r["expected"] for r in g])),
                                     max(r["actual_usd"] / r["expected"] for r in g)],
            "misses": [f"{r['strategy']} {r['target']} seed {r['seed']} ({r['side']})" for r in g if not r["inside"]]}


def summary_line(name: str, c: dict[str, Any]) -> str:
    return (f"| {name} | {c['runs']} | {c['inside']}/{c['runs']} | {c['ci'][0]:.2f}-{c['ci'][1]:.2f} | "
            f"{c['lower_one_sided']:.2f} | {c['calls_inside']}/{c['runs']} | {c['ratio_median']:.2f} "
            f"({c['ratio_min']:.2f}-{c['ratio_max']:.2f}) | {c['width_mean']:.2f} | "
            f"{c['needed_median']:.2f} / {c['needed_p90']:.2f} / {c['needed_max']:.2f} | "
            f"{c['actual_over_expected'][0]:.2f} / {c['actual_over_expected'][1]:.2f} / {c['actual_over_expected'][2]:.2f} | "
            f"{', '.join(c['misses']) or '-'} |")


SUMMARY_HEAD = ["| set | runs | dollars inside | 95% CI (Clopper-Pearson) | one-sided 95% lower bound | calls inside "
                "| high/low median (min-max) | mean (high-low)/expected | needed share median / 90th pct / max "
                "| actual/expected min / median / max | misses |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]


def groups(rows: list[dict[str, Any]], frozen: str | None) -> list[tuple[str, list[dict[str, Any]]]]:
    out = [("all pairs", rows), ("this session's matrix", [r for r in rows if not r["legacy"]])]
    if frozen:
        out.append((f"held out: finished after the estimator was frozen ({frozen} UTC)",
                    [r for r in rows if not r["legacy"] and (r["finished_utc"] or "") > frozen]))
    out.append(("session 3's pairs (tree 30, seeds 0-7)", [r for r in rows if r["legacy"]]))
    for key in sorted({(r["strategy"], r["target"]) for r in rows}):
        out.append((f"{key[0]}, target {key[1]}", [r for r in rows if (r["strategy"], r["target"]) == key]))
    return [(name, g) for name, g in out if g]


def real_report(args: argparse.Namespace) -> None:
    rows = real_rows(args, args.estimator)
    counted = [r for r in rows if r["reached"]]
    for r in rows:
        print(json.dumps(r))
    lines = SUMMARY_HEAD + [summary_line(name, coverage_summary(g)) for name, g in groups(counted, args.frozen)]
    base_lines: list[str] = []
    if args.baseline is not None:
        base = [r for r in real_rows(args, args.baseline) if r["reached"]]
        base_lines = SUMMARY_HEAD + [summary_line(name, coverage_summary(g)) for name, g in groups(base, args.frozen)]
    print("\n".join(lines))
    if base_lines:
        print("\nbaseline " + str(args.baseline) + "\n" + "\n".join(base_lines))
    if args.write:
        write_real_section(args, rows, lines, base_lines)


def write_real_section(args: argparse.Namespace, rows: list[dict[str, Any]], lines: list[str],
                       base_lines: list[str]) -> None:
    """The REAL section of forecast.md (the SIMULATED top is the default mode's)."""
    import llama_cpp

    from treegen.local import default_model_path

    model = default_model_path()
    new = [r for r in rows if not r["legacy"]]
    loads = [r["load_1min"] for r in new if r["load_1min"] is not None]
    walls = [r["wall_s"] for r in new if r["wall_s"][0] is not None]
    times = sorted(r["finished_utc"] for r in new if r["finished_utc"])
    out = [
        f"{REAL_HEADING}: SmolLM2-135M-Instruct Q4_1 (`{model.name}`, llama-cpp-python {llama_cpp.__version__}, "
        "`--backend local`, 2 cores, shared)", "",
        "For each pair: a pilot (`treegen plan --pilot-calls 3`) and a separate actual run (`treegen run --target`) "
        "with other llama.cpp seeds; the actual dollars are checked against the pilot's forecast range. Prices set by "
        f"hand (`--prices {args.prices}` $/M tokens: notional dollars, a fixed weighting of the server's own token "
        "counts). Concurrency 1, k 5. Commands, for strategy S, target T, seed s, pilot seed P = s + 1000 x "
        "(index of T) + 500 x (index of S), actual seed P + 100:", "",
        "    nice -n 5 python benchmarks/bench_forecast.py real-run --dir /tmp/fcreal3 --strategies tree,random "
        "--targets 30,60 --seeds 10-29 --pilot 3",
        "    # runs, one at a time: treegen plan examples/seeds.jsonl --target T --pilot-calls 3 --seed P --name p-S-T-s "
        f"--json --backend local --strategy S --prices {args.prices} --out /tmp/fcreal3",
        "    #                 then: treegen run examples/seeds.jsonl --target T --max-usd 0.01 --seed P+100 --name "
        f"a-S-T-s -q --backend local --strategy S --prices {args.prices} --out /tmp/fcreal3",
        "    python benchmarks/bench_forecast.py real-report --dir /tmp/fcreal3 --legacy /tmp/fcreal2 "
        f"--frozen {args.frozen} --baseline /tmp/fcreal3/forecast_session3.py --write", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with the other engineers' jobs; this "
        f"session's pairs ran {times[0] if times else '?'}-{times[-1] if times else '?'} UTC, load average (1 min) "
        f"at each pair's end {min(loads) if loads else 0:.1f}-{max(loads) if loads else 0:.1f}; wall time per pilot "
        f"{min(w[0] for w in walls) if walls else 0:.0f}-{max(w[0] for w in walls) if walls else 0:.0f} s, per "
        f"actual run {min(w[1] for w in walls) if walls else 0:.0f}-{max(w[1] for w in walls) if walls else 0:.0f} s. "
        "Session 3's eight pairs (tree, target 30, pilot seed s, actual seed s + 100, /tmp/fcreal2) are included: "
        "the forecast is a pure function of the pilot's stored calls, so every pair is re-forecast with the "
        "estimator named. A pair counts when its actual run reached the target; pairs that reused a pilot seed "
        "(same pilot) count once.", "",
        "Needed share: how much of the range's half on the actual's side it took to hold the actual (over 1: "
        "outside). A range no wider than needed has about 95% of runs under 1 and its largest near 1; far under "
        "1 everywhere means wider than these runs needed.", "",
        "### This estimator (`treegen/forecast.py` now: completion tokens log-normal, centred on the median "
        "of the pilot's logs)", ""] + lines
    if base_lines:
        out += ["", f"### Session 3's estimator (`treegen/forecast.py` of commit {SESSION3_COMMIT}: completion "
                "tokens' pilot mean, prior cv 0.2), same pairs", ""] + base_lines
    out += ["", "### Every pair (this estimator)", "",
            "| strategy | target | seed | pilot accepted/call | pilot completion tokens/call | actual $ | actual calls "
            "| actual mean completion | forecast $ expected [low, high] | calls expected [low, high] | inside |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: (r["legacy"], r["strategy"], r["target"], r["seed"])):
        mark = "inside" if r["inside"] else f"**outside ({r['side']})**"
        if not r["reached"]:
            mark = "not counted: target not reached"
        out.append(f"| {r['strategy']} | {r['target']} | {r['seed']}{' (s3)' if r['legacy'] else ''} | "
                   f"{'/'.join(map(str, r['pilot_accepted']))} | {'/'.join(map(str, r['pilot_completion']))} | "
                   f"{r['actual_usd']:.6f} | {r['actual_calls']} | {r['actual_completion_mean']:.0f} | "
                   f"{r['expected']:.6f} [{r['low']:.6f}, {r['high']:.6f}] | {r['calls'][0]:.1f} [{r['calls'][1]:.1f}, "
                   f"{r['calls'][2]:.1f}] | {mark} |")
    path = Path(__file__).resolve().parent / "results" / "forecast.md"
    old = path.read_text() if path.exists() else ""
    top = old[:old.index(REAL_HEADING)] if REAL_HEADING in old else old
    notes = old[old.index(REAL_NOTES):] if REAL_NOTES in old else ""
    path.write_text(top + "\n".join(out) + "\n" + ("\n" + notes if notes else ""))


if __name__ == "__main__":
    sys.exit(main())
