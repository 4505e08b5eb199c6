"""The simulator's hostile-server faults, checked over real HTTP on loopback with the real
openai SDK (or raw httpx where the SDK would hide what the server sent)."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from treegen.errors import ConfigError
from treegen.parsing import parse_reply
from treegen.prompts import build_messages
from treegen.sim.pool import synthetic_pool
from treegen.sim.server import SimConfig, Simulator, SimServer
from treegen.task import TaskFormat, example_from_dict
from treegen.tokens import count_text

MODEL = "gpt-4o-mini"
FMT = TaskFormat.parse("yesno_close")
SEEDS = synthetic_pool(FMT, n=20, seed=5)


def messages(i: int = 0, k: int = 5) -> list[dict[str, str]]:
    return build_messages([SEEDS[i]], FMT, k)


def sdk(server: SimServer, api_key: str = "x", timeout: float = 10.0) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=api_key, max_retries=0, timeout=timeout)


def test_ignore_max_tokens_replies_far_longer_and_reports_it() -> None:
    with SimServer(SimConfig(ignore_max_tokens=True)) as server:
        # k = 5 items are about 200 tokens: the server must write more to go far past 300.
        resp = sdk(server).chat.completions.create(model=MODEL, messages=messages(), max_tokens=300)
        text = resp.choices[0].message.content
        assert resp.usage.completion_tokens > 3 * 300
        assert resp.usage.completion_tokens == count_text(text, MODEL)  # the usage is the truth
        assert resp.choices[0].finish_reason == "stop"
        assert len([c for c in parse_reply(text) if c.obj is not None]) > 5
    with SimServer(SimConfig()) as honest:  # the control: the same request is capped
        resp = sdk(honest).chat.completions.create(model=MODEL, messages=messages(), max_tokens=300)
        assert resp.usage.completion_tokens <= 300
        resp = sdk(honest).chat.completions.create(model=MODEL, messages=messages(), max_tokens=20)
        assert resp.usage.completion_tokens <= 20 and resp.choices[0].finish_reason == "length"


def test_usage_inflate_reports_millions_of_tokens_for_a_normal_reply() -> None:
    with SimServer(SimConfig(usage_inflate=5_000_000)) as server:
        resp = sdk(server).chat.completions.create(model=MODEL, messages=messages())
        text = resp.choices[0].message.content
        assert resp.usage.completion_tokens == 5_000_000
        assert resp.usage.total_tokens == resp.usage.prompt_tokens + 5_000_000
        assert count_text(text, MODEL) < 1000
        assert len([example_from_dict(c.obj, FMT) for c in parse_reply(text)]) == 5


@pytest.mark.parametrize("kind", ["html", "empty", "notjson"])
def test_body_fault_is_a_200_whose_body_is_not_the_completion(kind: str) -> None:
    with SimServer(SimConfig(body_fault=kind)) as server:
        r = httpx.post(server.base_url + "/chat/completions", json={"model": MODEL, "messages": messages()})
        assert r.status_code == 200
        if kind == "html":
            assert r.headers["content-type"].startswith("text/html") and r.text.lstrip().startswith("<!DOCTYPE html>")
        elif kind == "empty":
            assert r.content == b"" and r.headers["content-type"] == "application/json"
        else:
            assert r.headers["content-type"] == "application/json" and r.content
        if kind != "html":
            with pytest.raises(json.JSONDecodeError):
                json.loads(r.content)
        # What the engine sees through the SDK: no APIError in any of the three cases.
        client = sdk(server)
        if kind == "html":
            got = client.chat.completions.create(model=MODEL, messages=messages())
            assert isinstance(got, str) and "<html>" in got  # the SDK hands back the page itself
        else:
            with pytest.raises(ValueError):  # json.JSONDecodeError, not an openai.APIError
                client.chat.completions.create(model=MODEL, messages=messages())


def test_body_fault_rate_spares_some_replies() -> None:
    with SimServer(SimConfig(body_fault="empty", body_fault_rate=0.5)) as server:
        with httpx.Client(base_url=server.base_url) as http:
            sizes = [len(http.post("/chat/completions", json={"model": MODEL, "messages": messages(i)}).content)
                     for i in range(16)]
    assert 0 < sum(s == 0 for s in sizes) < 16


def test_hang_rate_never_answers_and_notices_the_client_leave() -> None:
    with SimServer(SimConfig(hang_rate=1.0)) as server:
        start = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            sdk(server, timeout=0.5).chat.completions.create(model=MODEL, messages=messages())
        assert time.monotonic() - start < 3
        deadline = time.monotonic() + 3
        while server.stats()["hangs_abandoned"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = server.stats()
        assert stats["never_answered"] == 1 and stats["hangs_abandoned"] == 1
        assert stats["requests"] == 0  # nothing was ever sent back
    # With no one to notice a departure, the hang lasts until the server stops.
    sim = Simulator(SimConfig(hang_rate=1.0))
    body = json.dumps({"model": MODEL, "messages": messages()}).encode()
    import threading

    threading.Timer(0.3, sim.close).start()
    t0 = time.monotonic()
    status, _, payload = sim.handle("POST", "/v1/chat/completions", {}, body)
    assert status == 0 and payload == b"" and 0.25 < time.monotonic() - t0 < 3


def test_echo_auth_puts_the_bearer_key_into_error_bodies() -> None:
    secret = "sk-sim-SECRET-0123456789"
    with SimServer(SimConfig(error_rate=1.0, echo_auth=True)) as server:
        with pytest.raises(openai.InternalServerError) as info:
            sdk(server, api_key=secret).chat.completions.create(model=MODEL, messages=messages())
        assert f"Bearer {secret}" in info.value.response.json()["error"]["message"]
        assert secret in str(info.value)  # the SDK's exception text carries it too
        ok = httpx.get(server.base_url + "/models", headers={"authorization": f"Bearer {secret}"})
        assert ok.status_code == 200 and secret not in ok.text  # only error statuses echo
    with SimServer(SimConfig(api_key="right", echo_auth=True)) as server:
        with pytest.raises(openai.AuthenticationError) as info:
            sdk(server, api_key=secret).models.list()
        assert secret in info.value.response.text
    with SimServer(SimConfig(error_rate=1.0)) as server:  # off by default
        with pytest.raises(openai.InternalServerError) as info:
            sdk(server, api_key=secret).chat.completions.create(model=MODEL, messages=messages())
        assert secret not in info.value.response.text


def test_new_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="--body-fault"):
        SimConfig(body_fault="xml").validate()
    with pytest.raises(ConfigError, match="--hang-rate"):
        SimConfig(hang_rate=2.0).validate()
    with pytest.raises(ConfigError, match="--usage-inflate"):
        SimConfig(usage_inflate=-1).validate()
    with pytest.raises(ConfigError, match="--refuse-response-format"):
        SimConfig(refuse_response_format=["yaml"]).validate()
    with pytest.raises(ConfigError, match="--batch-fail-rate"):
        SimConfig(batch_fail_rate=1.5).validate()
