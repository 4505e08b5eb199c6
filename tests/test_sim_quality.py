"""The simulator's answers to the quality requests (verify, attributes, harder, judge) of
notes/QUALITY_PROTOCOL.md, over real HTTP on loopback with the real openai client and real
benchmark pools (StrategyQA yes/no, CommonsenseQA 5-way multiple choice)."""

from __future__ import annotations

import ast
import json
import operator
import os
import re
from pathlib import Path
from statistics import mean

import openai
import pytest

from treegen.parsing import parse_reply
from treegen.prompts import build_messages
from treegen.schema import example_schema, response_format
from treegen.sim.server import SimConfig, Simulator, SimServer
from treegen.sim.pool import synthetic_pool
from treegen.task import Example, TaskFormat, dedup_key, example_from_dict, load_examples
from treegen.tokens import count_messages, count_text

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TREEGEN_DATA_DIR") or REPO.parent / "shared" / "datasets")
STRATEGYQA = DATA / "yesno_close" / "strategyqa" / "train.jsonl"
CSQA = DATA / "mcqa_5" / "csqa" / "train.jsonl"
MODEL = "gpt-4o-mini"
YESNO = TaskFormat.parse("yesno_close")
MCQA5 = TaskFormat.parse("mcqa_5")

pytestmark = pytest.mark.skipif(not STRATEGYQA.is_file() or not CSQA.is_file(), reason=f"benchmark datasets not found under {DATA}")


def truth_of(path: Path) -> tuple[list[Example], dict[str, str]]:
    """The pool's examples and the label of every dedup key that has exactly one label."""
    examples, _ = load_examples(path)
    labels: dict[str, set[str]] = {}
    for ex in examples:
        labels.setdefault(dedup_key(ex), set()).add(ex.label)
    return examples, {k: next(iter(v)) for k, v in labels.items() if len(v) == 1}


@pytest.fixture(scope="module")
def strategyqa():
    return truth_of(STRATEGYQA)


@pytest.fixture(scope="module")
def csqa():
    return truth_of(CSQA)


@pytest.fixture(scope="module")
def yesno_srv():
    """A perfect verifier over StrategyQA, with generation flipping 30% of the labels."""
    with SimServer(SimConfig(pool_path=str(STRATEGYQA), seed=11, verify_accuracy=1.0, label_flip_rate=0.3)) as server:
        yield server


@pytest.fixture(scope="module")
def csqa_srv():
    with SimServer(SimConfig(pool_path=str(CSQA), seed=11, verify_accuracy=0.7, label_flip_rate=0.3)) as server:
        yield server


_clients: dict[str, openai.OpenAI] = {}


def chat(server: SimServer, messages, **kw):
    if server.base_url not in _clients:
        _clients[server.base_url] = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=60)
    return _clients[server.base_url].chat.completions.create(model=MODEL, messages=messages, **kw)


# -- the request bodies, built by hand from the protocol ---------------------------------------

def line(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def verify_request(cands: list[Example]) -> list[dict[str, str]]:
    rows = []
    for i, ex in enumerate(cands, 1):
        row: dict = {"id": i, "question": ex.question}
        if ex.context is not None:
            row["context"] = ex.context
        if ex.options:
            row["options"] = list(ex.options)
        rows.append(line(row))
    return [
        {"role": "system", "content": "Answer each question from its options."},
        {"role": "user", "content": "\n".join(rows) + "\nAnswer every question."},
    ]


def judge_request(items: list[Example]) -> list[dict[str, str]]:
    rows = [line({"id": i, "question": ex.question, "options": list(ex.options), "label": ex.label}) for i, ex in enumerate(items, 1)]
    return [
        {"role": "system", "content": "Score each example from 1 (useless or wrong) to 10 (correct, clear, useful)."},
        {"role": "user", "content": "\n".join(rows) + "\nScore every example."},
    ]


def harder_request(ex: Example) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "Rewrite the example shown as a harder one of the same format."},
        {"role": "user", "content": line({"question": ex.question, "options": list(ex.options), "label": ex.label})
         + "\nRewrite it as 1 harder example."},
    ]


def named(name: str, schema: dict | None = None) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema or {"type": "object"}}}


def reply_object(content: str) -> dict:
    """The one JSON object of a reply (a plain-mode reply may come fenced)."""
    text = content.strip()
    m = re.fullmatch(r"```json\n(.*)\n```", text, re.DOTALL)
    return json.loads(m.group(1) if m else text)


def answered_labels(content: str, cands: list[Example]) -> list[str]:
    """The label text each verdict names (yes/no: the word, multiple choice: option number)."""
    verdicts = {v["id"]: v["answer"] for v in reply_object(content)["verdicts"]}
    out = []
    for i, ex in enumerate(cands, 1):
        answer = verdicts[i]
        out.append(answer if ex.options == ("True", "False") else ex.options[answer - 1])
    return out


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def arith(expr: str) -> float:
    """Numbers and + - * / only: what the simulator's expressions hold (no Python eval)."""
    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        raise ValueError(f"not plain arithmetic: {expr!r}")
    return ev(ast.parse(expr, mode="eval").body)


# -- verify -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def plain_servers():
    """One server per pool, no faults; the tests set ``verify_accuracy`` on its config."""
    with SimServer(SimConfig(pool_path=str(CSQA), seed=3)) as a, SimServer(SimConfig(pool_path=str(STRATEGYQA), seed=3)) as b:
        yield {CSQA: a, STRATEGYQA: b}


@pytest.mark.parametrize("accuracy", [1.0, 0.0, 0.7])
def test_verify_accuracy_lands_near_the_setting(accuracy, plain_servers, csqa, strategyqa) -> None:
    """200 candidates per pool, asked in batches of 20: the share answered with the true label."""
    for path, (examples, truth) in ((CSQA, csqa), (STRATEGYQA, strategyqa)):
        cands = [ex for ex in examples[::7] if dedup_key(ex) in truth][:200]
        srv = plain_servers[path]
        srv.simulator.config.verify_accuracy = accuracy  # read per request
        right = 0
        for start in range(0, len(cands), 20):
            batch = cands[start:start + 20]
            resp = chat(srv, verify_request(batch), response_format=named("verdicts"))
            labels = answered_labels(resp.choices[0].message.content, batch)
            right += sum(label == truth[dedup_key(ex)] for label, ex in zip(labels, batch))
        share = right / len(cands)
        print(f"{path.parent.name}: verify_accuracy {accuracy} -> {right}/{len(cands)} = {share:.3f}")
        if accuracy in (0.0, 1.0):
            assert share == accuracy, (path.name, share)
        else:
            assert abs(share - accuracy) < 0.1, (path.name, share)  # 0.1 is 3 standard deviations at n=200


def test_flipped_labels_are_caught_by_a_perfect_verifier(yesno_srv, csqa, strategyqa) -> None:
    """Generation flips ~30% of the labels; the verifier (accuracy 1) disagrees with exactly those."""
    examples, truth = strategyqa
    cands: list[Example] = []
    for i in range(8):
        resp = chat(yesno_srv, build_messages(examples[i * 50:i * 50 + 1], YESNO, 8), seed=i)
        cands += [example_from_dict(c.obj, YESNO) for c in parse_reply(resp.choices[0].message.content)]
    cands = [ex for ex in cands if dedup_key(ex) in truth]
    flipped = [ex.label != truth[dedup_key(ex)] for ex in cands]
    assert len(cands) >= 50 and 0.1 < mean(flipped) < 0.5
    resp = chat(yesno_srv, verify_request(cands))  # no response_format: dispatched by the last line
    disputed = [label != ex.label for label, ex in zip(answered_labels(resp.choices[0].message.content, cands), cands)]
    assert disputed == flipped


def test_mcqa_flips_are_caught_and_answers_are_option_numbers(csqa) -> None:
    examples, truth = csqa
    with SimServer(SimConfig(pool_path=str(CSQA), seed=5, verify_accuracy=1.0, label_flip_rate=0.5)) as srv:
        resp = chat(srv, build_messages(examples[:1], MCQA5, 10), response_format=response_format(example_schema(MCQA5, 10), "json_schema"))
        cands = [example_from_dict(c.obj, MCQA5, strict=False) for c in parse_reply(resp.choices[0].message.content)]
        resp = chat(srv, verify_request(cands), response_format=named("verdicts"))
    verdicts = reply_object(resp.choices[0].message.content)["verdicts"]
    assert [v["id"] for v in verdicts] == list(range(1, len(cands) + 1))
    assert all(isinstance(v["answer"], int) and 1 <= v["answer"] <= 5 for v in verdicts)
    for v, ex in zip(verdicts, cands):
        assert ex.options[v["answer"] - 1] == truth[dedup_key(ex)]
    assert any(ex.label != truth[dedup_key(ex)] for ex in cands)  # some were flipped, and all were caught


def test_verify_a_candidate_not_in_the_pool_gets_a_seeded_random_answer(yesno_srv) -> None:
    made_up = [Example(f"Is the made-up town number {i} larger than its neighbour?", ("True", "False"), "True") for i in range(60)]
    first = chat(yesno_srv, verify_request(made_up), seed=1).choices[0].message.content
    answers = [v["answer"] for v in reply_object(first)["verdicts"]]
    assert set(answers) == {"True", "False"}  # random, not always the same word
    assert chat(yesno_srv, verify_request(made_up), seed=1).choices[0].message.content == first


def test_numeric_verdicts_are_expressions_of_the_true_answer() -> None:
    """No pool file: the synthetic numeric pool (arithmetic word problems) answers."""
    fmt = TaskFormat.parse("numeric")
    pool = synthetic_pool(fmt, seed=0)[:60]
    with SimServer(SimConfig(verify_accuracy=1.0, seed=0)) as srv:
        resp = chat(srv, verify_request(pool), response_format=named("verdicts"))
        values = [arith(v["answer"]) for v in reply_object(resp.choices[0].message.content)["verdicts"]]
        assert values == pytest.approx([float(ex.label) for ex in pool])
    with SimServer(SimConfig(verify_accuracy=0.0, seed=0)) as srv:
        resp = chat(srv, verify_request(pool), response_format=named("verdicts"))
        values = [arith(v["answer"]) for v in reply_object(resp.choices[0].message.content)["verdicts"]]
        assert all(abs(v - float(ex.label)) >= 1 for v, ex in zip(values, pool))


def test_verify_usage_max_tokens_and_determinism(csqa_srv, csqa) -> None:
    examples, _ = csqa
    messages = verify_request(examples[:30])
    resp = chat(csqa_srv, messages, response_format=named("verdicts"), seed=4)
    content = resp.choices[0].message.content
    assert resp.system_fingerprint == "treegen-sim" and resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens == count_messages(messages, MODEL)
    assert resp.usage.completion_tokens == count_text(content, MODEL)
    again = chat(csqa_srv, messages, response_format=named("verdicts"), seed=4).choices[0].message.content
    assert again == content
    other = chat(csqa_srv, messages, response_format=named("verdicts"), seed=5).choices[0].message.content
    assert other != content  # another vote (another seed) is another draw at accuracy 0.7
    cut = chat(csqa_srv, messages, response_format=named("verdicts"), seed=4, max_tokens=20)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens <= 20


def test_schema_name_wins_over_the_last_line(yesno_srv, strategyqa) -> None:
    """A verify request named "verdicts" is answered compact (never fenced); a generation
    request named "examples" stays a generation reply."""
    examples, _ = strategyqa
    for seed in range(6):
        content = chat(yesno_srv, verify_request(examples[:3]), response_format=named("verdicts"), seed=seed).choices[0].message.content
        assert content.startswith('{"verdicts": [')
    content = chat(yesno_srv, build_messages(examples[:1], YESNO, 3), response_format=response_format(example_schema(YESNO, 3), "json_schema")).choices[0].message.content
    assert json.loads(content).keys() == {"examples"}


def test_batch_lines_go_through_the_same_dispatch(strategyqa) -> None:
    examples, truth = strategyqa
    sim = Simulator(SimConfig(pool_path=str(STRATEGYQA), seed=2, verify_accuracy=1.0))
    status, body = sim.batch_reply({"model": MODEL, "messages": verify_request(examples[:10])})
    assert status == 200 and body["system_fingerprint"] == "treegen-sim"
    labels = answered_labels(body["choices"][0]["message"]["content"], examples[:10])
    assert labels == [truth.get(dedup_key(ex), ex.label) for ex in examples[:10]]
    assert sim.stats()["kinds"]["verify"] == 1


def test_content_faults_reach_verify_replies(plain_servers, strategyqa) -> None:
    """Malformed and truncated verify replies, for the engine's "unverified" path."""
    examples, _ = strategyqa
    cfg = plain_servers[STRATEGYQA].simulator.config
    try:
        cfg.verify_accuracy, cfg.truncate_rate = 1.0, 1.0
        cut = [chat(plain_servers[STRATEGYQA], verify_request(examples[:5]), seed=s) for s in range(5)]
        assert all(c.choices[0].finish_reason == "length" for c in cut)
        cfg.truncate_rate, cfg.malformed_rate = 0.0, 1.0
        broken = [chat(plain_servers[STRATEGYQA], verify_request(examples[:5]), response_format=named("verdicts"), seed=s)
                  for s in range(5)]
    finally:
        cfg.truncate_rate = cfg.malformed_rate = 0.0
    for resp in cut + broken:
        with pytest.raises(json.JSONDecodeError):
            reply_object(resp.choices[0].message.content)


# -- judge --------------------------------------------------------------------------------------

def test_judge_scores_separate_flipped_from_true_labels(csqa_srv, csqa) -> None:
    examples, truth = csqa
    items = [ex for ex in examples[100:160] if dedup_key(ex) in truth]
    flipped = [Example(ex.question, ex.options, next(o for o in ex.options if o != ex.label)) for ex in items[::2]]
    unknown = [Example(f"Where would a made-up object number {i} be kept?", ("a", "b", "c", "d", "e"), "a") for i in range(10)]
    batch = items + flipped + unknown
    resp = chat(csqa_srv, judge_request(batch), response_format=named("judge"))
    scores = {s["id"]: s["score"] for s in reply_object(resp.choices[0].message.content)["scores"]}
    assert sorted(scores) == list(range(1, len(batch) + 1))
    n, m = len(items), len(flipped)
    assert all(8 <= scores[i] <= 10 for i in range(1, n + 1))
    assert all(2 <= scores[i] <= 4 for i in range(n + 1, n + m + 1))
    assert all(5 <= scores[i] <= 7 for i in range(n + m + 1, len(batch) + 1))
    again = chat(csqa_srv, judge_request(batch)).choices[0].message.content  # plain: by the last line
    assert {s["id"]: s["score"] for s in reply_object(again)["scores"]}.keys() == scores.keys()
    assert chat(csqa_srv, judge_request(batch)).choices[0].message.content == again


# -- attributes -----------------------------------------------------------------------------------

def attributes_request(seeds: list[Example], fmt: TaskFormat) -> list[dict[str, str]]:
    from treegen.prompts import render_example

    return [
        {"role": "system", "content": "List attribute dimensions (topic, length, style, ...) with values that fit these examples."},
        {"role": "user", "content": "\n".join(render_example(ex, fmt) for ex in seeds) + "\nList the attributes."},
    ]


def test_attributes_auto_lists_the_pools_dimensions(yesno_srv, strategyqa) -> None:
    examples, _ = strategyqa
    resp = chat(yesno_srv, attributes_request(examples[:5], YESNO), response_format=named("attributes"))
    dims = {d["name"]: d["values"] for d in reply_object(resp.choices[0].message.content)["attributes"]}
    assert dims == {"length": ["short", "medium", "long"]}  # a pool file: no topic to recover
    fmt = TaskFormat.parse("mcqa_4")  # no pool file of this format: the synthetic pool's templates are topics
    resp = chat(yesno_srv, attributes_request(synthetic_pool(fmt, n=3, seed=1), fmt))  # plain, by the last line
    dims = {d["name"]: d["values"] for d in reply_object(resp.choices[0].message.content)["attributes"]}
    assert dims["length"] == ["short", "medium", "long"] and "arithmetic" in dims["topic"] and len(dims["topic"]) >= 5


def generate_with(server: SimServer, shown: list[Example], fmt: TaskFormat, attributes: str, seed: int, k: int = 8) -> list[Example]:
    messages = build_messages(shown, fmt, k)
    messages[1]["content"] = messages[1]["content"].replace("\nWrite ", f"\n{attributes}\nWrite ")
    resp = chat(server, messages, seed=seed)
    return [example_from_dict(c.obj, fmt, strict=False) for c in parse_reply(resp.choices[0].message.content)]


def test_generation_honours_the_length_attribute(csqa_srv, csqa) -> None:
    examples, _ = csqa
    words: dict[str, list[int]] = {}
    for value in ("short", "medium", "long"):
        got = []
        for seed in range(5):
            got += generate_with(csqa_srv, examples[seed * 40:seed * 40 + 1], MCQA5, f"Attributes: length={value}; style=formal", seed)
        assert len(got) == 40
        words[value] = [len(ex.question.split()) for ex in got]
    assert mean(words["short"]) < mean(words["medium"]) < mean(words["long"])
    assert max(words["short"]) < min(words["long"])  # terciles do not overlap
    # An unknown value matches nothing: sampling falls back to the whole pool.
    assert len(generate_with(csqa_srv, examples[:1], MCQA5, "Attributes: length=enormous", 1)) == 8


def test_generation_honours_a_synthetic_topic(yesno_srv) -> None:
    fmt = TaskFormat.parse("mcqa_4")
    shown = [ex for ex in synthetic_pool(fmt, n=50, seed=3) if "kind of" in ex.question][:1]
    got = generate_with(yesno_srv, shown, fmt, "Attributes: topic=arithmetic", 0)
    assert len(got) == 8 and all(re.search(r"\b(plus|minus|times)\b", ex.question) for ex in got)


# -- harder ---------------------------------------------------------------------------------------

def test_harder_is_one_longer_pool_item_and_flips_apply(yesno_srv, strategyqa) -> None:
    examples, truth = strategyqa
    shown = sorted(examples[:300], key=lambda ex: len(ex.question.split()))[:40:2]  # room for a longer one
    schema = response_format(example_schema(YESNO, 1), "json_schema")
    schema["json_schema"]["name"] = "harder"
    flips = 0
    for i, ex in enumerate(shown):
        kw = {"response_format": schema} if i % 2 else {}  # structured and plain (dispatch by the last line)
        resp = chat(yesno_srv, harder_request(ex), seed=i, **kw)
        got = [example_from_dict(c.obj, YESNO) for c in parse_reply(resp.choices[0].message.content)]
        assert len(got) == 1
        (new,) = got
        assert dedup_key(new) != dedup_key(ex) and len(new.question.split()) > len(ex.question.split())
        assert dedup_key(new) in truth or dedup_key(new) in {dedup_key(e) for e in examples}
        flips += new.label != truth.get(dedup_key(new), new.label)
    assert 0 < flips < len(shown)  # label_flip_rate 0.3 applies to rewrites too


def test_stats_count_replies_per_kind(strategyqa) -> None:
    examples, _ = strategyqa
    with SimServer(SimConfig(pool_path=str(STRATEGYQA), seed=1)) as srv:
        chat(srv, build_messages(examples[:1], YESNO, 2))
        chat(srv, verify_request(examples[:2]))
        chat(srv, verify_request(examples[2:4]), response_format=named("verdicts"))
        chat(srv, judge_request(examples[:2]))
        chat(srv, harder_request(examples[0]))
        chat(srv, attributes_request(examples[:2], YESNO))
        chat(srv, [{"role": "user", "content": "Hello there."}])  # an unknown shape: answered as generation
        assert srv.stats()["kinds"] == {"generate": 2, "verify": 2, "attributes": 1, "harder": 1, "judge": 1}


def test_cli_verify_accuracy_flag(monkeypatch) -> None:
    import typer
    from typer.testing import CliRunner

    import treegen.cli_sim as cli_sim
    from treegen.errors import ConfigError

    seen = {}

    class NoServe(SimServer):
        def serve_forever(self) -> None:
            seen["config"] = self.simulator.config
            raise KeyboardInterrupt

    monkeypatch.setattr(cli_sim, "SimServer", NoServe)
    app = typer.Typer()
    cli_sim.register(app)
    result = CliRunner().invoke(app, ["sim", "serve", "--port", "0", "--verify-accuracy", "0.75"])
    assert result.exit_code == 0, result.output
    assert seen["config"].verify_accuracy == 0.75
    assert SimConfig().verify_accuracy == 0.9
    bad = CliRunner().invoke(app, ["sim", "serve", "--port", "0", "--verify-accuracy", "1.5"])
    assert isinstance(bad.exception, ConfigError) and "--verify-accuracy" in str(bad.exception)


# -- against the quality-core builders and parsers, when they are there ---------------------------

def test_with_the_quality_core_builders(yesno_srv, csqa_srv, strategyqa, csqa) -> None:
    verify = pytest.importorskip("treegen.verify")
    attributes = pytest.importorskip("treegen.attributes")
    rewrite = pytest.importorskip("treegen.rewrite")
    for srv, fmt, (examples, truth), dialect in (
        (yesno_srv, YESNO, strategyqa, "json_schema"), (csqa_srv, MCQA5, csqa, "off"),
    ):
        cands = [ex for ex in examples[:25] if dedup_key(ex) in truth]
        resp = chat(srv, verify.verify_messages(cands, fmt, structured=dialect != "off"),
                    response_format=verify.verify_response_format(fmt, len(cands), dialect) or openai.NOT_GIVEN,
                    max_tokens=verify.verify_max_tokens(fmt, len(cands)))
        votes = verify.parse_verdicts(resp.choices[0].message.content, cands, fmt)
        assert None not in votes
        right = sum(v == truth[dedup_key(ex)] for v, ex in zip(votes, cands))
        if srv is yesno_srv:
            assert right == len(cands)  # accuracy 1.0
        else:
            assert 0 < right < len(cands)  # accuracy 0.7
        resp = chat(srv, attributes.auto_messages(examples[:5], fmt), response_format=attributes.auto_response_format(dialect) or openai.NOT_GIVEN)
        attrs = attributes.parse_auto(resp.choices[0].message.content)
        assert dict(attrs.dimensions)["length"] == ("short", "medium", "long")
        ex = cands[0]
        resp = chat(srv, rewrite.harder_messages(ex, fmt, structured=dialect != "off"),
                    response_format=rewrite.harder_response_format(fmt, dialect) or openai.NOT_GIVEN, seed=1)
        (new,) = [example_from_dict(c.obj, fmt, strict=False) for c in parse_reply(resp.choices[0].message.content)]
        assert len(new.question.split()) > len(ex.question.split())
    fmt = TaskFormat.parse("numeric")
    pool = synthetic_pool(fmt, seed=0)[:20]
    with SimServer(SimConfig(verify_accuracy=1.0)) as srv:
        resp = chat(srv, verify.verify_messages(pool, fmt), response_format=verify.verify_response_format(fmt, 20, "json_schema"))
    assert verify.parse_verdicts(resp.choices[0].message.content, pool, fmt) == [ex.label for ex in pool]
