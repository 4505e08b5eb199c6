"""Small REAL run databases for report tests, written through treegen.store as the engine would.

The example texts are real StrategyQA training examples read from the shared datasets folder;
the calls, token counts and tree shape are a fixed scenario whose figures can be checked by
hand (see ``SCENARIO``). The run is marked simulated unless asked otherwise, since no model
produced these rows.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from treegen.task import Example, dedup_key, load_examples
from treegen.prices import ModelPrice, cost_micro, load_price_table, price_for
from treegen.store import DB_NAME, RunStore, node_row

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def data_dir() -> Path:
    return Path(os.environ.get("TREEGEN_DATA_DIR") or REPO.parent / "shared" / "datasets")


def strategyqa(n: int) -> list[Example]:
    examples, _ = load_examples(data_dir() / "yesno_close" / "strategyqa" / "train.jsonl")
    return examples[:n]


def _ts(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def _shares(cost: int, n: int) -> list[int]:
    """The engine's split: even, integer, remainder to the first candidates."""
    base, rem = divmod(cost, n)
    return [base + (1 if i < rem else 0) for i in range(n)]


# The scenario, hand-checkable with gpt-4o-mini prices ($0.15 / $0.075 cached / $0.60 per 1M):
#   call 1 ok      depth 1 parents [seed 1] 1000+500 tokens        -> 450 micro, 3 candidates
#   call 2 ok      depth 1 parents [seed 2] 1200(200 cached)+400   -> 405 micro, 2 candidates
#   call 3 error   depth 2 (HTTP 429)                              -> 0
#   call 4 timeout depth 2 reserved 900 micro / 2000 tokens        -> 900 counted
#   call 5 ok      depth 2 parents [node A] 1100+600               -> 525 micro, 4 candidates
#   call 6 lost    depth 2 reserved 700 micro / 1800 tokens        -> 700 counted
#   call 7 pending depth 3 reserved 950 micro                      -> in flight, not spent
# spent = 450+405+525+900+700 = 2980; tokens used = 1500+1600+1700+2000+1800 = 8600.
SCENARIO: dict[str, Any] = {
    "spent_micro": 2980,
    "unknown_micro": 1600,
    "pending_micro": 950,
    "tokens_used": 8600,
    "node_shares_micro": 450 + 405 + 525,
    "seeds": 3,
    "accepted": 5,
    "rejected": 4,
    "completion_tokens": 1500,
    # completion tokens on rejected candidates: 500*1/3 + 400*1/2 + 600*2/4
    "rejected_completion": 500 / 3 + 200 + 300,
    "calls": 7,
    "elapsed_seconds": 120.0,
}


def build_run(
    folder: Path,
    *,
    simulated: bool = True,
    model: str = "gpt-4o-mini",
    run_id: str = "run-test",
    status: str = "stopped: budget reached",
    stop_reason: str | None = "dollar cap of $0.005 reached",
) -> Path:
    """Create ``folder/treegen.db`` holding the SCENARIO run; returns the database path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / DB_NAME
    price = price_for(model, load_price_table())
    assert isinstance(price, ModelPrice)
    ex = strategyqa(3 + 9)
    seeds, pool = ex[:3], ex[3:]
    caps = {"max_usd_micro": 5000, "max_tokens": 20000, "max_calls": 10, "target": 10, "max_depth": 3, "max_seconds": 600}
    store = RunStore.create(path, {
        "id": run_id, "created_at": _ts(0), "updated_at": _ts(120), "status": status,
        "stop_reason": stop_reason, "simulated": int(simulated), "task_format": "yesno_close",
        "strategy": "tree", "model": model, "base_url": None, "seed": 0,
        "config": json.dumps({
            "caps": caps, "k": 3, "temperature": 1.0,
            "price": asdict(price),  # as the engine's RunConfig stores it
        }),
    }, seeds)  # the seeds are nodes 1-3, with the run's strategy, as the engine writes them
    node_id = len(seeds)
    pending_nodes: list[dict[str, Any]] = []

    def add_node(**row: Any) -> int:
        nonlocal node_id
        node_id += 1
        ex_: Example | None = row.pop("example", None)
        full = node_row(ex_, parent_id=None, root_id=node_id, depth=0, call_id=None, strategy="",
                        status="seed", reason=None)
        full["created_at"] = _ts(node_id)
        full.update(row)
        pending_nodes.append(full)
        return node_id

    def add_call(cid: int, status: str, depth: int, parents: list[int], strategy: str = "tree",
                 prompt: int | None = None, completion: int | None = None, cached: int | None = None,
                 reserved_micro: int = 0, reserved_tokens: int = 0, http_status: int | None = None) -> int | None:
        cost = None
        if status == "ok":
            cost = cost_micro(price, prompt or 0, completion or 0, cached or 0)
        elif status == "error":
            cost = 0
        store.insert_call({
            "id": cid, "created_at": _ts(10 * cid), "parent_node_ids": json.dumps(parents), "depth": depth,
            "strategy": strategy, "attempt": 1, "request_key": f"req-{cid}", "model": model, "status": status,
            "http_status": http_status, "error": "rate limited" if status == "error" else None,
            "request_id": None, "finish_reason": "stop" if status == "ok" else None,
            "prompt_tokens": prompt, "completion_tokens": completion, "cached_tokens": cached,
            "reserved_prompt_tokens": prompt or 1000, "reserved_tokens": reserved_tokens,
            "reserved_micro": reserved_micro, "cost_micro": cost, "duration_ms": 1500,
            "simulated": int(simulated), "response_text": "[...]" if status == "ok" else None,
            "n_parsed": None, "n_accepted": None,
        })
        return cost

    roots: dict[int, int] = {i + 1: i + 1 for i in range(len(seeds))}

    def candidates(cid: int, cost: int, parent: int, depth: int, strategy: str, items: list[dict[str, Any]]) -> list[int]:
        root = roots[parent]
        ids = []
        for share, item in zip(_shares(cost, len(items)), items):
            ids.append(add_node(parent_id=parent, root_id=root, depth=depth, call_id=cid, strategy=strategy,
                                cost_share_micro=share, **item))
            roots[ids[-1]] = root
        store.record_reply(cid, {"n_parsed": len(items), "n_accepted": sum(i["status"] == "accepted" for i in items)},
                           pending_nodes, [])
        pending_nodes.clear()
        return ids

    c1 = add_call(1, "ok", 1, [1], prompt=1000, completion=500, cached=0, reserved_micro=1000, reserved_tokens=2000)
    a, _b, _c = candidates(1, c1, 1, 1, "tree", [
        {"status": "accepted", "example": pool[0]},
        {"status": "accepted", "example": pool[1]},
        {"status": "rejected", "reason": "duplicate", "example": seeds[0], "raw": seeds[0].to_json()},
    ])
    c2 = add_call(2, "ok", 1, [2], strategy="random", prompt=1200, completion=400, cached=200,
                  reserved_micro=1000, reserved_tokens=2000)
    candidates(2, c2, 2, 1, "random", [
        {"status": "accepted", "example": pool[2]},
        {"status": "rejected", "reason": "invalid-json", "raw": '{"question": "Is the sky'},
    ])
    d = node_id - 1
    add_call(3, "error", 2, [a], reserved_micro=800, reserved_tokens=2000, http_status=429)
    add_call(4, "timeout", 2, [a], reserved_micro=900, reserved_tokens=2000)
    c5 = add_call(5, "ok", 2, [a], prompt=1100, completion=600, cached=0, reserved_micro=1000, reserved_tokens=2000)
    bad_label = pool[5].to_dict() | {"label": "Maybe"}
    candidates(5, c5, a, 2, "tree", [
        {"status": "accepted", "example": pool[3]},
        {"status": "accepted", "example": pool[4]},
        {"status": "rejected", "reason": "label-not-in-options", "raw": json.dumps(bad_label)},
        {"status": "rejected", "reason": "near-duplicate", "example": pool[6]},
    ])
    add_call(6, "lost", 2, [d], reserved_micro=700, reserved_tokens=1800)
    add_call(7, "pending", 3, [node_id - 3], reserved_micro=950, reserved_tokens=1900)
    # The scenario's clock: the store stamps the present time; set the scenario's instead.
    with store.transaction() as c:
        c.executemany("update nodes set created_at = ? where id = ?", [(_ts(i), i) for i in range(1, len(seeds) + 1)])
        c.execute("update runs set updated_at = ?", [_ts(120)])
    store.close()
    return path
