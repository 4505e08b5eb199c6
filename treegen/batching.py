"""Batch mode (``--batch``): the engine's requests sent as OpenAI Batch jobs, at Batch prices,
under the same ledger.

One Batch job per *wave*: for tree and novelty the whole frontier the strategy offers before
it needs a result (one depth), for the chain strategies up to ``batch_wave`` requests. The
strategy is asked for jobs and told of results exactly as in synchronous mode.

The order of things for every wave, so that a kill -9 in any window loses nothing paid and
sends nothing twice:

1. reserve every request at Batch prices; a wave that does not fit is shrunk to what fits
   (the rest waits for the next wave);
2. write the call rows, status ``batched``, each with its ``custom_id`` and wave (commit);
3. upload the JSONL input file (``files.create(purpose="batch")``);
4. create the batch with ``metadata={"treegen_run": RUN, "treegen_wave": N}``;
5. record the provider's batch id in ``batches`` (commit);
6. poll ``batches.retrieve`` until the batch ends;
7. record each reply of the output file through the engine's acceptance path (persist, then
   count), at Batch prices; error-file lines are errors costing 0, retried alone in the next
   wave (expired and server-failed requests); requests a cancelled batch never ran cost 0.

Resume (a new ``BatchEngine`` on the run) finds the ``batched`` rows: a wave with a recorded
batch is polled; a wave without one is looked up by its metadata in ``batches.list`` (a
crash between 4 and 5) and only sent when the provider has no batch for it. ``batched`` rows
are in flight: held, not spent; resume holds their reservations again.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Literal, Sequence
from urllib.parse import urlparse

import openai

from treegen.budget import BudgetReached, Reservation
from treegen.client import OPENAI_BASE_URL, AttemptFailure, ChatReply, uses_max_completion_tokens
from treegen.config import RunConfig
from treegen.engine import Engine, Progress, RunResult, _Request, request_key_of, stable_seed
from treegen.errors import BackendError, InputError
from treegen.prices import ModelPrice, cost_micro, worst_case_micro
from treegen.redact import redact
from treegen.store import CallStatus, RunStatus, RunStore, node_example, utcnow
from treegen.strategies import Job, NodeInfo
from treegen.tokens import count_messages

BATCH_ENDPOINT: Literal["/v1/chat/completions"] = "/v1/chat/completions"
COMPLETION_WINDOW: Literal["24h"] = "24h"
TERMINAL = ("completed", "expired", "cancelled", "failed")
MAX_WAVE_REQUESTS = 50_000  # OpenAI's limit of requests in one batch
FRONTIER_STRATEGIES = ("tree", "novelty", "naive")  # a wave is what the strategy offers at once
LIST_LOOKBACK_S = 600  # how far before a wave's rows a batch of it can have been created


# ---- progress ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchInFlight:
    """One batch job being polled: the provider's status and request counts at its last poll."""

    wave: int
    batch_id: str
    status: str
    requests: int | None  # None until the provider says (validating)
    completed: int
    failed: int


@dataclass
class BatchProgress(Progress):
    """A ``Progress`` of a ``--batch`` run: ``in_flight`` counts requests waiting in batches;
    ``batches`` are the jobs in flight with their counts, ``batches_done`` those ended this session."""

    batches: list[BatchInFlight] = field(default_factory=list)
    batches_done: int = 0


# ---- Batch prices (pure) ----------------------------------------------------------------
def batch_price(price: ModelPrice) -> ModelPrice:
    """The price as a synchronous price whose rates are the Batch rates.

    The engine's own arithmetic on it (``afford_max_tokens``, ``worst_case_micro``,
    ``reconcile_usage`` -> ``cost_micro``) then reserves and costs every request at Batch
    prices: input and output at the Batch rates, cached input at half the cached rate (exact
    when the cached rate in micro-dollars per 1M is even, as every listed price is; for an odd
    one the cost rounds up by at most one micro-dollar a call, never down).
    """
    half_cached = -(-price.cached_input // 2)
    return replace(price, input=price.batch_input, output=price.batch_output, cached_input=half_cached,
                   batch_input=price.batch_input, batch_output=price.batch_output)


def batch_worst_case_micro(price: ModelPrice, prompt_tokens: int, max_tokens: int) -> int:
    """Upper bound on one Batch request's cost: ``worst_case_micro`` at Batch rates.

    Cached input at Batch prices is half the cached rate, never above the Batch input rate,
    so all-uncached is the worst case.
    """
    return worst_case_micro(batch_price(price), prompt_tokens, max_tokens)


def batch_cost_micro(price: ModelPrice | None, prompt_tokens: int, completion_tokens: int,
                     cached_tokens: int = 0) -> int:
    """What a Batch reply costs (``prices.cost_micro(..., batch=True)``); 0 without a price."""
    return cost_micro(price, prompt_tokens, completion_tokens, cached_tokens, batch=True) if price else 0


def _loopback(base_url: str | None) -> bool:
    host = urlparse(base_url or OPENAI_BASE_URL).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")


@dataclass
class _Retry:
    """A request to send (again) in the next wave."""

    job: Job
    request_key: str | None = None  # None: a new request
    attempt: int = 1
    seq: int | None = None  # the request's number in the run (its seed, its turn)


@dataclass
class _Batched:
    """One request of a wave: its call row and what it was reserved."""

    req: _Request
    call_id: int
    custom_id: str
    request_key: str
    attempt: int
    seed: int
    body: dict[str, Any]
    sent_at: float


def reply_from_body(body: dict[str, Any], request_id: str | None) -> ChatReply:
    """A chat completion from a Batch output line, as ``ChatClient.chat`` returns one."""
    choices = body.get("choices") or []
    if not choices:
        raise ValueError("the output line holds no choices")
    choice = choices[0]
    usage = body.get("usage")
    cached = 0
    if isinstance(usage, dict):
        cached = int(((usage.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0)
    return ChatReply(
        text=(choice.get("message") or {}).get("content") or "", finish_reason=choice.get("finish_reason"),
        prompt_tokens=usage.get("prompt_tokens") if isinstance(usage, dict) else None,
        completion_tokens=usage.get("completion_tokens") if isinstance(usage, dict) else None,
        cached_tokens=cached, request_id=request_id, model=body.get("model"),
        system_fingerprint=body.get("system_fingerprint"),
    )


class BatchEngine(Engine):
    """The engine with Batch jobs instead of synchronous requests (same constructor, ``run``)."""

    def __init__(self, store: RunStore, cfg: RunConfig, base_url: str | None, api_key: str | None = None,
                 on_progress: Callable[[Progress], None] | None = None, http_client: Any = None,
                 *, poll_max_s: float | None = None, collect_only: bool = False):
        super().__init__(store, cfg, base_url, api_key=api_key, on_progress=on_progress, http_client=http_client)
        # Poll quickly at first, then back off to this: a real batch takes minutes to hours.
        self.poll_max_s = poll_max_s if poll_max_s is not None else (0.5 if _loopback(base_url) else 30.0)
        self.collect_only = collect_only  # record batches already sent, send nothing new
        # The engine reserves and costs with self.price: at Batch rates here (cfg.price keeps
        # the list price for reports).
        self.price = batch_price(cfg.price) if cfg.price else None
        self._queue: list[_Retry] = []  # jobs for the next wave (shrunk waves, retries)
        self._waiting: dict[str, _Batched] = {}  # custom_id -> request of the wave in flight
        self._api: openai.AsyncOpenAI | None = None
        self.batches_in_flight = 0
        self._live: dict[int, BatchInFlight] = {}  # batches row id -> its last poll, while polled
        self.batches_done = 0

    def progress(self) -> BatchProgress:
        p = super().progress()
        base = {f.name: getattr(p, f.name) for f in fields(Progress)}
        base["in_flight"] = len(self._waiting)
        return BatchProgress(**base, batches=sorted(self._live.values(), key=lambda b: b.wave),
                             batches_done=self.batches_done)

    def _note_poll(self, row: dict[str, Any], batch: Any) -> None:
        """What the progress shows of this batch: its status and counts at this poll."""
        counts = getattr(batch, "request_counts", None) if batch is not None else None
        last = self._live.get(row["id"])
        self._live[row["id"]] = BatchInFlight(
            wave=int(row["wave"]), batch_id=str(row["provider_batch_id"]),
            status=str(batch.status) if batch is not None else (last.status if last else str(row["status"])),
            requests=counts.total if counts else (last.requests if last else row.get("requests")),
            completed=counts.completed if counts else (last.completed if last else int(row.get("completed") or 0)),
            failed=counts.failed if counts else (last.failed if last else int(row.get("failed") or 0)))

    # ---- the loop --------------------------------------------------------------------
    async def run(self) -> RunResult:
        self._api = openai.AsyncOpenAI(base_url=self.base_url or OPENAI_BASE_URL,
                                       api_key=self.api_key or "not-needed", max_retries=2,
                                       timeout=self.cfg.timeout, http_client=self.http_client)
        self._begin()
        try:
            await self._recover()
            if self.collect_only:
                self._stop(RunStatus.INTERRUPTED, "batches recorded; continue with `treegen resume`")
            else:
                await self._wave_loop()
        except openai.APIError as exc:
            self.fatal = redact(f"the Batch API at {self.base_url or OPENAI_BASE_URL} failed: {exc}", self._secrets())
            self._stop(RunStatus.FAILED, self.fatal)
        finally:
            await self._api.close()
        self._report(force=True)
        return self._finalise()

    async def _wave_loop(self) -> None:
        while self.stop_reason is None:
            reason = self.ledger.stop_reason()
            if reason:
                self._stop(RunStatus.COMPLETED if reason.startswith("target") else RunStatus.BUDGET, reason)
                break
            wave, requests = await self._build_wave()
            if not requests:
                if self.stop_reason is None:
                    self._stop(RunStatus.COMPLETED, "nothing left to expand: every node reached max depth or used "
                                                    "its expansion tries (--expand-retries)")
                break
            row = await self._submit(wave, requests)
            if row is not None:
                await self._collect(row, requests)

    def _wave_limit(self) -> int:
        if self.cfg.strategy in FRONTIER_STRATEGIES:
            return MAX_WAVE_REQUESTS
        return min(self.cfg.batch_wave, MAX_WAVE_REQUESTS)

    async def _build_wave(self) -> tuple[int, list[_Batched]]:
        """Steps 1 and 2: reserve what fits of the jobs on offer, write their call rows."""
        todo, self._queue = self._queue, []
        limit = self._wave_limit()
        while len(todo) < limit:
            job = self.strategy.next_job()
            if job is None:
                break
            todo.append(_Retry(job))
        if len(todo) > limit:
            todo, self._queue = todo[:limit], todo[limit:] + self._queue
        wave = self.store.max_batch_wave() + 1
        out: list[_Batched] = []
        for i, item in enumerate(todo):
            open_examples = self.ledger.examples_open()
            if open_examples is not None and open_examples <= 0:
                self._queue = todo[i:] + self._queue  # the target may still be missed: kept
                break
            messages, k, local_prompt, reserved_prompt = self._prompt(item.job)
            try:
                reservation, max_tokens = self._reserve(reserved_prompt, k)
            except BudgetReached as exc:
                if out:  # shrink the wave; what is left waits for its replies to settle
                    self._queue = todo[i:] + self._queue
                    break
                for rest in todo[i:]:
                    if rest.seq is None:
                        self.strategy.on_result(rest.job, [], None)
                    else:  # a retry: its turn was taken when it failed
                        self._finish_in_turn(self._stub(rest), [], None, expanded=False)
                self._stop(RunStatus.COMPLETED if exc.reason.startswith("target") else RunStatus.BUDGET, exc.reason)
                return wave, []
            req = _Request(item.job, messages, k, local_prompt, reserved_prompt, max_tokens, reservation)
            out.append(self._write_row(wave, req, item))
        return wave, out

    def _write_row(self, wave: int, req: _Request, item: _Retry) -> _Batched:
        job = req.job
        parent_ids = [p.id for p in job.parents]
        if item.request_key is None or item.seq is None:
            req.seq = self._seq  # numbered as the synchronous engine numbers its requests
            self._seq += 1
            request_key = request_key_of(req.seq)
        else:
            req.seq, request_key = item.seq, item.request_key
        seed = stable_seed(self.cfg.seed, req.seq)
        custom_id = f"{request_key}-{item.attempt}"
        body = self._body(req.messages, req.max_tokens, seed, req.k)
        call_id = self.store.insert_call({
            "created_at": utcnow(), "parent_node_ids": json.dumps(parent_ids), "depth": job.depth,
            "strategy": self.cfg.strategy, "chain": job.chain, "attempt": item.attempt, "request_key": request_key,
            "model": self.cfg.model, "status": CallStatus.BATCHED, "reserved_prompt_tokens": req.reserved_prompt,
            "reserved_tokens": req.reservation.tokens, "reserved_micro": req.reservation.micro,
            "simulated": int(self.simulated), "base_url": self.base_url, "batch_wave": wave, "custom_id": custom_id,
            "params": json.dumps({"max_tokens": req.max_tokens, "temperature": self.cfg.temperature,
                                  "top_p": self.cfg.top_p, "seed": seed, "k": req.k,
                                  "response_format": self.dialect, "batch": True}),
        }, messages=req.messages)
        return _Batched(req, call_id, custom_id, request_key, item.attempt, seed, body, time.monotonic())

    def _body(self, messages: list[dict[str, str]], max_tokens: int, seed: int, k: int) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.cfg.model, "messages": messages, "seed": seed}
        body["max_completion_tokens" if uses_max_completion_tokens(self.cfg.model, self.base_url)
             else "max_tokens"] = max_tokens
        if self.cfg.temperature is not None:
            body["temperature"] = self.cfg.temperature
        if self.cfg.top_p is not None:
            body["top_p"] = self.cfg.top_p
        response_format = self._response_format(k)
        if response_format is not None:
            body["response_format"] = response_format
        return body

    # ---- sending ---------------------------------------------------------------------
    async def _submit(self, wave: int, requests: Sequence[_Batched]) -> dict[str, Any] | None:
        """Steps 3 to 5. None when the provider refused the wave (then nothing was sent)."""
        assert self._api is not None
        lines = "".join(json.dumps({"custom_id": r.custom_id, "method": "POST", "url": BATCH_ENDPOINT,
                                    "body": r.body}, ensure_ascii=False) + "\n" for r in requests)
        try:
            file_id = await self._upload(wave, lines.encode("utf-8"))
            batch = await self._create(wave, file_id)
        except openai.APIStatusError as exc:
            message = redact(f"the Batch API at {self.base_url or OPENAI_BASE_URL} refused wave {wave} "
                             f"({exc.status_code}): {exc.message}", self._secrets())
            await self._abort(requests, message)
            self.fatal = message
            self._stop(RunStatus.FAILED, message)
            return None
        return self._record_batch(wave, file_id, batch)

    async def _upload(self, wave: int, data: bytes) -> str:
        assert self._api is not None
        f = await self._api.files.create(file=(f"treegen-{self.run_id}-wave{wave}.jsonl", data), purpose="batch")
        return str(f.id)

    async def _create(self, wave: int, file_id: str) -> Any:
        """Create the wave's batch once: the SDK's retries are off for this call, and before any
        retry the provider is asked whether the lost answer had created it after all."""
        assert self._api is not None
        api = self._api.with_options(max_retries=0)
        since = time.time() - LIST_LOOKBACK_S
        for attempt in range(1, self.cfg.max_retries + 2):
            try:
                return await api.batches.create(
                    input_file_id=file_id, endpoint=BATCH_ENDPOINT, completion_window=COMPLETION_WINDOW,
                    metadata={"treegen_run": self.run_id, "treegen_wave": str(wave)})
            except (openai.APIConnectionError, openai.InternalServerError, openai.RateLimitError):
                if attempt > self.cfg.max_retries:
                    raise
                found = await self._find_provider_batch(wave, since)
                if found is not None:
                    return found
                await asyncio.sleep(min(0.5 * 2 ** (attempt - 1), 10.0))
        raise AssertionError("unreachable")

    async def _find_provider_batch(self, wave: int, since: float) -> Any | None:
        """The provider's batch for this run's wave, found by its metadata (newest first)."""
        assert self._api is not None
        async for b in self._api.batches.list(limit=100):
            meta = b.metadata or {}
            if meta.get("treegen_run") == self.run_id and meta.get("treegen_wave") == str(wave):
                return b
            if b.created_at is not None and b.created_at < since:
                return None
        return None

    def _record_batch(self, wave: int, file_id: str, batch: Any) -> dict[str, Any]:
        now = utcnow()
        counts = batch.request_counts
        row = {
            "wave": wave, "provider_batch_id": batch.id, "input_file_id": file_id, "status": batch.status,
            "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id,
            "requests": counts.total if counts else None, "completed": counts.completed if counts else None,
            "failed": counts.failed if counts else None, "created_at": now, "updated_at": now,
        }
        row["id"] = self.store.insert_batch(row)
        return row

    async def _abort(self, requests: Sequence[_Batched], message: str) -> None:
        """Requests that never reached a batch: errors costing 0, their parents asked again later."""
        for r in sorted(requests, key=lambda r: r.req.seq):
            self.store.update_call(r.call_id, {"status": CallStatus.ERROR, "error": message, "cost_micro": 0})
            self.ledger.settle(r.req.reservation, 0, 0)
            await self._finish_job(r.req, [], None)

    def _stub(self, item: _Retry) -> _Request:
        """A request that is not sent after all (only its job and number matter)."""
        return _Request(item.job, [], 0, 0, 0, 0, Reservation(0, 0, 0, settled=True), seq=item.seq or 0)

    # ---- polling and recording -------------------------------------------------------
    async def _collect(self, row: dict[str, Any], requests: Sequence[_Batched]) -> None:
        """Steps 6 and 7 for one batch; returns early (batch left in flight) when the run stops."""
        assert self._api is not None and self._stopped is not None
        for r in requests:
            self._waiting[r.custom_id] = r
        self.batches_in_flight += 1
        self._note_poll(row, None)
        self._report(force=True)  # the new batch shows at once, not at the next throttled event
        ended = False
        try:
            delay = 0.05
            while True:
                try:
                    batch = await self._api.batches.retrieve(row["provider_batch_id"])
                except openai.NotFoundError:
                    await self._lost(row, requests)
                    return
                except (openai.APIConnectionError, openai.InternalServerError, openai.RateLimitError) as exc:
                    self.last_error = redact(f"polling batch {row['provider_batch_id']}: {exc}", self._secrets())
                    batch = None
                if batch is not None:
                    counts = batch.request_counts
                    self.store.update_batch(row["id"], {
                        "status": batch.status, "output_file_id": batch.output_file_id,
                        "error_file_id": batch.error_file_id, "updated_at": utcnow(),
                        "completed": counts.completed if counts else None, "failed": counts.failed if counts else None,
                    })
                    self._note_poll(row, batch)
                    if batch.status in TERMINAL:
                        break
                self._report()
                if self.stop_reason is not None or self.ledger.stop_reason() is not None or self.collect_only:
                    return  # left in flight: a resume polls it
                try:
                    await asyncio.wait_for(self._stopped.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                delay = min(delay * 2, self.poll_max_s)
            await self._record_files(batch, requests)
            ended = True
        finally:
            self.batches_in_flight -= 1
            self._live.pop(row["id"], None)
            self.batches_done += ended
            for r in requests:
                self._waiting.pop(r.custom_id, None)

    async def _record_files(self, batch: Any, requests: Sequence[_Batched]) -> None:
        """Every request of the batch, in request order (the engine's reorder buffer): its
        output line, its error line, or none (never run)."""
        by_id = {r.custom_id: r for r in requests}
        still = {c["custom_id"] for c in self.store.batched_calls() if c["custom_id"] in by_id}
        lines = await self._read_lines(batch)
        detail = _failure_detail(batch)
        for r in sorted(requests, key=lambda r: r.req.seq):
            if r.custom_id not in still:
                continue  # recorded before a crash
            item = lines.get(r.custom_id)
            if item is not None:
                await self._record_line(r, item)
            else:
                await self._record_missing(r, batch, detail)
        if batch.status == "failed":
            self.fatal = f"the provider refused batch {batch.id} ({detail}); this is a treegen bug, please report it"
            self._stop(RunStatus.FAILED, self.fatal)
        if batch.status == "cancelled":
            self._stop(RunStatus.INTERRUPTED, f"batch {batch.id} was cancelled; continue with `treegen resume`")

    async def _read_lines(self, batch: Any) -> dict[str, dict[str, Any]]:
        """The output and error files' lines by custom_id (the first line of each wins)."""
        assert self._api is not None
        lines: dict[str, dict[str, Any]] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            text = (await self._api.files.content(file_id)).text
            for line in text.splitlines():
                if line.strip():
                    item = json.loads(line)
                    lines.setdefault(str(item.get("custom_id")), item)
        return lines

    async def _record_missing(self, r: _Batched, batch: Any, detail: str) -> None:
        """A request with no line: the batch failed validation, expired, or stopped first."""
        if batch.status == "failed":
            await self._record_error(r, None, f"batch {batch.id} failed validation: {detail}", retry=False)
        elif batch.status == "expired":
            await self._record_error(r, None, "batch_expired: not run before the completion window ended",
                                     retry=True)
        else:
            await self._record_error(r, None, f"not run: batch {batch.id} was {batch.status}", retry=False,
                                     finish=False)

    async def _record_line(self, r: _Batched, item: dict[str, Any]) -> None:
        response = item.get("response")
        error = item.get("error")
        if response and response.get("status_code") == 200 and isinstance(response.get("body"), dict):
            await self._record_reply_line(r, response)
        elif error:  # expired (or another provider-side error): not billed, sent again alone
            await self._record_error(r, None, f"{error.get('code')}: {error.get('message')}", retry=True)
        else:
            await self._record_status_line(r, response or {})

    async def _record_reply_line(self, r: _Batched, response: dict[str, Any]) -> None:
        try:
            reply = reply_from_body(response["body"], response.get("request_id"))
        except ValueError as exc:
            await self._record_error(r, 200, f"bad-body: {exc}", retry=True)
            return
        # Persist, count, judge in turn, tell the strategy: the synchronous path.
        duration = int((time.monotonic() - r.sent_at) * 1000)
        await self._accept_reply(r.req, r.call_id, reply, duration, r.req.reservation)
        if self.cfg.structured == "auto" and self.cfg.structured_dialect != self.dialect:
            self.cfg.structured_dialect = self.dialect
            self.store.save_config(self.cfg.to_json())

    async def _record_status_line(self, r: _Batched, response: dict[str, Any]) -> None:
        """A line whose request the provider answered with an HTTP error."""
        status = int(response.get("status_code") or 0)
        body = response.get("body") or {}
        message = str((body.get("error") or {}).get("message") or body)[:500]
        failure = AttemptFailure("server" if status >= 500 or status == 429 else "fatal", message, status)
        if self._dialect_refused(failure):
            await self._record_error(r, status, message, retry=True, count_attempt=False)
            return
        await self._record_error(r, status, f"{failure.kind}: {message}", retry=failure.retryable)

    async def _record_error(self, r: _Batched, http_status: int | None, message: str, retry: bool,
                            finish: bool = True, count_attempt: bool = True) -> None:
        """An error line (or a request never run): cost 0, then retried alone in a later wave
        while retries are left, else the job is over."""
        self.store.update_call(r.call_id, {"status": CallStatus.ERROR, "http_status": http_status,
                                           "error": redact(message, self._secrets()), "cost_micro": 0})
        self.ledger.settle(r.req.reservation, 0, 0)
        self._notify_settled()
        self.last_error = redact(message, self._secrets())
        if retry and (r.attempt <= self.cfg.max_retries or not count_attempt):
            async with self._in_turn(r.req.seq):
                pass  # later requests need not wait for the retry
            self._queue.append(_Retry(r.req.job, r.request_key, r.attempt + 1, r.req.seq))
        elif finish:
            await self._finish_job(r.req, [], r.call_id, expanded=retry)
        else:
            await self._finish_job(r.req, [], None)  # never run: asked again on resume

    async def _lost(self, row: dict[str, Any], requests: Sequence[_Batched]) -> None:
        """The provider does not know the batch (a simulator that restarted): nothing of it
        was billed; its requests are sent again in the next wave."""
        self.store.update_batch(row["id"], {"status": "lost", "updated_at": utcnow()})
        for r in requests:
            if (self.store.call(r.call_id) or {}).get("status") == CallStatus.BATCHED:
                await self._record_error(r, 404, f"batch {row['provider_batch_id']} unknown to the provider: "
                                         "sent again", retry=True, count_attempt=False)

    # ---- resume ----------------------------------------------------------------------
    async def _recover(self) -> None:
        """Batches a killed session left in flight: poll (or find, or send) each wave once."""
        rows = self.store.batched_calls()
        if not rows:
            return
        offered: list[Job] = []
        while (job := self.strategy.next_job()) is not None:
            offered.append(job)
        waves: dict[int, list[_Batched]] = {}
        for call in rows:
            job = self._match_job(call, offered)
            waves.setdefault(int(call["batch_wave"]), []).append(self._rehold(call, job))
        self._queue = [_Retry(j) for j in offered] + self._queue
        for wave in sorted(waves):
            if self.stop_reason is not None:
                break
            requests = waves[wave]
            row: dict[str, Any] | None = self.store.batch_for_wave(wave)
            if row is None or row["status"] == "lost":
                since = min(r.sent_at for r in requests)  # wall-clock seconds here (see _rehold)
                found = await self._find_provider_batch(wave, since - LIST_LOOKBACK_S)
                if found is not None:
                    row = self._record_batch(wave, found.input_file_id, found)
                else:
                    row = await self._submit(wave, requests)  # never created: send it now, once
                    if row is None:
                        continue
            for r in requests:
                r.sent_at = time.monotonic()
            await self._collect(row, requests)

    def _match_job(self, row: dict[str, Any], offered: list[Job]) -> Job:
        """The job a batched row answers: taken out of what the restored strategy offers (so it
        is not asked twice), else rebuilt from the row."""
        parent_ids = json.loads(row["parent_node_ids"] or "[]")
        for i, job in enumerate(offered):
            if [p.id for p in job.parents] == parent_ids and job.chain == row["chain"]:
                return offered.pop(i)
        parents = []
        for pid in parent_ids:
            node = self.store.node(pid)
            assert node is not None
            parents.append(NodeInfo(node["id"], node["depth"], node["root_id"], node_example(node),
                                    node["expanded"] or 0, node["novelty"]))
        return Job(parents, depth=int(row["depth"]), chain=row["chain"])

    def _rehold(self, row: dict[str, Any], job: Job) -> _Batched:
        """Hold a batched row's reservation again (its call is counted already)."""
        params = json.loads(row["params"] or "{}")
        messages = self.store.prompt_messages(row["prompt_hash"]) or []
        k = int(params.get("k") or self.cfg.k)
        reservation = Reservation(int(row["reserved_micro"] or 0), int(row["reserved_tokens"] or 0), k)
        self.ledger.held_micro += reservation.micro
        self.ledger.held_tokens += reservation.tokens
        self.ledger.held_examples += k
        max_tokens = int(params.get("max_tokens") or self.cfg.max_output_tokens)
        # Its number is older than this session's: its turn has passed.
        req = _Request(job, messages, k, count_messages(messages, self.cfg.model), int(row["reserved_prompt_tokens"] or 0),
                       max_tokens, reservation, seq=0)
        body = self._body(messages, max_tokens, int(params.get("seed") or 0), k)
        if params.get("response_format") is not None:
            saved, self.dialect = self.dialect, params["response_format"]
            body = self._body(messages, max_tokens, int(params.get("seed") or 0), k)
            self.dialect = saved
        created = _epoch(row["created_at"])
        return _Batched(req, int(row["id"]), str(row["custom_id"]), str(row["request_key"]), int(row["attempt"]),
                        int(params.get("seed") or 0), body, created)


def _epoch(iso: str) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(iso).timestamp()
    except (TypeError, ValueError):
        return time.time()


# ---- running, listing, cancelling ---------------------------------------------------------
async def run_batch(store: RunStore, cfg: RunConfig, api_key: str | None = None,
                    on_progress: Callable[[Progress], None] | None = None, http_client: Any = None,
                    poll_max_s: float | None = None) -> RunResult:
    """``treegen.api.execute_async`` for batch mode: the run's lock, its endpoint, a BatchEngine."""
    from treegen.api import endpoint
    from treegen.runlock import RunLock

    with RunLock(store.run_dir), endpoint(cfg) as base_url:
        engine = BatchEngine(store, cfg, base_url, api_key=api_key, on_progress=on_progress,
                             http_client=http_client, poll_max_s=poll_max_s)
        result = await engine.run()
    if result.fatal:
        raise BackendError(f"{result.fatal}\nThe run is saved at {result.run_dir}; fix the cause and continue it "
                           f"with `treegen resume {result.run_dir}`.")
    return result


def _failure_detail(batch: Any) -> str:
    """What the provider said about a batch that failed validation."""
    if batch.status != "failed":
        return ""
    errors = getattr(batch, "errors", None)
    data = (errors.data or []) if errors is not None else []
    return "; ".join(f"line {e.line}: {e.message}" for e in data)


def batch_summary(store: RunStore) -> list[dict[str, Any]]:
    """The run's batches for display: wave, provider id, status, counts, reserved and spent."""
    calls_by_wave: dict[int, list[dict[str, Any]]] = {}
    for c in store.calls():
        if c.get("batch_wave") is not None:
            calls_by_wave.setdefault(int(c["batch_wave"]), []).append(c)
    out = []
    for b in store.batches():
        calls = calls_by_wave.get(int(b["wave"]), [])
        out.append({
            "wave": b["wave"], "batch_id": b["provider_batch_id"], "status": b["status"],
            "requests": b["requests"], "completed": b["completed"], "failed": b["failed"],
            "calls": dict(sorted(b["calls_by_status"].items())),
            "held_micro": sum(int(c["reserved_micro"] or 0) for c in calls if c["status"] == CallStatus.BATCHED),
            "cost_micro": sum(int(c["cost_micro"] or 0) for c in calls),
            "created_at": b["created_at"], "updated_at": b["updated_at"],
        })
    return out


async def cancel_batches(store: RunStore, cfg: RunConfig, api_key: str | None, http_client: Any = None,
                         wait_s: float = 60.0) -> list[dict[str, Any]]:
    """Cancel the run's batches in flight. Reservations are released only once the provider
    says ``cancelled``: then, if no process works on the run, the replies the batches did
    finish are recorded (they are paid) and the requests never run cost 0. When a run is in
    progress, it does that itself at its next poll."""
    from treegen.errors import RunLockedError
    from treegen.runlock import RunLock

    if cfg.backend != "openai":
        raise InputError("This run's batches went to the built-in simulator, which lives inside the run's process: "
                         "stop the run (Ctrl-C) instead; nothing is billed.")
    api = openai.AsyncOpenAI(base_url=cfg.base_url or OPENAI_BASE_URL, api_key=api_key or "not-needed",
                             max_retries=2, timeout=cfg.timeout, http_client=http_client)
    confirmed: list[dict[str, Any]] = []
    try:
        live = [b for b in store.batches() if b["status"] not in TERMINAL and b["status"] != "lost"]
        for b in live:
            try:
                await api.batches.cancel(b["provider_batch_id"])
            except openai.ConflictError:
                pass  # it ended meanwhile: its files are recorded like any other
        deadline = time.monotonic() + wait_s
        pending = list(live)
        delay = 0.05
        while pending:
            for b in list(pending):
                got = await api.batches.retrieve(b["provider_batch_id"])
                store.update_batch(b["id"], {"status": got.status, "updated_at": utcnow()})
                if got.status in TERMINAL:
                    pending.remove(b)
                    confirmed.append({"wave": b["wave"], "batch_id": b["provider_batch_id"], "status": got.status})
            if not pending or time.monotonic() > deadline:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    finally:
        await api.close()
    if confirmed:
        try:
            lock = RunLock(store.run_dir).acquire()
        except RunLockedError:
            return confirmed  # the running process records them at its next poll
        try:
            await BatchEngine(store, cfg, cfg.base_url, api_key=api_key, http_client=http_client,
                              collect_only=True).run()
        finally:
            lock.release()
    return confirmed


__all__ = ["BatchEngine", "BatchInFlight", "BatchProgress", "batch_price", "batch_worst_case_micro", "batch_cost_micro", "run_batch",
           "batch_summary", "cancel_batches", "reply_from_body"]
