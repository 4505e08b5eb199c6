"""Forecast against actual on the simulator (SIMULATED): does the actual cost land in the range?

For each strategy, target and repetition: a pilot of PILOT calls (seed s), the forecast from it,
then a separate full run to the target (seed s + 1000); both on the simulator with a synthetic
pool. Writes benchmarks/results/forecast.md.

    python benchmarks/bench_forecast.py [--reps 4] [--pilot 12]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import treegen
from treegen.config import from_options
from treegen.forecast import forecast_from_run
from treegen.store import RunStore
from treegen.task import example_from_dict

REAL_HEADING = "## REAL"
SEEDS = [{"question": "Is 12 divisible by 4?", "options": ["True", "False"], "label": "True"},
         {"question": "Is a sparrow a kind of fish?", "options": ["True", "False"], "label": "False"}]


def coverage_lower_bound(inside: int, runs: int) -> float:
    """One-sided 95% Clopper-Pearson lower bound on the share of runs inside the range."""
    from scipy import stats

    return 0.0 if inside == 0 else float(stats.beta.ppf(0.05, inside, runs - inside + 1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--pilot", type=int, default=12)
    ap.add_argument("--strategies", default="tree,random,naive")
    ap.add_argument("--targets", default="50,150,400")
    args = ap.parse_args()
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
        "1+rejected) posterior's, completion tokens per call pooled with a prior cv of 0.2 worth 4 calls, at "
        "least binomial run-to-run spread of accepted per call; calls whole (the last one paid in full, +0.5 "
        "expected); widened by the t/normal ratio at pilot calls + 4. Width = (high - low) / expected.", "",
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


if __name__ == "__main__":
    sys.exit(main())
