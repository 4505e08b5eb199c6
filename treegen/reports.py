"""Reports on a run, every figure computed from its database (never from in-memory state).

"Spent" follows the schema: the reconciled cost of every call whose billing is known, plus
the whole reservation of calls whose billing is unknown (timeouts, calls lost in a crash).
Calls still pending are in flight: their reservations are shown apart, not as spent.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

import sqlite_utils
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from treegen.prices import format_usd
from treegen.store import run_row

CALL_STATUSES = ("ok", "error", "timeout", "lost", "pending")
UNKNOWN_BILLING = ("timeout", "lost")


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


def call_spent_micro(call: dict[str, Any]) -> int:
    """What one call counts against the dollar cap (the schema's definition of spent)."""
    if call["cost_micro"] is not None:
        return call["cost_micro"]
    if call["status"] in UNKNOWN_BILLING:
        return call["reserved_micro"] or 0
    return 0


def call_spent_tokens(call: dict[str, Any]) -> int:
    """What one call counts against the token cap: reported usage, else the reservation if unknown."""
    if call["prompt_tokens"] is not None or call["completion_tokens"] is not None:
        return (call["prompt_tokens"] or 0) + (call["completion_tokens"] or 0)
    if call["status"] in UNKNOWN_BILLING:
        return call["reserved_tokens"] or 0
    return 0


def _calls(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    return list(db.query("select * from calls order by id"))


def _candidate_counts(db: sqlite_utils.Database) -> dict[int, Counter]:
    """call id -> Counter of its candidates' statuses (accepted / rejected)."""
    out: dict[int, Counter] = defaultdict(Counter)
    for r in db.query(
        "select call_id, status, count(*) as n from nodes where call_id is not null group by call_id, status"
    ):
        out[r["call_id"]][r["status"]] += r["n"]
    return out


def rejected_completion_share(db: sqlite_utils.Database) -> float | None:
    """Share of completion tokens spent on rejected output.

    Each call's completion tokens are split evenly over the candidates it produced; the
    rejected candidates' parts are summed and divided by all completion tokens of the run.
    """
    counts = _candidate_counts(db)
    total = 0
    wasted = 0.0
    for call in db.query("select id, completion_tokens from calls where completion_tokens is not null"):
        c = counts.get(call["id"])
        total += call["completion_tokens"]
        if c:
            n = sum(c.values())
            wasted += call["completion_tokens"] * c["rejected"] / n
    return _ratio(wasted, total)


def _elapsed_seconds(db: sqlite_utils.Database, run: dict[str, Any]) -> float | None:
    """Working time of the run: the engine's own tally (runs.elapsed_seconds, which leaves out
    the pauses between sessions) once a session has ended; otherwise, or in databases without
    that column, the span from creation to the latest thing the run recorded."""
    recorded = run.get("elapsed_seconds")
    if recorded and run["status"] != "running":
        return float(recorded)
    start = _parse_time(run["created_at"])
    stamps = [run["updated_at"]] + [
        db.execute(f"select max(created_at) from {t}").fetchone()[0] for t in ("calls", "nodes")
    ]
    ends = [t for t in (_parse_time(s) for s in stamps) if t is not None]
    return max(0.0, (max(ends) - start).total_seconds()) if start and ends else None


def run_summary(db: sqlite_utils.Database) -> dict[str, Any]:
    """Everything about a run in one dict: counts, money, tokens, rates and cap usage."""
    run = run_row(db)
    config = run["config"]
    calls = _calls(db)
    node_counts = {r["status"]: r["n"] for r in db.query("select status, count(*) as n from nodes group by status")}
    reasons = {
        r["reason"] or "unknown": r["n"]
        for r in db.query(
            "select reason, count(*) as n from nodes where status = 'rejected' group by reason order by n desc, reason"
        )
    }
    seeds = node_counts.get("seed", 0)
    accepted = node_counts.get("accepted", 0)
    rejected = node_counts.get("rejected", 0)

    by_status = {s: 0 for s in CALL_STATUSES}
    for c in calls:
        by_status[c["status"]] = by_status.get(c["status"], 0) + 1
    spent = sum(call_spent_micro(c) for c in calls)
    unknown = sum(call_spent_micro(c) for c in calls if c["cost_micro"] is None and c["status"] in UNKNOWN_BILLING)
    pending_micro = sum(c["reserved_micro"] or 0 for c in calls if c["status"] == "pending")
    tokens_used = sum(call_spent_tokens(c) for c in calls)
    prompt = sum(c["prompt_tokens"] or 0 for c in calls)
    completion = sum(c["completion_tokens"] or 0 for c in calls)
    cached = sum(c["cached_tokens"] or 0 for c in calls)
    max_depth = db.execute("select max(depth) from nodes where status in ('seed', 'accepted')").fetchone()[0] or 0

    elapsed = _elapsed_seconds(db, run)
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
    held = {"max_usd_micro": pending_micro,
            "max_tokens": sum(c["reserved_tokens"] or 0 for c in calls if c["status"] == "pending")}
    cap_usage = {
        key: {
            "cap": caps.get(key),
            "used": value,
            "held": held.get(key, 0),
            "fraction": _ratio(value, caps[key]) if caps.get(key) else None,
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
        "seeds": seeds,
        "accepted": accepted,
        "rejected": rejected,
        "rejected_by_reason": reasons,
        "rejection_rate": _ratio(rejected, accepted + rejected),
        "calls": by_status,
        "n_calls": len(calls),
        "spent_micro": spent,
        "unknown_billing_micro": unknown,
        "unknown_billing_share": _ratio(unknown, spent),
        "pending_reserved_micro": pending_micro,
        "tokens_used": tokens_used,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cached_tokens": cached,
        "cost_per_accepted_micro": _per(spent, accepted),
        "tokens_per_accepted": _ratio(tokens_used, accepted),
        "rejected_completion_share": rejected_completion_share(db),
        "max_depth": max_depth,
        "elapsed_seconds": elapsed,
        "calls_per_minute": per_minute,
        "caps": cap_usage,
        "prices": config.get("price") or config.get("prices"),  # the engine stores "price"
    }


def _breakdown(db: sqlite_utils.Database, key: str) -> list[dict[str, Any]]:
    """Nodes and money grouped by a column that both nodes and calls have (depth, strategy)."""
    rows: dict[Any, dict[str, Any]] = {}

    def row(k: Any) -> dict[str, Any]:
        return rows.setdefault(
            k, {key: k, "nodes": 0, "seeds": 0, "accepted": 0, "rejected": 0, "cost_micro": 0, "calls": 0, "spent_micro": 0}
        )

    for r in db.query(
        f"select {key} as k, status, count(*) as n, coalesce(sum(cost_share_micro), 0) as cost "
        f"from nodes group by {key}, status"
    ):
        if r["status"] == "seed" and key == "strategy":
            r["k"] = "seed"  # seeds carry the run's strategy, but no strategy made them
        out = row(r["k"])
        out["nodes"] += r["n"]
        out["cost_micro"] += r["cost"]
        if r["status"] in ("seed", "accepted", "rejected"):
            out[{"seed": "seeds"}.get(r["status"], r["status"])] += r["n"]
    for c in _calls(db):
        out = row(c[key])
        out["calls"] += 1
        out["spent_micro"] += call_spent_micro(c)
    result = sorted(rows.values(), key=lambda r: (r[key] is None, str(r[key]) if key == "strategy" else (r[key] or 0)))
    for r in result:
        r["cost_per_accepted_micro"] = _per(r["cost_micro"], r["accepted"])
    return result


def by_depth(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """Per depth: nodes (seeds, accepted, rejected), cost (sum of node shares), cost per accepted.

    ``calls`` and ``spent_micro`` count the calls made for that depth, including the ones that
    produced no candidate (errors, timeouts), so they add up to the run's spent.
    """
    return _breakdown(db, "depth")


def by_strategy(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """Per strategy: the same figures as by_depth (seeds form their own row)."""
    return _breakdown(db, "strategy")


def money(micro: int | None, summary: dict[str, Any], short: bool = False) -> str:
    """Dollars for display; a simulated run's dollars say so, and at whose prices.

    ``short`` is for table cells under a caption that says the dollars are simulated.
    """
    text = format_usd(micro)
    if summary["simulated"] and micro is not None and not short:
        return f"simulated {text} (at {summary['model']} list prices)"
    return text


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _cap_text(key: str, value: Any, summary: dict[str, Any]) -> str:
    if value is None:
        return "-"
    if key == "max_usd_micro":
        return money(value, summary, short=True)
    if key == "max_seconds":
        return f"{value:,.0f} s"
    return f"{value:,}"


def render_status(db: sqlite_utils.Database, console: Console) -> dict[str, Any]:
    """Print the status of a run as rich tables; returns the summary it printed."""
    s = run_summary(db)
    if s["simulated"]:
        console.print(
            Panel(
                Text("SIMULATED", style="bold white on red", justify="center"),
                subtitle="no model was called: texts and dollars come from the simulator",
                border_style="red",
            )
        )

    overview = Table(title=f"Run {s['run_id']}", show_header=False, title_justify="left")
    overview.add_column("", style="bold")
    overview.add_column("")
    stop = f" ({s['stop_reason']})" if s["stop_reason"] else ""
    for name, value in [
        ("status", f"{s['status']}{stop}"),
        ("model", s["model"] or "-"),
        ("strategy", s["strategy"] or "-"),
        ("format", s["format"] or "-"),
        ("seeds / accepted / rejected", f"{s['seeds']} / {s['accepted']} / {s['rejected']}"),
        ("rejection rate", _pct(s["rejection_rate"])),
        ("calls", ", ".join(f"{k} {v}" for k, v in s["calls"].items() if v) or "none"),
        ("spent", money(s["spent_micro"], s)),
        ("  of which billing unknown", f"{money(s['unknown_billing_micro'], s)} ({_pct(s['unknown_billing_share'])})"),
        ("  in flight (reserved)", money(s["pending_reserved_micro"], s)),
        ("cost per accepted example", money(s["cost_per_accepted_micro"], s)),
        ("tokens (prompt / completion / cached)", f"{s['prompt_tokens']:,} / {s['completion_tokens']:,} / {s['cached_tokens']:,}"),
        ("tokens per accepted example", "n/a" if s["tokens_per_accepted"] is None else f"{s['tokens_per_accepted']:,.0f}"),
        ("completion tokens on rejected output", _pct(s["rejected_completion_share"])),
        ("max depth", str(s["max_depth"])),
        ("elapsed", "n/a" if s["elapsed_seconds"] is None else f"{s['elapsed_seconds']:,.0f} s"),
        ("calls per minute", "n/a" if s["calls_per_minute"] is None else f"{s['calls_per_minute']:.1f}"),
    ]:
        overview.add_row(name, value)

    caption = f"simulated dollars, at {s['model']} list prices" if s["simulated"] else None
    caps = Table(title="Caps", title_justify="left", caption=caption)
    for col in ("cap", "limit", "used", "share", "in flight"):
        caps.add_column(col, justify="left" if col == "cap" else "right")
    for key, u in s["caps"].items():
        if u["cap"] is not None:
            caps.add_row(key, _cap_text(key, u["cap"], s), _cap_text(key, u["used"], s), _pct(u["fraction"]),
                         _cap_text(key, u["held"], s) if u["held"] else "")

    parts: list[Any] = [overview, caps]
    if s["rejected_by_reason"]:
        reasons = Table(title="Rejections", title_justify="left")
        reasons.add_column("reason")
        reasons.add_column("n", justify="right")
        for reason, n in s["rejected_by_reason"].items():
            reasons.add_row(reason, str(n))
        parts.append(reasons)
    for title, key, rows in (("By depth", "depth", by_depth(db)), ("By strategy", "strategy", by_strategy(db))):
        t = Table(title=title, title_justify="left", caption=caption)
        for col in (key, "nodes", "accepted", "rejected", "calls", "node cost", "spent", "cost / accepted"):
            t.add_column(col, justify="left" if col == key else "right")
        for r in rows:
            t.add_row(
                str(r[key]), str(r["nodes"]), str(r["accepted"]), str(r["rejected"]), str(r["calls"]),
                money(r["cost_micro"], s, True), money(r["spent_micro"], s, True),
                money(r["cost_per_accepted_micro"], s, True),
            )
        parts.append(t)
    if s["prices"]:
        p = s["prices"]
        parts.append(Text(
            f"prices used ({p.get('model', s['model'])}, dollars per 1M tokens): input {p['input'] / 1e6:g}, "
            f"cached input {p['cached_input'] / 1e6:g}, output {p['output'] / 1e6:g}", style="dim"))
    console.print(Group(*parts))
    if s["simulated"]:
        console.print(Text("SIMULATED RUN: not real model output, not real spending.", style="bold red"))
    return s
