"""The engine: expand a search tree of examples with an LLM, under caps, into a run database.

The order of things for every request, so that nothing paid is lost and nothing is counted
twice:

1. reserve the worst case in the ledger (or stop: a cap would be crossed);
2. write a ``pending`` call row (commit);
3. send it;
4. write the reply, its usage, cost and every candidate node in one transaction (commit);
5. only then settle the ledger and tell the strategy.

A crash between 2 and 4 leaves a ``pending`` row: resume marks it ``lost`` and keeps its
reservation counted, since the server may have billed it.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import json
import os
import random
import secrets
import signal
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import sqlite_utils

from treegen import prices as price_mod
from treegen.budget import BudgetReached, Caps, Ledger, Reservation
from treegen.embedders import get_embedder
from treegen.errors import BackendError, ConfigError, InputError
from treegen.task import Example, InvalidExample, TaskFormat, dedup_key, example_from_dict
from treegen.client import AttemptFailure, ChatClient, ChatReply, RateLimiter, backoff_seconds
from treegen.parsing import parse_reply
from treegen.prompts import build_messages
from treegen.store import DB_NAME, open_db, open_run, node_example, run_row, utcnow
from treegen.strategies import Job, NodeInfo, StrategyParams, make_strategy
from treegen.tokens import count_messages, count_text

STATUS_RUNNING = "running"
STATUS_COMPLETED = "completed"
STATUS_BUDGET = "stopped: budget reached"
STATUS_INTERRUPTED = "interrupted"
STATUS_FAILED = "failed"


@dataclass
class RunConfig:
    """Everything that defines a run. Stored in runs.config (never the API key)."""

    task_format: str
    strategy: str = "tree"
    model: str = "gpt-4o-mini"
    backend: str = "openai"  # "openai": any OpenAI-compatible server; "sim": the built-in simulator
    base_url: str | None = None
    k: int = 5
    temperature: float | None = 1.0
    top_p: float | None = None
    max_output_tokens: int = 1024
    concurrency: int = 8
    rpm: int | None = None
    tpm: int | None = None
    timeout: float = 60.0
    max_retries: int = 5
    seed: int = 0
    branching: int = 1
    chains: int | None = None
    embedder: str = "minilm"
    near_dup: float | None = None
    task_description: str | None = None
    caps: Caps = field(default_factory=Caps)
    price: dict | None = None  # ModelPrice fields used for this run
    sim: dict | None = None  # simulator settings when backend == "sim"
    seeds_source: str | None = None
    seeds_from: str | None = None  # the benchmark task the seeds were drawn from (--seeds-from)

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        data = dict(data)
        data["caps"] = Caps.from_dict(data.get("caps") or {})
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


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


def validate_config(cfg: RunConfig) -> None:
    """Refuse a config that cannot run, before anything is created or spent."""
    fmt = TaskFormat.parse(cfg.task_format)
    del fmt
    if cfg.k < 1 or cfg.k > 100:
        raise ConfigError(f"--k must be between 1 and 100 (got {cfg.k}).")
    if cfg.concurrency < 1:
        raise ConfigError(f"--concurrency must be at least 1 (got {cfg.concurrency}).")
    if cfg.max_output_tokens < 16:
        raise ConfigError("--max-output-tokens must be at least 16: a reply must have room for an example.")
    if cfg.branching < 1:
        raise ConfigError("--branching must be at least 1.")
    if cfg.near_dup is not None and not 0 < cfg.near_dup <= 1:
        raise ConfigError("--near-dup is a cosine similarity threshold between 0 and 1, e.g. 0.9.")
    if cfg.backend not in ("openai", "sim"):
        raise ConfigError(f"--backend must be openai or sim (got {cfg.backend!r}).")
    if cfg.temperature is not None and not 0 <= cfg.temperature <= 2:
        raise ConfigError("--temperature must be between 0 and 2.")
    caps = cfg.caps
    for name in ("max_usd_micro", "max_tokens", "max_calls", "target", "max_depth", "max_seconds"):
        value = getattr(caps, name)
        if value is not None and value < 0:
            raise ConfigError(f"The cap {name} must not be negative (got {value}).")
    if all(getattr(caps, n) is None for n in ("max_usd_micro", "max_tokens", "max_calls", "target", "max_depth", "max_seconds")):
        raise ConfigError(
            "No cap given: a run needs at least one of --max-usd, --max-tokens, --max-calls, "
            "--target, --max-depth, --max-seconds (or --budget PROFILE)."
        )
    if caps.max_usd_micro is not None and cfg.price is None:
        raise ConfigError("internal: a dollar cap without prices")


def make_run_id(strategy: str) -> str:
    return f"{datetime.now():%Y%m%d-%H%M%S}-{strategy}-{secrets.token_hex(2)}"


def create_run(
    cfg: RunConfig, seeds: Sequence[Example], out_dir: str | Path, name: str | None = None
) -> tuple[str, Path]:
    """Create the run folder and database with its config and seed nodes, in one transaction."""
    validate_config(cfg)
    run_id = name or make_run_id(cfg.strategy)
    run_dir = Path(out_dir) / run_id
    if run_dir.exists():
        raise InputError(f"{run_dir} exists already. Choose another --name, or continue it with `treegen resume {run_dir}`.")
    run_dir.mkdir(parents=True)
    try:
        db = open_db(run_dir / DB_NAME)
        now = utcnow()
        with db.conn:
            db["runs"].insert(
                {
                    "id": run_id, "created_at": now, "updated_at": now, "status": STATUS_RUNNING,
                    "stop_reason": None, "simulated": int(cfg.backend == "sim"),
                    "task_format": cfg.task_format, "strategy": cfg.strategy, "model": cfg.model,
                    "base_url": cfg.base_url, "seed": cfg.seed, "elapsed_seconds": 0.0,
                    "config": cfg.to_json(),
                }
            )
            for ex in seeds:
                node_id = db["nodes"].insert(_node_row(ex, None, None, 0, None, cfg.strategy, "seed", None)).last_pk
                db.execute("update nodes set root_id = ? where id = ?", [node_id, node_id])
        db.close()
    except BaseException:
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)  # nothing half-written
        raise
    return run_id, run_dir


def _node_row(ex: Example, parent_id, root_id, depth, call_id, strategy, status, reason, raw=None,
              cost_share=0, novelty=None) -> dict[str, Any]:
    return {
        "parent_id": parent_id, "root_id": root_id, "depth": depth, "call_id": call_id,
        "strategy": strategy, "status": status, "reason": reason,
        "question": ex.question if ex else None, "context": ex.context if ex else None,
        "options": json.dumps(list(ex.options), ensure_ascii=False) if ex else None,
        "label": ex.label if ex else None, "dedup_key": dedup_key(ex) if ex else None,
        "raw": raw, "cost_share_micro": cost_share, "expanded": 0, "novelty": novelty,
        "created_at": utcnow(),
    }


_NODE_COLUMNS = list(_node_row(None, None, None, 0, None, "", "", None).keys())
_INSERT_NODE = f"insert into nodes ({', '.join(_NODE_COLUMNS)}) values ({', '.join('?' for _ in _NODE_COLUMNS)})"


def split_cost(total: int, n: int) -> list[int]:
    """Split an integer cost over n parts; the remainder goes to the first ones."""
    if n <= 0:
        return []
    base, rem = divmod(total, n)
    return [base + (1 if i < rem else 0) for i in range(n)]


def ledger_from_db(db: sqlite_utils.Database, caps: Caps) -> Ledger:
    """What the database says was spent: known costs, plus the reservation of every call
    whose billing is unknown (timeout, lost)."""
    row = next(db.query(
        """select
             coalesce(sum(case when cost_micro is not null then cost_micro
                               when status in ('timeout','lost','pending') then reserved_micro else 0 end), 0) as micro,
             coalesce(sum(case when prompt_tokens is not null then prompt_tokens + coalesce(completion_tokens, 0)
                               when status in ('timeout','lost','pending') then reserved_tokens else 0 end), 0) as tokens,
             count(*) as calls
           from calls"""
    ))
    accepted = db.execute("select count(*) from nodes where status = 'accepted'").fetchone()[0]
    elapsed = db.execute("select coalesce(elapsed_seconds, 0) from runs").fetchone()[0]
    return Ledger(caps, spent_micro=row["micro"], spent_tokens=row["tokens"], calls=row["calls"],
                  accepted=accepted, elapsed_before=elapsed)


def _stable_seed(*parts: Any) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass
class Progress:
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


class Engine:
    def __init__(
        self,
        db: sqlite_utils.Database,
        cfg: RunConfig,
        api_key: str | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        http_client: Any = None,
    ):
        self.db = db
        self.http_client = http_client  # a test seam: an httpx.AsyncClient with a MockTransport
        self.cfg = cfg
        self.fmt = TaskFormat.parse(cfg.task_format)
        self.api_key = api_key
        self.on_progress = on_progress
        self.price = price_mod.ModelPrice(**cfg.price) if cfg.price else None
        self.ledger = ledger_from_db(db, cfg.caps)
        self.simulated = cfg.backend == "sim"
        self.run_id = db.execute("select id from runs").fetchone()[0]
        self.seen_keys: set[str] = {
            r[0] for r in db.execute("select dedup_key from nodes where status in ('seed','accepted')")
        }
        self.rejected = db.execute("select count(*) from nodes where status = 'rejected'").fetchone()[0]
        self.max_depth_seen = db.execute("select coalesce(max(depth), 0) from nodes where status = 'accepted'").fetchone()[0]
        self.prompt_ratio = 1.0  # server-counted / locally-counted prompt tokens, highest seen
        self.ratio_known = self._openai_tokenizer()
        self.request_counts: dict[tuple[int, ...], int] = {}
        self.rng = random.Random(f"{cfg.seed}:engine")
        self.stop_reason: str | None = None
        self.stop_status: str | None = None
        self.fatal: str | None = None
        self.last_error: str | None = None
        self.in_flight: set[asyncio.Task] = set()
        self.limiter = RateLimiter(cfg.rpm, cfg.tpm)
        self._last_progress = 0.0
        self._call_times: list[float] = []
        self._embedder = None
        self._index = None
        self._vectors: dict[int, np.ndarray] = {}
        needs_index = cfg.near_dup is not None or cfg.strategy == "novelty"
        chains = cfg.chains or max(cfg.concurrency, 1)
        params = StrategyParams(
            seed=cfg.seed, max_depth=cfg.caps.max_depth, branching=cfg.branching, chains=chains,
            similarity=self._similarity if cfg.strategy in ("contrastive", "similar") else None,
        )
        self.strategy = make_strategy(cfg.strategy, params)
        self._restore_strategy(needs_index)

    # ---- embeddings -------------------------------------------------------------------
    def _embed(self, examples: Sequence[Example]) -> np.ndarray:
        if self._embedder is None:
            self._embedder = get_embedder(self.cfg.embedder)
        return self._embedder.embed([e.text() for e in examples])

    def _similarity(self, parent: Example, children: Sequence[Example]) -> np.ndarray:
        vecs = self._embed([parent, *children])
        return vecs[1:] @ vecs[0]

    # ---- restore ----------------------------------------------------------------------
    def _restore_strategy(self, needs_index: bool) -> None:
        rows = list(self.db.query("select * from nodes where status in ('seed','accepted') order by id"))
        infos = [
            NodeInfo(r["id"], r["depth"], r["root_id"], node_example(r), r["expanded"] or 0, r["novelty"])
            for r in rows
        ]
        seeds = [n for n in infos if n.depth == 0]
        nodes = [n for n in infos if n.depth > 0]
        if needs_index:
            from treegen.neardup import NearDuplicateIndex

            dim = get_embedder(self.cfg.embedder).dim
            self._index = NearDuplicateIndex(dim, self.cfg.near_dup if self.cfg.near_dup is not None else 1.0)
            if infos:
                self._index.add(self._embed([n.example for n in infos]))
        history = []
        for call in self.db.query(
            "select id, chain, parent_node_ids, request_key from calls where status = 'ok' order by id"
        ):
            parent_ids = json.loads(call["parent_node_ids"] or "[]")
            child_ids = [r[0] for r in self.db.execute(
                "select id from nodes where call_id = ? and status = 'accepted' order by id", [call["id"]])]
            history.append({"call_id": call["id"], "chain": call["chain"], "parent_ids": parent_ids, "child_ids": child_ids})
        for r in self.db.query("select parent_node_ids, count(distinct request_key) as n from calls group by parent_node_ids"):
            self.request_counts[tuple(json.loads(r["parent_node_ids"] or "[]"))] = r["n"]
        if history or nodes:
            self.strategy.restore(seeds, nodes, history)
        else:
            self.strategy.start(seeds)

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
        if self.on_progress is None:
            return
        now = time.monotonic()
        if force or now - self._last_progress > 0.25:
            self._last_progress = now
            self.on_progress(self.progress())

    # ---- one request ------------------------------------------------------------------
    def _prepare(self, job: Job) -> tuple[list[dict[str, str]], int, int, int]:
        open_examples = self.ledger.examples_open()
        k = self.cfg.k if open_examples is None else max(1, min(self.cfg.k, open_examples))
        messages = build_messages([p.example for p in job.parents], self.fmt, k, self.cfg.task_description)
        prompt_tokens = count_messages(messages, self.cfg.model)
        # Our count is exact for OpenAI models. Other servers tokenize differently: their
        # reservation is scaled by the highest server/local ratio seen so far, plus a 25%
        # and 64-token margin, so that it stays a ceiling from the very first request.
        if self._openai_tokenizer() and self.prompt_ratio <= 1.0:
            reserved_prompt = prompt_tokens
        elif not self.ratio_known:
            # Until the server has reported one count, requests go one at a time, each
            # reserved at twice our count: no tokenizer in use counts English at 2x o200k.
            reserved_prompt = 2 * prompt_tokens + 64
        else:
            reserved_prompt = math.ceil(prompt_tokens * max(self.prompt_ratio, 1.0) * 1.1) + 32
        return messages, k, prompt_tokens, reserved_prompt

    def _openai_tokenizer(self) -> bool:
        return self.simulated or self.cfg.base_url is None or "api.openai.com" in (self.cfg.base_url or "")

    def _reserve(self, reserved_prompt: int, k: int) -> Reservation:
        max_tokens = self.cfg.max_output_tokens
        micro = price_mod.worst_case_micro(self.price, reserved_prompt, max_tokens) if self.price else 0
        return self.ledger.reserve(micro, reserved_prompt + max_tokens, examples=k)

    async def _run_job(self, job: Job, messages, k: int, local_prompt: int, reserved_prompt: int,
                       reservation: Reservation) -> None:
        parent_ids = [p.id for p in job.parents]
        key = tuple(parent_ids)
        n_before = self.request_counts.get(key, 0)
        self.request_counts[key] = n_before + 1
        request_seed = _stable_seed(self.cfg.seed, *parent_ids, n_before)
        request_key = uuid.uuid4().hex
        attempt = 0
        rng = random.Random(request_seed)
        while True:
            attempt += 1
            if attempt > 1:
                try:
                    reservation = self._reserve(reserved_prompt, k)
                except BudgetReached as exc:
                    self._stop(STATUS_BUDGET, exc.reason)
                    self._finish_job(job, [], None, expanded=False)
                    return
            if not await self._wait_turn(reservation.tokens):
                # The run stopped while this request waited for the rate limiter: never sent.
                self.ledger.release(reservation)
                self._finish_job(job, [], None, expanded=False)
                return
            call_id = self._insert_pending(job, request_key, attempt, reserved_prompt, reservation)
            started = time.monotonic()
            self._call_times.append(started)
            try:
                timeout = self.cfg.timeout
                if self.cfg.caps.max_seconds is not None:
                    timeout = max(1.0, min(timeout, self.cfg.caps.max_seconds - self.ledger.elapsed() + 5.0))
                reply = await self._client.chat(
                    messages, max_tokens=self.cfg.max_output_tokens, temperature=self.cfg.temperature,
                    top_p=self.cfg.top_p, seed=request_seed, timeout=timeout,
                )
            except AttemptFailure as failure:
                duration = int((time.monotonic() - started) * 1000)
                self._record_failure(call_id, failure, duration, reservation)
                self.last_error = failure.message
                if not failure.retryable:
                    self.fatal = failure.message
                    self._stop(STATUS_FAILED, failure.message)
                    self._finish_job(job, [], None, expanded=False)
                    return
                if failure.kind == "rate-limit":
                    self.limiter.pause(failure.retry_after or backoff_seconds(attempt, rng))
                if attempt > self.cfg.max_retries or self.stop_reason is not None or self.ledger.stop_reason():
                    # Given up after every retry: counted as expanded, so one poisoned node
                    # cannot eat the budget. Stopped by the run: a resume asks it again.
                    self._finish_job(job, [], call_id, expanded=attempt > self.cfg.max_retries)
                    return
                # Wait before retrying, but not past the end of the run: nothing is in flight.
                try:
                    await asyncio.wait_for(self._stopped.wait(),
                                           backoff_seconds(attempt, rng, retry_after=failure.retry_after))
                except asyncio.TimeoutError:
                    continue
                self._finish_job(job, [], call_id, expanded=False)
                return
            except asyncio.CancelledError:
                raise
            duration = int((time.monotonic() - started) * 1000)
            children = self._record_reply(job, call_id, reply, duration, reservation, local_prompt)
            self._finish_job(job, children, call_id, expanded=False)  # counted with the reply
            return

    async def _wait_turn(self, tokens: int) -> bool:
        """Wait for the rate limiter; False if the run stops first."""
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

    def _insert_pending(self, job: Job, request_key: str, attempt: int, reserved_prompt: int,
                        reservation: Reservation) -> int:
        with self.db.conn:
            return self.db["calls"].insert({
                "created_at": utcnow(), "parent_node_ids": json.dumps([p.id for p in job.parents]),
                "depth": job.depth, "strategy": self.cfg.strategy, "chain": job.chain, "attempt": attempt,
                "request_key": request_key, "model": self.cfg.model, "status": "pending",
                "reserved_prompt_tokens": reserved_prompt, "reserved_tokens": reservation.tokens,
                "reserved_micro": reservation.micro, "simulated": int(self.simulated),
            }).last_pk

    def _record_failure(self, call_id: int, failure: AttemptFailure, duration: int, reservation: Reservation) -> None:
        unknown = failure.billing_unknown
        status = "timeout" if unknown else "error"
        with self.db.conn:
            self.db["calls"].update(call_id, {
                "status": status, "http_status": failure.http_status, "error": f"{failure.kind}: {failure.message}",
                "request_id": failure.request_id, "duration_ms": duration,
                "cost_micro": None if unknown else 0,
            })
        self.ledger.settle(reservation, None if unknown else 0, None if unknown else 0)

    def _record_reply(self, job: Job, call_id: int, reply: ChatReply, duration: int,
                      reservation: Reservation, local_prompt: int) -> list[NodeInfo]:
        prompt_tokens = reply.prompt_tokens
        completion_tokens = reply.completion_tokens
        if prompt_tokens is None or completion_tokens is None:
            # A server that reports no usage: count it ourselves, at worst the reservation.
            prompt_tokens = reservation.tokens - self.cfg.max_output_tokens
            completion_tokens = min(count_text(reply.text, self.cfg.model), self.cfg.max_output_tokens)
        cost = price_mod.cost_micro(self.price, prompt_tokens, completion_tokens, reply.cached_tokens) if self.price else 0
        if reply.prompt_tokens is not None:
            self.prompt_ratio = max(self.prompt_ratio, reply.prompt_tokens / max(1, local_prompt))
            self.ratio_known = True

        parent = job.parents[0]
        rows: list[dict] = []
        accepted_examples: list[Example] = []
        candidates = parse_reply(reply.text)
        open_slots = None if self.cfg.caps.target is None else self.cfg.caps.target - self.ledger.accepted
        batch_keys: set[str] = set()
        pending_vecs: list[np.ndarray] = []
        cand_examples: list[tuple[Any, Example | None, str | None]] = []
        for cand in candidates:
            if cand.obj is None:
                cand_examples.append((cand, None, cand.error or "invalid-json"))
                continue
            try:
                ex = example_from_dict(cand.obj, self.fmt)
            except InvalidExample as exc:
                cand_examples.append((cand, None, exc.reason))
                continue
            key = dedup_key(ex)
            if key in self.seen_keys or key in batch_keys:
                cand_examples.append((cand, ex, "duplicate"))
                continue
            batch_keys.add(key)
            cand_examples.append((cand, ex, None))
        # Similarity to everything accepted so far (novelty, near-duplicates), in one batch.
        sims: dict[int, float] = {}
        vecs = None
        if self._index is not None:
            ok_idx = [i for i, (_, ex, reason) in enumerate(cand_examples) if reason is None]
            if ok_idx:
                vecs = self._embed([cand_examples[i][1] for i in ok_idx])
                base = self._index.max_similarity(vecs) if len(self._index) else np.zeros(len(ok_idx))
                for j, i in enumerate(ok_idx):
                    # also against the earlier candidates of this same reply
                    within = max((float(vecs[j] @ vecs[m]) for m in range(j)), default=-1.0)
                    sims[i] = max(float(base[j]), within)
                vec_of = {i: vecs[j] for j, i in enumerate(ok_idx)}
        n = len(cand_examples)
        shares = split_cost(cost, max(n, 1))
        for i, (cand, ex, reason) in enumerate(cand_examples):
            novelty = None
            if reason is None and i in sims:
                novelty = 1.0 - sims[i]
                if self.cfg.near_dup is not None and sims[i] >= self.cfg.near_dup:
                    reason = "near-duplicate"
            if reason is None and open_slots is not None and len(accepted_examples) >= open_slots:
                reason = "over-target"  # valid, but the reply gave more than the target allows
            status = "rejected" if reason else "accepted"
            rows.append(_node_row(ex, parent.id, parent.root_id, job.depth, call_id, self.cfg.strategy,
                                  status, reason, raw=None if status == "accepted" else cand.raw,
                                  cost_share=shares[i], novelty=novelty))
            if status == "accepted":
                accepted_examples.append(ex)
                if self._index is not None:
                    pending_vecs.append(vec_of[i])
        if n == 0:
            rows.append(_node_row(None, parent.id, parent.root_id, job.depth, call_id, self.cfg.strategy,
                                  "rejected", "no-examples-in-reply", raw=reply.text[:20000], cost_share=cost))
        n_accepted = len(accepted_examples)
        ids: list[int] = []
        newly_simulated = reply.simulated and not self.simulated
        with self.db.conn:  # the reply, its usage and its nodes land together, or not at all
            if newly_simulated:
                # A simulator served over --base-url: its output is simulated all the same.
                self.db.execute("update runs set simulated = 1")
            self.db["calls"].update(call_id, {
                "simulated": int(reply.simulated or self.simulated),
                "status": "ok", "finish_reason": reply.finish_reason, "request_id": reply.request_id,
                "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "cached_tokens": reply.cached_tokens, "cost_micro": cost, "duration_ms": duration,
                "response_text": reply.text, "n_parsed": n, "n_accepted": n_accepted,
            })
            for row in rows:
                nid = self.db.conn.execute(_INSERT_NODE, [row[c] for c in _NODE_COLUMNS]).lastrowid
                if row["status"] == "accepted":
                    ids.append(nid)
            # The request is over: its parents count as expanded, in the same transaction.
            self.db.conn.executemany("update nodes set expanded = coalesce(expanded, 0) + 1 where id = ?",
                                     [(p.id,) for p in job.parents])
            self.db.conn.execute("update runs set updated_at = ?", [utcnow()])
        # Persisted: now count it.
        self.simulated = self.simulated or reply.simulated
        self.ledger.settle(reservation, cost, prompt_tokens + completion_tokens, accepted=n_accepted)
        self.rejected += len(rows) - n_accepted
        for ex in accepted_examples:
            self.seen_keys.add(dedup_key(ex))
        if self._index is not None and pending_vecs:
            self._index.add(np.vstack(pending_vecs))
        if n_accepted:
            self.max_depth_seen = max(self.max_depth_seen, job.depth)
        infos = []
        accepted_rows = [r for r in rows if r["status"] == "accepted"]
        for nid, ex, row in zip(ids, accepted_examples, accepted_rows):
            infos.append(NodeInfo(nid, job.depth, parent.root_id, ex, 0, row["novelty"]))
        return infos

    def _finish_job(self, job: Job, children: list[NodeInfo], call_id: int | None, expanded: bool = True) -> None:
        """The request is over (reply, or given up): the parents count as expanded once,
        unless nothing was ever sent for it (a resumed run asks it again)."""
        if expanded:
            with self.db.conn:
                for p in job.parents:
                    self.db.execute("update nodes set expanded = coalesce(expanded, 0) + 1 where id = ?", [p.id])
                self.db.execute("update runs set updated_at = ?", [utcnow()])
        self.strategy.on_result(job, children, call_id)
        self._report()

    def _stop(self, status: str, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_status, self.stop_reason = status, reason
        self._stopped.set()

    # ---- the loop ---------------------------------------------------------------------
    async def run(self) -> RunResult:
        base_url = self.cfg.base_url
        sim_server = None
        if self.cfg.backend == "sim":
            from treegen.sim.server import SimConfig, SimServer

            sim_server = SimServer(SimConfig(**(self.cfg.sim or {}))).start()
            base_url = sim_server.base_url
        self._client = ChatClient(base_url, self.api_key if self.cfg.backend != "sim" else "sim", self.cfg.model,
                                  timeout=self.cfg.timeout, http_client=self.http_client)
        self._stopped = asyncio.Event()
        self._mark_lost_calls()
        self.db.execute("update runs set status = ?, stop_reason = null, updated_at = ?", [STATUS_RUNNING, utcnow()])
        self.db.conn.commit()
        loop = asyncio.get_running_loop()
        interrupts = {"n": 0}

        def on_signal() -> None:
            interrupts["n"] += 1
            self._stop(STATUS_INTERRUPTED, "interrupted: finishing the requests in flight (Ctrl-C again to abandon them)")
            if interrupts["n"] >= 2:
                for t in list(self.in_flight):
                    t.cancel()

        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, on_signal)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        try:
            await self._loop()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self._client.aclose()
            if sim_server is not None:
                sim_server.stop()
        return self._finalise()

    def _mark_lost_calls(self) -> None:
        """Calls left pending by a crash: the server may have billed them; keep them counted."""
        with self.db.conn:
            self.db.execute(
                "update calls set status = 'lost', cost_micro = null, "
                "error = 'the run stopped before the reply was recorded; counted at its reservation' "
                "where status = 'pending'"
            )

    async def _loop(self) -> None:
        while True:
            if self.stop_reason is None:
                reason = self.ledger.stop_reason()
                if reason:
                    self._stop(STATUS_BUDGET if not reason.startswith("target") else STATUS_COMPLETED, reason)
            if self.stop_reason is not None:
                break
            launched = False
            open_examples = self.ledger.examples_open()
            limit = self.cfg.concurrency if self.ratio_known else 1
            if len(self.in_flight) < limit and (open_examples is None or open_examples > 0):
                job = self.strategy.next_job()
                if job is not None:
                    messages, k, local_prompt, reserved_prompt = self._prepare(job)
                    try:
                        reservation = self._reserve(reserved_prompt, k)
                    except BudgetReached as exc:
                        self._stop(STATUS_BUDGET, exc.reason)
                        break
                    task = asyncio.create_task(
                        self._run_job(job, messages, k, local_prompt, reserved_prompt, reservation))
                    self.in_flight.add(task)
                    task.add_done_callback(self.in_flight.discard)
                    launched = True
            if launched:
                await asyncio.sleep(0)
                continue
            if not self.in_flight:
                # No request in flight and the strategy has none to give: the tree is done.
                self._stop(STATUS_COMPLETED, "nothing left to expand (max depth reached or no accepted examples)")
                break
            await asyncio.wait(self.in_flight, return_when=asyncio.FIRST_COMPLETED, timeout=0.5)
            self._report()
        if self.in_flight:
            # Requests in flight are paid for: wait for them and record their replies.
            await asyncio.gather(*self.in_flight, return_exceptions=True)
        self._report(force=True)

    def _finalise(self) -> RunResult:
        status = self.stop_status or STATUS_COMPLETED
        reason = self.stop_reason
        if status == STATUS_COMPLETED and self.cfg.caps.target is not None and self.ledger.accepted >= self.cfg.caps.target:
            reason = f"target of {self.cfg.caps.target:,} accepted examples reached"
        elapsed = self.ledger.elapsed()
        with self.db.conn:
            self.db.execute("update runs set status = ?, stop_reason = ?, updated_at = ?, elapsed_seconds = ?",
                            [status, reason, utcnow(), elapsed])
        return RunResult(
            run_id=self.run_id, run_dir=Path(self.db.conn.execute("pragma database_list").fetchone()[2]).parent,
            status=status, stop_reason=reason, accepted=self.ledger.accepted, spent_micro=self.ledger.spent_micro,
            spent_tokens=self.ledger.spent_tokens, calls=self.ledger.calls, simulated=self.simulated,
        )


def run_engine(db: sqlite_utils.Database, cfg: RunConfig, api_key: str | None = None,
               on_progress: Callable[[Progress], None] | None = None) -> RunResult:
    engine = Engine(db, cfg, api_key=api_key, on_progress=on_progress)
    result = asyncio.run(engine.run())
    if engine.fatal:
        raise BackendError(
            f"{engine.fatal}\nThe run is saved at {result.run_dir} (status: failed); fix the cause and continue it "
            f"with `treegen resume {result.run_dir}`."
        )
    return result


def load_run_config(db: sqlite_utils.Database) -> RunConfig:
    return RunConfig.from_dict(run_row(db)["config"])


def save_run_config(db: sqlite_utils.Database, cfg: RunConfig) -> None:
    with db.conn:
        db.execute("update runs set config = ?, updated_at = ?", [cfg.to_json(), utcnow()])
