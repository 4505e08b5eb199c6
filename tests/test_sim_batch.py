"""The simulator's OpenAI Batch API, driven by the real openai SDK over loopback HTTP."""

from __future__ import annotations

import io
import json
import time

import httpx
import openai
import pytest

from treegen.parsing import parse_reply
from treegen.prompts import build_messages
from treegen.sim.pool import synthetic_pool
from treegen.sim.server import SimConfig, SimServer
from treegen.task import TaskFormat, example_from_dict
from treegen.tokens import count_messages, count_text

MODEL = "gpt-4o-mini"
FMT = TaskFormat.parse("yesno_close")
SEEDS = synthetic_pool(FMT, n=40, seed=11)


def body(i: int, k: int = 3) -> dict:
    return {"model": MODEL, "messages": build_messages([SEEDS[i]], FMT, k), "temperature": 1.0, "seed": i}


def input_file(n: int, k: int = 3) -> bytes:
    rows = [{"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body(i, k)} for i in range(n)]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def sdk(server: SimServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=10)


def submit(client: openai.OpenAI, n: int, k: int = 3, metadata: dict | None = None):
    f = client.files.create(file=("in.jsonl", io.BytesIO(input_file(n, k))), purpose="batch")
    return client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h", metadata=metadata
    )


def lines(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines()]


def test_batch_completes_with_k_example_replies_and_usage() -> None:
    with SimServer(SimConfig(seed=3)) as server:
        client = sdk(server)
        f = client.files.create(file=("in.jsonl", io.BytesIO(input_file(6))), purpose="batch")
        assert f.purpose == "batch" and f.bytes == len(input_file(6)) and f.status == "processed"
        assert client.files.retrieve(f.id).filename == "in.jsonl"
        assert client.files.content(f.id).content == input_file(6)
        batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert batch.status == "validating" and batch.output_file_id is None
        done = client.batches.retrieve(batch.id)  # batch_delay_s = 0: done on the next retrieve
        assert done.status == "completed" and done.completed_at and done.in_progress_at
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (6, 6, 0)
        assert done.error_file_id is None
        out = lines(client, done.output_file_id)
        assert client.files.retrieve(done.output_file_id).purpose == "batch_output"
        assert sorted(x["custom_id"] for x in out) == [f"req-{i}" for i in range(6)]
        prompt_total = completion_total = 0
        for line in out:
            assert line["error"] is None and line["id"].startswith("batch_req_")
            resp = line["response"]
            assert resp["status_code"] == 200 and resp["request_id"]
            completion = resp["body"]
            assert completion["object"] == "chat.completion" and completion["system_fingerprint"] == "treegen-sim"
            text = completion["choices"][0]["message"]["content"]
            assert len([example_from_dict(c.obj, FMT) for c in parse_reply(text)]) == 3
            i = int(line["custom_id"].split("-")[1])
            usage = completion["usage"]
            assert usage["prompt_tokens"] == count_messages(body(i)["messages"], MODEL)
            assert usage["completion_tokens"] == count_text(text, MODEL)
            prompt_total += usage["prompt_tokens"]
            completion_total += usage["completion_tokens"]
            # The same request sent synchronously gets the same content (same seeding).
            sync = client.chat.completions.create(**body(i))
            assert sync.choices[0].message.content == text
        assert done.usage.input_tokens == prompt_total and done.usage.output_tokens == completion_total
        assert done.model == MODEL


def test_metadata_round_trips_through_list_and_pages() -> None:
    with SimServer(SimConfig()) as server:
        client = sdk(server)
        made = [submit(client, 1, metadata={"run": f"r{i}", "node": str(i)}) for i in range(5)]
        page = client.batches.list(limit=2)
        assert [b.id for b in page.data] == [made[4].id, made[3].id]  # newest first
        assert page.has_more is True
        everything = list(client.batches.list(limit=2))  # the SDK follows `after` cursors
        assert [b.id for b in everything] == [b.id for b in reversed(made)]
        assert {b.id: b.metadata for b in everything} == {b.id: {"run": f"r{i}", "node": str(i)} for i, b in enumerate(made)}
        assert all(b.status == "completed" for b in everything)  # listing moves batches on too
        last = client.batches.list(limit=10, after=made[1].id)
        assert [b.id for b in last.data] == [made[0].id] and last.has_more is False


def test_cancel_keeps_what_was_done() -> None:
    with SimServer(SimConfig(batch_delay_s=1.0)) as server:
        client = sdk(server)
        batch = submit(client, 4)
        # Request i of 4 is done at 0.1 + 0.7 * (i + 1) / 4 seconds: 0.275, 0.45, 0.625, 0.8.
        time.sleep(0.5)
        running = client.batches.retrieve(batch.id)
        assert running.status == "in_progress" and 1 <= running.request_counts.completed <= 3
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at
        kept = cancelling.request_counts.completed
        assert 1 <= kept <= 3
        time.sleep(0.6)  # past the batch's own end: a cancelled batch does not run on
        cancelled = client.batches.retrieve(batch.id)
        assert cancelled.status == "cancelled" and cancelled.cancelled_at
        out = lines(client, cancelled.output_file_id)
        assert [x["custom_id"] for x in out] == [f"req-{i}" for i in range(kept)]
        assert cancelled.request_counts.completed == kept and cancelled.request_counts.total == 4
        assert cancelled.error_file_id is None  # requests never run have no line
        with pytest.raises(openai.ConflictError):
            client.batches.cancel(batch.id)


def test_fail_and_expire_rates_give_error_lines() -> None:
    with SimServer(SimConfig(batch_fail_rate=0.3, batch_expire_rate=0.3, seed=1)) as server:
        client = sdk(server)
        batch = client.batches.retrieve(submit(client, 20).id)
        ok, errors = lines(client, batch.output_file_id), lines(client, batch.error_file_id)
        failed = [e for e in errors if e["response"] is not None]
        expired = [e for e in errors if e["response"] is None]
        assert failed and expired and ok
        assert all(e["response"]["status_code"] == 500 and e["response"]["body"]["error"]["type"] == "server_error"
                   and e["error"] is None for e in failed)
        assert all(e["error"]["code"] == "batch_expired" for e in expired)
        ids = [x["custom_id"] for x in ok + errors]
        assert sorted(ids) == sorted(f"req-{i}" for i in range(20))  # every request is accounted for once
        assert batch.status == "expired" and batch.expired_at  # some did not finish in the window
        assert batch.request_counts.completed == len(ok) and batch.request_counts.failed == len(errors)
    with SimServer(SimConfig(batch_fail_rate=1.0)) as server:
        client = sdk(server)
        batch = client.batches.retrieve(submit(client, 3).id)
        assert batch.status == "completed" and batch.output_file_id is None
        assert len(lines(client, batch.error_file_id)) == 3 and batch.request_counts.failed == 3


def test_delay_is_honoured() -> None:
    with SimServer(SimConfig(batch_delay_s=0.6)) as server:
        client = sdk(server)
        start = time.monotonic()
        batch = submit(client, 2)
        seen = []
        while True:
            b = client.batches.retrieve(batch.id)
            if not seen or seen[-1] != b.status:
                seen.append(b.status)
            if b.status == "completed":
                break
            assert time.monotonic() - start < 5
            time.sleep(0.02)
        assert time.monotonic() - start >= 0.6
        assert seen[0] in ("validating", "in_progress") and seen[-2:] == ["finalizing", "completed"]
        assert "in_progress" in seen


def test_bad_input_fails_the_batch_or_the_request() -> None:
    with SimServer(SimConfig()) as server:
        client = sdk(server)
        good = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body(0)}
        text = json.dumps(good) + "\n{oops\n" + json.dumps(good) + "\n"
        f = client.files.create(file=("bad.jsonl", io.BytesIO(text.encode())), purpose="batch")
        b = client.batches.retrieve(
            client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id
        )
        assert b.status == "failed" and b.failed_at
        assert [(e.code, e.line) for e in b.errors.data] == [("invalid_json_line", 2), ("duplicate_custom_id", 3)]
        with pytest.raises(openai.BadRequestError, match="completion_window"):
            client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="1h")
        with pytest.raises(openai.BadRequestError, match="input_file_id"):
            client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
        with pytest.raises(openai.NotFoundError):
            client.batches.retrieve("batch_nope")
        # A request the chat endpoint would refuse is one error line with that 400.
        bad_body = {"custom_id": "b", "method": "POST", "url": "/v1/chat/completions", "body": {"model": MODEL}}
        f = client.files.create(file=("x.jsonl", io.BytesIO((json.dumps(good) + "\n" + json.dumps(bad_body)).encode())), purpose="batch")
        b = client.batches.retrieve(
            client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id
        )
        (err,) = lines(client, b.error_file_id)
        assert err["custom_id"] == "b" and err["response"]["status_code"] == 400
        assert b.status == "completed" and b.request_counts.completed == 1
        r = httpx.post(server.base_url + "/files", files={"file": ("x.jsonl", b"{}")}, data={"purpose": "fine-tune"})
        assert r.status_code == 400 and "purpose" in r.json()["error"]["message"]


def test_content_faults_apply_in_batches() -> None:
    with SimServer(SimConfig(truncate_rate=1.0)) as server:
        client = sdk(server)
        batch = client.batches.retrieve(submit(client, 3).id)
        for line in lines(client, batch.output_file_id):
            choice = line["response"]["body"]["choices"][0]
            assert choice["finish_reason"] == "length" and parse_reply(choice["message"]["content"])[-1].error == "truncated"


def test_concurrent_reads_run_each_request_once() -> None:
    from concurrent.futures import ThreadPoolExecutor

    with SimServer(SimConfig(batch_delay_s=0.4)) as server:
        client = sdk(server)
        batch = submit(client, 8)

        def poll(_: int) -> str:
            while (b := client.batches.retrieve(batch.id)).status != "completed":
                time.sleep(0.01)
            return b.output_file_id

        with ThreadPoolExecutor(6) as pool:
            file_ids = set(pool.map(poll, range(6)))
        assert len(file_ids) == 1  # one output file, written once
        out = lines(client, file_ids.pop())
        assert sorted(x["custom_id"] for x in out) == sorted(f"req-{i}" for i in range(8))
        assert server.stats()["batches"] == 1
