"""The simulator over real HTTP on loopback, driven by the real openai client."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from typer.testing import CliRunner

from treegen.embedders import get_embedder
from treegen.errors import ConfigError, SeedFileError
from treegen.task import TaskFormat, dedup_key, example_from_dict, load_examples
from treegen.parsing import parse_reply
from treegen.prompts import build_messages
from treegen.sim.server import SimConfig, Simulator, SimServer
from treegen.sim.pool import synthetic_pool
from treegen.tokens import count_messages, count_text

REPO = Path(__file__).resolve().parents[1]
MODEL = "gpt-4o-mini"


def data_dir() -> Path:
    return Path(os.environ.get("TREEGEN_DATA_DIR") or REPO.parent / "shared" / "datasets")


STRATEGYQA = data_dir() / "yesno_close" / "strategyqa"


@pytest.fixture(scope="module")
def seeds() -> list:
    examples, _ = load_examples(STRATEGYQA / "dev.jsonl")
    return examples


@pytest.fixture(scope="module")
def srv():
    with SimServer(SimConfig(pool_path=str(STRATEGYQA / "train.jsonl"), seed=7)) as server:
        yield server


_clients: dict[tuple, openai.OpenAI] = {}


def client(server: SimServer, api_key: str = "x", timeout: float = 30.0) -> openai.OpenAI:
    # One client per server: building an OpenAI client (its SSL context) costs ~80 ms.
    key = (server.base_url, api_key, timeout)
    if key not in _clients:
        _clients[key] = openai.OpenAI(base_url=server.base_url, api_key=api_key, max_retries=0, timeout=timeout)
    return _clients[key]


def ask(server: SimServer, examples, fmt: TaskFormat, k: int = 5, **kw):
    return client(server).chat.completions.create(model=MODEL, messages=build_messages(examples, fmt, k), **kw)


YESNO_CLOSE = TaskFormat.parse("yesno_close")


def test_reply_parses_to_k_valid_examples_with_exact_usage(srv, seeds) -> None:
    messages = build_messages(seeds[:1], YESNO_CLOSE, 5)
    raw = client(srv).chat.completions.with_raw_response.create(model=MODEL, messages=messages)
    assert raw.headers["x-request-id"]
    resp = raw.parse()
    assert resp.id.startswith("chatcmpl-sim-") and resp.object == "chat.completion"
    assert resp.model == MODEL and resp.system_fingerprint == "treegen-sim"
    choice = resp.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    cands = parse_reply(choice.message.content)
    examples = [example_from_dict(c.obj, YESNO_CLOSE) for c in cands]
    assert len(examples) == 5
    pool_keys = {dedup_key(e) for e in load_examples(STRATEGYQA / "train.jsonl")[0]}
    assert all(dedup_key(e) in pool_keys for e in examples)  # drawn from the pool file
    assert resp.usage.prompt_tokens == count_messages(messages, MODEL)
    assert resp.usage.completion_tokens == count_text(choice.message.content, MODEL)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert resp.usage.prompt_tokens_details.cached_tokens == 0


def test_other_format_falls_back_to_synthetic_pool(srv) -> None:
    fmt = TaskFormat.parse("mcqa_4")
    seed = synthetic_pool(fmt, n=10, seed=99)[0]
    resp = ask(srv, [seed], fmt, k=3, max_tokens=2000)
    examples = [example_from_dict(c.obj, fmt) for c in parse_reply(resp.choices[0].message.content)]
    assert len(examples) == 3 and dedup_key(seed) not in {dedup_key(e) for e in examples}


def test_max_tokens_cuts_the_reply(srv, seeds) -> None:
    resp = ask(srv, seeds[:1], YESNO_CLOSE, k=8, max_tokens=40)
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens <= 40
    assert resp.usage.completion_tokens == count_text(resp.choices[0].message.content, MODEL)
    assert any(c.error == "truncated" for c in parse_reply(resp.choices[0].message.content))
    # max_completion_tokens is honoured the same way
    resp = ask(srv, seeds[:1], YESNO_CLOSE, k=8, max_completion_tokens=25)
    assert resp.choices[0].finish_reason == "length" and resp.usage.completion_tokens <= 25


def test_same_request_same_content_whatever_the_concurrency(srv, seeds) -> None:
    def content(i: int) -> str:
        return ask(srv, seeds[i % 4 : i % 4 + 1], YESNO_CLOSE, temperature=1.0, seed=3).choices[0].message.content

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(content, range(16)))
    for i in range(16):
        assert replies[i] == replies[i % 4]
    assert len(set(replies[:4])) == 4
    other_seed = ask(srv, seeds[:1], YESNO_CLOSE, temperature=1.0, seed=4).choices[0].message.content
    assert other_seed != replies[0]


def test_low_temperature_replies_are_closer(srv, seeds) -> None:
    emb = get_embedder("hashing")  # lexical similarity, independent of the simulator's TF-IDF

    def mean_sim(temperature: float) -> float:
        vals = []
        for ex in seeds[:15]:
            text = ask(srv, [ex], YESNO_CLOSE, temperature=temperature).choices[0].message.content
            got = [example_from_dict(c.obj).text() for c in parse_reply(text)]
            vecs = emb.embed([ex.text()] + got)
            vals.append(float((vecs[1:] @ vecs[0]).mean()))
        return float(np.mean(vals))

    cold, hot = mean_sim(0.0), mean_sim(1.5)
    assert cold > hot + 0.05, (cold, hot)


def test_rpm_limit_gives_429_with_retry_after(seeds) -> None:
    with SimServer(SimConfig(rpm_limit=2)) as server:
        fmt = YESNO_CLOSE
        ask(server, seeds[:1], fmt)
        ask(server, seeds[1:2], fmt)
        with pytest.raises(openai.RateLimitError) as info:
            ask(server, seeds[2:3], fmt)
        headers = info.value.response.headers
        assert 1 <= int(headers["retry-after"]) <= 60 and int(headers["retry-after-ms"]) > 0
        assert info.value.response.json()["error"]["code"] == "rate_limit_exceeded"
        assert server.stats()["rate_limited"] == 1


def test_tpm_limit_counts_prompt_plus_max_tokens(seeds) -> None:
    messages = build_messages(seeds[:1], YESNO_CLOSE, 5)
    prompt = count_messages(messages, MODEL)
    with SimServer(SimConfig(tpm_limit=2 * (prompt + 100) + 10)) as server:
        c = client(server)
        c.chat.completions.create(model=MODEL, messages=messages, max_tokens=100)
        c.chat.completions.create(model=MODEL, messages=messages, max_tokens=100)
        with pytest.raises(openai.RateLimitError):
            c.chat.completions.create(model=MODEL, messages=messages, max_tokens=100)


def test_error_rate_one_gives_server_errors(seeds) -> None:
    with SimServer(SimConfig(error_rate=1.0)) as server:
        for i in range(4):
            with pytest.raises(openai.InternalServerError) as info:
                ask(server, seeds[i : i + 1], YESNO_CLOSE)
            assert info.value.status_code in (500, 503)
            assert info.value.response.json()["error"]["type"] == "server_error"


def test_error_rate_retry_can_succeed(seeds) -> None:
    # Transport faults are drawn per attempt: retrying the identical request is not doomed.
    with SimServer(SimConfig(error_rate=0.5)) as server:
        outcomes = set()
        for _ in range(12):
            try:
                ask(server, seeds[:1], YESNO_CLOSE)
                outcomes.add("ok")
            except openai.InternalServerError:
                outcomes.add("error")
        assert outcomes == {"ok", "error"}


def test_api_key_mismatch_gives_401(seeds) -> None:
    with SimServer(SimConfig(api_key="sekrit")) as server:
        with pytest.raises(openai.AuthenticationError):
            client(server, api_key="wrong").chat.completions.create(
                model=MODEL, messages=build_messages(seeds[:1], YESNO_CLOSE, 2)
            )
        ok = client(server, api_key="sekrit").chat.completions.create(
            model=MODEL, messages=build_messages(seeds[:1], YESNO_CLOSE, 2)
        )
        assert len(parse_reply(ok.choices[0].message.content)) == 2
        assert [m.id for m in client(server, api_key="sekrit").models.list()] == ["treegen-sim"]


def test_timeout_rate_hangs_past_the_client_timeout(seeds) -> None:
    with SimServer(SimConfig(timeout_rate=1.0, hang_seconds=20)) as server:
        start = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            client(server, timeout=0.5).chat.completions.create(
                model=MODEL, messages=build_messages(seeds[:1], YESNO_CLOSE, 2)
            )
        assert time.monotonic() - start < 5
        assert server.stats()["hangs"] == 1
    # stop() released the hanging handler thread instead of waiting 20 s


def test_bad_requests_get_400_in_openai_error_shape(srv) -> None:
    with httpx.Client(base_url=srv.base_url) as http:
        r = http.post("/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        r = http.post("/chat/completions", json={"model": MODEL})
        assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
        r = http.get("/nowhere")
        assert r.status_code == 404
        stats = httpx.get(srv.base_url.removesuffix("/v1") + "/sim/stats").json()
        assert stats["simulated"] is True and stats["by_status"]["400"] >= 2


def test_content_faults(seeds) -> None:
    sample = seeds[:12]
    fmt = YESNO_CLOSE

    def replies(**rates) -> list[tuple[str, str]]:
        sim = Simulator(SimConfig(**rates))
        out = []
        for ex in sample:
            body = json.dumps({"model": MODEL, "messages": build_messages([ex], fmt, 5)}).encode()
            status, _, payload = sim.handle("POST", "/v1/chat/completions", {}, body)
            assert status == 200
            choice = json.loads(payload)["choices"][0]
            out.append((choice["message"]["content"], choice["finish_reason"]))
        return out

    for text, finish in replies(truncate_rate=1.0):
        cands = parse_reply(text)
        assert finish == "length" and cands[-1].error == "truncated" and len(cands) <= 5
    malformed = replies(malformed_rate=1.0)
    assert all(sum(c.obj is not None for c in parse_reply(t)) < 5 for t, _ in malformed)
    counts = [len(parse_reply(t)) for t, _ in replies(wrong_count_rate=1.0)]
    assert all(n != 5 and n >= 1 for n in counts)
    clean = replies()
    flipped = replies(label_flip_rate=1.0)
    for (a, _), (b, _) in zip(clean, flipped):
        la = [c.obj["label"] for c in parse_reply(a)]
        lb = [c.obj["label"] for c in parse_reply(b)]
        assert len(la) == len(lb) == 5 and all(x != y for x, y in zip(la, lb))
    for (text, _), ex in zip(replies(duplicate_rate=1.0), sample):
        keys = [dedup_key(example_from_dict(c.obj)) for c in parse_reply(text)]
        assert keys == [dedup_key(ex)] * 5  # each item repeats the in-context one or an earlier repeat


@pytest.mark.parametrize("name", ["yesno_close", "yesno_open", "mcqa_2", "mcqa_3", "mcqa_4", "mcqa_5", "mcqa_6", "mcqa_4_open"])
def test_synthetic_pool_is_valid_and_varied(name: str) -> None:
    fmt = TaskFormat.parse(name)
    pool = synthetic_pool(fmt, n=2000)
    for ex in pool:
        assert example_from_dict(ex.to_dict(), fmt) == ex
    assert len({dedup_key(ex) for ex in pool}) > 1000
    assert len({ex.question for ex in pool}) > (1000 if fmt.kind == "yesno" else 100)
    if fmt.kind == "yesno":
        assert 0.4 < sum(ex.label == "True" for ex in pool) / len(pool) < 0.6
    else:
        # the right answer is not always in the same place
        positions = {ex.label_index for ex in pool}
        assert positions == set(range(fmt.n_options))
    assert synthetic_pool(fmt, n=50, seed=1) == synthetic_pool(fmt, n=50, seed=1)


def test_synthetic_labels_are_correct() -> None:
    # Spot checks on the computed answers, independent of the generator's own code.
    fmt = TaskFormat.parse("mcqa_4")
    checked = 0
    for ex in synthetic_pool(fmt, n=1500):
        q = ex.question
        if q.startswith(("What is", "How much is", "Compute")) and " times " in q:
            a, b = (int(t.strip("?.")) for t in q.split()[-3::2])
            assert ex.label == str(a * b)
            checked += 1
        elif q == "Which of these numbers is the largest?":
            assert ex.label == max(ex.options, key=int)
            checked += 1
    assert checked > 50
    for ex in synthetic_pool(TaskFormat.parse("yesno_close"), n=1500):
        if ex.question.startswith("Is a") and " a kind of " in ex.question:
            from treegen.sim.pool import TAXONOMY

            member = ex.question.split(" a kind of ")[0].split()[-1]
            cat = ex.question.split(" a kind of ")[1].rstrip("?")
            assert (member in TAXONOMY[cat]) == (ex.label == "True")


def test_bad_config_and_pool_are_input_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="--error-rate"):
        Simulator(SimConfig(error_rate=1.5))
    bad = tmp_path / "pool.jsonl"
    bad.write_text('{"question": "q", "options": ["a", "b"], "label": "c"}\n')
    with pytest.raises(SeedFileError, match="pool.jsonl:1"):
        Simulator(SimConfig(pool_path=str(bad)))


def _app():
    from treegen.cli import app
    from treegen.cli_sim import register

    names = {g.name for g in app.registered_groups}
    if "sim" not in names:
        register(app)
    return app


def test_cli_bad_pool_exits_2(tmp_path) -> None:
    bad = tmp_path / "pool.jsonl"
    bad.write_text("not json\n")
    result = CliRunner().invoke(_app(), ["sim", "serve", "--pool", str(bad), "--port", "0"])
    assert result.exit_code == 2
    assert "pool.jsonl:1" in result.output and "not valid JSON" in result.output
    result = CliRunner().invoke(_app(), ["sim", "serve", "--truncate-rate", "-0.1", "--port", "0"])
    assert result.exit_code == 2 and "--truncate-rate" in result.output


def test_cli_serve_answers_until_ctrl_c(seeds, monkeypatch) -> None:
    import treegen.cli_sim as cli_sim

    seen = {}

    class OneRequestServer(SimServer):
        # In place of blocking forever: serve one real request, then the user presses Ctrl-C.
        def serve_forever(self) -> None:
            self.start()
            seen["config"] = self.simulator.config
            resp = client(self).chat.completions.create(model=MODEL, messages=build_messages(seeds[:1], YESNO_CLOSE, 3))
            seen["n"] = len(parse_reply(resp.choices[0].message.content))
            raise KeyboardInterrupt

    monkeypatch.setattr(cli_sim, "SimServer", OneRequestServer)
    pool = str(STRATEGYQA / "train.jsonl")
    args = ["sim", "serve", "--pool", pool, "--port", "0", "--rpm", "100", "--seed", "3", "--label-flip-rate", "0.25", "--api-key", "x"]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    assert seen["n"] == 3
    cfg = seen["config"]
    assert (cfg.rpm_limit, cfg.seed, cfg.label_flip_rate, cfg.api_key, cfg.pool_path) == (100, 3, 0.25, "x", pool)
    assert "http://127.0.0.1:" in result.output and "SIMULATED" in result.output and "Served 1 request." in result.output


# -- structured outputs ----------------------------------------------------------------------

def _schema(with_context: str | None) -> dict:
    """The reply schema an engine would send; context: None (absent), "nullable" or "string"."""
    item: dict = {
        "type": "object",
        "properties": {"question": {"type": "string"}, "options": {"type": "array", "items": {"type": "string"}},
                       "label": {"type": "string"}},
        "required": ["question", "options", "label"], "additionalProperties": False,
    }
    if with_context:
        item["properties"]["context"] = {"type": ["string", "null"] if with_context == "nullable" else "string"}
        item["required"].append("context")
    return {"type": "object", "properties": {"examples": {"type": "array", "items": item}},
            "required": ["examples"], "additionalProperties": False}


def _json_schema(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "examples", "strict": True, "schema": schema}}


def _items(resp, fmt: TaskFormat) -> list[dict]:
    reply = json.loads(resp.choices[0].message.content)  # ONE JSON object, nothing around it
    assert set(reply) == {"examples"}
    for obj in reply["examples"]:
        example_from_dict(obj, fmt)
    return reply["examples"]


def test_structured_reply_in_both_dialects(srv, seeds) -> None:
    messages = build_messages(seeds[:1], YESNO_CLOSE, 4)
    c = client(srv)
    openai_style = c.chat.completions.create(model=MODEL, messages=messages, response_format=_json_schema(_schema(None)))
    items = _items(openai_style, YESNO_CLOSE)
    assert len(items) == 4 and all("context" not in it for it in items)  # the schema has none
    text = openai_style.choices[0].message.content
    assert openai_style.usage.completion_tokens == count_text(text, MODEL)
    # llama.cpp's dialect: the schema inside a json_object response_format (the SDK types
    # do not allow it, so it goes as extra_body).
    llama = c.chat.completions.create(
        model=MODEL, messages=messages, extra_body={"response_format": {"type": "json_object", "schema": _schema(None)}}
    )
    assert llama.choices[0].message.content == text  # the same request, the same examples
    nullable = _items(c.chat.completions.create(
        model=MODEL, messages=messages, response_format=_json_schema(_schema("nullable"))), YESNO_CLOSE)
    assert all("context" in it and it["context"] is None for it in nullable)
    plain = _items(c.chat.completions.create(model=MODEL, messages=messages, response_format={"type": "json_object"}),
                   YESNO_CLOSE)
    assert len(plain) == 4
    text_mode = ask(srv, seeds[:1], YESNO_CLOSE, k=4, response_format={"type": "text"})
    assert len(parse_reply(text_mode.choices[0].message.content)) == 4


def test_structured_reply_keeps_open_book_contexts(srv) -> None:
    fmt = TaskFormat.parse("mcqa_4_open")
    seed = synthetic_pool(fmt, n=5, seed=4)[0]
    resp = client(srv).chat.completions.create(
        model=MODEL, messages=build_messages([seed], fmt, 3), response_format=_json_schema(_schema("string"))
    )
    items = _items(resp, fmt)
    assert len(items) == 3 and all(isinstance(it["context"], str) and it["context"] for it in items)


@pytest.mark.parametrize("refused", [["json_schema"], ["json_schema", "json_object"]])
def test_refused_response_format_is_a_400_naming_it(refused, seeds) -> None:
    with SimServer(SimConfig(refuse_response_format=refused)) as server:
        c = client(server)
        messages = build_messages(seeds[:1], YESNO_CLOSE, 2)
        for kind, fmt in (("json_schema", _json_schema(_schema(None))), ("json_object", {"type": "json_object"})):
            if kind in refused:
                with pytest.raises(openai.BadRequestError) as info:
                    c.chat.completions.create(model=MODEL, messages=messages, response_format=fmt)
                error = info.value.response.json()["error"]
                assert "response_format" in error["message"] and kind in error["message"]
                assert error["param"] == "response_format" and error["type"] == "invalid_request_error"
            else:
                assert len(_items(c.chat.completions.create(model=MODEL, messages=messages, response_format=fmt),
                                  YESNO_CLOSE)) == 2
        # The engine's fallback: the same request without response_format is answered.
        assert len(parse_reply(c.chat.completions.create(model=MODEL, messages=messages).choices[0].message.content)) == 2


def test_content_faults_apply_in_structured_mode(seeds) -> None:
    sample = seeds[:8]

    def replies(**rates) -> list[tuple[str, str]]:
        sim = Simulator(SimConfig(**rates))
        out = []
        for ex in sample:
            body = json.dumps({"model": MODEL, "messages": build_messages([ex], YESNO_CLOSE, 5),
                               "response_format": _json_schema(_schema(None))}).encode()
            status, _, payload = sim.handle("POST", "/v1/chat/completions", {}, body)
            assert status == 200
            choice = json.loads(payload)["choices"][0]
            out.append((choice["message"]["content"], choice["finish_reason"]))
        return out

    def not_json(text: str) -> bool:
        try:
            json.loads(text)
            return False
        except json.JSONDecodeError:
            return True

    clean = [json.loads(t)["examples"] for t, _ in replies()]
    assert all(len(items) == 5 for items in clean)
    for text, finish in replies(truncate_rate=1.0):
        assert finish == "length" and not_json(text) and parse_reply(text)[-1].error == "truncated"
    assert all(not_json(t) for t, _ in replies(malformed_rate=1.0))
    assert all(len(json.loads(t)["examples"]) != 5 for t, _ in replies(wrong_count_rate=1.0))
    for items, (text, _) in zip(clean, replies(label_flip_rate=1.0)):
        flipped = json.loads(text)["examples"]
        assert all(a["label"] != b["label"] for a, b in zip(items, flipped))
    for ex, (text, _) in zip(sample, replies(duplicate_rate=1.0)):
        keys = {dedup_key(example_from_dict(it)) for it in json.loads(text)["examples"]}
        assert keys == {dedup_key(ex)}


def test_cli_new_flags_reach_the_config(monkeypatch) -> None:
    import treegen.cli_sim as cli_sim

    seen = {}

    class NoServe(SimServer):
        def serve_forever(self) -> None:
            seen["config"] = self.simulator.config
            raise KeyboardInterrupt

    monkeypatch.setattr(cli_sim, "SimServer", NoServe)
    import typer

    app = typer.Typer()
    cli_sim.register(app)  # the sim group alone: no treegen.cli import
    args = ["sim", "serve", "--port", "0", "--refuse-response-format", "json_schema,json_object", "--ignore-max-tokens",
            "--usage-inflate", "5000000", "--body-fault", "html", "--body-fault-rate", "0.5", "--hang-rate", "0.1",
            "--echo-auth", "--batch-delay-s", "2", "--batch-fail-rate", "0.2", "--batch-expire-rate", "0.1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cfg = seen["config"]
    assert cfg.refuse_response_format == ["json_schema", "json_object"]
    assert (cfg.ignore_max_tokens, cfg.usage_inflate, cfg.body_fault, cfg.body_fault_rate, cfg.hang_rate, cfg.echo_auth) == (
        True, 5_000_000, "html", 0.5, 0.1, True)
    assert (cfg.batch_delay_s, cfg.batch_fail_rate, cfg.batch_expire_rate) == (2.0, 0.2, 0.1)
    bad = CliRunner().invoke(app, ["sim", "serve", "--port", "0", "--body-fault", "xml"])
    # treegen.cli turns a ConfigError into exit code 2 with its message; here it arrives raw.
    assert isinstance(bad.exception, ConfigError) and "--body-fault" in str(bad.exception)
