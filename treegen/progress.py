"""Live progress of a run on a terminal (rich)."""

from __future__ import annotations

from rich.table import Table

from treegen.engine import Progress
from treegen.prices import format_usd


def _bar(done: float, total: float | None, width: int = 24) -> str:
    if not total:
        return ""
    frac = max(0.0, min(1.0, done / total))
    full = int(frac * width)
    return "[" + "#" * full + "-" * (width - full) + f"] {frac:5.1%}"


def render_progress(p: Progress) -> Table:
    title = "treegen run" + (" (SIMULATED)" if p.simulated else "")
    table = Table(title=title, show_header=False, box=None, padding=(0, 2))
    target = f" / {p.target:,}" if p.target is not None else ""
    table.add_row("accepted", f"{p.accepted:,}{target}", _bar(p.accepted, p.target))
    cap = f" / {format_usd(p.max_usd_micro)}" if p.max_usd_micro is not None else ""
    spent = ("simulated " if p.simulated else "") + format_usd(p.spent_micro)
    table.add_row("spent", f"{spent}{cap}", _bar(p.spent_micro, p.max_usd_micro))
    table.add_row("tokens", f"{p.tokens:,}", "")
    table.add_row("calls", f"{p.calls:,} ({p.calls_per_minute:,.0f}/min, {p.in_flight} in flight)", "")
    table.add_row("depth", str(p.depth), "")
    table.add_row("rejected", f"{p.rejected:,} ({p.rejection_rate:.0%} of candidates)", "")
    table.add_row("elapsed", f"{p.elapsed:,.1f} s", "")
    if p.last_error:
        table.add_row("last error", p.last_error[:100], "")
    return table
