"""The CLI's rendering: nothing cut, literal texts, progress bars that show, cap flags by name."""

from __future__ import annotations

import io
import json
import re

import pytest
from rich.console import Console

from factories import build_run
from treegen.engine import Progress
from treegen.render import money, print_json, progress_line, render_progress, render_status, show, table
from treegen.reports import by_depth, by_strategy, run_summary
from treegen.store import RunStore

LONG = "a-very-long-unbreakable-cell-value-" * 4 + "END"


def _console(width: int, terminal: bool) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=width, force_terminal=terminal, color_system=None, legacy_windows=False), buf


def _squash(text: str) -> str:
    """The text without layout: spaces, newlines and box-drawing characters removed."""
    return re.sub(r"[\s│┃┆┊║|─━┏┓┗┛┡┩┠┨┯┷┳┻╇╈╋┼┌┐└┘├┤┬┴╭╮╰╯]", "", text)


@pytest.mark.parametrize("width,terminal", [(200, True), (90, True), (40, True), (200, False)])
def test_table_never_cuts_a_cell(width, terminal):
    console, buf = _console(width, terminal)
    show(console, table("T", ("name", "value", "note"), [("x", LONG, "[bold]literal[/bold]")], console))
    out = buf.getvalue()
    assert "…" not in out and "..." not in out
    if "value: " in out:  # the plain layout
        assert f"value: {LONG}" in out.splitlines() and "note: [bold]literal[/bold]" in out.splitlines()
    else:  # a grid: read each column back across its folded lines
        cells = [ln.split("│") for ln in out.splitlines() if ln.count("│") == 4]
        assert "".join(c[2].strip() for c in cells) == LONG
        assert "".join(c[3].strip() for c in cells) == "[bold]literal[/bold]"  # brackets are text, not markup


def test_plain_layout_when_not_a_terminal_or_narrow():
    for console, buf in (_console(200, False), _console(40, True)):
        show(console, table("Caps", ("cap", "limit"), [("max-usd", "$1.00"), ("target", "10")], console))
        lines = buf.getvalue().splitlines()
        assert lines[0] == "Caps" and "cap: max-usd" in lines and "limit: $1.00" in lines
    console, buf = _console(200, False)
    show(console, table(None, ("", ""), [("status", "done")], console, show_header=False))
    assert buf.getvalue().strip() == "status: done"
    console, buf = _console(200, True)  # a wide terminal gets a grid
    show(console, table("Caps", ("cap", "limit"), [("max-usd", "$1.00")], console))
    assert "cap: max-usd" not in buf.getvalue() and "max-usd" in buf.getvalue()


def _progress(**kw) -> Progress:
    base = dict(accepted=25, target=100, spent_micro=500_000, max_usd_micro=2_000_000, tokens=12_345, calls=40,
                calls_per_minute=12.0, depth=3, rejected=5, in_flight=2, elapsed=61.5, simulated=False)
    return Progress(**(base | kw))


def test_progress_bar_is_drawn_not_eaten_as_markup():
    console, buf = _console(120, True)
    console.print(render_progress(_progress(last_error="HTTP 429 [rate limited] " + "x" * 150)))
    out = buf.getvalue()
    assert "25.0%" in out and "━" in out  # rich's ProgressBar, with the share beside it
    assert "[rate limited]" in out and "x" * 40 in _squash(out)  # the whole error, folded, literal
    assert "…" not in out
    console, buf = _console(120, True)
    console.print(render_progress(_progress(simulated=True, target=None, max_usd_micro=None)))
    assert "SIMULATED" in buf.getvalue() and "simulated $0.50" in buf.getvalue()


def test_progress_line_for_logs():
    line = progress_line(_progress())
    assert line.startswith("accepted 25/100 (25%)") and "spent $0.50/$2.00" in line and "\x1b" not in line
    assert "2 in flight" in line and "rejected 5 (17%)" in line
    assert progress_line(_progress(simulated=True, last_error="boom")).startswith("SIMULATED accepted")
    assert progress_line(_progress(last_error="boom")).endswith("last error: boom")


def test_money_says_simulated():
    assert money(2980, True, "gpt-4o-mini") == "simulated $0.00298 (at gpt-4o-mini list prices)"
    assert money(2980, True, "gpt-4o-mini", short=True) == "$0.00298"
    assert money(2980, False, "gpt-4o-mini") == "$0.00298" and money(None, True, "m") == "n/a"


def test_print_json_prints_only_json(capsys):
    print_json({"a": [1, 2], "b": "x" * 300})
    assert json.loads(capsys.readouterr().out) == {"a": [1, 2], "b": "x" * 300}


@pytest.mark.parametrize("terminal", [True, False])
def test_status_caps_by_flag_name(tmp_path, terminal):
    with RunStore.open(build_run(tmp_path / "r"), readonly=True) as store:
        args = run_summary(store), by_depth(store), by_strategy(store)
    console, buf = _console(160, terminal)
    render_status(*args, console)
    out = buf.getvalue()
    assert "max-usd" in out and "max-tokens" in out and "max_usd_micro" not in out
    assert "SIMULATED" in out and "…" not in out
