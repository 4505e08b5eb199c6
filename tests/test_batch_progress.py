"""Progress of a ``--batch`` run: the batches in flight and their counts (SIMULATED Batch API)."""

from __future__ import annotations

import asyncio
from dataclasses import fields
from pathlib import Path

from rich.console import Console

from treegen.api import prepare_run
from treegen.batching import BatchInFlight, BatchProgress, run_batch
from treegen.engine import Progress
from treegen.render import batches_text, progress_line, render_progress
from treegen.sim.server import SimConfig, SimServer

SEEDS = [{"question": "Is 12 divisible by 4?", "options": ["True", "False"], "label": "True"},
         {"question": "Is a sparrow a kind of fish?", "options": ["True", "False"], "label": "False"}]
KEY = "sk-test"


def plain(**extra: object) -> Progress:
    base = dict(accepted=3, target=10, spent_micro=120, max_usd_micro=None, tokens=900, calls=4,
                calls_per_minute=2.0, depth=1, rejected=1, in_flight=5, elapsed=3.0, simulated=True)
    base.update(extra)
    return Progress(**base)  # type: ignore[arg-type]


def test_a_batch_run_reports_its_batches_in_flight_with_their_counts(tmp_path: Path) -> None:
    events: list[Progress] = []
    # Requests of a simulated batch finish one by one over its delay: the polls see counts grow.
    with SimServer(SimConfig(batch_delay_s=0.5, seed=5)) as srv:
        opts = {"backend": "openai", "base_url": srv.base_url, "batch": True, "out": str(tmp_path), "name": "prog",
                "embedder": "hashing", "max_usd": 0.05, "target": 30}
        store, cfg = prepare_run(SEEDS, opts, api_key=KEY)
        with store:
            result = asyncio.run(run_batch(store, cfg, KEY, on_progress=events.append))
            waves = {int(c["batch_wave"]) for c in store.calls() if c["batch_wave"] is not None}
            rows_per_wave = {w: sum(1 for c in store.calls() if c["batch_wave"] == w) for w in waves}
            batch_count = len(store.batches())
    assert result.status == "completed"
    assert events and all(isinstance(e, BatchProgress) for e in events)
    flying = [(e, b) for e in events if isinstance(e, BatchProgress) for b in e.batches]
    assert flying, "no progress event showed a batch in flight"
    assert {b.wave for _, b in flying} == waves  # every wave's batch was shown while it flew
    for e, b in flying:
        assert b.wave in rows_per_wave
        if b.requests is not None:
            # The provider's counts: the wave's requests, never more done than sent.
            assert b.requests == rows_per_wave[b.wave]
            assert 0 <= b.completed + b.failed <= b.requests
        assert e.in_flight >= 1  # requests waiting in a batch
    partial = [b for _, b in flying if b.requests and 0 < b.completed < b.requests]
    assert partial, "no poll saw a batch part done: counts were not shown as they grew"
    for wave in waves:  # counts only grow
        seen = [b.completed for _, b in flying if b.wave == wave]
        assert seen == sorted(seen)
    last = events[-1]
    assert isinstance(last, BatchProgress) and last.batches == [] and last.in_flight == 0
    assert last.batches_done == batch_count >= 1
    # The plain line and the live panel both say it.
    e, b = next((e, b) for e, b in flying if b in partial)
    line = progress_line(e)
    assert f"batches {len(e.batches)} in flight" in line
    assert f"wave {b.wave} {b.status} {b.completed:,}/{b.requests:,} done" in line
    console = Console(record=True, width=60)
    console.print(render_progress(e))
    panel = " ".join(console.export_text().split())
    assert "batches" in panel and f"{b.completed:,}/{b.requests:,}" in panel


def test_the_batch_clause_and_its_absence() -> None:
    sync = plain()
    assert batches_text(sync) is None and "batches" not in progress_line(sync)
    base = {f.name: getattr(sync, f.name) for f in fields(Progress)}
    p = BatchProgress(**base, batches=[BatchInFlight(2, "batch_a", "in_progress", 40, 12, 3),
                                       BatchInFlight(3, "batch_b", "validating", None, 0, 0)], batches_done=1)
    text = batches_text(p)
    assert text == ("2 in flight, 1 done; wave 2 in_progress 12/40 done, 3 failed; "
                    "wave 3 validating 0 done")
    line = progress_line(p)
    parts = line.split(" | ")
    assert parts[3].startswith("calls ") and parts[4] == f"batches {text}"  # next to the calls
    idle = BatchProgress(**base)
    assert batches_text(idle) == "0 in flight, 0 done"
