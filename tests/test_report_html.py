"""The HTML report: one self-contained page, every database text escaped, drawn by a real browser."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from factories import SCENARIO, build_run
from treegen.errors import OutputError
from treegen.report_html import build_report, tree_view, write_report
from treegen.store import RunStore, utcnow
from treegen.task import Example

SECTIONS = ("banner", "summary-0", "spend-0", "rejections-0", "depth-0", "lineage-0", "samples-0")


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory):
    return build_run(tmp_path_factory.mktemp("rep") / "run-sim")


def _external_refs(page: str) -> list[str]:
    return re.findall(r'(?:src|href)\s*=\s*["\']?\s*(?:https?:)?//', page, flags=re.I)


def test_page_has_every_section_and_no_external_reference(sim_run, tmp_path):
    out = tmp_path / "report.html"
    with RunStore.open(sim_run, readonly=True) as store:
        write_report([store], out)
    page = out.read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f'id="{section}"' in page, section
    assert "<script" not in page.lower() and _external_refs(page) == [] and "@import" not in page
    assert 'class="banner sim"' in page and ">SIMULATED<" in page
    assert "label-not-in-options" in page and "cap $0.005" in page
    # A small tree is drawn whole: one circle per kept node; the samples show the run's questions.
    assert page.count("<circle") == SCENARIO["seeds"] + SCENARIO["accepted"]
    with RunStore.open(sim_run, readonly=True) as store:
        first = store.examples()[0].question
    assert html.escape(first) in page
    with pytest.raises(OutputError, match="--force"):
        with RunStore.open(sim_run, readonly=True) as store:
            write_report([store], out)


def test_database_text_is_escaped(tmp_path):
    """Markup in a question, a context, a label, a model name or a reason is shown, never run."""
    evil = "<script>alert('x')</script>"
    seeds = [Example(question=f"Is {evil} & <b>bold</b> here?", options=("True", "False"), label="True",
                     context='"><img src=x onerror=alert(1)>')]
    folder = tmp_path / "run-evil"
    folder.mkdir()
    store = RunStore.create(folder / "treegen.db", {
        "id": "run-<i>evil</i>", "created_at": utcnow(), "updated_at": utcnow(), "status": "completed",
        "stop_reason": "<u>done</u>", "simulated": 0, "task_format": "yesno_close", "strategy": "tree",
        "model": "m<odel>", "base_url": None, "seed": 0, "config": json.dumps({"caps": {}}),
    }, seeds)
    store.close()
    with RunStore.open(folder, readonly=True) as store:
        page = build_report([store])
    assert evil not in page and "<img" not in page and "<b>bold" not in page and "<i>evil" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "m&lt;odel&gt;" in page and 'class="banner real"' in page and "SIMULATED" not in page


def test_big_tree_is_sampled_and_says_so():
    # 2,000 nodes: 10 seeds, each with a chain of children fanning out 4-wide per node.
    nodes = [{"id": i, "parent_id": None, "depth": 0, "status": "seed", "question": "q"} for i in range(10)]
    nid = 10
    frontier = list(range(10))
    while nid < 2000:
        nxt = []
        for p in frontier:
            for _ in range(4):
                if nid >= 2000:
                    break
                nodes.append({"id": nid, "parent_id": p, "depth": nodes[p]["depth"] + 1, "status": "accepted",
                              "question": "q"})
                nxt.append(nid)
                nid += 1
        frontier = nxt
    svg, note = tree_view(nodes, limit=300)
    assert svg.count("<circle") <= 300 and "sample" in note and "2,000 kept nodes" in note
    assert f"depths 0-{nodes[-1]['depth']}" in note


def test_several_runs_compare_and_plot_accuracy_against_dollars(tmp_path):
    runs = [build_run(tmp_path / "a", run_id="run-a"), build_run(tmp_path / "b", run_id="run-b", simulated=False)]
    for path, acc in zip(runs, (0.61, 0.68)):
        with RunStore.open(path) as store:
            store.insert_student_results([{
                "created_at": utcnow(), "source": "run", "source_ref": store.run()["id"], "student": "lexical",
                "student_path": "x", "task": "strategyqa", "dataset": "strategyqa", "role": "id", "split": "test",
                "accuracy": acc, "n": 200, "majority": 0.53, "n_train": 5, "seed": 0, "simulated": 1,
            }])
    out = tmp_path / "both.html"
    from treegen.cli import app

    r = CliRunner().invoke(app, ["report", str(runs[0]), str(runs[1]), "-o", str(out)])
    assert r.exit_code == 0, r.output
    page = out.read_text(encoding="utf-8")
    assert 'id="comparison"' in page and 'aria-label="accuracy against dollars"' in page
    assert "MIXED" in page and "68.0%" in page and 'id="run-1"' in page
    r = CliRunner().invoke(app, ["report", str(runs[0]), "-o", str(tmp_path / "nope" / "r.html")])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_page_renders_in_headless_chromium(sim_run, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    out = tmp_path / "report.html"
    with RunStore.open(sim_run, readonly=True) as store:
        write_report([store], out)
    png = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={png}",
                    "--window-size=1200,2000", out.as_uri()], check=True, capture_output=True, timeout=120)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a drawn page, not a blank one
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", out.as_uri()],
                         check=True, capture_output=True, timeout=120, text=True).stdout
    assert "Lineage tree" in dom and "<svg" in dom
