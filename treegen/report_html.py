"""One self-contained HTML page about one or more runs: inline CSS and SVG, no script, no network.

The page holds, per run: a SIMULATED/REAL banner, the summary, spend over time against the
dollar cap, cost and acceptance per depth, rejection reasons, the lineage tree (the top levels
when the tree is big, and it says so), and sample examples per depth. For several runs it adds
a comparison table and, when the runs hold student results, accuracy against dollars.

Every text that comes from a database goes through ``esc`` (HTML-escaped, quotes included).
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

from treegen.budget import Caps
from treegen.export import atomic_write, check_destination
from treegen.prices import format_usd
from treegen.reports import by_depth, by_strategy, run_summary, samples_by_depth, spend_over_time
from treegen.store import RunStore, utcnow

MAX_TREE_NODES = 600  # more than this and the SVG is unreadable at page width: a sample is drawn
MAX_LINE_POINTS = 800  # spend curve points (a 10,000-node run has thousands of calls)
SAMPLES_PER_DEPTH = 3
PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1f2937;background:#f8fafc}
main{max-width:1150px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:1.5rem;margin:.6em 0}h2{font-size:1.2rem;margin:1.4em 0 .5em;border-bottom:1px solid #e5e7eb}
h3{font-size:1rem;margin:1em 0 .4em}
.banner{padding:14px 20px;font-weight:700;font-size:1.3rem;text-align:center;letter-spacing:.05em}
.banner small{display:block;font-weight:400;font-size:.85rem;letter-spacing:0}
.sim{background:#b91c1c;color:#fff}.real{background:#15803d;color:#fff}.mixed{background:#b45309;color:#fff}
.tag{display:inline-block;padding:1px 8px;border-radius:9px;font-size:.75rem;font-weight:700;vertical-align:middle}
.tag.sim{background:#fee2e2;color:#991b1b}.tag.real{background:#dcfce7;color:#166534}
table{border-collapse:collapse;margin:.4em 0 1em;font-size:.88rem;background:#fff}
th,td{border:1px solid #e5e7eb;padding:4px 8px;text-align:left;vertical-align:top;overflow-wrap:anywhere}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.kv th{background:#f1f5f9;font-weight:600;width:16em}
.run{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:4px 20px 16px;margin:20px 0}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:16px}
@media (max-width:900px){.grid{grid-template-columns:1fr}}
svg{display:block;max-width:100%;height:auto;background:#fff}
svg text{font-size:11px;fill:#374151}
.note{color:#6b7280;font-size:.85rem}
.ex{border-left:3px solid #93c5fd;padding:4px 10px;margin:6px 0;background:#f8fafc;font-size:.88rem}
.ex .ctx{color:#4b5563;white-space:pre-wrap}.ex .lbl{font-weight:700;color:#166534}
"""


def esc(value: Any) -> str:
    """HTML-escaped text (``None`` shows as an empty string)."""
    return "" if value is None else html.escape(str(value), quote=True)


def _num(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    return [first + i * step for i in range(int(math.ceil((hi - first) / step)) + 1)]


def _usd_tick(micro: float) -> str:
    return format_usd(int(round(micro)))


def _axes(w: int, h: int, pad: tuple[int, int, int, int], xt: list[float], yt: list[float],
          sx: Any, sy: Any, xfmt: Any, yfmt: Any, xlabel: str, ylabel: str) -> list[str]:
    left, top, right, bottom = pad
    out = [f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="#9ca3af"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="#9ca3af"/>']
    for t in xt:
        x = sx(t)
        out.append(f'<line x1="{_num(x)}" y1="{h - bottom}" x2="{_num(x)}" y2="{h - bottom + 4}" stroke="#9ca3af"/>'
                   f'<text x="{_num(x)}" y="{h - bottom + 16}" text-anchor="middle">{esc(xfmt(t))}</text>')
    for t in yt:
        y = sy(t)
        out.append(f'<line x1="{left}" y1="{_num(y)}" x2="{w - right}" y2="{_num(y)}" stroke="#f1f5f9"/>'
                   f'<text x="{left - 6}" y="{_num(y + 4)}" text-anchor="end">{esc(yfmt(t))}</text>')
    out.append(f'<text x="{(left + w - right) / 2}" y="{h - 4}" text-anchor="middle">{esc(xlabel)}</text>')
    out.append(f'<text x="12" y="{(top + h - bottom) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 12 {(top + h - bottom) / 2})">{esc(ylabel)}</text>')
    return out


def _svg(w: int, h: int, body: Iterable[str], label: str) -> str:
    return (f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{esc(label)}">'
            + "".join(body) + "</svg>")


def spend_chart(points: list[dict[str, Any]], cap_micro: int | None, simulated: bool) -> str:
    """Cumulative spent against time (seconds since the run began), with the dollar cap."""
    if not points:
        return '<p class="note">No calls were made.</p>'
    if len(points) > MAX_LINE_POINTS:  # keep the last point so the curve ends at the total
        step = len(points) / MAX_LINE_POINTS
        points = [points[int(i * step)] for i in range(MAX_LINE_POINTS)] + [points[-1]]
    w, h, pad = 540, 260, (70, 14, 16, 36)
    xs = [p["seconds"] for p in points]
    ymax = max([points[-1]["spent_micro"], cap_micro or 0, 1])
    xt, yt = _nice_ticks(0, max(xs) or 1), _nice_ticks(0, ymax)
    x1, y1 = xt[-1] or 1, yt[-1] or 1

    def sx(v: float) -> float:
        return pad[0] + (w - pad[0] - pad[2]) * v / x1

    def sy(v: float) -> float:
        return h - pad[3] - (h - pad[1] - pad[3]) * v / y1

    body = _axes(w, h, pad, xt, yt, sx, sy, lambda t: f"{t:g} s", _usd_tick, "seconds since the run began",
                 "spent" + (" (simulated)" if simulated else ""))
    path = " ".join(f"{_num(sx(0 if i == 0 else p['seconds']))},{_num(sy(p['spent_micro']))}"
                    for i, p in enumerate([{"seconds": 0, "spent_micro": 0}] + points))
    body.append(f'<polyline fill="none" stroke="#2563eb" stroke-width="2" points="{path}"/>')
    if cap_micro:
        y = sy(cap_micro)
        body.append(f'<line x1="{pad[0]}" y1="{_num(y)}" x2="{w - pad[2]}" y2="{_num(y)}" stroke="#dc2626" '
                    f'stroke-dasharray="6 4"/><text x="{w - pad[2] - 4}" y="{_num(y - 5)}" text-anchor="end" '
                    f'style="fill:#dc2626">cap {esc(format_usd(cap_micro))}</text>')
    return _svg(w, h, body, "spend over time against the dollar cap")


def bar_chart(categories: Sequence[str], series: list[tuple[str, str, list[float]]], yfmt: Any, ylabel: str,
              xlabel: str) -> str:
    """Grouped vertical bars: ``series`` is [(name, colour, values per category)]."""
    if not categories:
        return '<p class="note">Nothing to draw.</p>'
    w, h, pad = 540, 260, (70, 24, 16, 36)
    ymax = max([v for _, _, vals in series for v in vals] + [1e-9])
    yt = _nice_ticks(0, ymax)
    y1 = yt[-1] or 1
    band = (w - pad[0] - pad[2]) / len(categories)
    bw = band * 0.8 / len(series)

    def sy(v: float) -> float:
        return h - pad[3] - (h - pad[1] - pad[3]) * v / y1

    body = _axes(w, h, pad, [], yt, lambda v: 0, sy, str, yfmt, xlabel, ylabel)
    for i, cat in enumerate(categories):
        x0 = pad[0] + band * i + band * 0.1
        for j, (name, colour, vals) in enumerate(series):
            v = vals[i]
            body.append(f'<rect x="{_num(x0 + j * bw)}" y="{_num(sy(v))}" width="{_num(max(bw - 1, 1))}" '
                        f'height="{_num(sy(0) - sy(v))}" fill="{colour}"><title>{esc(name)} at {esc(cat)}: '
                        f'{esc(yfmt(v))}</title></rect>')
        if len(categories) <= 30 or i % math.ceil(len(categories) / 30) == 0:
            body.append(f'<text x="{_num(pad[0] + band * (i + .5))}" y="{h - pad[3] + 14}" '
                        f'text-anchor="middle">{esc(cat)}</text>')
    for j, (name, colour, _) in enumerate(series):
        body.append(f'<rect x="{pad[0] + 8 + 110 * j}" y="4" width="10" height="10" fill="{colour}"/>'
                    f'<text x="{pad[0] + 22 + 110 * j}" y="13">{esc(name)}</text>')  # legend
    return _svg(w, h, body, ylabel + " per " + xlabel)


def hbar_chart(items: list[tuple[str, int]]) -> str:
    """Horizontal bars with their labels (rejection reasons)."""
    if not items:
        return '<p class="note">No candidate was rejected.</p>'
    w, row = 540, 22
    h = 10 + row * len(items)
    top = max(n for _, n in items) or 1
    label_w = 200
    body = []
    for i, (name, n) in enumerate(items):
        y = 6 + i * row
        bw = (w - label_w - 70) * n / top
        body.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">{esc(name[:40])}</text>'
                    f'<rect x="{label_w}" y="{y + 3}" width="{_num(max(bw, 1))}" height="{row - 6}" fill="#dc2626">'
                    f'<title>{esc(name)}: {n:,}</title></rect>'
                    f'<text x="{_num(label_w + bw + 6)}" y="{y + 14}">{n:,}</text>')
    return _svg(w, h, body, "rejection reasons")


def _capped(nodes: list[dict[str, Any]], children: dict[Any, list[int]], roots: list[int], branching: int,
            max_depth: int, limit: int) -> list[int]:
    """Node ids reached from ``roots`` keeping at most ``branching`` children per node, down to
    ``max_depth``; stops counting past ``limit``."""
    out: list[int] = []
    frontier = roots
    depth = 0
    while frontier and depth <= max_depth and len(out) <= limit:
        out.extend(frontier)
        frontier = [c for n in frontier for c in children.get(n, [])[:branching]]
        depth += 1
    return out


def tree_view(nodes: list[dict[str, Any]], limit: int = MAX_TREE_NODES) -> tuple[str, str]:
    """The lineage tree as SVG (depth downwards) and a note on what was drawn.

    A tree bigger than ``limit`` is sampled: every depth is kept, but each node shows only its
    first few children (as many as fit); if even one child per node is too many, the top
    levels only.
    """
    total = len(nodes)
    if not nodes:
        return '<p class="note">The run has no nodes.</p>', ""
    all_ids = {n["id"] for n in nodes}
    kids_all: dict[Any, list[int]] = defaultdict(list)
    all_roots = []
    for n in nodes:
        if n["parent_id"] is not None and n["parent_id"] in all_ids:
            kids_all[n["parent_id"]].append(n["id"])
        else:
            all_roots.append(n["id"])
    deepest = max(n["depth"] or 0 for n in nodes)
    note = f"All {total:,} kept nodes (seeds and accepted examples) are drawn."
    if total > limit:
        # The largest per-node branching whose sample fits (the count grows with it: bisect).
        lo, hi = 0, max((len(v) for v in kids_all.values()), default=1)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(_capped(nodes, kids_all, all_roots, mid, deepest, limit)) <= limit:
                lo = mid
            else:
                hi = mid - 1
        if lo >= 1:
            chosen = _capped(nodes, kids_all, all_roots, lo, deepest, limit)
            note = (f"The tree has {total:,} kept nodes over depths 0-{deepest}: a sample of {len(chosen):,} is "
                    f"drawn, every depth but at most {lo} child{'ren' if lo > 1 else ''} per node.")
        else:
            d = deepest
            while d > 0 and len(_capped(nodes, kids_all, all_roots[:limit], 1, d, limit)) > limit:
                d -= 1
            chosen = _capped(nodes, kids_all, all_roots[:limit], 1, d, limit)[:limit]
            note = (f"The tree has {total:,} kept nodes over depths 0-{deepest}: a sample of {len(chosen):,} is drawn "
                    f"(one child per node, depths 0-{d}).")
        keep = set(chosen)
        nodes = [n for n in nodes if n["id"] in keep]
    shown_depth = max(n["depth"] or 0 for n in nodes)
    ids = {n["id"] for n in nodes}
    children: dict[Any, list[int]] = defaultdict(list)
    roots = []
    by_id = {n["id"]: n for n in nodes}
    for n in nodes:
        if n["parent_id"] is not None and n["parent_id"] in ids:
            children[n["parent_id"]].append(n["id"])
        else:
            roots.append(n["id"])
    # x: leaves get consecutive slots, a parent sits over its children (iterative post-order).
    xpos: dict[int, float] = {}
    slot = 0
    for root in roots:
        stack: list[tuple[int, bool]] = [(root, False)]
        while stack:
            nid, done = stack.pop()
            kids = children.get(nid, [])
            if done or not kids:
                if kids:
                    xpos[nid] = (xpos[kids[0]] + xpos[kids[-1]]) / 2
                else:
                    xpos[nid] = slot
                    slot += 1
                continue
            stack.append((nid, True))
            stack.extend((k, False) for k in reversed(kids))
    levels = shown_depth + 1
    w = 1100
    h = 40 + 70 * levels
    sx = (w - 80) / max(slot - 1, 1)

    def px(nid: int) -> float:
        return 60 + xpos[nid] * sx if slot > 1 else w / 2

    def py(nid: int) -> float:
        return 20 + 70 * (by_id[nid]["depth"] or 0)

    r = 4 if slot < 200 else 2.5
    body = [f'<g stroke="#cbd5e1" stroke-width="1">']
    body += [f'<line x1="{_num(px(p))}" y1="{_num(py(p))}" x2="{_num(px(c))}" y2="{_num(py(c))}"/>'
             for p, kids in children.items() for c in kids]
    body.append("</g>")
    for d in range(levels):
        body.append(f'<text x="2" y="{20 + 70 * d - 8}">depth {d}</text>')
    for n in nodes:
        colour = "#f59e0b" if n["status"] == "seed" else "#2563eb"
        body.append(f'<circle cx="{_num(px(n["id"]))}" cy="{_num(py(n["id"]))}" r="{r}" fill="{colour}">'
                    f'<title>#{n["id"]} {esc(n["status"])} depth {n["depth"]}: {esc((n["question"] or "")[:200])}'
                    f'</title></circle>')
    svg = _svg(w, h, body, "lineage tree")
    legend = ('<p class="note"><span style="color:#f59e0b">&#9679;</span> seed &nbsp; '
              '<span style="color:#2563eb">&#9679;</span> accepted example; an edge goes from the example shown '
              'in context to the one generated from it.</p>')
    return f'<div style="overflow-x:auto">{svg}</div>{legend}', note


def scatter_chart(points: list[dict[str, Any]]) -> str:
    """Accuracy (y) against dollars spent (x); one colour per student and dataset."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in points:
        groups[p["series"]].append(p)
    w, h, pad = 720, 320, (70, 30, 170, 36)
    xmax = max(p["spent_micro"] for p in points) or 1
    ys = [p["accuracy"] for p in points]
    xt = _nice_ticks(0, xmax)
    lo, hi = max(0.0, min(ys) - 0.05), min(1.0, max(ys) + 0.05)
    yt = _nice_ticks(lo, hi)
    x1, y0, y1 = xt[-1] or 1, yt[0], yt[-1]

    def sx(v: float) -> float:
        return pad[0] + (w - pad[0] - pad[2]) * v / x1

    def sy(v: float) -> float:
        return h - pad[3] - (h - pad[1] - pad[3]) * (v - y0) / ((y1 - y0) or 1)

    body = _axes(w, h, pad, xt, yt, sx, sy, _usd_tick, lambda t: f"{100 * t:.0f}%", "dollars spent by the run",
                 "student accuracy")
    for i, (name, pts) in enumerate(sorted(groups.items())):
        colour = PALETTE[i % len(PALETTE)]
        pts = sorted(pts, key=lambda p: p["spent_micro"])
        if len(pts) > 1:
            body.append(f'<polyline fill="none" stroke="{colour}" stroke-opacity=".5" points="'
                        + " ".join(f"{_num(sx(p['spent_micro']))},{_num(sy(p['accuracy']))}" for p in pts) + '"/>')
        for p in pts:
            body.append(f'<circle cx="{_num(sx(p["spent_micro"]))}" cy="{_num(sy(p["accuracy"]))}" r="5" '
                        f'fill="{colour}"><title>{esc(p["run_id"])} / {esc(name)}: {100 * p["accuracy"]:.1f}% at '
                        f'{esc(format_usd(p["spent_micro"]))}</title></circle>')
        ly = pad[1] + 16 * i
        body.append(f'<circle cx="{w - pad[2] + 14}" cy="{ly}" r="5" fill="{colour}"/>'
                    f'<text x="{w - pad[2] + 24}" y="{ly + 4}">{esc(name[:26])}</text>')
    return _svg(w, h, body, "accuracy against dollars")


def _kv(rows: list[tuple[str, str]]) -> str:
    return '<table class="kv">' + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows) + "</table>"


def _table(cols: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Iterable[str] = ()) -> str:
    numeric = set(numeric)
    head = "".join(f'<th class="n">{esc(c)}</th>' if c in numeric else f"<th>{esc(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f'<td class="n">{esc(v)}</td>' if c in numeric else f"<td>{esc(v)}</td>"
                                    for c, v in zip(cols, r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _quantisation(config: dict[str, Any]) -> str | None:
    q = config.get("quantization") or config.get("quantisation")
    return str(q) if q else None


def _example_html(n: dict[str, Any]) -> str:
    try:
        options = json.loads(n["options"] or "[]")
    except ValueError:
        options = [n["options"]]
    ctx = f'<div class="ctx">{esc(n["context"])}</div>' if n["context"] else ""
    return (f'<div class="ex"><div>#{esc(n["id"])} ({esc(n["status"])}): <b>{esc(n["question"])}</b></div>{ctx}'
            f'<div>options: {" | ".join(esc(o) for o in options)} &rarr; <span class="lbl">{esc(n["label"])}</span>'
            f'</div></div>')


def run_data(store: RunStore) -> dict[str, Any]:
    """Everything the page shows about one run, read once."""
    calls = store.calls()
    run = store.run()
    return {
        "run": run,
        "summary": run_summary(store),
        "by_depth": by_depth(store),
        "by_strategy": by_strategy(store),
        "spend": spend_over_time(store, calls),
        "nodes": store.nodes(),
        "samples": samples_by_depth(store, SAMPLES_PER_DEPTH),
        "students": store.student_results(),
    }


def run_section(d: dict[str, Any], index: int) -> str:
    s = d["summary"]
    sim = s["simulated"]
    dollars = "simulated " if sim else ""
    tag = '<span class="tag sim">SIMULATED</span>' if sim else '<span class="tag real">REAL</span>'
    quant = _quantisation(d["run"]["config"])
    caps = ", ".join(f"--{Caps.flag(k)} {format_usd(u['cap']) if k == 'max_usd_micro' else u['cap']}"
                     for k, u in s["caps"].items() if u["cap"] is not None) or "none"
    overview = _kv([
        ("status", s["status"] + (f" ({s['stop_reason']})" if s["stop_reason"] else "")),
        ("model", (s["model"] or "-") + (f", quantisation {quant}" if quant else "")),
        ("strategy", s["strategy"] or "-"),
        ("task format", s["format"] or "-"),
        ("seeds source", s.get("seeds_source") or "not recorded"),
        ("caps", caps),
        ("seeds / accepted / rejected", f"{s['seeds']:,} / {s['accepted']:,} / {s['rejected']:,}"),
        ("rejection rate", _pct(s["rejection_rate"])),
        ("calls", ", ".join(f"{k} {v:,}" for k, v in s["calls"].items() if v) or "none"),
        ("spent", dollars + format_usd(s["spent_micro"])
         + f" (billing unknown: {format_usd(s['unknown_billing_micro'])}; in flight: "
           f"{format_usd(s['pending_reserved_micro'])})"),
        ("cost per accepted example", dollars + format_usd(s["cost_per_accepted_micro"])),
        ("tokens (prompt / completion / cached)",
         f"{s['prompt_tokens']:,} / {s['completion_tokens']:,} / {s['cached_tokens']:,}"),
        ("completion tokens on rejected output", _pct(s["rejected_completion_share"])),
        ("max depth", str(s["max_depth"])),
        ("elapsed", "n/a" if s["elapsed_seconds"] is None else f"{s['elapsed_seconds']:,.0f} s"),
    ])
    depth = d["by_depth"]
    cats = [str(r["depth"]) for r in depth]
    counts = bar_chart(cats, [("accepted", "#2563eb", [r["accepted"] for r in depth]),
                              ("rejected", "#dc2626", [r["rejected"] for r in depth])],
                       lambda v: f"{v:,.0f}", "candidates", "depth")
    cost = bar_chart(cats, [("cost per accepted example", "#16a34a",
                             [r["cost_per_accepted_micro"] or 0 for r in depth])],
                     _usd_tick, dollars + "dollars per accepted", "depth")
    depth_table = _table(
        ("depth", "nodes", "seeds", "accepted", "rejected", "acceptance", "calls", "spent", "cost / accepted"),
        [(r["depth"], f"{r['nodes']:,}", r["seeds"], f"{r['accepted']:,}", f"{r['rejected']:,}",
          _pct(r["accepted"] / (r["accepted"] + r["rejected"]) if r["accepted"] + r["rejected"] else None),
          f"{r['calls']:,}", format_usd(r["spent_micro"]), format_usd(r["cost_per_accepted_micro"])) for r in depth],
        numeric=("nodes", "seeds", "accepted", "rejected", "acceptance", "calls", "spent", "cost / accepted"))
    strat_table = _table(
        ("strategy", "nodes", "accepted", "rejected", "calls", "spent", "cost / accepted"),
        [(r["strategy"], f"{r['nodes']:,}", f"{r['accepted']:,}", f"{r['rejected']:,}", f"{r['calls']:,}",
          format_usd(r["spent_micro"]), format_usd(r["cost_per_accepted_micro"])) for r in d["by_strategy"]],
        numeric=("nodes", "accepted", "rejected", "calls", "spent", "cost / accepted"))
    tree_svg, tree_note = tree_view(d["nodes"])
    samples = "".join(f"<h3>Depth {esc(depth_)}</h3>" + "".join(_example_html(n) for n in items)
                      for depth_, items in d["samples"].items())
    students = ""
    if d["students"]:
        students = "<h3>Student results</h3>" + _table(
            ("student", "task", "dataset", "role", "split", "accuracy", "majority", "n", "n train"),
            [(r.get("student"), r.get("task"), r.get("dataset"), r.get("role"), r.get("split"),
              _pct(r.get("accuracy")), _pct(r.get("majority")), r.get("n"), r.get("n_train")) for r in d["students"]],
            numeric=("accuracy", "majority", "n", "n train"))
    cap = s["caps"]["max_usd_micro"]["cap"]
    return f"""
<section class="run" id="run-{index}">
<h2>{esc(s['run_id'])} {tag}</h2>
<section id="summary-{index}"><h3>Summary</h3>{overview}</section>
<div class="grid">
<section id="spend-{index}"><h3>Spend over time{' (simulated dollars)' if sim else ''}</h3>
{spend_chart(d['spend'], cap, sim)}
<p class="note">{'Dollar cap: ' + esc(format_usd(cap)) if cap else 'No dollar cap was set.'} Timeouts and lost calls
count at their reservation; calls in flight are not spent.</p></section>
<section id="rejections-{index}"><h3>Rejection reasons</h3>{hbar_chart(list(s['rejected_by_reason'].items()))}</section>
</div>
<section id="depth-{index}"><h3>Cost and acceptance per depth</h3>
<div class="grid">{counts}{cost}</div>{depth_table}<h3>By strategy</h3>{strat_table}</section>
<section id="lineage-{index}"><h3>Lineage tree</h3><p class="note">{esc(tree_note)}</p>{tree_svg}</section>
<section id="samples-{index}"><h3>Sample examples per depth</h3>
<p class="note">The first {SAMPLES_PER_DEPTH} kept examples of each depth{', written by the simulator' if sim else ''}.</p>
{samples}</section>
{students}
</section>"""


def _banner(datas: list[dict[str, Any]]) -> str:
    sims = [d["summary"]["simulated"] for d in datas]
    if all(sims):
        return ('<div class="banner sim" id="banner">SIMULATED<small>No language model was called: texts and dollars '
                'come from treegen\'s simulator. Not real output, not real spending.</small></div>')
    if not any(sims):
        models = sorted({(d["summary"]["model"] or "?") + (f" ({_quantisation(d['run']['config'])})"
                                                           if _quantisation(d["run"]["config"]) else "")
                         for d in datas})
        return (f'<div class="banner real" id="banner">REAL<small>Model output and dollars from '
                f'{esc(", ".join(models))}.</small></div>')
    names = ", ".join(d["summary"]["run_id"] for d, s in zip(datas, sims) if s)
    return (f'<div class="banner mixed" id="banner">MIXED: SIMULATED AND REAL RUNS<small>Simulated: {esc(names)}. '
            f'Compare their dollars with care.</small></div>')


def accuracy_points(datas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per (run, student, dataset) with a student result: accuracy against the run's spend."""
    out = []
    for d in datas:
        s = d["summary"]
        for r in d["students"]:
            if r.get("accuracy") is None:
                continue
            series = f"{r.get('student') or '?'} on {r.get('dataset') or r.get('task') or '?'}"
            out.append({"run_id": s["run_id"], "series": series, "accuracy": float(r["accuracy"]),
                        "spent_micro": s["spent_micro"]})
    return out


def comparison_section(datas: list[dict[str, Any]]) -> str:
    rows = [(d["summary"]["run_id"], "SIMULATED" if d["summary"]["simulated"] else "REAL", d["summary"]["model"],
             d["summary"]["strategy"], f"{d['summary']['accepted']:,}", format_usd(d["summary"]["spent_micro"]),
             format_usd(d["summary"]["cost_per_accepted_micro"]), _pct(d["summary"]["rejection_rate"]))
            for d in datas]
    table = _table(("run", "output", "model", "strategy", "accepted", "spent", "cost / accepted", "rejected"), rows,
                   numeric=("accepted", "spent", "cost / accepted", "rejected"))
    points = accuracy_points(datas)
    if points:
        plot = (f"<h3>Student accuracy against dollars</h3>{scatter_chart(points)}<p class=\"note\">Each point: a "
                "student trained on a run's data, evaluated on a dataset; x is what that run spent.</p>")
    else:
        plot = ('<p class="note">No student results in these runs: train students with <code>treegen eval</code> '
                'to see accuracy against dollars.</p>')
    return f'<section id="comparison"><h2>Runs compared</h2>{table}{plot}</section>'


def build_report(stores: Sequence[RunStore]) -> str:
    """The page (a str of HTML) for one or more runs."""
    datas = [run_data(s) for s in stores]
    title = "treegen report: " + ", ".join(d["summary"]["run_id"] for d in datas)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
        _banner(datas), "<main>", f"<h1>{esc(title)}</h1>",
        f'<p class="note">Written {esc(utcnow())} from the run databases. Every figure is computed from them.</p>',
    ]
    if len(datas) > 1:
        parts.append(comparison_section(datas))
    parts += [run_section(d, i) for i, d in enumerate(datas)]
    parts += ["</main>", _banner(datas).replace('id="banner"', 'id="banner-end"'), "</body></html>"]
    return "\n".join(parts)


def write_report(stores: Sequence[RunStore], out: str | Path, force: bool = False) -> Path:
    """Build the page and write it atomically to ``out``; returns the path."""
    out = Path(out)
    check_destination(out, force)
    page = build_report(stores)
    atomic_write(out, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return out
