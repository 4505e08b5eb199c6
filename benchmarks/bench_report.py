"""Time `treegen report` on a 10,000-node run: writing the page, and drawing it in headless chromium.

The run is written through ``RunStore`` as the engine writes one (``create``, then
``insert_call`` pending and ``record_reply`` per call), marked SIMULATED since no model made it.
Texts are real StrategyQA training examples (reused round-robin); the tree shape, tokens and
costs are drawn from a fixed seed. Goals: page written < 5 s, rendered < 2 s.

    python benchmarks/bench_report.py [--nodes 10000] [--out /tmp/bench_report]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from treegen.prices import cost_micro, load_price_table, price_for
from treegen.report_html import write_report
from treegen.store import DB_NAME, RunStore, node_row
from treegen.task import load_examples

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TREEGEN_DATA_DIR") or REPO.parent / "shared" / "datasets")
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def build_run(folder: Path, n_nodes: int, seed: int = 0) -> Path:
    """A run of ``n_nodes`` nodes (seeds, accepted and rejected) written through the store."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rng = random.Random(seed)
    pool, _ = load_examples(DATA / "yesno_close" / "strategyqa" / "train.jsonl")
    price = price_for("gpt-4o-mini", load_price_table())
    assert price is not None
    seeds = pool[:10]
    caps = {"max_usd_micro": 2_000_000, "target": n_nodes, "max_depth": 12}
    from dataclasses import asdict

    store = RunStore.create(folder / DB_NAME, {
        "id": folder.name, "created_at": T0.isoformat(), "updated_at": T0.isoformat(), "status": "completed",
        "stop_reason": None, "simulated": 1, "task_format": "yesno_close", "strategy": "tree", "model": "gpt-4o-mini",
        "base_url": None, "seed": seed,
        "config": json.dumps({"caps": caps, "k": 4, "price": asdict(price), "seeds_source": "strategyqa train, n=10"}),
    }, seeds)
    kept = [{"id": i + 1, "root_id": i + 1, "depth": 0} for i in range(len(seeds))]
    n, cid, t = len(seeds), 0, 0.0
    reasons = ["duplicate", "near-duplicate", "label-not-in-options", "invalid-json"]
    while n < n_nodes:
        # Prefer recent nodes, so the tree grows deep as well as wide.
        parent = kept[min(len(kept) - 1, int(len(kept) * (1 - rng.random() ** 3)))]
        if parent["depth"] >= caps["max_depth"]:
            parent = rng.choice(kept[: len(seeds)])
        t += rng.uniform(0.05, 0.4)
        created = (T0 + timedelta(seconds=t)).isoformat(timespec="milliseconds")
        prompt, completion = rng.randint(600, 1400), rng.randint(200, 700)
        cid = store.insert_call({
            "created_at": created, "parent_node_ids": json.dumps([parent["id"]]), "depth": parent["depth"] + 1,
            "strategy": "tree", "attempt": 1, "request_key": f"req-{n}", "model": "gpt-4o-mini",
            "status": "pending", "reserved_micro": 1000, "reserved_tokens": 2500, "simulated": 1,
        }, [{"role": "user", "content": f"expand node {parent['id']}"}])
        cost = cost_micro(price, prompt, completion, 0)
        k = min(4, n_nodes - n)
        rows = []
        for j in range(k):
            ex = pool[(10 + n + j) % len(pool)]
            status = "rejected" if rng.random() < 0.3 else "accepted"
            rows.append(node_row(ex, parent_id=parent["id"], root_id=parent["root_id"], depth=parent["depth"] + 1,
                                 call_id=cid, strategy="tree", status=status,
                                 reason=rng.choice(reasons) if status == "rejected" else None,
                                 cost_share=cost // k))
        ids = store.record_reply(cid, {"status": "ok", "prompt_tokens": prompt, "completion_tokens": completion,
                                       "cached_tokens": 0, "cost_micro": cost, "response_text": "[...]",
                                       "n_parsed": k, "n_accepted": sum(r["status"] == "accepted" for r in rows)},
                                 rows, [parent["id"]])
        for i, r in zip(ids, rows):
            if r["status"] == "accepted":
                kept.append({"id": i, "root_id": r["root_id"], "depth": r["depth"]})
        n += k
    store.set_status("completed", None, elapsed_seconds=t)
    store.close()
    return folder


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def render_seconds(browser: str, page: Path, png: Path) -> tuple[float, float]:
    """(screenshot seconds, --dump-dom seconds) of one headless chromium each."""
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,2000"]
    t0 = time.perf_counter()
    subprocess.run(common + [f"--screenshot={png}", page.as_uri()], check=True, capture_output=True, timeout=120)
    t1 = time.perf_counter()
    subprocess.run(common + ["--dump-dom", page.as_uri()], check=True, capture_output=True, timeout=120)
    return t1 - t0, time.perf_counter() - t1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_report"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    run = build_run(args.out / "run-bench", args.nodes)
    print(f"built a {args.nodes:,}-node run through RunStore in {time.perf_counter() - t0:.1f} s: {run}")
    page = args.out / "report.html"
    with RunStore.open(run, readonly=True) as store:
        t0 = time.perf_counter()
        write_report([store], page, force=True)
        write_s = time.perf_counter() - t0
    print(f"page written in {write_s:.2f} s ({page.stat().st_size / 1e6:.2f} MB) -> {page}  (goal < 5 s)")
    browser = chromium()
    if browser is None:
        print("chromium not found: rendering not timed (apt-get install -y chromium)")
        return 0
    # Chromium's own start-up (about as long as the goal on this machine) is in every launch:
    # the page is timed alternately with an empty page, and the medians compared.
    blank = args.out / "blank.html"
    blank.write_text("<!DOCTYPE html><title>x</title>", encoding="utf-8")
    render_seconds(browser, blank, args.out / "warmup.png")
    page_t, blank_t = [], []
    for _ in range(5):
        page_t.append(render_seconds(browser, page, args.out / "report.png"))
        blank_t.append(render_seconds(browser, blank, args.out / "blank.png"))
    for name, i in (("screenshot", 0), ("--dump-dom", 1)):
        pm = statistics.median(t[i] for t in page_t)
        bm = statistics.median(t[i] for t in blank_t)
        print(f"chromium {name}: report {pm:.2f} s, empty page {bm:.2f} s, the report's own share {pm - bm:+.2f} s "
              f"(median of 5; goal < 2 s)")
    print(f"screenshot: {args.out / 'report.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
