"""Speed of `treegen metrics` on 10,000 real items (CREAK training questions), as a user runs it.

    python benchmarks/bench_metrics.py                       # hashing and minilm embedders
    python benchmarks/bench_metrics.py --embedders hashing --n 10000

The created set is the first N rows of yesno_close/creak/train.jsonl (written to a temporary
JSONL file, never into the repo), measured against --reference creak (train split as the
reference distribution, test + dev for contamination, test for performance) with the lexical
student. Embedding time is reported apart from the measures, as the issue asks. Writes its
section of benchmarks/results/metrics.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TREEGEN_DATA_DIR", REPO.parent / "shared" / "datasets"))
CREAK = DATA / "yesno_close" / "creak" / "train.jsonl"
RESULTS = REPO / "benchmarks" / "results" / "metrics.md"


def machine() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"load average at start {load[0]:.1f} (other work shared the cores)")


def write_section(name: str, body: str) -> None:
    """Replace this benchmark's section of metrics.md, keeping the other benchmark's."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Dataset quality measures: benchmarks\n"
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text, encoding="utf-8")


def run_one(data: Path, embedder: str, student: str) -> dict:
    cmd = [sys.executable, "-m", "treegen", "metrics", str(data), "--reference", "creak",
           "--embedder", embedder, "--student", student, "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    out = json.loads(proc.stdout)
    out["wall_s"] = wall
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--embedders", default="hashing,minilm")
    ap.add_argument("--student", default="lexical")
    args = ap.parse_args()

    header = machine()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / f"creak_train_{args.n}.jsonl"
        with CREAK.open(encoding="utf-8") as src, data.open("w", encoding="utf-8") as dst:
            for i, line in enumerate(src):
                if i >= args.n:
                    break
                dst.write(line)
        for embedder in args.embedders.split(","):
            print(f"measuring {args.n} items with {embedder} ...", flush=True)
            out = run_one(data, embedder, args.student)
            t = out["timings_s"]
            rows.append((embedder, out, t))
            print(json.dumps({"embedder": embedder, "wall_s": round(out["wall_s"], 1), **t}), flush=True)

    lines = [
        "## `treegen metrics` on 10,000 items",
        "",
        f"Machine: {header}. Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        f"Command (per embedder): `treegen metrics creak_train_{args.n}.jsonl --reference creak --embedder E "
        f"--student {args.student} --json`, created set = the first {args.n:,} rows of CREAK train; "
        "reproduce with `python benchmarks/bench_metrics.py`.",
        "",
        "| embedder | items | measures (s) | of which MAUVE (s) | of which students (s) | embedding (s) | wall, incl. start-up (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for embedder, out, t in rows:
        lines.append(f"| {embedder} | {out['n_items']:,} | {t['measures']:.1f} | {t.get('mauve', 0):.1f} | "
                     f"{t.get('students', 0):.1f} | {t['embedding']:.1f} | {out['wall_s']:.1f} |")
    lines += ["", "Limits stated by the command (subsamples, all seeded):", ""]
    lines += [f"- {note}" for note in rows[-1][1]["notes"]] if rows else []
    lines += ["", "Figures (created set vs CREAK train):", "",
              "| measure | " + " | ".join(e for e, _o, _t in rows) + " |",
              "| --- |" + " ---: |" * len(rows)]
    names = list(rows[0][1]["metrics"]) if rows else []
    for name in names:
        vals = []
        for _e, out, _t in rows:
            v = out["metrics"].get(name, {}).get("value")
            vals.append("-" if v is None else f"{v:.4f}")
        lines.append(f"| {name} | " + " | ".join(vals) + " |")
    write_section("bench_metrics", "\n".join(lines))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
