"""Reports on a run as plain data, every figure computed from its store (never from in-memory state).

"Spent" is the store's one rule (``treegen.store.call_spent_micro``): the reconciled cost of
every call whose billing is known, plus the whole reservation of calls whose billing is
unknown. Calls still in flight are held, shown apart from what is spent.

No SQL here (the store owns it) and no rich (``treegen.render`` draws these dicts).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from treegen.errors import InputError
from treegen.store import (
    DB_NAME, IN_FLIGHT, UNKNOWN_BILLING, NodeStatus, RunStore, call_spent_micro, call_spent_tokens,
)

# Shown even at zero, in this order; any other status a call holds is appended.
CALL_STATUSES = ("ok", "error", "timeout", "lost", "pending")


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _per(micro: int, n: int) -> int | None:
    """Integer micro-dollars per item, rounded half up; None when there are no items."""
    return (2 * micro + n) // (2 * n) if n else None


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _candidate_counts(store: RunStore) -> dict[int, Counter]:
    """call id -> Counter of its candidates' statuses (accepted / rejected)."""
    out: dict[int, Counter] = defaultdict(Counter)
    for r in store.candidate_counts():
        out[r["call_id"]][r["status"]] += r["n"]
    return out


def rejected_completion_share(store: RunStore, calls: list[dict[str, Any]] | None = None) -> float | None:
    """Share of completion tokens spent on rejected output.

    Each call's completion tokens are split evenly over the candidates it produced; the
    rejected candidates' parts are summed and divided by all completion tokens of the run.
    """
    counts = _candidate_counts(store)
    total = 0
    wasted = 0.0
    for call in store.calls() if calls is None else calls:
        tokens = call["completion_tokens"]
        if tokens is None:
            continue
        total += tokens
        c = counts.get(call["id"])
        if c:
            wasted += tokens * c[NodeStatus.REJECTED] / sum(c.values())
    return _ratio(wasted, total)


def elapsed_seconds(store: RunStore, run: dict[str, Any] | None = None) -> float | None:
    """Working time of the run: the engine's own tally (which leaves out the pauses between
    sessions) once a session has ended; while it runs, the span from creation to the latest
    thing the run recorded."""
    run = run or store.run()
    recorded = run.get("elapsed_seconds")
    if recorded and run["status"] != "running":
        return float(recorded)
    start = _parse_time(run["created_at"])
    ends = [t for t in (_parse_time(s) for s in [run["updated_at"], *store.latest_timestamps()]) if t is not None]
    return max(0.0, (max(ends) - start).total_seconds()) if start and ends else None


def run_summary(store: RunStore) -> dict[str, Any]:
    """Everything about a run in one dict: counts, money, tokens, rates and cap usage."""
    run = store.run()
    config = run["config"]
    calls = store.calls()
    node_counts = store.node_status_counts()
    seeds = node_counts.get(NodeStatus.SEED, 0)
    accepted = node_counts.get(NodeStatus.ACCEPTED, 0)
    rejected = node_counts.get(NodeStatus.REJECTED, 0)

    by_status = {s: 0 for s in CALL_STATUSES}
    for c in calls:
        by_status[c["status"]] = by_status.get(c["status"], 0) + 1
    spent = sum(call_spent_micro(c) for c in calls)
    unknown = sum(call_spent_micro(c) for c in calls if c["cost_micro"] is None and c["status"] in UNKNOWN_BILLING)
    in_flight = [c for c in calls if c["status"] in IN_FLIGHT]
    pending_micro = sum(c["reserved_micro"] or 0 for c in in_flight)
    tokens_used = sum(call_spent_tokens(c) for c in calls)
    max_depth = store.max_tree_depth()

    purposes = by_purpose(store, calls, accepted)
    elapsed = elapsed_seconds(store, run)
    per_minute = _ratio(len(calls), elapsed / 60) if elapsed else None

    caps = dict(config.get("caps") or {})
    used = {
        "max_usd_micro": spent,
        "max_tokens": tokens_used,
        "max_calls": len(calls),
        "target": accepted,
        "max_depth": max_depth,
        "max_seconds": elapsed,
    }
    # In-flight reservations are held against the dollar and token caps too (the engine checks
    # spent + held before each request); shown apart from what is spent.
    held = {"max_usd_micro": pending_micro, "max_tokens": sum(c["reserved_tokens"] or 0 for c in in_flight)}
    cap_usage = {
        key: {
            "cap": caps.get(key),
            "used": value,
            "held": held.get(key, 0),
            "fraction": _ratio(value, caps[key]) if caps.get(key) and value is not None else None,
        }
        for key, value in used.items()
    }
    return {
        "run_id": run["id"],
        "status": run["status"],
        "stop_reason": run["stop_reason"],
        "simulated": bool(run["simulated"]),
        "model": run["model"],
        "strategy": run["strategy"],
        "format": run["task_format"],
        "created_at": run["created_at"],
        "seeds_source": config.get("seeds_source"),
        "seeds": seeds,
        "accepted": accepted,
        "rejected": rejected,
        "rejected_by_reason": store.rejection_reasons(),
        "rejection_rate": _ratio(rejected, accepted + rejected),
        "calls": by_status,
        "n_calls": len(calls),
        "spent_micro": spent,
        "spent_by_mode_micro": store.spent_by_mode(),  # {"batch": ..., "sync": ...}
        "unknown_billing_micro": unknown,
        "unknown_billing_share": _ratio(unknown, spent),
        "pending_reserved_micro": pending_micro,
        "tokens_used": tokens_used,
        "prompt_tokens": sum(c["prompt_tokens"] or 0 for c in calls),
        "completion_tokens": sum(c["completion_tokens"] or 0 for c in calls),
        "cached_tokens": sum(c["cached_tokens"] or 0 for c in calls),
        "cost_per_accepted_micro": _per(spent, accepted),
        "tokens_per_accepted": _ratio(tokens_used, accepted),
        "rejected_completion_share": rejected_completion_share(store, calls),
        "max_depth": max_depth,
        "elapsed_seconds": elapsed,
        "calls_per_minute": per_minute,
        "caps": cap_usage,
        "prices": config.get("price") or config.get("prices"),  # the engine stores "price"
        # Only for runs that used a quality module (verify, attributes, harder, judge): the
        # summary of older and plain runs stays as it was.
        **({"by_purpose": purposes} if purposes else {}),
    }


PURPOSES = ("generate", "verify", "attributes", "harder", "judge")  # a call's purpose; NULL in old runs = generate


def by_purpose(store: RunStore, calls: list[dict[str, Any]] | None = None,
               accepted: int | None = None) -> list[dict[str, Any]]:
    """Spend per module (a call's purpose), or [] when every call generated (a run made
    without the quality modules, or before they existed).

    Each row: ``purpose``, ``calls``, ``spent_micro`` and ``tokens`` (the one spent rule),
    ``accepted`` (examples accepted from that purpose's replies), and the run's cost per
    accepted example with the module (``total spent / accepted``) and without it
    (``(total spent - the module's spent) / accepted``). Rows in ``PURPOSES`` order, any
    other purpose after them.
    """
    calls = store.calls() if calls is None else calls
    rows: dict[str, dict[str, Any]] = {}
    for c in calls:
        purpose = c.get("purpose") or "generate"
        r = rows.setdefault(purpose, {"purpose": purpose, "calls": 0, "spent_micro": 0, "tokens": 0, "accepted": 0})
        r["calls"] += 1
        r["spent_micro"] += call_spent_micro(c)
        r["tokens"] += call_spent_tokens(c)
        r["accepted"] += c.get("n_accepted") or 0
    if set(rows) <= {"generate"}:
        return []
    if accepted is None:
        accepted = store.node_status_counts().get(NodeStatus.ACCEPTED, 0)
    total = sum(r["spent_micro"] for r in rows.values())
    order = {p: i for i, p in enumerate(PURPOSES)}
    out = sorted(rows.values(), key=lambda r: (order.get(r["purpose"], len(order)), r["purpose"]))
    for r in out:
        r["share_of_spent"] = _ratio(r["spent_micro"], total)
        r["cost_per_accepted_with_micro"] = _per(total, accepted)
        r["cost_per_accepted_without_micro"] = _per(total - r["spent_micro"], accepted)
    return out


def _breakdown(store: RunStore, key: str, calls: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Nodes and money grouped by a field that both nodes and calls have (depth, strategy)."""
    rows: dict[Any, dict[str, Any]] = {}

    def row(k: Any) -> dict[str, Any]:
        return rows.setdefault(
            k, {key: k, "nodes": 0, "seeds": 0, "accepted": 0, "rejected": 0, "cost_micro": 0, "calls": 0, "spent_micro": 0}
        )

    for r in store.node_groups(key):
        k = r["k"]
        if r["status"] == NodeStatus.SEED and key == "strategy":
            k = "seed"  # seeds carry the run's strategy, but no strategy made them
        out = row(k)
        out["nodes"] += r["n"]
        out["cost_micro"] += r["cost"]
        if r["status"] in (NodeStatus.SEED, NodeStatus.ACCEPTED, NodeStatus.REJECTED):
            out[{"seed": "seeds"}.get(r["status"], r["status"])] += r["n"]
    for c in store.calls() if calls is None else calls:
        out = row(c[key])
        out["calls"] += 1
        out["spent_micro"] += call_spent_micro(c)
    result = sorted(rows.values(), key=lambda r: (r[key] is None, str(r[key]) if key == "strategy" else (r[key] or 0)))
    for r in result:
        r["cost_per_accepted_micro"] = _per(r["cost_micro"], r["accepted"])
    return result


def by_depth(store: RunStore) -> list[dict[str, Any]]:
    """Per depth: nodes (seeds, accepted, rejected), cost (sum of node shares), cost per accepted.

    ``calls`` and ``spent_micro`` count the calls made for that depth, including the ones that
    produced no candidate (errors, timeouts), so they add up to the run's spent.
    """
    return _breakdown(store, "depth")


def by_strategy(store: RunStore) -> list[dict[str, Any]]:
    """Per strategy: the same figures as by_depth (seeds form their own row)."""
    return _breakdown(store, "strategy")


def spend_over_time(store: RunStore, calls: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Cumulative spent after each call, in the order the calls were made:
    ``[{"seconds": since the run was created, "spent_micro": running total, "call_id": id}]``.
    A call in flight adds nothing (it is held, not spent)."""
    run = store.run()
    start = _parse_time(run["created_at"])
    out: list[dict[str, Any]] = []
    total = 0
    for c in store.calls() if calls is None else calls:
        total += call_spent_micro(c)
        t = _parse_time(c["created_at"])
        seconds = (t - start).total_seconds() if t and start else float(len(out))
        out.append({"seconds": max(0.0, seconds), "spent_micro": total, "call_id": c["id"],
                    "in_flight": c["status"] in IN_FLIGHT})
    return out


def run_list(root: str | Path) -> list[dict[str, Any]]:
    """Every run folder directly under ``root`` (a folder), newest first: id, status, strategy,
    model, accepted, spent, simulated, path. A folder whose database cannot be read is listed
    with ``status`` "unreadable: <why>" rather than hiding it."""
    root = Path(root)
    out: list[dict[str, Any]] = []
    for folder in sorted(p for p in root.iterdir() if (p / DB_NAME).is_file()):
        try:
            with RunStore.open(folder, readonly=True) as store:
                run = store.run()
                totals = store.ledger_totals()
                out.append({
                    "run_id": run["id"], "path": str(folder), "created_at": run["created_at"],
                    "status": run["status"], "strategy": run["strategy"], "model": run["model"],
                    "accepted": totals["accepted"], "spent_micro": totals["micro"],
                    "simulated": bool(run["simulated"]),
                })
        except InputError as exc:
            out.append({"run_id": folder.name, "path": str(folder), "created_at": None,
                        "status": f"unreadable: {exc}", "strategy": None, "model": None,
                        "accepted": None, "spent_micro": None, "simulated": None})
    out.sort(key=lambda r: r["created_at"] or "", reverse=True)
    return out


def samples_by_depth(store: RunStore, per_depth: int = 3) -> dict[int, list[dict[str, Any]]]:
    """The first ``per_depth`` kept nodes (seeds, accepted) of every depth, as node rows."""
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in store.nodes():
        bucket = out[r["depth"] or 0]
        if len(bucket) < per_depth:
            bucket.append(r)
    return dict(sorted(out.items()))
