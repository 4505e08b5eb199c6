"""The engine: expand a search tree of examples with an LLM, under caps, into a run database.

The order of things for every request, so that nothing paid is lost and nothing is counted
twice:

1. reserve the worst case in the ledger (or wait for requests in flight to settle, or stop:
   a cap would be crossed);
2. write a ``pending`` call row (commit);
3. send it;
4. write the reply, its usage, cost and every candidate node in one transaction (commit);
5. only then settle the ledger and tell the strategy.

A crash between 2 and 4 leaves a ``pending`` row: resume marks it ``lost`` and keeps its
reservation counted, since the server may have billed it.

The engine orchestrates only: the store owns the SQL, ``acceptance`` decides what is
accepted, ``budget`` holds the ledger and the cost arithmetic, the strategy picks what is
shown next. It starts no server and installs no signal handler (``treegen.api`` does).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Sequence

from treegen import acceptance
from treegen.budget import BudgetReached, Ledger, Reservation, Usage, afford_max_tokens, reconcile_usage
from treegen.client import AttemptFailure, ChatClient, ChatReply, backoff_seconds, choose_transport
from treegen.config import RunConfig
from treegen.errors import InputError
from treegen.parsing import parse_reply
from treegen.prices import worst_case_micro
from treegen.prompts import build_messages
from treegen.ratelimit import RateLimiter
from treegen.redact import redact
from treegen.store import CallStatus, NodeStatus, RunStatus, RunStore, node_example, node_row
from treegen.strategies import Job, NodeInfo, StrategyParams, make_strategy
from treegen.task import Example, TaskFormat, dedup_key
from treegen.tokens import count_messages

if TYPE_CHECKING:
    import numpy as np  # imported where embeddings are used: a run without them never loads numpy

# A request's completion budget may shrink to fit what is left of a cap, but never below
# what k examples need: this many tokens per example asked.
MIN_TOKENS_PER_EXAMPLE = 48
ATTRIBUTE_RETRIES = 2  # --attributes auto: unusable answers asked again this often
EVIDENCE_CHARS = 600  # per passage shown to the verifier (--facts)
ELAPSED_FLUSH_SECONDS = 2.0  # how often a session's working time is written to the run


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    status: str
    stop_reason: str | None
    accepted: int
    spent_micro: int
    spent_tokens: int
    calls: int
    simulated: bool
    fatal: str | None = None  # the message of a failure that ended the run

    @property
    def spent_usd(self) -> float:
        return self.spent_micro / 1e6


@dataclass
class Progress:
    """A progress event: what a renderer shows while a run works."""

    accepted: int
    target: int | None
    spent_micro: int
    max_usd_micro: int | None
    tokens: int
    calls: int
    calls_per_minute: float
    depth: int
    rejected: int
    in_flight: int
    elapsed: float
    simulated: bool
    last_error: str | None = None

    @property
    def rejection_rate(self) -> float:
        total = self.accepted + self.rejected
        return self.rejected / total if total else 0.0


def request_key_of(seq: int) -> str:
    """The key every attempt of the run's request number ``seq`` shares (also the Batch
    custom_id's stem): the same in every run made with the same seed and options."""
    return f"r{seq}"


def stable_seed(*parts: Any) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass
class _Request:
    """One logical request: its job, its prompt and what was reserved for it."""

    job: Job
    messages: list[dict[str, str]]
    k: int
    local_prompt: int
    reserved_prompt: int
    max_tokens: int
    reservation: Reservation
    seq: int = 0  # the request's number in the run: its seed, and its turn in the reorder buffer
    purpose: str = "generate"  # or "harder": a rewrite of the parent into a harder example


class TurnAbandoned(Exception):
    """A reply's turn in the reorder buffer will never come (an earlier request died)."""


@dataclass
class _SideSpec:
    """A quality module's call (verify, attributes): its own model, price and budget; it
    makes no nodes, and counts under the caps like any call."""

    purpose: str
    messages: list[dict[str, str]]
    response_format: dict[str, Any] | None
    max_tokens: int
    model: str
    price: Any
    request_key: str
    seed: int
    temperature: float | None
    for_call_id: int | None = None
    parent_ids: tuple[int, ...] = ()
    depth: int = 0
    attempts_before: int = 0  # attempts earlier sessions made of this request (their rows stay)


class Engine:
    def __init__(
        self,
        store: RunStore,
        cfg: RunConfig,
        base_url: str | None,
        api_key: str | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        http_client: Any = None,
    ):
        self.store = store
        self.cfg = cfg
        self.base_url = base_url
        self.api_key = api_key
        self.on_progress = on_progress
        self.http_client = http_client  # a test seam: an httpx client with a MockTransport
        self.fmt = TaskFormat.parse(cfg.task_format)
        self.price = cfg.price
        # Calls left pending by a crash may have been billed: they become "lost" and count at
        # their reservation before the ledger is read (else a resume could overspend).
        store.mark_lost_calls()
        totals = store.ledger_totals()
        self.ledger = Ledger(cfg.caps, spent_micro=totals["micro"], spent_tokens=totals["tokens"],
                             calls=totals["calls"], accepted=totals["accepted"], elapsed_before=totals["elapsed"])
        self._elapsed_flushed = time.monotonic()
        self.simulated = cfg.simulated or bool(store.run()["simulated"])
        self.run_id = str(store.run()["id"])
        self.seen_keys = store.seen_keys()
        self.rejected = store.count_nodes(NodeStatus.REJECTED)
        self.max_depth_seen = store.max_accepted_depth()
        self.prompt_ratio = 1.0  # server-counted / locally-counted prompt tokens, highest seen
        self.ratio_known = self._openai_tokenizer()
        self._seq = store.count_requests()  # requests made by earlier sessions
        self._next_turn = self._seq
        self._turns: asyncio.Condition | None = None
        self._task_error: BaseException | None = None
        self.stop_reason: str | None = None
        self.stop_status: str | None = None
        self.fatal: str | None = None
        self.last_error: str | None = None
        self.in_flight: set[asyncio.Task] = set()
        self.limiter = RateLimiter(cfg.rpm, cfg.tpm)
        self.dialect = self._first_dialect()
        self._last_progress = 0.0
        self._call_times: list[float] = []
        self._embedder: Any = None
        self._index: Any = None
        self._settled: asyncio.Event | None = None
        self._stopped: asyncio.Event | None = None
        self._client: ChatClient | None = None
        params = StrategyParams(
            seed=cfg.seed, max_depth=cfg.caps.max_depth, branching=cfg.branching, chains=cfg.chains,
            expand_retries=cfg.expand_retries,
            similarity=self._similarity if cfg.strategy in ("contrastive", "similar") else None,
        )
        self.strategy = make_strategy(cfg.strategy, params)
        if self.strategy.uses_embeddings:
            self._get_embedder()  # MiniLM starts loading on its worker thread now, not at the first reply
        self.constraints = self._load_constraints()
        self._constraint_sentences: str | None = None
        self._attributes: Any = None
        if cfg.attribute_values:
            from treegen.attributes import Attributes

            self._attributes = Attributes.from_json(cfg.attribute_values)
        self._corpus: Any = None
        self._restore_strategy(cfg.near_dup is not None or cfg.strategy == "novelty")

    # ---- embeddings -------------------------------------------------------------------
    def _get_embedder(self) -> Any:
        if self._embedder is None:
            from treegen.embedders import get_embedder

            self._embedder = get_embedder(self.cfg.embedder)
        return self._embedder

    def _embed(self, examples: Sequence[Example]) -> np.ndarray:
        return self._get_embedder().embed([e.text() for e in examples])

    async def _embed_async(self, examples: Sequence[Example], job: Job | None = None) -> np.ndarray:
        """Vectors of ``examples``, off the event loop (one forward pass with the other replies
        that arrive meanwhile). With ``job``: its parents that carry no vector yet are embedded
        in the same pass and replaced in ``job.parents`` by copies carrying it, so the strategy
        decides from vectors and a node is embedded once, not on every request it is shown in."""
        from dataclasses import replace

        from treegen.embedders import embed_async

        missing = [i for i, p in enumerate(job.parents) if p.vector is None] if job is not None else []
        texts = [job.parents[i].example.text() for i in missing] if job is not None else []
        vectors = await embed_async(self._get_embedder(), texts + [e.text() for e in examples])
        for row, i in enumerate(missing):
            assert job is not None
            job.parents[i] = replace(job.parents[i], vector=vectors[row])
        return vectors[len(missing):]

    def _similarity(self, parent: Example, children: Sequence[Example]) -> np.ndarray:
        vecs = self._embed([parent, *children])
        return vecs[1:] @ vecs[0]

    # ---- restore ----------------------------------------------------------------------
    def _restore_strategy(self, needs_index: bool) -> None:
        if needs_index:
            from treegen.neardup import NearDuplicateIndex

            self._index = NearDuplicateIndex(self._get_embedder().dim,
                                             self.cfg.near_dup if self.cfg.near_dup is not None else 1.0)
            known = [node_example(r) for r in self.store.nodes()]
            if known:
                self._index.add(self._embed(known))
                self._index.link_pending()  # now, not at the first reply after a resume
        self._recover_unjudged()
        infos = [
            NodeInfo(r["id"], r["depth"], r["root_id"], node_example(r), r["expanded"] or 0, r["novelty"])
            for r in self.store.nodes()
        ]
        seeds = [n for n in infos if n.depth == 0]
        nodes = [n for n in infos if n.depth > 0]
        history = self.store.call_history()
        if history or nodes:
            self.strategy.restore(seeds, nodes, history)
        else:
            self.strategy.start(seeds)

    def _recover_unjudged(self) -> None:
        """Replies persisted by a session that died before deciding their candidates: they were
        paid for, so they are judged now, in the order they were made."""
        for call in self.store.unjudged_calls():
            job = self._job_of_call(call)
            if job is None:
                continue
            text = call["response_text"] or ""
            cost = int(call["cost_micro"] or 0)
            screened = acceptance.screen(parse_reply(text), self.fmt, self.seen_keys, self.constraints)
            alive = [i for i, sc in enumerate(screened) if sc.reason is None]
            if self.cfg.verify and alive:
                # Only votes already paid for are used: a resume does not spend on the past.
                screened = self._apply_votes(screened, alive, self._recorded_votes(call["id"], screened, alive))
                alive = [i for i, sc in enumerate(screened) if sc.reason is None]
            vectors = None
            if self._index is not None and alive:
                vectors = self._embed([screened[i].example for i in alive])  # type: ignore[misc]
            sims = self._similarities_now(screened, alive, vectors)
            open_slots = None if self.cfg.caps.target is None else self.cfg.caps.target - self.ledger.accepted
            decisions = acceptance.judge(screened, sims, acceptance.JudgeContext(open_slots, self.cfg.near_dup, cost))
            vec_of = {i: vectors[j] for j, i in enumerate(alive)} if vectors is not None else {}
            operation = "harder" if call.get("purpose") == "harder" else "generate"
            self._persist_nodes(job, call["id"], text, cost, decisions, vec_of, operation)

    def _job_of_call(self, call: dict[str, Any]) -> Job | None:
        """The job a recorded call was made for, from its parents' rows."""
        rows = [self.store.node(i) for i in json.loads(call["parent_node_ids"] or "[]")]
        parents = [NodeInfo(r["id"], r["depth"], r["root_id"], node_example(r), r["expanded"] or 0, r["novelty"])
                   for r in rows if r is not None]
        return Job(parents, depth=call["depth"], chain=call["chain"]) if parents else None

    # ---- quality modules: calls that make no nodes -------------------------------------
    async def _side_call(self, spec: _SideSpec) -> str | None:
        """Reserve, record, send and settle one module call like a generation call (retried on
        retryable failures). Returns the reply text, or None when it could not be had (the run
        stopped, a cap was reached, every retry failed)."""
        assert self._client is not None
        local = count_messages(spec.messages, spec.model)
        reserved_prompt = self._reserved_prompt(local)
        rng = random.Random(spec.seed)
        attempt = spec.attempts_before
        while self.stop_reason is None:
            attempt += 1
            got = await self._reserve_waiting(reserved_prompt, 0, own_task=True, side=spec)
            if got is None:
                return None
            reservation, max_tokens = got
            call_id: int | None = None
            try:
                if not await self._wait_turn(reservation.tokens):
                    self.ledger.release(reservation)
                    return None
                call_id = self.store.insert_call({
                    "created_at": _now(), "parent_node_ids": json.dumps(list(spec.parent_ids)), "depth": spec.depth,
                    "strategy": self.cfg.strategy, "attempt": attempt, "request_key": spec.request_key,
                    "model": spec.model, "status": CallStatus.PENDING, "reserved_prompt_tokens": reserved_prompt,
                    "reserved_tokens": reservation.tokens, "reserved_micro": reservation.micro,
                    "simulated": int(self.simulated), "base_url": self.base_url, "purpose": spec.purpose,
                    "for_call_id": spec.for_call_id,
                    "params": json.dumps({"max_tokens": max_tokens, "temperature": spec.temperature, "seed": spec.seed,
                                          "response_format": self.dialect}),
                }, messages=spec.messages)
                started = time.monotonic()
                self._call_times.append(started)
                try:
                    reply = await self._client.chat(
                        spec.messages, max_tokens=max_tokens, temperature=spec.temperature, top_p=None,
                        seed=spec.seed, timeout=self.cfg.timeout,
                        response_format=spec.response_format if self.dialect != "off" else None, model=spec.model)
                except AttemptFailure as failure:
                    self._record_failure(call_id, failure, int((time.monotonic() - started) * 1000), reservation)
                    self.last_error = redact(failure.message, self._secrets())
                    if not failure.retryable or attempt - spec.attempts_before > self.cfg.max_retries:
                        return None
                    if failure.kind == "rate-limit":
                        self.limiter.pause(failure.retry_after or backoff_seconds(attempt, rng))
                    await asyncio.sleep(backoff_seconds(attempt, rng, cap=2.0 if failure.fatal_after_retries else 30.0,
                                                        retry_after=failure.retry_after))
                    continue
                usage = reconcile_usage(spec.price, reply.prompt_tokens, reply.completion_tokens, reply.cached_tokens,
                                        reply.text, spec.model, reserved_prompt, max_tokens, local)
                text = _storable(reply.text)
                self.store.update_call(call_id, {
                    **self._reply_fields(reply, usage, int((time.monotonic() - started) * 1000), text),
                    "n_parsed": 0, "n_accepted": 0,
                })
                # Persisted: now count its money.
                self.ledger.settle(reservation, usage.cost_micro, usage.prompt_tokens + usage.completion_tokens)
                self._notify_settled()
                if usage.anomaly:
                    self.fatal = f"usage anomaly from the server at {self.base_url}: {usage.anomaly}"
                    self._stop(RunStatus.FAILED, self.fatal)
                    return None
                return text
            except asyncio.CancelledError:
                self._abandoned(reservation, call_id)
                raise
        return None

    def _verifier(self) -> tuple[str, Any]:
        model = self.cfg.verify_model or self.cfg.model
        return model, (self.price if model == self.cfg.model else self.cfg.verify_price)

    async def _verify(self, req: _Request, call_id: int, examples: list[Example]) -> list[list[str | None]]:
        """Every vote on every candidate: ``votes[v][i]`` is vote v's label for candidate i
        (None when unreadable or never had). The votes are separate calls, sent together."""
        from treegen.verify import VERIFY_SCHEMA_NAME, parse_verdicts, verify_messages, verify_max_tokens, \
            verify_response_format

        evidence = self._evidence(examples)
        messages = verify_messages(examples, self.fmt, evidence=evidence, task_description=self.cfg.task_description,
                                   structured=self.dialect != "off")
        model, price = self._verifier()
        n_votes = self.cfg.votes
        specs = [
            _SideSpec(
                purpose="verify", messages=messages,
                response_format=verify_response_format(self.fmt, len(examples), self.dialect),
                max_tokens=verify_max_tokens(self.fmt, len(examples)), model=model, price=price,
                request_key=f"{request_key_of(req.seq)}.{VERIFY_SCHEMA_NAME}{v + 1}",
                seed=stable_seed(self.cfg.seed, req.seq, "verify", v),
                # One vote is the verifier's best answer; several are samples of its answers.
                temperature=0.0 if n_votes == 1 else (self.cfg.temperature if self.cfg.temperature else 1.0),
                for_call_id=call_id, parent_ids=tuple(p.id for p in req.job.parents), depth=req.job.depth,
            )
            for v in range(n_votes)
        ]
        texts = await asyncio.gather(*(self._side_call(spec) for spec in specs))
        return [parse_verdicts(t, examples, self.fmt) if t is not None else [None] * len(examples) for t in texts]

    def _evidence(self, examples: Sequence[Example]) -> list[list[str]] | None:
        if not self.cfg.facts:
            return None
        from treegen.corpus import Corpus, evidence_for

        if self._corpus is None:
            self._open_corpus()
        # Passages are cut: a verify prompt of several candidates must stay affordable.
        return [evidence_for(self._corpus, ex, 3, max_chars=EVIDENCE_CHARS) for ex in examples]

    def _open_corpus(self) -> None:
        """The fact-check index, built once beside the run (reused while the corpus is unchanged)."""
        from treegen.corpus import CORPUS_DB_NAME, Corpus

        assert self.cfg.facts is not None
        self._corpus = Corpus.build(self.cfg.facts, self.store.run_dir / CORPUS_DB_NAME)

    def _apply_votes(self, screened: list[acceptance.Screened], alive: list[int],
                     votes: list[list[str | None]]) -> list[acceptance.Screened]:
        from treegen.verify import tally

        assert self.cfg.verify is not None
        verdicts = []
        for j, i in enumerate(alive):
            example = screened[i].example
            assert example is not None
            mine = [v[j] if j < len(v) else None for v in votes] or [None]
            verdicts.append(tally(example, mine, self.cfg.verify, self.fmt))
        return acceptance.apply_verdicts(screened, alive, verdicts, self.seen_keys)

    def _recorded_votes(self, call_id: int, screened: list[acceptance.Screened], alive: list[int]) -> list[list[str | None]]:
        """The votes a killed session had already received about a generation call."""
        from treegen.verify import parse_verdicts

        examples = [screened[i].example for i in alive]
        rows = self.store.module_replies(call_id, "verify")
        return [parse_verdicts(r["response_text"] or "", examples, self.fmt) for r in rows]  # type: ignore[arg-type]

    async def _ensure_attributes(self) -> None:
        """``--attributes auto``: ask the model once for the dimensions that fit the seeds (a
        recorded call), and keep them in the run's config; a resume reuses them."""
        if self.cfg.attributes != "auto" or self._attributes is not None:
            return
        from treegen.attributes import ATTRIBUTES_SCHEMA_NAME, auto_messages, auto_response_format, parse_auto

        seeds = [node_example(r) for r in self.store.nodes(("seed",))]
        problem = "no reply"
        # A reply paid for by a session that died before keeping it is read first; an unusable
        # answer (prose, a cut reply) is asked again, a few times, each a recorded call.
        text = self.store.last_module_reply("attributes")
        for ask in range(1 + ATTRIBUTE_RETRIES):
            if text is None:
                spec = _SideSpec(
                    purpose="attributes", messages=auto_messages(seeds, self.fmt, self.cfg.task_description),
                    response_format=auto_response_format(self.dialect), max_tokens=min(self.cfg.max_output_tokens, 600),
                    model=self.cfg.model, price=self.price, request_key=ATTRIBUTES_SCHEMA_NAME,
                    seed=stable_seed(self.cfg.seed, "attributes", self.store.count_purpose("attributes")),
                    temperature=0.0 if ask == 0 else self.cfg.temperature,
                    attempts_before=self.store.count_purpose("attributes"),
                )
                text = await self._side_call(spec)
                if text is None:
                    problem = self.last_error or "no reply"
                    break
            try:
                self._attributes = parse_auto(text)
                break
            except InputError as exc:
                problem = f"the model's answer held no usable attributes: {exc}"
                text = None
        if self._attributes is None:
            if self.stop_reason is None:
                self.fatal = f"--attributes auto: {problem}; retry, or give a file of attributes (--attributes FILE)"
                self._stop(RunStatus.FAILED, self.fatal)
            return
        self.cfg.attribute_values = self._attributes.to_json()
        self.store.save_config(self.cfg.to_json())

    # ---- progress ---------------------------------------------------------------------
    def progress(self) -> Progress:
        now = time.monotonic()
        self._call_times = [t for t in self._call_times if t > now - 60]
        elapsed = self.ledger.elapsed()
        window = min(60.0, max(elapsed - self.ledger.elapsed_before, 1e-9))
        return Progress(
            accepted=self.ledger.accepted, target=self.cfg.caps.target,
            spent_micro=self.ledger.spent_micro, max_usd_micro=self.cfg.caps.max_usd_micro,
            tokens=self.ledger.spent_tokens, calls=self.ledger.calls,
            calls_per_minute=len(self._call_times) * 60.0 / window, depth=self.max_depth_seen,
            rejected=self.rejected, in_flight=len(self.in_flight), elapsed=elapsed,
            simulated=self.simulated, last_error=self.last_error,
        )

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if now - self._elapsed_flushed >= ELAPSED_FLUSH_SECONDS:
            self._flush_elapsed(now)
        if self.on_progress is None:
            return
        if force or now - self._last_progress > 0.25:
            self._last_progress = now
            self.on_progress(self.progress())

    def _flush_elapsed(self, now: float) -> None:
        """Working time goes to the database as it passes: a killed session's time still counts."""
        self.store.add_elapsed(now - self._elapsed_flushed)
        self._elapsed_flushed = now

    # ---- one request ------------------------------------------------------------------
    def _openai_tokenizer(self) -> bool:
        return self.simulated or self.cfg.base_url is None and self.cfg.backend == "openai" or \
            "api.openai.com" in (self.cfg.base_url or "")

    def _first_dialect(self) -> str:
        if self.cfg.structured_dialect:
            return self.cfg.structured_dialect
        return "json_schema" if self.cfg.structured == "auto" else self.cfg.structured

    def _purpose_of(self, seq: int | None) -> str:
        """``harder`` for the share --harder of requests (decided by the request's number)."""
        if seq is None or self.cfg.harder <= 0:
            return "generate"
        return "harder" if random.Random(stable_seed(self.cfg.seed, "harder", seq)).random() < self.cfg.harder \
            else "generate"

    def _messages(self, job: Job, seq: int | None) -> tuple[list[dict[str, str]], int]:
        """The request's messages and k: new examples like the parents, or (``--harder``) one
        harder rewrite of the parent; the run's constraints close the system message (a fixed
        prefix per run) and a sampled attribute combination comes before the ask."""
        structured = self.dialect != "off"
        if self._purpose_of(seq) == "harder":
            from treegen.rewrite import harder_messages

            return harder_messages(job.parents[0].example, self.fmt, self.cfg.task_description, structured=structured,
                                   constraints=self._constraint_text()), 1
        # k does not shrink near the target: what is asked must not depend on what is in flight
        # (that would tie the run to --concurrency); the few extra examples are over-target.
        k = self.cfg.k
        messages = build_messages([p.example for p in job.parents], self.fmt, k, self.cfg.task_description,
                                  structured=structured)
        extra = self._constraint_text()
        if extra:
            messages[0] = {**messages[0], "content": f"{messages[0]['content']} {extra}"}
        if self._attributes is not None and seq is not None:
            from treegen.attributes import attribute_line, sample_attributes

            line = attribute_line(sample_attributes(self._attributes, random.Random(stable_seed(self.cfg.seed, "attr", seq))))
            head, _, ask = messages[-1]["content"].rpartition("\n")
            messages[-1] = {**messages[-1], "content": f"{head}\n{line}\n{ask}" if head else f"{line}\n{ask}"}
        return messages, k

    def _constraint_text(self) -> str:
        """The constraints' sentences for the system message: fixed for a run, built once."""
        if self._constraint_sentences is None:
            from treegen.constraints import constraint_sentences

            self._constraint_sentences = constraint_sentences(self.constraints) if self.constraints else ""
        return self._constraint_sentences

    def _load_constraints(self) -> list[Any]:
        if not self.cfg.constraints:
            return []
        from treegen.constraints import parse_constraints

        return parse_constraints(self.cfg.constraints)

    def _prompt(self, job: Job, seq: int | None = None) -> tuple[list[dict[str, str]], int, int, int]:
        messages, k = self._messages(job, seq)
        prompt_tokens = count_messages(messages, self.cfg.model)
        return messages, k, prompt_tokens, self._reserved_prompt(prompt_tokens)

    def _reserved_prompt(self, prompt_tokens: int) -> int:
        # Our count is exact for OpenAI models. Other servers tokenize differently: their
        # reservation is scaled by the highest server/local ratio seen so far, plus a margin.
        if self._openai_tokenizer() and self.prompt_ratio <= 1.0:
            reserved_prompt = prompt_tokens
        elif not self.ratio_known:
            # Until the server has reported one count, requests go one at a time, each
            # reserved at twice our count: no tokenizer in use counts English at 2x o200k.
            reserved_prompt = 2 * prompt_tokens + 64
        else:
            reserved_prompt = math.ceil(prompt_tokens * max(self.prompt_ratio, 1.0) * 1.1) + 32
        return reserved_prompt

    def _reserve(self, reserved_prompt: int, k: int, side: "_SideSpec | None" = None) -> tuple[Reservation, int]:
        """Reserve one request, its completion budget shrunk to what the caps still afford
        (never below what k examples need). Raises BudgetReached when even that does not fit.
        ``side``: a module's call (verify, attributes): its own budget and price, no examples."""
        if side is not None:
            max_tokens = afford_max_tokens(self.ledger, side.price, reserved_prompt, side.max_tokens, side.max_tokens)
            micro = worst_case_micro(side.price, reserved_prompt, max_tokens) if side.price else 0
            return self.ledger.reserve(micro, reserved_prompt + max_tokens, examples=0), max_tokens
        floor = min(self.cfg.max_output_tokens, MIN_TOKENS_PER_EXAMPLE * k)
        max_tokens = afford_max_tokens(self.ledger, self.price, reserved_prompt, self.cfg.max_output_tokens, floor)
        micro = worst_case_micro(self.price, reserved_prompt, max_tokens) if self.price else 0
        return self.ledger.reserve(micro, reserved_prompt + max_tokens, examples=k), max_tokens

    async def _next_request(self, job: Job, seq: int | None = None) -> _Request | None:
        """A request for ``job`` with its reservation, or None when the run stops."""
        messages, k, local_prompt, reserved_prompt = self._prompt(job, seq)
        got = await self._reserve_waiting(reserved_prompt, k, own_task=False)
        if got is None:
            return None
        return _Request(job, messages, k, local_prompt, reserved_prompt, got[1], got[0], purpose=self._purpose_of(seq))

    async def _reserve_waiting(self, reserved_prompt: int, k: int, own_task: bool,
                               side: "_SideSpec | None" = None) -> tuple[Reservation, int] | None:
        """Reserve; while other requests in flight hold reservations, wait for them to settle
        before concluding that a cap is reached (they usually settle far below). None when the
        run stops. ``own_task``: called from a request in flight (a retry)."""
        assert self._settled is not None
        while True:
            try:
                return self._reserve(reserved_prompt, k, side)
            except BudgetReached as exc:
                # Only reservations held by others can free room; requests that already settled
                # (waiting for their turn in the reorder buffer) cannot.
                held = self.ledger.held_micro > 0 or self.ledger.held_tokens > 0
                if not held or exc.final:
                    self._stop(RunStatus.COMPLETED if exc.reason.startswith("target") else RunStatus.BUDGET,
                               exc.reason)
                    return None
            self._settled.clear()
            try:  # the timeout guards a settlement that happened before the clear
                await asyncio.wait_for(self._settled.wait(), 0.2)
            except asyncio.TimeoutError:
                pass
            if self.stop_reason is not None:
                return None

    async def _run_job(self, req: _Request) -> None:
        job = req.job
        request_seed = stable_seed(self.cfg.seed, req.seq)  # the run seed and the request's number
        request_key = request_key_of(req.seq)
        rng = random.Random(request_seed)
        attempt = 0
        call_id: int | None = None
        reservation: Reservation | None = req.reservation
        try:
            while True:
                attempt += 1
                if reservation is None:
                    got = await self._reserve_waiting(req.reserved_prompt, req.k, own_task=True)
                    if got is None:
                        await self._finish_job(req, [], None)
                        return
                    reservation, req.max_tokens = got
                if not await self._wait_turn(reservation.tokens):
                    # The run stopped while this request waited for the rate limiter: never sent.
                    self.ledger.release(reservation)
                    reservation = None
                    await self._finish_job(req, [], None)
                    return
                call_id = self._insert_pending(req, request_key, attempt, reservation, request_seed)
                started = time.monotonic()
                self._call_times.append(started)
                outcome = await self._attempt(req, call_id, reservation, request_seed, started, attempt, rng)
                reservation = None
                if outcome == "done":
                    return
                if outcome == "retry-now":
                    continue
                # Wait before retrying, but not past the end of the run: nothing is in flight.
                assert self._stopped is not None
                try:
                    await asyncio.wait_for(self._stopped.wait(), float(outcome))
                except asyncio.TimeoutError:
                    continue
                await self._finish_job(req, [], call_id, expanded=False)
                return
        except asyncio.CancelledError:
            self._abandoned(reservation, call_id)
            raise

    def _abandoned(self, reservation: Reservation | None, call_id: int | None) -> None:
        """A request cancelled (time cap, second Ctrl-C): one on the wire may be billed, so its
        reservation stays counted, as for a timeout; one never sent gives its reservation back."""
        if reservation is not None and not reservation.settled:
            if call_id is not None and (self.store.call(call_id) or {}).get("status") == CallStatus.PENDING:
                self.store.update_call(call_id, {"status": CallStatus.TIMEOUT,
                                                 "error": "abandoned when the run stopped; counted at its reservation"})
                self.ledger.settle(reservation, None, None)
            else:
                self.ledger.release(reservation)
        self._notify_settled()

    def _reply_fields(self, reply: ChatReply, usage: Usage, duration_ms: int, text: str) -> dict[str, Any]:
        """The call row's fields for an answered request (generation or module call)."""
        return {
            "simulated": int(reply.simulated or self.simulated),
            "status": CallStatus.ANOMALY if usage.anomaly else CallStatus.OK,
            "error": usage.anomaly, "finish_reason": reply.finish_reason, "request_id": reply.request_id,
            "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "cached_tokens": reply.cached_tokens, "cost_micro": usage.cost_micro, "duration_ms": duration_ms,
            "response_text": text,
        }

    async def _attempt(self, req: _Request, call_id: int, reservation: Reservation, request_seed: int,
                       started: float, attempt: int, rng: random.Random) -> str | float:
        """Send one attempt and record its outcome. Returns "done", "retry-now", or seconds to wait."""
        assert self._client is not None
        timeout = self.cfg.timeout
        if self.cfg.caps.max_seconds is not None:
            timeout = max(0.5, min(timeout, self.cfg.caps.max_seconds - self.ledger.elapsed() + 0.5))
        try:
            reply = await self._client.chat(
                req.messages, max_tokens=req.max_tokens, temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                seed=request_seed, timeout=timeout, response_format=self._response_format(req.k, req.purpose),
            )
        except AttemptFailure as failure:
            duration = int((time.monotonic() - started) * 1000)
            self._record_failure(call_id, failure, duration, reservation)
            return await self._after_failure(req, failure, attempt, rng, call_id)
        duration = int((time.monotonic() - started) * 1000)
        await self._accept_reply(req, call_id, reply, duration, reservation)
        if self.cfg.structured == "auto" and self.cfg.structured_dialect != self.dialect:
            self.cfg.structured_dialect = self.dialect  # what worked is kept for the rest of the run
            self.store.save_config(self.cfg.to_json())
        return "done"

    async def _after_failure(self, req: _Request, failure: AttemptFailure, attempt: int, rng: random.Random,
                             call_id: int) -> str | float:
        self.last_error = redact(failure.message, self._secrets())
        if self._dialect_refused(failure):
            return "retry-now"
        if not failure.retryable or (failure.fatal_after_retries and attempt > min(self.cfg.max_retries, 3)):
            self.fatal = self.last_error
            self._stop(RunStatus.FAILED, self.last_error)
            await self._finish_job(req, [], None)
            return "done"
        if failure.kind == "rate-limit":
            self.limiter.pause(failure.retry_after or backoff_seconds(attempt, rng))
        if attempt > self.cfg.max_retries or self.stop_reason is not None or self.ledger.stop_reason():
            # Given up after every retry: counted as expanded, so one poisoned node cannot eat
            # the budget. Stopped by the run: a resume asks it again.
            await self._finish_job(req, [], call_id, expanded=attempt > self.cfg.max_retries)
            return "done"
        cap = 2.0 if failure.fatal_after_retries else 30.0
        return backoff_seconds(attempt, rng, cap=cap, retry_after=failure.retry_after)
    def _dialect_refused(self, failure: AttemptFailure) -> bool:
        """A 400/422 about ``response_format`` under --structured auto: try the next dialect."""
        if self.cfg.structured != "auto" or self.dialect == "off" or failure.http_status not in (400, 422):
            return False
        from treegen.schema import fallback_dialects, is_response_format_refusal

        if not is_response_format_refusal(failure.http_status, failure.message):
            return False
        order = fallback_dialects("json_schema")
        self.dialect = order[order.index(self.dialect) + 1] if self.dialect in order[:-1] else "off"
        return True

    def _response_format(self, k: int, purpose: str = "generate") -> dict[str, Any] | None:
        if self.dialect == "off":
            return None
        if purpose == "harder":
            from treegen.rewrite import harder_response_format

            return harder_response_format(self.fmt, self.dialect)
        from treegen.schema import example_schema, response_format

        return response_format(example_schema(self.fmt, k, non_empty=self.dialect == "json_object"), self.dialect)

    def _secrets(self) -> list[str]:
        return [self.api_key] if self.api_key else []

    async def _wait_turn(self, tokens: int) -> bool:
        """Wait for the rate limiter; False if the run stops first."""
        assert self._stopped is not None
        if self.limiter.try_acquire(tokens):
            return not self._stopped.is_set()
        turn = asyncio.ensure_future(self.limiter.acquire(tokens))
        stop = asyncio.ensure_future(self._stopped.wait())
        try:
            done, _ = await asyncio.wait({turn, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if turn in done:
            return True
        turn.cancel()
        return False

    def _insert_pending(self, req: _Request, request_key: str, attempt: int, reservation: Reservation,
                        request_seed: int) -> int:
        job = req.job
        return self.store.insert_call({
            "created_at": _now(), "parent_node_ids": json.dumps([p.id for p in job.parents]),
            "depth": job.depth, "strategy": self.cfg.strategy, "chain": job.chain, "attempt": attempt,
            "request_key": request_key, "model": self.cfg.model, "status": CallStatus.PENDING,
            "reserved_prompt_tokens": req.reserved_prompt, "reserved_tokens": reservation.tokens,
            "reserved_micro": reservation.micro, "simulated": int(self.simulated),
            "base_url": self.base_url, "purpose": req.purpose,
            "params": json.dumps({"max_tokens": req.max_tokens, "temperature": self.cfg.temperature,
                                  "top_p": self.cfg.top_p, "seed": request_seed, "k": req.k,
                                  "response_format": self.dialect}),
        }, messages=req.messages)

    def _record_failure(self, call_id: int, failure: AttemptFailure, duration: int, reservation: Reservation) -> None:
        unknown = failure.billing_unknown
        status = CallStatus.TIMEOUT if unknown else (CallStatus.REFUSED if failure.kind == "refused" else CallStatus.ERROR)
        self.store.update_call(call_id, {
            "status": status, "http_status": failure.http_status,
            "error": redact(f"{failure.kind}: {failure.message}", self._secrets()),
            "request_id": failure.request_id, "duration_ms": duration, "cost_micro": None if unknown else 0,
        })
        self.ledger.settle(reservation, None if unknown else 0, None if unknown else 0)
        self._notify_settled()

    async def _accept_reply(self, req: _Request, call_id: int, reply: ChatReply, duration: int,
                            reservation: Reservation) -> None:
        """Persist the paid reply and count its money at once; decide its candidates in request
        order (the reorder buffer), so a run's decisions do not depend on reply timing."""
        usage = reconcile_usage(self.price, reply.prompt_tokens, reply.completion_tokens, reply.cached_tokens,
                                reply.text, self.cfg.model, reservation.tokens - req.max_tokens, req.max_tokens,
                                req.local_prompt)
        if reply.prompt_tokens is not None:
            self.prompt_ratio = max(self.prompt_ratio, reply.prompt_tokens / max(1, req.local_prompt))
            self.ratio_known = True
        text = _storable(reply.text)
        newly_simulated = reply.simulated and not self.simulated
        fields = self._reply_fields(reply, usage, duration, text)
        turns = self._turns
        if (not usage.anomaly and not self.cfg.verify and self._index is None and not self.strategy.uses_embeddings
                and turns is not None
                and not turns.locked() and self._next_turn >= req.seq):
            # Its turn already, and nothing to wait for before deciding (no verifier, no
            # embeddings): the reply and its decided candidates land in one transaction (one
            # commit instead of two), and only then is its money counted. Nothing in this block
            # suspends, so nothing can cancel it between the reply and its record.
            async with self._in_turn(req.seq):
                try:
                    screened = acceptance.screen(parse_reply(text), self.fmt, self.seen_keys, self.constraints)
                    alive = [i for i, s in enumerate(screened) if s.reason is None]
                    children = await self._judge(req.job, call_id, text, usage.cost_micro, screened, alive, None,
                                                 req.purpose, reply_fields=fields, mark_simulated=newly_simulated)
                except BaseException:
                    # Deciding failed: the paid reply is recorded all the same (a resume judges
                    # it; rewriting it is harmless if it landed), then counted.
                    self.store.update_call(call_id, fields)
                    if newly_simulated:
                        self.store.mark_simulated()
                    self.simulated = self.simulated or reply.simulated
                    self.ledger.settle(reservation, usage.cost_micro, usage.prompt_tokens + usage.completion_tokens)
                    self._notify_settled()
                    raise
                self.simulated = self.simulated or reply.simulated
                # Persisted: now count its money.
                self.ledger.settle(reservation, usage.cost_micro, usage.prompt_tokens + usage.completion_tokens)
                self._notify_settled()
                self._finish_in_turn(req, children, call_id, expanded=False)  # expansion counted with the nodes
            return
        self.store.update_call(call_id, fields)
        if newly_simulated:
            self.store.mark_simulated()  # a simulator served over --base-url: simulated all the same
        self.simulated = self.simulated or reply.simulated
        # Persisted: now count its money.
        self.ledger.settle(reservation, usage.cost_micro, usage.prompt_tokens + usage.completion_tokens)
        self._notify_settled()
        if usage.anomaly:
            self.fatal = f"usage anomaly from the server at {self.base_url}: {usage.anomaly}"
            self._stop(RunStatus.FAILED, self.fatal)
        screened = acceptance.screen(parse_reply(text), self.fmt, self.seen_keys, self.constraints)
        alive = [i for i, s in enumerate(screened) if s.reason is None]
        if self.cfg.verify and alive:
            votes: list[list[str | None]] = []  # a failed run asks nothing more: its candidates stay unverified
            if self.stop_status != RunStatus.FAILED:
                # The request's examples stay held while its candidates are verified, so the
                # target is not over-asked meanwhile.
                self.ledger.held_examples += req.k
                try:
                    votes = await self._verify(req, call_id, [screened[i].example for i in alive])  # type: ignore[misc]
                finally:
                    self.ledger.held_examples -= req.k
            screened = self._apply_votes(screened, alive, votes)
            alive = [i for i, s in enumerate(screened) if s.reason is None]
        vectors = None
        # Embeddings before the reorder buffer, off the loop: replies waiting for their turn
        # share the embedder's forward passes instead of queueing for it one by one.
        wants = bool(alive) and self.strategy.wants_vectors(req.job, len(alive))
        if alive and (self._index is not None or wants):
            vectors = await self._embed_async([screened[i].example for i in alive],  # type: ignore[misc]
                                              req.job if wants else None)
        async with self._in_turn(req.seq):
            children = await self._judge(req.job, call_id, text, usage.cost_micro, screened, alive, vectors, req.purpose)
            self._finish_in_turn(req, children, call_id, expanded=False)  # expansion counted with the nodes

    async def _judge(self, job: Job, call_id: int, text: str, cost_micro: int,
                     screened: list[acceptance.Screened], alive: list[int], vectors: np.ndarray | None,
                     purpose: str = "generate", reply_fields: dict[str, Any] | None = None,
                     mark_simulated: bool = False) -> list[NodeInfo]:
        """Decide a reply's candidates against everything accepted before it, and record them
        (with ``reply_fields``: the reply itself too, in the same transaction)."""
        # Exact duplicates again: earlier requests may have accepted the same text meanwhile.
        screened = acceptance.rescreen(screened, self.seen_keys)
        sims = await self._similarities(screened, alive, vectors)
        open_slots = None if self.cfg.caps.target is None else self.cfg.caps.target - self.ledger.accepted
        decisions = acceptance.judge(screened, sims, acceptance.JudgeContext(open_slots, self.cfg.near_dup, cost_micro))
        vec_of = {i: vectors[j] for j, i in enumerate(alive)} if vectors is not None else {}
        return self._persist_nodes(job, call_id, text, cost_micro, decisions, vec_of,
                                   "harder" if purpose == "harder" else "generate",
                                   reply_fields=reply_fields, mark_simulated=mark_simulated)

    async def _similarities(self, screened: Sequence[acceptance.Screened], alive: list[int],
                            vectors: np.ndarray | None) -> dict[int, float]:
        """Highest cosine of each surviving candidate to what was accepted before it."""
        if vectors is None or self._index is None:
            return {}
        # The query (and the storing of rows added since the last one, with a re-partition of the
        # IVF lists at each doubling: up to ~2 s at 80k rows) grows slowly with the run (about
        # 2.5-3.4 ms CPU a reply at 100k accepted): off the event loop. Adds happen in turn too,
        # so the index is never used from two threads at once.
        base = await asyncio.to_thread(self._index.max_similarity, vectors) if len(self._index) else None
        return self._similarities_now(screened, alive, vectors, base)

    def _similarities_now(self, screened: Sequence[acceptance.Screened], alive: list[int],
                          vectors: np.ndarray | None, base: np.ndarray | None = None) -> dict[int, float]:
        """The same, with the index scan done here (``base``: its result when already done)."""
        if vectors is None or self._index is None:
            return {}
        if base is None:
            import numpy as np

            base = self._index.max_similarity(vectors) if len(self._index) else np.full(len(alive), -1.0)
        now_alive = [i for i in alive if screened[i].reason is None]
        pos = {i: j for j, i in enumerate(alive)}
        out: dict[int, float] = {}
        for n, i in enumerate(now_alive):
            # also against the earlier candidates of this same reply
            within = max((float(vectors[pos[i]] @ vectors[pos[m]]) for m in now_alive[:n]), default=-1.0)
            out[i] = max(float(base[pos[i]]), within)
        return out

    def _persist_nodes(self, job: Job, call_id: int, text: str, cost_micro: int,
                       decisions: list[acceptance.Decision], vec_of: dict[int, np.ndarray],
                       operation: str = "generate", reply_fields: dict[str, Any] | None = None,
                       mark_simulated: bool = False) -> list[NodeInfo]:
        parent = job.parents[0]
        now = _now()  # one time for the nodes of one reply
        rows = [
            node_row(d.example, parent_id=parent.id, root_id=parent.root_id, depth=job.depth, call_id=call_id,
                     strategy=self.cfg.strategy, status=NodeStatus.ACCEPTED if d.accepted else NodeStatus.REJECTED,
                     reason=d.reason, raw=d.raw, cost_share=d.cost_share_micro, novelty=d.novelty, key=d.key,
                     operation=operation, verdict=d.verdict, created_at=now)
            for d in decisions
        ]
        if not decisions:
            rows.append(node_row(None, parent_id=parent.id, root_id=parent.root_id, depth=job.depth, call_id=call_id,
                                 strategy=self.cfg.strategy, status=NodeStatus.REJECTED,
                                 reason=acceptance.NO_EXAMPLES, raw=text[:20000], cost_share=cost_micro,
                                 created_at=now))
        n_accepted = sum(d.accepted for d in decisions)
        call_fields = {"n_parsed": len(decisions), "n_accepted": n_accepted}
        if reply_fields:
            call_fields = {**reply_fields, **call_fields}
        ids = self.store.record_reply(call_id, call_fields, rows, [p.id for p in job.parents],
                                      mark_simulated=mark_simulated)
        # Persisted: now count the examples.
        self.ledger.accepted += n_accepted
        self.rejected += len(rows) - n_accepted
        infos: list[NodeInfo] = []
        accepted_vecs = []
        for i, (d, nid, row) in enumerate(zip(decisions, ids, rows)):
            if d.accepted and d.example is not None:
                self.seen_keys.add(d.key or dedup_key(d.example))
                infos.append(NodeInfo(nid, job.depth, parent.root_id, d.example, 0, row["novelty"],
                                      vector=vec_of.get(i) if self.strategy.uses_embeddings else None))
                if i in vec_of:
                    accepted_vecs.append(vec_of[i])
        if self._index is not None and accepted_vecs:
            import numpy as np

            self._index.add(np.vstack(accepted_vecs))
        if n_accepted:
            self.max_depth_seen = max(self.max_depth_seen, job.depth)
        return infos

    @asynccontextmanager
    async def _in_turn(self, seq: int) -> AsyncIterator[None]:
        """The reorder buffer: results are handled in the order their requests were made."""
        assert self._turns is not None
        async with self._turns:
            await self._turns.wait_for(lambda: self._next_turn >= seq or self._task_error is not None)
            if self._next_turn < seq:
                # A request before this one died of an error (a full disk) and will never take
                # its turn: the run is failing. This reply is already recorded (a resume
                # decides it); waiting would hang the run.
                raise TurnAbandoned(f"request {seq} not decided: an earlier request failed")
        try:
            yield
        finally:
            async with self._turns:
                self._next_turn = max(self._next_turn, seq + 1)
                self._turns.notify_all()

    async def _finish_job(self, req: _Request, children: list[NodeInfo], call_id: int | None,
                          expanded: bool = True) -> None:
        """The request is over (given up, stopped, failed): tell the strategy, in turn."""
        async with self._in_turn(req.seq):
            self._finish_in_turn(req, children, call_id, expanded)

    def _finish_in_turn(self, req: _Request, children: list[NodeInfo], call_id: int | None, expanded: bool) -> None:
        """The parents count as expanded once, unless nothing was ever sent for the request (a
        resumed run asks it again)."""
        if expanded and call_id is not None:
            self.store.mark_expanded([p.id for p in req.job.parents])
        self.strategy.on_result(req.job, children, call_id)
        self._notify_settled()
        self._report()

    def _notify_settled(self) -> None:
        if self._settled is not None:
            self._settled.set()

    def _stop(self, status: str, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_status, self.stop_reason = status, reason
        if self._stopped is not None:
            self._stopped.set()
        self._notify_settled()

    def request_stop(self, reason: str = "interrupted") -> None:
        """Stop sending; the requests in flight finish and are recorded (Ctrl-C)."""
        self._stop(RunStatus.INTERRUPTED, reason)

    def abandon(self) -> None:
        """Stop at once: requests in flight are cancelled, their reservations kept counted."""
        self._stop(RunStatus.INTERRUPTED, "interrupted")
        for t in list(self.in_flight):
            t.cancel()

    # ---- the loop ---------------------------------------------------------------------
    def _begin(self) -> None:
        """A session starts: its events, calls a crash left pending counted, the run running."""
        self._stopped = asyncio.Event()
        self._settled = asyncio.Event()
        self._turns = asyncio.Condition()
        self.store.mark_lost_calls()
        self.store.set_status(RunStatus.RUNNING, None)

    async def run(self) -> RunResult:
        self._client = ChatClient(self.base_url, self.api_key or "not-needed", self.cfg.model,
                                  timeout=self.cfg.timeout, http_client=self.http_client,
                                  transport=choose_transport(max_calls=self.cfg.caps.max_calls),
                                  keepalive=self.cfg.concurrency * (1 + self.cfg.votes))
        self._begin()
        try:
            if self.cfg.facts and self._corpus is None:
                self._open_corpus()  # before any paid call: a bad corpus stops the run first
            await self._ensure_attributes()
            await self._loop()
        finally:
            await self._client.aclose()
            if self._corpus is not None:
                self._corpus.close()
                self._corpus = None
        if self._task_error is not None:
            raise self._task_error
        return self._finalise()

    async def _loop(self) -> None:
        while self.stop_reason is None:
            reason = self.ledger.stop_reason()
            if reason:
                self._stop(RunStatus.COMPLETED if reason.startswith("target") else RunStatus.BUDGET, reason)
                break
            if await self._launch_one():
                await asyncio.sleep(0)
                continue
            if self.stop_reason is not None:
                break
            if not self.in_flight:
                self._stop(RunStatus.COMPLETED, "nothing left to expand: every node reached max depth or used "
                                                "its expansion tries (--expand-retries)")
                break
            await asyncio.wait(self.in_flight, return_when=asyncio.FIRST_COMPLETED, timeout=self._tick())
            self._report()
        await self._drain()
        self._report(force=True)

    async def _launch_one(self) -> bool:
        """Start one request if the concurrency, the target and the strategy allow."""
        open_examples = self.ledger.examples_open()
        limit = self.cfg.concurrency if self.ratio_known else 1
        if len(self.in_flight) >= limit or (open_examples is not None and open_examples <= 0):
            return False
        job = self.strategy.next_job()
        if job is None:
            return False
        req = await self._next_request(job, self._seq)
        if req is None:
            self.strategy.on_result(job, [], None)
            return False
        req.seq = self._seq
        self._seq += 1
        task = asyncio.create_task(self._run_job(req))
        self.in_flight.add(task)
        task.add_done_callback(self._task_done)
        return True

    def _task_done(self, task: asyncio.Task) -> None:
        """A request task that died of an error (a full disk, a bug) stops the run; the error is
        raised from ``run`` once everything in flight has settled."""
        self.in_flight.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self._task_error is None and not isinstance(exc, TurnAbandoned):
            self._task_error = exc
            self._stop(RunStatus.FAILED, f"{type(exc).__name__}: {exc}")
            asyncio.ensure_future(self._wake_turns())  # requests waiting for the dead one's turn

    async def _wake_turns(self) -> None:
        if self._turns is not None:
            async with self._turns:
                self._turns.notify_all()

    def _tick(self) -> float:
        """How long to wait for a request before checking the caps again."""
        if self.cfg.caps.max_seconds is None:
            return 0.5
        return max(0.05, min(0.5, self.cfg.caps.max_seconds - self.ledger.elapsed()))

    async def _drain(self) -> None:
        """Requests in flight are paid for: wait for them and record their replies; at the time
        cap, give them about a second, then abandon them with their reservations counted."""
        if not self.in_flight:
            return
        grace = None
        if self.cfg.caps.max_seconds is not None and self.ledger.elapsed() >= self.cfg.caps.max_seconds:
            grace = 0.5
        done, pending = await asyncio.wait(set(self.in_flight), timeout=grace)
        for t in pending:
            t.cancel()
        await asyncio.gather(*done, *pending, return_exceptions=True)

    def _finalise(self) -> RunResult:
        status = self.stop_status or RunStatus.COMPLETED
        reason = self.stop_reason
        if status == RunStatus.COMPLETED and self.cfg.caps.target is not None and self.ledger.accepted >= self.cfg.caps.target:
            reason = f"target of {self.cfg.caps.target:,} accepted examples reached"
        self._flush_elapsed(time.monotonic())
        self.store.set_status(status, redact(reason, self._secrets()) if reason else None)
        return RunResult(
            run_id=self.run_id, run_dir=self.store.run_dir, status=status, stop_reason=reason,
            accepted=self.ledger.accepted, spent_micro=self.ledger.spent_micro, spent_tokens=self.ledger.spent_tokens,
            calls=self.ledger.calls, simulated=self.simulated, fatal=self.fatal,
        )


def _storable(text: str) -> str:
    """Reply text SQLite can store: no lone surrogates."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _now() -> str:
    from treegen.store import utcnow

    return utcnow()
