"""Every rich rendering the CLI prints: run status, live progress, and the shared helpers.

Nothing printed may be cut: table cells fold instead of ending in an ellipsis, and when the
output is not a terminal (a pipe, a file, CI) or too narrow for a grid, tables become a plain
"key: value" layout that any width can hold. The data comes from ``treegen.reports`` (dicts)
and ``treegen.engine.Progress``; this module only draws.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import click
from treegen.budget import Caps
from treegen.prices import format_usd

if TYPE_CHECKING:  # the engine pulls in the OpenAI client (about 1 s): not needed to draw
    from rich.console import Console, RenderableType

    from treegen.engine import Progress

# rich is imported by the functions that draw, when they draw: importing this module (every
# CLI command does, for its consoles) costs no rich import (issue 12: start-up CPU).


class LazyConsole:
    """A rich Console made on first use: module-level consoles cost nothing at import."""

    def __init__(self, **kwargs: Any):
        self._kwargs = kwargs
        self._console: Any = None

    def get(self) -> "Console":
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._kwargs)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)

# Below this many columns of text per table column, a grid folds most cells into slivers:
# the plain layout reads better.
MIN_COLUMN_WIDTH = 10
MIN_TABLE_WIDTH = 60


def money(micro: int | None, simulated: bool, model: str | None, short: bool = False) -> str:
    """Dollars for display; a simulated run's dollars say so, and at whose prices.

    ``short`` is for table cells under a caption that already says the dollars are simulated.
    """
    text = format_usd(micro)
    if simulated and micro is not None and not short:
        return f"simulated {text} (at {model or 'the model'} list prices)"
    return text


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def print_json(obj: Any) -> None:
    """A JSON document on stdout and nothing else (no rich: no wrapping, no colour codes)."""
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def plain_layout(console: Console, n_columns: int = 2) -> bool:
    """True when tables should be printed as "key: value" lines rather than a grid."""
    return not console.is_terminal or console.width < max(MIN_TABLE_WIDTH, MIN_COLUMN_WIDTH * n_columns)


def table(
    title: str | None,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    console: Console,
    *,
    caption: str | None = None,
    show_header: bool = True,
    right: Iterable[str] = (),
) -> RenderableType:
    """A table that never cuts a cell.

    On a wide terminal: a rich grid whose columns fold (no ellipsis, no truncation). Otherwise
    (a pipe, a file, a narrow terminal): plain text, one "column: value" line per cell, rows
    separated by a blank line; a table without header (``show_header=False``) is read as
    key/value pairs and printed "key: value". Every text is literal (no rich markup).
    """
    from rich.table import Table
    from rich.text import Text

    rows = [["" if v is None else str(v) for v in r] for r in rows]
    right = set(right)
    if plain_layout(console, len(columns)):
        lines: list[str] = []
        if title:
            lines.append(title)
        if not show_header and len(columns) == 2:
            lines.extend(f"{k}: {v}" for k, v in rows)
        else:
            for i, r in enumerate(rows):
                if i:
                    lines.append("")
                lines.extend(f"{c}: {v}" for c, v in zip(columns, r) if v != "" or c == columns[0])
        if caption:
            lines.append(f"({caption})")
        return Text("\n".join(lines) + "\n")
    t = Table(title=title, title_justify="left", caption=caption, show_header=show_header)
    for c in columns:
        t.add_column(c, overflow="fold", no_wrap=False, justify="right" if c in right else "left")
    for r in rows:
        t.add_row(*(Text(v) for v in r))  # Text: a cell that holds "[...]" stays literal
    return t


def show(console: Console, *parts: RenderableType) -> None:
    """Print renderables; plain text is printed unwrapped (soft wrap), so a long "key: value"
    line stays one line in a pipe and the terminal, not rich, wraps it on screen."""
    from rich.text import Text

    for part in parts:
        if isinstance(part, Text):
            console.print(part, soft_wrap=True)
        else:
            console.print(part)


def simulated_banner(console: Console) -> RenderableType:
    from rich.panel import Panel
    from rich.text import Text

    note = "no model was called: texts and dollars come from the simulator"
    if plain_layout(console):
        return Text(f"*** SIMULATED RUN *** {note}\n", style="bold red")
    return Panel(Text("SIMULATED", style="bold white on red", justify="center"), subtitle=note, border_style="red")


def _cap_text(key: str, value: Any, simulated: bool, model: str | None) -> str:
    if value is None:
        return "-"
    if key == "max_usd_micro":
        return money(value, simulated, model, short=True)
    if key == "max_seconds":
        return f"{value:,.0f} s"
    return f"{value:,}"


def purpose_table(rows: list[dict[str, Any]], console: Console, usd: Any, caption: str | None) -> RenderableType:
    """Spend per module (``treegen.reports.by_purpose``): what each one cost, and the run's cost
    per accepted example with it and without it. ``usd(micro, short)`` formats dollars."""
    cols = ("module", "calls", "tokens", "spent", "share", "accepted", "cost / accepted with", "without")
    return table("By module (call purpose)", cols, [
        (r["purpose"], f"{r['calls']:,}", f"{r['tokens']:,}", usd(r["spent_micro"], True), pct(r["share_of_spent"]),
         f"{r['accepted']:,}", usd(r["cost_per_accepted_with_micro"], True),
         "-" if r["purpose"] == "generate" else usd(r["cost_per_accepted_without_micro"], True))
        for r in rows
    ], console, caption=caption, right=cols[1:])


def render_status(summary: dict[str, Any], by_depth: list[dict[str, Any]], by_strategy: list[dict[str, Any]],
                  console: Console) -> None:
    """Print a run's status (``treegen.reports.run_summary`` and its breakdowns)."""
    from rich.text import Text

    s = summary
    sim, model = s["simulated"], s["model"]

    def usd(micro: int | None, short: bool = False) -> str:
        return money(micro, sim, model, short)

    parts: list[RenderableType] = []
    if sim:
        parts.append(simulated_banner(console))
    stop = f" ({s['stop_reason']})" if s["stop_reason"] else ""
    overview = [
        ("status", f"{s['status']}{stop}"),
        ("model", model or "-"),
        ("strategy", s["strategy"] or "-"),
        ("format", s["format"] or "-"),
        ("seeds / accepted / rejected", f"{s['seeds']} / {s['accepted']} / {s['rejected']}"),
        ("rejection rate", pct(s["rejection_rate"])),
        ("calls", ", ".join(f"{k} {v}" for k, v in s["calls"].items() if v) or "none"),
        ("spent", usd(s["spent_micro"])),
        *([("  Batch / synchronous", f"{usd(s['spent_by_mode_micro']['batch'])} / "
                                     f"{usd(s['spent_by_mode_micro']['sync'])}")]
          if s.get("spent_by_mode_micro", {}).get("batch") else []),
        ("  of which billing unknown", f"{usd(s['unknown_billing_micro'])} ({pct(s['unknown_billing_share'])})"),
        ("  in flight (reserved)", usd(s["pending_reserved_micro"])),
        ("cost per accepted example", usd(s["cost_per_accepted_micro"])),
        ("tokens (prompt / completion / cached)",
         f"{s['prompt_tokens']:,} / {s['completion_tokens']:,} / {s['cached_tokens']:,}"),
        ("tokens per accepted example", "n/a" if s["tokens_per_accepted"] is None else f"{s['tokens_per_accepted']:,.0f}"),
        ("completion tokens on rejected output", pct(s["rejected_completion_share"])),
        ("max depth", str(s["max_depth"])),
        ("elapsed", "n/a" if s["elapsed_seconds"] is None else f"{s['elapsed_seconds']:,.0f} s"),
        ("calls per minute", "n/a" if s["calls_per_minute"] is None else f"{s['calls_per_minute']:.1f}"),
    ]
    parts.append(table(f"Run {s['run_id']}", ("", ""), overview, console, show_header=False))

    caption = f"simulated dollars, at {model} list prices" if sim else None
    cap_rows = [
        (Caps.flag(key), _cap_text(key, u["cap"], sim, model), _cap_text(key, u["used"], sim, model),
         pct(u["fraction"]), _cap_text(key, u["held"], sim, model) if u["held"] else "")
        for key, u in s["caps"].items() if u["cap"] is not None
    ]
    if cap_rows:
        parts.append(table("Caps", ("cap", "limit", "used", "share", "in flight"), cap_rows, console,
                           caption=caption, right=("limit", "used", "share", "in flight")))
    if s.get("by_purpose"):
        parts.append(purpose_table(s["by_purpose"], console, usd, caption))
    if s["rejected_by_reason"]:
        # Reasons can be long ("constraint: <its text>"): the cell folds, never cut.
        parts.append(table("Rejections", ("reason", "n"), [(r, f"{n:,}") for r, n in s["rejected_by_reason"].items()],
                           console, right=("n",)))
    for title, key, rows in (("By depth", "depth", by_depth), ("By strategy", "strategy", by_strategy)):
        cols = (key, "nodes", "accepted", "rejected", "calls", "node cost", "spent", "cost / accepted")
        parts.append(table(title, cols, [
            # calls outside the tree (a metrics judge) have no depth or strategy: "-"
            ("-" if r[key] is None else r[key], r["nodes"], r["accepted"], r["rejected"], r["calls"], usd(r["cost_micro"], True),
             usd(r["spent_micro"], True), usd(r["cost_per_accepted_micro"], True)) for r in rows
        ], console, caption=caption, right=cols[1:]))
    if s.get("prices"):
        p = s["prices"]
        parts.append(Text(
            f"prices used ({p.get('model', model)}, dollars per 1M tokens): input {p['input'] / 1e6:g}, "
            f"cached input {p['cached_input'] / 1e6:g}, output {p['output'] / 1e6:g}", style="dim"))
    show(console, *parts)
    if sim:
        console.print(Text("SIMULATED RUN: not real model output, not real spending.", style="bold red"))


def _fraction(done: float, total: float | None) -> float | None:
    return max(0.0, min(1.0, done / total)) if total else None


def batches_text(p: Progress) -> str | None:
    """A ``--batch`` run's jobs in flight and their request counts, one clause per batch
    (``treegen.batching.BatchProgress``); None for a synchronous run's progress."""
    batches = getattr(p, "batches", None)
    if batches is None:
        return None
    done = int(getattr(p, "batches_done", 0))
    head = f"{len(batches)} in flight, {done:,} done"
    each = [f"wave {b.wave} {b.status} {b.completed:,}"
            + (f"/{b.requests:,}" if b.requests is not None else "") + " done"
            + (f", {b.failed:,} failed" if b.failed else "") for b in batches]
    return head + "".join(f"; {e}" for e in each)


def render_progress(p: Progress) -> RenderableType:
    """The live panel of a working run (rich renderable; bars are rich ProgressBars)."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    title = "treegen run" + (" (SIMULATED)" if p.simulated else "")
    grid = Table(title=title, show_header=False, box=None, padding=(0, 2))
    grid.add_column(overflow="fold")
    grid.add_column(overflow="fold")
    grid.add_column(width=32)

    def bar(done: float, total: float | None) -> RenderableType:
        frac = _fraction(done, total)
        if frac is None:
            return Text("")
        return Group(ProgressBar(total=1.0, completed=frac, width=24), Text(f"{frac:.1%}"))

    target = f" / {p.target:,}" if p.target is not None else ""
    grid.add_row("accepted", Text(f"{p.accepted:,}{target}"), bar(p.accepted, p.target))
    cap = f" / {format_usd(p.max_usd_micro)}" if p.max_usd_micro is not None else ""
    spent = ("simulated " if p.simulated else "") + format_usd(p.spent_micro)
    grid.add_row("spent", Text(f"{spent}{cap}"), bar(p.spent_micro, p.max_usd_micro))
    grid.add_row("tokens", f"{p.tokens:,}", "")
    grid.add_row("calls", f"{p.calls:,} ({p.calls_per_minute:,.0f}/min, {p.in_flight} in flight)", "")
    batches = batches_text(p)
    if batches is not None:
        grid.add_row("batches", Text(batches), "")  # folded, never cut
    grid.add_row("depth", str(p.depth), "")
    grid.add_row("rejected", f"{p.rejected:,} ({p.rejection_rate:.0%} of candidates)", "")
    grid.add_row("elapsed", f"{p.elapsed:,.1f} s", "")
    if p.last_error:
        grid.add_row("last error", Text(p.last_error), "")  # folded, never cut; literal text
    return grid


def progress_line(p: Progress) -> str:
    """One plain line per progress event, for logs and pipes (no escape codes)."""
    parts = [("SIMULATED " if p.simulated else "")
             + f"accepted {p.accepted:,}" + (f"/{p.target:,}" if p.target is not None else "")]
    frac = _fraction(p.accepted, p.target)
    if frac is not None:
        parts[0] += f" ({frac:.0%})"
    spent = format_usd(p.spent_micro) + (f"/{format_usd(p.max_usd_micro)}" if p.max_usd_micro is not None else "")
    parts += [
        f"spent {spent}",
        f"tokens {p.tokens:,}",
        f"calls {p.calls:,} ({p.calls_per_minute:,.0f}/min, {p.in_flight} in flight)",
        f"depth {p.depth}",
        f"rejected {p.rejected:,} ({p.rejection_rate:.0%})",
        f"elapsed {p.elapsed:,.1f} s",
    ]
    batches = batches_text(p)
    if batches is not None:  # after the calls: "N in flight" there counts requests, here jobs
        parts.insert(4, f"batches {batches}")
    if p.last_error:
        parts.append(f"last error: {p.last_error}")
    return " | ".join(parts)

