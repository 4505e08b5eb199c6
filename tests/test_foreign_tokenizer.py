"""A server whose tokenizer counts more prompt tokens than ours cannot push spending over a cap.

The seam is an httpx.MockTransport under the real openai client (no network).
"""

from __future__ import annotations

import asyncio
import json

import httpx

from treegen.api import create_run
from treegen.budget import Caps
from treegen.config import RunConfig
from treegen.engine import Engine
from treegen.prices import ModelPrice
from treegen.task import example_from_dict
from treegen.tokens import count_messages

SEED = {"question": "Is a kilogram of feathers as heavy as a kilogram of iron?", "context": None,
        "options": ["True", "False"], "label": "True"}


def make_handler(ratio: float, seen: list):
    counter = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        counter["n"] += 1
        n = counter["n"]
        items = [{"question": f"Generated question number {n}-{i}?", "context": None,
                  "options": ["True", "False"], "label": "True"} for i in range(3)]
        local = count_messages(body["messages"], body["model"])
        return httpx.Response(200, json={
            "id": f"chatcmpl-{n}", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": json.dumps(items)},
                         "finish_reason": "stop"}],
            # A foreign tokenizer: many more prompt tokens than tiktoken counts, and the whole
            # completion allowance used.
            "usage": {"prompt_tokens": int(local * ratio), "completion_tokens": body["max_tokens"],
                      "total_tokens": int(local * ratio) + body["max_tokens"]},
        })

    return handler


def test_foreign_tokenizer_stays_under_the_dollar_cap(tmp_path):
    price = ModelPrice(model="llama3:8b", input=1_000_000, cached_input=1_000_000, output=1_000_000,
                       batch_input=1_000_000, batch_output=1_000_000)  # $1 per 1M tokens
    cap = 5_000  # $0.005
    cfg = RunConfig(task_format="yesno_close", strategy="naive", model="llama3:8b",
                    base_url="http://llm.invalid/v1", k=3, max_output_tokens=200, concurrency=8,
                    caps=Caps(max_usd_micro=cap), price=price, structured="off")
    store = create_run(cfg, [example_from_dict(SEED)], tmp_path)
    db = store.conn
    seen: list = []

    async def go():
        client = httpx.AsyncClient(transport=httpx.MockTransport(make_handler(1.8, seen)))
        engine = Engine(store, cfg, cfg.base_url, api_key="x", http_client=client)
        result = await engine.run()
        return engine, result

    engine, result = asyncio.run(go())
    assert result.status == "stopped: budget reached"
    spent = db.execute("select sum(cost_micro) from calls").fetchone()[0]
    assert 0 < spent <= cap
    assert engine.prompt_ratio > 1.5  # learned from the server's counts
    # Every call's reported cost fit inside what was reserved for it.
    for reserved, cost in db.execute("select reserved_micro, cost_micro from calls where status='ok'"):
        assert cost <= reserved
