"""The quality modules inside a run (issue 14): verification, relabelling, harder rewrites,
attributes, constraints. Real openai client over loopback to the simulator, real SQLite, a
real dataset as the simulator's pool (it knows every item's true label)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from treegen.cli import app
from treegen.sim.server import SimConfig, SimServer
from treegen.task import dedup_key, load_examples

runner = CliRunner()
ENV = {"OPENAI_API_KEY": "sk-test-quality"}


def cli(*args: object):
    return runner.invoke(app, [str(a) for a in args], env=ENV, catch_exceptions=False)


def only_run(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def q(run_dir: Path, sql: str, params: tuple = ()) -> list[tuple]:
    con = sqlite3.connect(run_dir / "treegen.db")
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def truth_of(pool: Path) -> dict[str, str]:
    examples, _ = load_examples(pool)
    return {dedup_key(e): e.label for e in examples}


def wrong_labels(run: Path, truth: dict[str, str]) -> tuple[int, int]:
    """(accepted examples whose label differs from the pool's, accepted examples known to the pool)."""
    wrong = known = 0
    for question, context, options, label in q(run, "select question, context, options, label from nodes "
                                                    "where status = 'accepted'"):
        from treegen.task import Example

        key = dedup_key(Example(question, tuple(json.loads(options)), label, context))
        if key in truth:
            known += 1
            wrong += truth[key] != label
    return wrong, known


def run_flipped(tmp_path: Path, seeds: Path, pool: Path, name: str, *flags: object, accuracy: float = 1.0,
                flips: float = 0.3) -> Path:
    with SimServer(SimConfig(pool_path=str(pool), label_flip_rate=flips, verify_accuracy=accuracy, seed=3)) as srv:
        result = cli("run", seeds, "--base-url", srv.base_url, "--max-calls", 24, "-c", 4, "--seed", 5,
                     "--out", tmp_path / name, "--quiet", *flags)
    assert result.exit_code == 0, result.output
    return only_run(tmp_path / name)


def test_verify_rejects_flipped_labels_and_every_call_is_counted(tmp_path, yesno_seeds, strategyqa_pool):
    truth = truth_of(strategyqa_pool)
    plain = run_flipped(tmp_path, yesno_seeds, strategyqa_pool, "plain")
    checked = run_flipped(tmp_path, yesno_seeds, strategyqa_pool, "verify", "--verify")
    wrong_plain, known_plain = wrong_labels(plain, truth)
    wrong_checked, known_checked = wrong_labels(checked, truth)
    assert known_plain > 20 and known_checked > 10
    assert wrong_plain > 0  # the simulator flips 30% of labels: some are accepted without a check
    assert wrong_checked == 0  # a perfect verifier catches every flip
    disputed = q(checked, "select count(*) from nodes where reason = 'label-disputed'")[0][0]
    assert disputed > 0
    # Verify calls are rows of their own, each naming the generation call it checked, and the
    # call cap counts them.
    purposes = dict(q(checked, "select coalesce(purpose, 'generate'), count(*) from calls group by 1"))
    assert purposes.get("verify", 0) > 0 and purposes.get("generate", 0) > 0
    assert sum(purposes.values()) <= 24
    orphans = q(checked, "select count(*) from calls v left join calls g on g.id = v.for_call_id "
                         "where v.purpose = 'verify' and (g.id is null or coalesce(g.purpose, 'generate') != 'generate')")
    assert orphans[0][0] == 0
    # Each accepted node carries its votes; the disputed ones too.
    verdicts = [json.loads(v) for (v,) in q(checked, "select verdict from nodes where status = 'accepted' and depth > 0")]
    assert verdicts and all(v["outcome"] == "kept" for v in verdicts)
    # No candidate that was not verified was accepted (or expanded): parents of depth-2 nodes are verified.
    unverified_parents = q(checked, "select count(*) from nodes c join nodes p on p.id = c.parent_id "
                                    "where p.depth > 0 and p.verdict is null")
    assert unverified_parents[0][0] == 0
    # The cost views count the verify calls apart.
    by_purpose = dict(q(checked, "select purpose, spent_micro from cost_by_purpose"))
    assert set(by_purpose) >= {"generate", "verify"}


def test_relabel_with_three_votes_keeps_flipped_examples_with_the_true_label(tmp_path, yesno_seeds, strategyqa_pool):
    truth = truth_of(strategyqa_pool)
    run = run_flipped(tmp_path, yesno_seeds, strategyqa_pool, "relabel", "--verify", "relabel", "--votes", 3)
    wrong, known = wrong_labels(run, truth)
    assert known > 10 and wrong == 0
    relabelled = q(run, "select verdict from nodes where status = 'accepted' and verdict like '%relabelled%'")
    assert relabelled, "flipped labels are corrected when every vote agrees"
    # Three votes per checked reply: three verify calls for each generation call that had candidates.
    per_call = q(run, "select for_call_id, count(*) from calls where purpose = 'verify' group by for_call_id")
    assert per_call and all(n == 3 for _, n in per_call)


def test_a_dollar_cap_holds_with_verification(tmp_path, yesno_seeds, strategyqa_pool):
    with SimServer(SimConfig(pool_path=str(strategyqa_pool), label_flip_rate=0.2, verify_accuracy=0.9)) as srv:
        result = cli("run", yesno_seeds, "--base-url", srv.base_url, "--max-usd", 0.002, "-c", 4,
                     "--prices", "input=0.15,output=0.60", "--verify", "--votes", 3, "--out", tmp_path / "r", "--quiet")
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path / "r")
    spent = q(run, "select sum(cost_micro) from calls")[0][0]
    assert 0 < spent <= 2000
    assert q(run, "select count(*) from calls where purpose = 'verify'")[0][0] > 0


def test_harder_rewrites_are_children_with_their_operation(tmp_path, yesno_seeds, strategyqa_pool):
    with SimServer(SimConfig(pool_path=str(strategyqa_pool))) as srv:
        result = cli("run", yesno_seeds, "--base-url", srv.base_url, "--max-calls", 12, "-c", 2, "--harder", 0.5,
                     "--out", tmp_path / "h", "--quiet")
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path / "h")
    purposes = dict(q(run, "select coalesce(purpose, 'generate'), count(*) from calls group by 1"))
    assert purposes.get("harder", 0) > 0 and purposes.get("generate", 0) > 0
    harder_nodes = q(run, "select n.id, n.question, p.question from nodes n join nodes p on p.id = n.parent_id "
                          "where n.operation = 'harder' and n.status = 'accepted'")
    assert harder_nodes
    # A harder call asks for one rewrite of its parent.
    for (params,) in q(run, "select params from calls where purpose = 'harder'"):
        assert json.loads(params)["k"] == 1
    # The same seed makes the same choice of which requests are rewrites.
    with SimServer(SimConfig(pool_path=str(strategyqa_pool))) as srv:
        cli("run", yesno_seeds, "--base-url", srv.base_url, "--max-calls", 12, "-c", 2, "--harder", 0.5,
            "--out", tmp_path / "h2", "--quiet")
    again = only_run(tmp_path / "h2")
    order = "select request_key, coalesce(purpose, 'generate') from calls order by request_key"
    assert q(run, order) == q(again, order)


def test_attributes_auto_asks_once_and_every_prompt_carries_a_combination(tmp_path, yesno_seeds, strategyqa_pool):
    with SimServer(SimConfig(pool_path=str(strategyqa_pool))) as srv:
        result = cli("run", yesno_seeds, "--base-url", srv.base_url, "--max-calls", 6, "-c", 2,
                     "--attributes", "auto", "--out", tmp_path / "a", "--quiet")
        assert result.exit_code == 0, result.output
        run = only_run(tmp_path / "a")
        assert q(run, "select count(*) from calls where purpose = 'attributes'")[0][0] == 1
        config = json.loads(q(run, "select config from runs")[0][0])
        dims = json.loads(config["attribute_values"])
        assert dims
        prompts = q(run, "select p.messages from calls c join prompts p on p.hash = c.prompt_hash "
                         "where coalesce(c.purpose, 'generate') = 'generate'")
        assert prompts and all("Attributes: " in m for (m,) in prompts)
        # A resume keeps the dimensions: no second attributes call.
        result = cli("resume", run, "--max-calls", 9, "--quiet", "--base-url", srv.base_url)
        assert result.exit_code == 0, result.output
    assert q(run, "select count(*) from calls where purpose = 'attributes'")[0][0] == 1


def test_attributes_from_a_file(tmp_path, yesno_seeds, strategyqa_pool):
    path = tmp_path / "attrs.toml"
    path.write_text('length = ["short", "long"]\nstyle = ["plain", "playful"]\n')
    with SimServer(SimConfig(pool_path=str(strategyqa_pool))) as srv:
        result = cli("run", yesno_seeds, "--base-url", srv.base_url, "--max-calls", 4, "-c", 1,
                     "--attributes", path, "--out", tmp_path / "f", "--quiet")
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path / "f")
    assert q(run, "select count(*) from calls where purpose = 'attributes'")[0][0] == 0
    lines = [m for (m,) in q(run, "select p.messages from calls c join prompts p on p.hash = c.prompt_hash")]
    assert all("Attributes: length=" in m and "style=" in m for m in lines)


def test_bad_attribute_file_is_refused_before_anything_is_written(tmp_path, yesno_seeds):
    path = tmp_path / "attrs.toml"
    path.write_text("this is = not toml [")
    result = cli("run", yesno_seeds, "--backend", "sim", "--max-calls", 2, "--attributes", path,
                 "--out", tmp_path / "runs")
    assert result.exit_code == 2
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_checkable_constraints_reject_with_the_constraint_named(tmp_path, yesno_seeds, strategyqa_pool):
    rule = "question at most 9 words"
    with SimServer(SimConfig(pool_path=str(strategyqa_pool))) as srv:
        result = cli("run", yesno_seeds, "--base-url", srv.base_url, "--max-calls", 10, "-c", 2,
                     "--constraint", rule, "--constraint", "Prefer questions about history.",
                     "--out", tmp_path / "c", "--quiet")
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path / "c")
    accepted = [qq for (qq,) in q(run, "select question from nodes where status = 'accepted' and depth > 0")]
    assert accepted and all(len(x.split()) <= 9 for x in accepted)
    assert q(run, "select count(*) from nodes where reason = ?", (f"constraint: {rule}",))[0][0] > 0
    system = [m for (m,) in q(run, "select p.messages from calls c join prompts p on p.hash = c.prompt_hash")]
    assert all("history" in m for m in system)


@pytest.mark.parametrize("flags, message", [
    (("--votes", "3"), "--votes needs --verify"),
    (("--verify=maybe",), "--verify must be one of"),
    (("--harder", "1.5"), "--harder is a probability"),
    (("--constraint", "question must match /[unclosed/"), "constraint"),
])
def test_bad_quality_flags_are_refused(tmp_path, yesno_seeds, flags, message):
    result = runner.invoke(app, ["run", str(yesno_seeds), "--backend", "sim", "--max-calls", "2", *flags,
                                 "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_facts_give_the_verifier_passages_and_a_bad_corpus_is_refused_first(tmp_path, yesno_seeds, strategyqa_pool):
    # A corpus made at test time from a real dataset's passages (BoolQ's open-book contexts).
    rows = (Path(strategyqa_pool).parents[2] / "yesno_open" / "boolq" / "dev.jsonl").read_text().splitlines()[:200]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": json.loads(r)["context"]}) for r in rows) + "\n")
    with SimServer(SimConfig(pool_path=str(strategyqa_pool))) as srv:
        result = cli("run", yesno_seeds, "--base-url", srv.base_url, "--max-calls", 4, "-c", 1, "--verify",
                     "--facts", corpus, "--out", tmp_path / "f", "--quiet")
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path / "f")
    assert (run / "facts.db").exists()
    verify_prompts = [m for (m,) in q(run, "select p.messages from calls c join prompts p on p.hash = c.prompt_hash "
                                         "where c.purpose = 'verify'")]
    assert verify_prompts and all('evidence' in m for m in verify_prompts)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a passage"}\n[1, 2]\n')
    result = cli("run", yesno_seeds, "--backend", "sim", "--max-calls", 2, "--verify", "--facts", bad,
                 "--out", tmp_path / "b")
    assert result.exit_code == 2
    assert "2" in result.output  # the line number of the bad row
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())
    result = cli("run", yesno_seeds, "--backend", "sim", "--max-calls", 2, "--facts", corpus, "--out", tmp_path / "c")
    assert result.exit_code == 2 and "--verify" in result.output


def test_numeric_labels_are_checked_by_the_verifiers_arithmetic(tmp_path):
    """Numeric answers: the verifier writes an expression, treegen evaluates it (never eval)
    and keeps the candidate when it equals the label."""
    from treegen.sim.pool import numeric_pool

    pool = numeric_pool(5000, seed=4)
    truth = {dedup_key(e): e.label for e in pool}
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("\n".join(json.dumps({"question": e.question, "options": [], "label": e.label})
                               for e in pool[:2]) + "\n")
    with SimServer(SimConfig(label_flip_rate=0.3, verify_accuracy=1.0, seed=4)) as srv:
        result = cli("run", seeds, "--base-url", srv.base_url, "--max-calls", 16, "-c", 2, "--verify",
                     "--out", tmp_path / "n", "--quiet")
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path / "n")
    assert q(run, "select task_format from runs")[0][0] == "numeric"
    wrong, known = wrong_labels(run, truth)
    assert known > 5 and wrong == 0
    assert q(run, "select count(*) from nodes where reason = 'label-disputed'")[0][0] > 0
    # What the verifier wrote is an expression, evaluated by treegen.arith.
    replies = [t for (t,) in q(run, "select response_text from calls where purpose = 'verify' and status = 'ok'")]
    answers = [v["answer"] for t in replies for v in json.loads(t)["verdicts"]]
    assert answers and all(isinstance(a, str) and any(op in a for op in "+-*/") for a in answers)


def test_resume_judges_a_verified_reply_with_the_votes_already_paid_for(tmp_path, yesno_seeds, strategyqa_pool):
    """A session killed after the verify calls were answered but before the candidates were
    decided: the resume decides them with the recorded votes (no new verify call), and a reply
    whose verification never happened is not accepted unverified."""
    with SimServer(SimConfig(pool_path=str(strategyqa_pool), label_flip_rate=0.3, verify_accuracy=1.0)) as srv:
        result = cli("run", yesno_seeds, "--base-url", srv.base_url, "--max-calls", 12, "-c", 1, "--verify",
                     "--out", tmp_path / "r", "--quiet")
        assert result.exit_code == 0, result.output
        run = only_run(tmp_path / "r")
        gen = [i for (i,) in q(run, "select id from calls where coalesce(purpose, 'generate') = 'generate' "
                                    "and status = 'ok' order by id desc limit 2")]
        last, before = gen
        before_nodes = q(run, "select question, status, reason, label from nodes where call_id = ? order by id", (last,))
        assert before_nodes
        con = sqlite3.connect(run / "treegen.db")
        with con:
            # Undo the decisions of the last two replies, as if the process died before them;
            # the second-to-last also loses its verify calls (it died before verifying).
            for cid in gen:
                con.execute("delete from nodes where call_id = ? and id not in "
                            "(select parent_id from nodes where parent_id is not null)", (cid,))
                con.execute("update calls set n_parsed = null, n_accepted = null where id = ?", (cid,))
            con.execute("delete from calls where for_call_id = ?", (before,))
        con.close()
        verify_calls = q(run, "select count(*) from calls where purpose = 'verify'")[0][0]
        result = cli("resume", run, "--max-calls", 12, "--quiet", "--base-url", srv.base_url)
        assert result.exit_code == 0, result.output
    assert q(run, "select count(*) from calls where purpose = 'verify'")[0][0] == verify_calls  # nothing re-asked
    after = q(run, "select question, status, reason, label from nodes where call_id = ? order by id", (last,))
    assert after == before_nodes
    unverified = q(run, "select status, reason from nodes where call_id = ?", (before,))
    assert unverified and all(s == "rejected" for s, _ in unverified)
    assert any(r == "unverified" for _, r in unverified)


def test_unusable_attribute_answers_are_asked_again_a_bounded_number_of_times(tmp_path, yesno_seeds, strategyqa_pool):
    # Every reply cut mid-object: no usable attributes however often it is asked.
    with SimServer(SimConfig(pool_path=str(strategyqa_pool), truncate_rate=1.0)) as srv:
        result = cli("run", yesno_seeds, "--base-url", srv.base_url, "--max-calls", 10, "--attributes", "auto",
                     "--out", tmp_path / "a", "--quiet")
    assert result.exit_code == 1
    assert "--attributes FILE" in result.output
    run = only_run(tmp_path / "a")
    assert q(run, "select count(*) from calls where purpose = 'attributes'")[0][0] == 3  # asked, then 2 more
    assert q(run, "select count(*) from calls where coalesce(purpose, 'generate') = 'generate'")[0][0] == 0
    assert q(run, "select status from runs")[0][0] == "failed"


def test_a_reply_whose_usage_is_a_lie_is_kept_but_nothing_unverified_is_accepted(tmp_path, yesno_seeds, strategyqa_pool):
    """The run stops on the usage anomaly (no verify call is sent after it), and the reply's
    candidates are recorded as unverified rather than accepted."""
    with SimServer(SimConfig(pool_path=str(strategyqa_pool), usage_inflate=50_000)) as srv:
        result = cli("run", yesno_seeds, "--base-url", srv.base_url, "--max-calls", 8, "--verify",
                     "--out", tmp_path / "u", "--quiet")
    assert result.exit_code == 1
    run = only_run(tmp_path / "u")
    assert q(run, "select count(*) from calls where purpose = 'verify'")[0][0] == 0
    assert q(run, "select count(*) from nodes where status = 'accepted' and depth > 0")[0][0] == 0
    assert q(run, "select count(*) from nodes where reason = 'unverified'")[0][0] > 0
