"""`treegen status` per module (issue 14): spend, calls and tokens per call purpose, and the cost
per accepted example with and without each module, from a real run database.

The run is the SCENARIO of tests/factories.py (2,980 micro-dollars spent, 5 accepted) plus the
calls of the quality modules, written through RunStore as the engine writes them. Their costs at
gpt-4o-mini prices ($0.15 input, $0.60 output per 1M tokens), by hand:
  verify ok       800 + 100 tokens  -> 120 + 60  = 180
  verify timeout  reserved 300 micro / 1,100 tokens -> 300 counted (billing unknown)
  attributes ok   500 + 200 tokens  -> 75 + 120  = 195
  harder ok       400 + 100 tokens  -> 60 + 60   = 120, 1 accepted child
  judge ok       1000 + 50 tokens   -> 150 + 30  = 180
Total 2,980 + 975 = 3,955 over 6 accepted: 659 with every module (3,955 / 6 = 659.2);
without verify (480): 3,475 / 6 = 579.2 -> 579; without judge (180): 3,775 / 6 = 629.2 -> 629.
"""

from __future__ import annotations

import io
import json
import re

import pytest
from rich.console import Console
from typer.testing import CliRunner

from factories import build_run, strategyqa
from treegen.render import render_status
from treegen.reports import by_depth, by_strategy, run_summary
from treegen.store import RunStore, node_row

LONG_CONSTRAINT = ("constraint: question must not match /\\b(always|never|every|all|none|nobody|everyone)\\b/ "
                   "and the question stays under thirty words so that a student can read it in one breath")


def _call(store: RunStore, purpose: str, status: str, prompt: int | None, completion: int | None,
          cost: int | None, reserved_micro: int = 400, reserved_tokens: int = 1500,
          for_call_id: int | None = None) -> int:
    return store.insert_call({
        "created_at": "2026-01-01T00:02:00.000+00:00", "parent_node_ids": "[]", "depth": 1, "strategy": "tree",
        "attempt": 1, "request_key": f"{purpose}-{status}-{prompt}", "model": "gpt-4o-mini", "status": status,
        "prompt_tokens": prompt, "completion_tokens": completion, "cached_tokens": 0 if prompt else None,
        "reserved_prompt_tokens": prompt or 1000, "reserved_tokens": reserved_tokens,
        "reserved_micro": reserved_micro, "cost_micro": cost, "simulated": 1, "purpose": purpose,
        "for_call_id": for_call_id, "response_text": "{}" if status == "ok" else None,
    }, messages=[{"role": "user", "content": purpose}])


def build_module_run(folder) -> RunStore:
    path = build_run(folder)
    store = RunStore.open(path)
    extra = strategyqa(20)[14:]
    _call(store, "verify", "ok", 800, 100, 180, for_call_id=1)
    _call(store, "verify", "timeout", None, None, None, reserved_micro=300, reserved_tokens=1100, for_call_id=5)
    _call(store, "attributes", "ok", 500, 200, 195)
    harder = _call(store, "harder", "ok", 400, 100, 120)
    nodes = [node_row(extra[0], parent_id=4, root_id=1, depth=2, call_id=harder, strategy="tree",
                      status="accepted", reason=None, cost_share=120, operation="harder")]
    for ex, reason in zip(extra[1:], ["label-disputed", "unverified", LONG_CONSTRAINT]):
        nodes.append(node_row(ex, parent_id=4, root_id=1, depth=2, call_id=1, strategy="tree",
                              status="rejected", reason=reason,
                              verdict=json.dumps({"votes": ["False"], "outcome": "disputed"})))
    store.record_reply(harder, {"n_parsed": 1, "n_accepted": 1}, nodes, [])
    _call(store, "judge", "ok", 1000, 50, 180)
    return store


@pytest.fixture(scope="module")
def module_run(tmp_path_factory):
    store = build_module_run(tmp_path_factory.mktemp("modules") / "run-modules")
    yield store
    store.close()


def test_spend_per_purpose_and_cost_with_and_without(module_run):
    s = run_summary(module_run)
    assert s["spent_micro"] == 3955 and s["accepted"] == 6
    rows = {r["purpose"]: r for r in s["by_purpose"]}
    assert [r["purpose"] for r in s["by_purpose"]] == ["generate", "verify", "attributes", "harder", "judge"]
    assert (rows["generate"]["calls"], rows["generate"]["spent_micro"], rows["generate"]["tokens"]) == (7, 2980, 8600)
    # the verify timeout counts its whole reservation, in money and in tokens
    assert (rows["verify"]["calls"], rows["verify"]["spent_micro"], rows["verify"]["tokens"]) == (2, 480, 900 + 1100)
    assert (rows["attributes"]["spent_micro"], rows["harder"]["spent_micro"], rows["judge"]["spent_micro"]) == (195, 120, 180)
    assert rows["harder"]["accepted"] == 1 and rows["judge"]["tokens"] == 1050
    assert sum(r["spent_micro"] for r in rows.values()) == s["spent_micro"]
    assert {r["cost_per_accepted_with_micro"] for r in rows.values()} == {659}
    assert rows["verify"]["cost_per_accepted_without_micro"] == 579
    assert rows["judge"]["cost_per_accepted_without_micro"] == 629
    assert rows["verify"]["share_of_spent"] == pytest.approx(480 / 3955)
    assert s["rejected_by_reason"]["label-disputed"] == 1 and s["rejected_by_reason"][LONG_CONSTRAINT] == 1


def test_old_and_plain_runs_have_no_module_section(tmp_path):
    with RunStore.open(build_run(tmp_path / "plain"), readonly=True) as store:
        s = run_summary(store)
        text = _render(store, width=160, terminal=True)
    assert "by_purpose" not in s
    assert "By module" not in text


def _render(store: RunStore, width: int, terminal: bool) -> str:
    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=terminal, color_system=None)
    render_status(run_summary(store), by_depth(store), by_strategy(store), console)
    return buf.getvalue()


def test_rendered_in_a_pipe_with_every_reason_whole(module_run):
    text = _render(module_run, width=80, terminal=False)
    assert "By module (call purpose)" in text
    assert "module: verify" in text and "cost / accepted with: $0.000659" in text
    assert "without: $0.000579" in text and "without: $0.000629" in text
    for reason in ("label-disputed", "unverified", LONG_CONSTRAINT):
        assert f"reason: {reason}\n" in text  # one line, whole


def test_rendered_on_a_narrow_terminal_folds_long_reasons(module_run):
    text = _render(module_run, width=72, terminal=True)
    assert "…" not in text
    # The rejections grid: the reason column's pieces, read top to bottom, give the whole reason.
    start = text.index("Rejections")
    cells = [line.split("│")[1] for line in text[start:].splitlines()[1:] if line.count("│") >= 3]
    joined = re.sub(r"\s+", "", "".join(cells))
    assert re.sub(r"\s+", "", LONG_CONSTRAINT) in joined
    assert "verify" in text and "$0.000579" in text


def test_status_json_carries_the_modules(module_run):
    from treegen.cli import app
    from treegen.cli_reports import register

    register(app)
    r = CliRunner().invoke(app, ["status", str(module_run.path), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    rows = {x["purpose"]: x for x in doc["by_purpose"]}
    assert rows["judge"]["spent_micro"] == 180 and rows["verify"]["cost_per_accepted_without_micro"] == 579
    assert doc["rejected_by_reason"][LONG_CONSTRAINT] == 1
