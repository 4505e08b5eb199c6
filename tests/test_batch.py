"""Batch mode end to end over loopback against the simulator's Batch API (SIMULATED)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import openai
import pytest

from treegen.api import prepare_resume, prepare_run
from treegen.batching import batch_cost_micro, batch_price, batch_summary, cancel_batches, run_batch
from treegen.prices import ModelPrice, cost_micro, load_price_table, price_for, worst_case_micro
from treegen.sim.server import SimConfig, SimServer
from treegen.store import RunStore

SEEDS = [{"question": "Is 12 divisible by 4?", "options": ["True", "False"], "label": "True"},
         {"question": "Is a sparrow a kind of fish?", "options": ["True", "False"], "label": "False"}]
KEY = "sk-test"


def options(srv: SimServer, out: Path, name: str, **extra) -> dict:
    return {"backend": "openai", "base_url": srv.base_url, "batch": True, "out": str(out), "name": name,
            "embedder": "hashing", "max_usd": 0.05, "target": 60, **extra}


def provider_requests(srv: SimServer, run_id: str) -> tuple[list[str], dict[str, int]]:
    """Every custom_id the provider received for the run (from the input files of its batches),
    and how many batches each wave has."""
    client = openai.OpenAI(base_url=srv.base_url, api_key=KEY)
    ids: list[str] = []
    per_wave: dict[str, int] = {}
    for b in client.batches.list(limit=100):
        if (b.metadata or {}).get("treegen_run") != run_id:
            continue
        wave = b.metadata["treegen_wave"]
        per_wave[wave] = per_wave.get(wave, 0) + 1
        text = client.files.content(b.input_file_id).text
        ids += [json.loads(line)["custom_id"] for line in text.splitlines() if line.strip()]
    return ids, per_wave


def output_usage_cost(srv: SimServer, run_id: str, price: ModelPrice) -> int:
    """The money the output files say, at Batch prices."""
    client = openai.OpenAI(base_url=srv.base_url, api_key=KEY)
    total = 0
    for b in client.batches.list(limit=100):
        if (b.metadata or {}).get("treegen_run") != run_id or not b.output_file_id:
            continue
        for line in client.files.content(b.output_file_id).text.splitlines():
            u = json.loads(line)["response"]["body"]["usage"]
            total += cost_micro(price, u["prompt_tokens"], u["completion_tokens"], 0, batch=True)
    return total


def test_batch_rates_view_costs_exactly_at_batch_prices() -> None:
    p = price_for("gpt-4o-mini", load_price_table())
    assert p is not None
    view = batch_price(p)
    for prompt, completion, cached in [(1000, 500, 0), (1234, 77, 600), (1, 1, 1), (10**6, 10**5, 999)]:
        assert cost_micro(view, prompt, completion, cached) == cost_micro(p, prompt, completion, cached, batch=True)
        assert batch_cost_micro(p, prompt, completion, cached) <= worst_case_micro(view, prompt, completion)
    odd = ModelPrice("x", input=3, cached_input=1, output=7, batch_input=2, batch_output=4)
    for prompt, completion, cached in [(10**6, 0, 10**6), (333_333, 1, 333_333)]:
        diff = cost_micro(batch_price(odd), prompt, completion, cached) - cost_micro(odd, prompt, completion, cached,
                                                                                     batch=True)
        assert 0 <= diff <= 1  # never under the bill


def test_money_matches_output_files_and_expired_requests_are_resubmitted_alone(tmp_path) -> None:
    with SimServer(SimConfig(batch_delay_s=0.2, batch_fail_rate=0.1, batch_expire_rate=0.15, seed=3)) as srv:
        store, cfg = prepare_run(SEEDS, options(srv, tmp_path, "money", target=150), api_key=KEY)
        with store:
            result = asyncio.run(run_batch(store, cfg, KEY))
            calls = store.calls()
            run_id = result.run_id
            from treegen.reports import run_summary

            # `status` shows Batch against synchronous spend.
            assert run_summary(store)["spent_by_mode_micro"] == {"batch": result.spent_micro, "sync": 0}
        assert result.status == "completed" and result.accepted >= 150
        assert cfg.price is not None
        # The ledger, the store and the provider's output files agree, at Batch prices.
        assert result.spent_micro == sum(c["cost_micro"] or 0 for c in calls)
        assert result.spent_micro == output_usage_cost(srv, run_id, cfg.price)
        synchronous = sum(cost_micro(cfg.price, c["prompt_tokens"], c["completion_tokens"]) for c in calls
                          if c["status"] == "ok")
        assert result.spent_micro <= synchronous // 2 + len(calls)
        ids, per_wave = provider_requests(srv, run_id)
        assert len(ids) == len(set(ids)) == len(calls)  # each call row sent once
        assert set(per_wave.values()) == {1}  # one batch per wave
        errors = [c for c in calls if c["status"] == "error"]
        assert errors, "the fault rates should have produced failed or expired requests"
        by_key: dict[str, list[dict]] = {}
        for c in calls:
            by_key.setdefault(c["request_key"], []).append(c)
        resubmitted = 0
        for c in errors:
            again = [d for d in by_key[c["request_key"]] if d["attempt"] == c["attempt"] + 1]
            assert len(again) <= 1  # (none when the target was reached before its turn)
            if again:
                assert again[0]["batch_wave"] > c["batch_wave"]  # in a later wave, as its own line
                resubmitted += 1
        assert resubmitted >= 1
        for attempts in by_key.values():  # never paid twice
            assert sum(1 for c in attempts if c["cost_micro"]) <= 1
        # A later wave made only of resubmissions holds nothing else: resubmitted alone.
        assert all(c["cost_micro"] == 0 for c in errors)


CRASH_SCRIPT = textwrap.dedent("""
    import asyncio, os, signal, sys
    from treegen import batching
    from treegen.api import prepare_run
    window, base_url, out = sys.argv[1], sys.argv[2], sys.argv[3]
    def die(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)
    target = {"rows": "_upload", "upload": "_create", "create": "_record_batch", "poll": "_record_files"}
    if window in target:
        name = target[window]
        original = getattr(batching.BatchEngine, name)
        if window == "create":  # the provider created it; the process dies before recording it
            def patched(self, *a, **k):
                die()
        elif window == "upload":  # uploaded; dies before creating the batch
            async def patched(self, *a, **k):
                die()
        elif window == "poll":  # the batch id is recorded and the batch done; dies before reading it
            async def patched(self, *a, **k):
                die()
        else:
            async def patched(self, *a, **k):
                die()
        setattr(batching.BatchEngine, name, patched)
    else:  # "output": dies after recording three replies (one of wave 2)
        original = batching.BatchEngine._accept_reply
        seen = {"n": 0}
        async def patched(self, *a, **k):
            await original(self, *a, **k)
            seen["n"] += 1
            if seen["n"] == 3:
                die()
        batching.BatchEngine._accept_reply = patched
    store, cfg = prepare_run(%r, {"backend": "openai", "base_url": base_url, "batch": True, "out": out,
                             "name": "crash", "embedder": "hashing", "max_usd": 0.05, "target": 40}, api_key="sk-test")
    asyncio.run(batching.run_batch(store, cfg, "sk-test"))
""" % (SEEDS,))


@pytest.mark.parametrize("window", ["rows", "upload", "create", "poll", "output"])
def test_kill_9_in_each_window_then_resume_sends_nothing_twice(tmp_path, window) -> None:
    with SimServer(SimConfig(batch_delay_s=0.1, seed=1)) as srv:
        proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, window, srv.base_url, str(tmp_path)],
                              capture_output=True, timeout=120)
        assert proc.returncode == -9, proc.stderr.decode()[-2000:]
        run_dir = tmp_path / "crash"
        with RunStore.open(run_dir, readonly=True) as s:
            before = s.calls()
            run_id = str(s.run()["id"])
        assert any(c["status"] == "batched" for c in before)
        store, cfg = prepare_resume(run_dir, {}, KEY)
        with store:
            result = asyncio.run(run_batch(store, cfg, KEY))
            calls = store.calls()
        assert result.status == "completed" and result.accepted >= 40
        assert not [c for c in calls if c["status"] == "batched"]
        ids, per_wave = provider_requests(srv, run_id)
        assert len(ids) == len(set(ids)), "a request was sent twice"
        assert set(per_wave.values()) == {1}, f"a wave was sent as two batches: {per_wave}"
        assert sorted(ids) == sorted(c["custom_id"] for c in calls)
        assert result.spent_micro == output_usage_cost(srv, run_id, cfg.price)
        # Replies recorded before the kill are kept, not recorded again.
        done_before = {c["id"] for c in before if c["status"] == "ok"}
        assert done_before <= {c["id"] for c in calls if c["status"] == "ok"}
        if window == "output":
            assert len(done_before) == 3


def test_cancel_releases_reservations_only_when_confirmed(tmp_path) -> None:
    with SimServer(SimConfig(batch_delay_s=30.0, seed=2)) as srv:
        # A run sends its first batch and is killed while the batch is in flight.
        script = CRASH_SCRIPT.replace('"poll": "_record_files"', '"poll": "_collect"')
        proc = subprocess.run([sys.executable, "-c", script, "poll", srv.base_url, str(tmp_path)],
                              capture_output=True, timeout=120)
        assert proc.returncode == -9, proc.stderr.decode()[-2000:]
        run_dir = tmp_path / "crash"
        store, cfg = prepare_resume(run_dir, {}, KEY)
        with store:
            rows = batch_summary(store)
            assert rows[0]["held_micro"] > 0 and rows[0]["status"] not in ("cancelled", "completed")
            confirmed = asyncio.run(cancel_batches(store, cfg, KEY, wait_s=10))
            assert [c["status"] for c in confirmed] == ["cancelled"]
            rows = batch_summary(store)
            calls = store.calls()
        assert rows[0]["status"] == "cancelled" and rows[0]["held_micro"] == 0
        assert all(c["status"] == "error" and c["cost_micro"] == 0 for c in calls)
        client = openai.OpenAI(base_url=srv.base_url, api_key=KEY)
        assert client.batches.retrieve(rows[0]["batch_id"]).status == "cancelled"
