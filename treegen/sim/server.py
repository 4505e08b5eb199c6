"""An offline, OpenAI-compatible chat-completions server that answers treegen's prompts.

Everything it serves is simulated. A reply is k items drawn from a pool of real (or
synthetic) examples NEAR the in-context example(s): TF-IDF cosine similarity, sampled with
probability proportional to exp(sim / tau) without replacement, tau growing with the
request's temperature. Items are rendered in the shapes real models use (bare array, fenced
array, one object a line, numbered list, with chatter). Faults are injected on demand: rate
limits (429 + Retry-After), 500/503, hangs, malformed or truncated replies, wrong item counts,
flipped labels, duplicates; and hostile-server faults (replies past max_tokens, inflated
usage, 200s with HTML / empty / non-JSON bodies, requests never answered, error bodies that
echo the Authorization header). With a ``response_format`` the reply is one JSON object
``{"examples": [...]}``. The Batch API (/v1/files, /v1/batches) lives in ``batch.py``.

The quality requests of issue 14 (notes/QUALITY_PROTOCOL.md) are told apart by the
``json_schema`` name, else by the last line of the user message (``request_kind``). The pool
knows every item's true label, looked up without the candidate's label (``_Pool.lookup``):
verify replies answer it with probability ``verify_accuracy`` (else a wrong answer; a random
one for an item not in the pool), judge replies score it (8-10 right label, 2-4 wrong, 5-7
unknown), attributes replies list what the pool can honour (``length`` terciles; ``topic`` of
a synthetic pool), a generation prompt's ``Attributes:`` line restricts sampling to matching
items, and a harder rewrite is one near pool item with a longer question. Label flips apply to
generation and rewrites only; a flipped item keeps its question, so its truth is still found.

Determinism: a reply's content is a pure function of (config.seed, the request's ``seed``,
the messages), whatever the concurrency. Transport faults (error, hang) are drawn from the
same key plus the number of times that identical request was seen before, so a retry can
succeed; only rate limiting depends on the clock.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
import re
import select
import socket
import threading
import time
import urllib.parse
import uuid
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Sequence

import numpy as np

from treegen.errors import ConfigError, TreegenError
from treegen.task import (
    YESNO_OPTIONS, Example, InvalidExample, TaskFormat, dedup_key, example_from_dict, load_examples, normalise_text,
    option_key,
)
from treegen.prompts import read_prompt
from treegen.schema import answer_to_label
from treegen.sim.batch import BatchStore
from treegen.sim.pool import synthetic_pool
from treegen.sim.tfidf import TfidfIndex, analyzer as tfidf_analyzer
from treegen.tokens import count_messages, count_text, encoding_name_for_model, get_encoding

SIM_MODEL = "treegen-sim"
FINGERPRINT = "treegen-sim"  # system_fingerprint of everything simulated
BODY_FAULTS = ("html", "empty", "notjson")
RESPONSE_FORMATS = ("json_schema", "json_object")  # the structured types (besides "text")
DEFAULT_MAX_TOKENS = 4096  # reserved against the TPM limit when a request sets none
WINDOW_S = 60.0


@dataclass
class SimConfig:
    pool_path: str | None = None  # JSONL in the unified format; None -> synthetic pool
    latency_ms: float = 0.0  # per request, plus jitter_ms uniform
    jitter_ms: float = 0.0
    rpm_limit: int | None = None  # requests per minute (sliding 60 s window)
    tpm_limit: int | None = None  # tokens per minute (prompt + max_tokens)
    error_rate: float = 0.0  # 500 / 503 answers
    timeout_rate: float = 0.0  # the request hangs hang_seconds before answering
    hang_seconds: float = 30.0
    malformed_rate: float = 0.0  # reply text with broken JSON objects / prose only
    truncate_rate: float = 0.0  # reply cut mid-object, finish_reason "length"
    wrong_count_rate: float = 0.0  # more or fewer than k items
    label_flip_rate: float = 0.0  # per item: label set to another option
    duplicate_rate: float = 0.0  # per item: repeat of an in-context example or an earlier item
    api_key: str | None = None  # when set, any other bearer key gets 401
    seed: int = 0
    # Structured outputs: response_format types answered 400 (as llama.cpp does for json_schema).
    refuse_response_format: list[str] = field(default_factory=list)
    # Hostile-server faults, for tests of the engine's defences.
    ignore_max_tokens: bool = False  # reply far past max_tokens and report that usage
    usage_inflate: int = 0  # when > 0: report this many completion tokens, whatever was sent
    body_fault: str | None = None  # "html" | "empty" | "notjson": a 200 whose body is not the JSON
    body_fault_rate: float = 1.0  # share of replies with the body fault (when body_fault is set)
    hang_rate: float = 0.0  # the request is never answered: held until the client gives up
    echo_auth: bool = False  # error bodies quote the request's Authorization header
    # The Batch API (treegen/sim/batch.py).
    batch_delay_s: float = 0.0  # seconds from create to completed; 0: done on the next retrieve
    batch_fail_rate: float = 0.0  # per request: an error line with status 500
    batch_expire_rate: float = 0.0  # per request: not done in the window, error line "batch_expired"
    # Verification requests: per candidate, the chance the answer is the pool's true label.
    verify_accuracy: float = 0.9

    def validate(self) -> None:
        """ConfigError naming the first setting out of range."""
        for name in ("error_rate", "timeout_rate", "malformed_rate", "truncate_rate", "wrong_count_rate",
                     "label_flip_rate", "duplicate_rate", "body_fault_rate", "hang_rate", "batch_fail_rate",
                     "batch_expire_rate", "verify_accuracy"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{_flag(name)} is {value}, but rates are probabilities: give a number from 0 to 1.")
        for name in ("latency_ms", "jitter_ms", "hang_seconds", "usage_inflate", "batch_delay_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{_flag(name)} is {getattr(self, name)}; give a number of zero or more.")
        if self.body_fault is not None and self.body_fault not in BODY_FAULTS:
            raise ConfigError(f"--body-fault is {self.body_fault!r}; give one of {', '.join(BODY_FAULTS)}, or leave it out.")
        for kind in self.refuse_response_format:
            if kind not in RESPONSE_FORMATS:
                raise ConfigError(
                    f"--refuse-response-format names {kind!r}; give {' and/or '.join(RESPONSE_FORMATS)}."
                )
        for name in ("rpm_limit", "tpm_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{_flag(name)} is {value}; give a positive limit, or leave it out for no limit.")


def _flag(field: str) -> str:
    """The `treegen sim serve` flag of a SimConfig field, for error messages."""
    return "--" + field.removesuffix("_limit").replace("_", "-")


def temperature_tau(temperature: float) -> float:
    """Softmax temperature over cosine similarities: low -> nearest items, high -> spread."""
    return 0.01 + 0.05 * max(0.0, temperature)


class _Pool:
    """Examples of one task format with a TF-IDF index (sparse, L2-normalised rows).

    It also knows each item's true label by a label-free key (``lookup``), and the
    attributes the simulator can honour: ``length`` (short / medium / long by the terciles
    of the pool's question word counts) and, for a synthetic pool, ``topic``.
    """

    def __init__(self, examples: list[Example], index: TfidfIndex, synthetic: bool = False):
        self.examples = examples
        self.index = index
        self.analyzer = tfidf_analyzer
        self.vocabulary = index.vocabulary
        self.idf = index.idf
        self.keys = [dedup_key(ex) for ex in examples]
        self.dicts = [ex.to_dict() for ex in examples]
        self.by_key: dict[str, list[int]] = {}
        for i, key in enumerate(self.keys):
            self.by_key.setdefault(key, []).append(i)
        # Options may come back reordered or reworded: the question (and context) alone also finds an item.
        self.by_question: dict[str, list[int]] = {}
        for i, ex in enumerate(examples):
            self.by_question.setdefault(_question_key(ex.question, ex.context), []).append(i)
        self.words = np.array([_words(ex.question) for ex in examples], dtype=np.int64)
        self.attributes: dict[str, np.ndarray] = {"length": _length_buckets(self.words)}
        if synthetic:
            topics = [_synthetic_topic(ex) for ex in examples]
            if topics and all(topics):  # only when every item's family is recognised
                self.attributes["topic"] = np.array(topics, dtype=object)

    @classmethod
    def fit(cls, examples: list[Example], synthetic: bool = False) -> "_Pool":
        return cls(examples, TfidfIndex([ex.text() for ex in examples]), synthetic)

    def lookup(self, question: str, context: str | None, options: Sequence[str]) -> int | None:
        """The pool index of a candidate given WITHOUT its label, or None when it is not a pool item.

        By the dedup key (question, context, options in any order), else by question and
        context alone when one of those items has its true label among the candidate's options."""
        found = self.by_key.get(dedup_key(Example(question, tuple(options), "", context)))
        if found:
            return found[0]
        wanted = {option_key(o) for o in options}
        for i in self.by_question.get(_question_key(question, context), ()):
            if not options or option_key(self.examples[i].label) in wanted:
                return i
        return None

    def dimensions(self) -> list[tuple[str, list[str]]]:
        """The attribute dimensions this pool can honour, with the values its items have."""
        order = {"length": ["short", "medium", "long"]}
        out = []
        for name, values in self.attributes.items():
            present = set(values.tolist())
            out.append((name, [v for v in order[name] if v in present] if name in order else sorted(present)))
        return out

    def allowed(self, choice: dict[str, str]) -> np.ndarray | None:
        """Mask of the items that have every attribute value asked for that this pool knows;
        None when nothing asked applies (unknown names are ignored)."""
        mask: np.ndarray | None = None
        for name, value in choice.items():
            values = self.attributes.get(name.strip().lower())
            if values is None:
                continue
            hit = values == value.strip().lower()
            mask = hit if mask is None else mask & hit
        return mask

    def similarities(self, texts: list[str]) -> np.ndarray:
        """Cosine similarity of every pool item to the joined texts (one dense vector)."""
        cols, weights = self.query(" ".join(texts))
        if len(cols) == 0:
            return np.zeros(len(self.examples), dtype=np.float32)
        return self.index.dot(cols, weights)

    def query(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """The fitted vectorizer's TF-IDF vector of ``text`` as (columns, weights).

        The same numbers as ``vectorizer.transform``, without its per-call validation,
        which costs more than the whole similarity product for one short query.
        """
        counts = Counter(t for t in self.analyzer(text) if t in self.vocabulary)
        if not counts:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        cols = np.fromiter((self.vocabulary[t] for t in counts), dtype=np.int64, count=len(counts))
        tf = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
        w = (1.0 + np.log(tf)) * self.idf[cols]  # sublinear_tf=True
        return cols, (w / np.linalg.norm(w)).astype(np.float32)


class Simulator:
    """Pure request -> response logic (no sockets); thread-safe."""

    def __init__(self, config: SimConfig):
        config.validate()
        self.config = config
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._pools: dict[str, _Pool] = {}
        self.pool_format: TaskFormat | None = None
        if config.pool_path:
            examples, fmt = load_examples(config.pool_path)  # SeedFileError on a bad file
            self._pools[fmt.name] = _Pool.fit(examples)
            self.pool_format = fmt
        self._requests: deque[float] = deque()  # start times in the rate window
        self._tokens: deque[tuple[float, int]] = deque()
        self._attempts: Counter[str] = Counter()
        self._stats: dict[str, Any] = {
            "simulated": True, "requests": 0, "by_status": Counter(), "prompt_tokens": 0,
            "completion_tokens": 0, "rate_limited": 0, "hangs": 0, "never_answered": 0, "hangs_abandoned": 0,
            "kinds": Counter(),  # replies per request kind (generate, verify, attributes, harder, judge)
        }
        self.batches = BatchStore(
            config.seed, config.batch_delay_s, config.batch_fail_rate, config.batch_expire_rate, self.batch_reply
        )

    # -- public -------------------------------------------------------------------------

    def handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes,
        client_gone: Callable[[], bool] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body of the answer. Status 0: no answer (a ``hang_rate``
        fault); the call returns when ``client_gone()`` says the client left, or at close()."""
        headers = {k.lower(): v for k, v in headers.items()}
        path, _, query_string = path.partition("?")
        path = path.rstrip("/")
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(query_string).items()}
        request_id = "req_sim_" + uuid.uuid4().hex[:24]
        try:
            status, extra, payload = self._route(method.upper(), path, headers, body, query, client_gone)
        except Exception as exc:  # a bug here must still answer in the OpenAI error shape
            status, extra, payload = 500, {}, _error(f"simulator internal error: {exc!r}", "server_error", None)
        if status >= 400 and self.config.echo_auth and isinstance(payload, dict) and "error" in payload:
            # A careless proxy's habit; the engine must not write this into logs or the store.
            payload["error"]["message"] += f" (request Authorization header: {headers.get('authorization', '')})"
        with self._lock:
            if status == 0:
                self._stats["never_answered"] += 1
            else:
                self._stats["requests"] += 1
                self._stats["by_status"][status] += 1
            if status == 429:
                self._stats["rate_limited"] += 1
        out_headers = {"content-type": "application/json", "x-request-id": request_id, "openai-model": SIM_MODEL}
        out_headers.update(extra)
        if isinstance(payload, bytes):
            return status, out_headers, payload
        return status, out_headers, json.dumps(payload, ensure_ascii=False).encode("utf-8")

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out = dict(self._stats)
            out["by_status"] = {str(k): v for k, v in sorted(self._stats["by_status"].items())}
            out["kinds"] = {k: self._stats["kinds"][k] for k in KINDS}
        out.update(self.batches.counts())
        out["config"] = asdict(self.config)
        out["config"].pop("api_key", None)
        return out

    def close(self) -> None:
        """Release hanging requests (used when the server stops)."""
        self._stopping.set()

    def batch_reply(self, request: dict) -> tuple[int, dict]:
        """The reply to one batched chat request: the synchronous endpoint's reply (same
        seeding, content and usage faults) without its transport faults."""
        chat = self._parse_chat(request)
        if isinstance(chat, tuple):
            return chat[0], chat[2]
        return 200, self._complete(chat)

    # -- routing --------------------------------------------------------------------------

    def _route(
        self, method: str, path: str, headers: dict[str, str], body: bytes, query: dict[str, str],
        client_gone: Callable[[], bool] | None,
    ) -> tuple[int, dict[str, str], dict | bytes]:
        if path == "/sim/stats" and method == "GET":
            return 200, {}, self.stats()
        if path.startswith("/v1"):
            if self.config.api_key is not None:
                auth = headers.get("authorization", "")
                if auth != f"Bearer {self.config.api_key}":
                    return 401, {}, _error(
                        "Incorrect API key provided for the treegen simulator.", "invalid_request_error", "invalid_api_key"
                    )
            if path == "/v1/models" and method == "GET":
                return 200, {}, {
                    "object": "list",
                    "data": [{"id": SIM_MODEL, "object": "model", "created": 0, "owned_by": "treegen-sim"}],
                }
            if path == "/v1/chat/completions":
                if method != "POST":
                    return 405, {}, _error("Use POST for /v1/chat/completions.", "invalid_request_error", None)
                return self._chat(body, client_gone)
            answer = self.batches.route(method, path, headers, body, query)
            if answer is not None:
                return answer
        return 404, {}, _error(f"Unknown endpoint {method} {path}.", "invalid_request_error", "unknown_url")

    def _chat(self, body: bytes, client_gone: Callable[[], bool] | None) -> tuple[int, dict[str, str], dict | bytes]:
        try:
            req = json.loads(body.decode("utf-8") or "null")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return 400, {}, _error(f"The request body is not valid JSON: {exc}", "invalid_request_error", None)
        chat = self._parse_chat(req)
        if isinstance(chat, tuple):
            return chat
        limited = self._rate_limit(chat.prompt_tokens + (chat.max_tokens or DEFAULT_MAX_TOKENS))
        if limited is not None:
            return limited

        with self._lock:
            attempt = self._attempts[chat.key]
            self._attempts[chat.key] += 1
        fault = random.Random(f"{chat.key}:{attempt}")  # transport faults: fresh per attempt
        cfg = self.config
        if fault.random() < cfg.error_rate:
            code = fault.choice([500, 503])
            msg = "The server had an error while processing your request." if code == 500 else "The engine is currently overloaded."
            return code, {}, _error(f"{msg} (simulated)", "server_error", None)
        if fault.random() < cfg.timeout_rate:
            with self._lock:
                self._stats["hangs"] += 1
            self._stopping.wait(cfg.hang_seconds)
        delay = cfg.latency_ms + fault.uniform(0, cfg.jitter_ms)
        # Drawn always, so a setting of one fault does not move the draws of another.
        hang, body_fault = fault.random() < cfg.hang_rate, fault.random() < cfg.body_fault_rate
        if hang:
            self._hold_until_gone(client_gone)
            return 0, {}, b""
        if delay > 0:
            self._stopping.wait(delay / 1000.0)

        payload = self._complete(chat)
        if cfg.body_fault is not None and body_fault:
            return _broken_body(cfg.body_fault, payload)
        return 200, {}, payload

    def _hold_until_gone(self, client_gone: Callable[[], bool] | None) -> None:
        """Never answer: wait until the client disconnects (its timeout) or the server stops."""
        while not self._stopping.wait(0.05):
            if client_gone is not None and client_gone():
                with self._lock:
                    self._stats["hangs_abandoned"] += 1
                return

    def _parse_chat(self, req: Any) -> "_ChatRequest | tuple[int, dict[str, str], dict]":
        """The validated request, or the 400 answer that says what is wrong with it."""
        if not isinstance(req, dict):
            return 400, {}, _error("The request body must be a JSON object.", "invalid_request_error", None)
        messages = req.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            return 400, {}, _error("'messages' must be a non-empty list of message objects.", "invalid_request_error", None)
        if req.get("stream"):
            return 400, {}, _error("The treegen simulator does not stream; send stream=false.", "invalid_request_error", None)
        model = str(req.get("model") or SIM_MODEL)
        max_tokens = req.get("max_completion_tokens", req.get("max_tokens"))
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            return 400, {}, _error("max_tokens must be a positive integer.", "invalid_request_error", None)
        temperature = req.get("temperature")
        temperature = 1.0 if temperature is None else temperature  # OpenAI's default
        if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
            return 400, {}, _error("temperature must be a number from 0 to 2.", "invalid_request_error", None)
        structure = _read_response_format(req.get("response_format"), self.config.refuse_response_format)
        if isinstance(structure, str):
            return 400, {}, {"error": {
                "message": structure, "type": "invalid_request_error", "param": "response_format", "code": None,
            }}
        messages = [{k: _text_of(v) for k, v in m.items()} for m in messages]
        return _ChatRequest(
            messages=messages, model=model, max_tokens=max_tokens, temperature=float(temperature),
            structure=structure, prompt_tokens=count_messages(messages, model),
            key=_request_key(self.config.seed, req.get("seed"), messages),
            kind=request_kind(messages, _schema_name(req.get("response_format"))),
        )

    def _complete(self, chat: "_ChatRequest") -> dict:
        """The chat.completion body for a validated request (counted in the stats)."""
        cfg = self.config
        floor = 3 * chat.max_tokens if cfg.ignore_max_tokens and chat.max_tokens else None
        content, finish = self.reply_content(chat.messages, chat.temperature, chat.key, chat.structure, floor, chat.kind)
        if floor is None:
            content, finish, completion_tokens = _cap_tokens(content, finish, chat.max_tokens, chat.model)
        else:
            completion_tokens = count_text(content, chat.model)  # far past max_tokens, and said so
        if cfg.usage_inflate > 0:
            completion_tokens = cfg.usage_inflate
        with self._lock:
            self._stats["prompt_tokens"] += chat.prompt_tokens
            self._stats["completion_tokens"] += completion_tokens
            self._stats["kinds"][chat.kind] += 1
        return {
            "id": "chatcmpl-sim-" + uuid.uuid4().hex[:24],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": chat.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }],
            "usage": {
                "prompt_tokens": chat.prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": chat.prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
        }

    def _rate_limit(self, tokens: int) -> tuple[int, dict[str, str], dict] | None:
        cfg = self.config
        if cfg.rpm_limit is None and cfg.tpm_limit is None:
            return None
        now = time.monotonic()
        with self._lock:
            while self._requests and self._requests[0] <= now - WINDOW_S:
                self._requests.popleft()
            while self._tokens and self._tokens[0][0] <= now - WINDOW_S:
                self._tokens.popleft()
            wait = 0.0
            what = ""
            if cfg.rpm_limit is not None and len(self._requests) >= cfg.rpm_limit:
                # The oldest requests must leave the window before one more fits.
                wait = self._requests[len(self._requests) - cfg.rpm_limit] + WINDOW_S - now
                what = f"requests per min (RPM): Limit {cfg.rpm_limit}, Used {len(self._requests)}, Requested 1"
            elif cfg.tpm_limit is not None:
                used = sum(t for _, t in self._tokens)
                if used + tokens > cfg.tpm_limit:
                    if tokens > cfg.tpm_limit:
                        wait = WINDOW_S
                    else:
                        acc, wait = used, 0.0
                        for t0, t in self._tokens:
                            acc -= t
                            if acc + tokens <= cfg.tpm_limit:
                                wait = t0 + WINDOW_S - now
                                break
                    what = f"tokens per min (TPM): Limit {cfg.tpm_limit}, Used {used}, Requested {tokens}"
            if not what:
                self._requests.append(now)
                self._tokens.append((now, tokens))
                return None
        wait = max(wait, 0.001)
        headers = {"retry-after": str(max(1, math.ceil(wait))), "retry-after-ms": str(max(1, math.ceil(wait * 1000)))}
        return 429, headers, _error(
            f"Rate limit reached for {SIM_MODEL} (simulated) on {what}. Please try again in {wait:.3f}s.",
            "requests" if "RPM" in what else "tokens", "rate_limit_exceeded",
        )

    # -- content --------------------------------------------------------------------------

    def pool_for(self, fmt: TaskFormat) -> _Pool:
        """The pool of that format: the pool file's, else a synthetic one (built once)."""
        with self._lock:
            pool = self._pools.get(fmt.name)
        if pool is None:
            pool = _synthetic_index(fmt, self.config.seed)
            with self._lock:
                pool = self._pools.setdefault(fmt.name, pool)
        return pool

    def reply_content(
        self, messages: list[dict[str, str]], temperature: float, key: str,
        structure: "Structure | None" = None, min_tokens: int | None = None, kind: str | None = None,
    ) -> tuple[str, str]:
        """The assistant text and finish_reason for a prompt; deterministic in ``key``.

        ``structure``: a response_format asked for; the reply is one JSON object.
        ``min_tokens``: make the reply longer than this (the ``ignore_max_tokens`` fault).
        ``kind``: what the request asks for (``request_kind``; read from the messages when None):
        generation and harder rewrites are pool items, verify / judge / attributes are one
        JSON object built from the pool's true labels."""
        kind = kind or request_kind(messages)
        if kind in ("verify", "judge", "attributes"):
            return self._object_reply(kind, messages, key, structure, min_tokens)
        rng = np.random.default_rng(int(key[:16], 16))
        r = random.Random(key)
        cfg = self.config
        shown, k = read_prompt(messages)
        context_examples = _valid(shown)
        fmt = context_examples[0].infer_format() if context_examples else (self.pool_format or TaskFormat.parse("yesno_close"))
        pool = self.pool_for(fmt)

        if kind == "harder":
            items = self._harder(pool, context_examples[:1], temperature, rng)
        else:
            if r.random() < cfg.wrong_count_rate:
                k += r.choice([d for d in (-2, -1, 1, 2, 3) if k + d >= 1])
            items = self._sample(pool, context_examples, k, temperature, rng, pool.allowed(attribute_choice(messages)))
        if min_tokens is not None:
            items = self._longer(pool, context_examples, items, temperature, rng, min_tokens)
        items = [dict(it) for it in items]
        for i, it in enumerate(items):
            if r.random() < cfg.label_flip_rate:
                # Only the label changes: the question still finds the item's true label.
                it["label"] = _wrong_label(it, r)
            if r.random() < cfg.duplicate_rate:
                sources = [ex.to_dict() for ex in context_examples] + items[:i]
                if sources:
                    items[i] = dict(r.choice(sources))

        if structure is not None:
            items = [structure.shape(it) for it in items]
        if r.random() < cfg.malformed_rate:
            return _malformed(items, r, structure), "stop"
        text, spans = _render(items, r) if structure is None else structure.render(items)
        if spans and r.random() < cfg.truncate_rate:
            start, end = spans[r.randrange(len(spans))]
            cut = r.randint(start + 1, max(start + 1, end - 2))
            return text[:cut], "length"
        return text, "stop"

    # -- verify, judge, attributes: one JSON object ----------------------------------------------

    def _object_reply(
        self, kind: str, messages: list[dict[str, str]], key: str, structure: "Structure | None", min_tokens: int | None,
    ) -> tuple[str, str]:
        """``{"verdicts": [...]}`` / ``{"scores": [...]}`` / ``{"attributes": [...]}``, with the
        content faults (malformed, truncated) and, without a response_format, sometimes fenced."""
        r = random.Random(f"{key}:{kind}")
        cfg = self.config
        entries: list[dict[str, Any]]
        if kind == "verify":
            wrapper, entries = "verdicts", self._verdicts(messages, r)
        elif kind == "judge":
            wrapper, entries = "scores", self._scores(messages, r)
        else:
            wrapper, entries = "attributes", self._dimensions(messages)
        if min_tokens is not None:
            entries = _pad_entries(entries, min_tokens)
        text = json.dumps({wrapper: entries}, ensure_ascii=False)
        fenced, malformed, truncated = r.random() < 0.3, r.random() < cfg.malformed_rate, r.random() < cfg.truncate_rate
        if structure is None and fenced:
            text = f"```json\n{text}\n```"
        if malformed:
            if r.random() < 0.3 or not entries:
                return "I'm sorry, but I can't help with that.", "stop"
            # Some entries lose a colon (as with real models, the others still read).
            parts = [json.dumps(e, ensure_ascii=False) for e in entries]
            parts = [p.replace('": ', '" ', 1) if r.random() < 0.5 else p for p in parts]
            return "{" + json.dumps(wrapper) + ": [" + ", ".join(parts) + "]}", "stop"
        if truncated and len(text) > 2:
            return text[: r.randint(1, len(text) - 2)], "length"
        return text, "stop"

    def _truth(self, question: Any, context: Any, options: list[str]) -> tuple[TaskFormat | None, str | None]:
        """A candidate's task format and its true label, looked up without its label (None: not a pool item)."""
        context = context if isinstance(context, str) and context.strip() else None
        fmt = _format_of(options, context)
        if fmt is None or not isinstance(question, str):
            return fmt, None
        try:
            pool = self.pool_for(fmt)
        except TreegenError:  # a format no pool can hold (e.g. too many options for the synthetic one)
            return fmt, None
        i = pool.lookup(question, context, options)
        return fmt, None if i is None else pool.examples[i].label

    def _verdicts(self, messages: list[dict[str, str]], r: random.Random) -> list[dict[str, Any]]:
        """Each candidate's answer: its true label with probability ``verify_accuracy``, else a
        wrong one; a random answer for a candidate that is not in the pool."""
        out = []
        for pos, obj in enumerate(_candidate_lines(messages), 1):
            options = _options_of(obj)
            fmt, truth = self._truth(obj.get("question"), obj.get("context"), options)
            right = r.random() < self.config.verify_accuracy  # drawn for every candidate
            out.append({"id": _id_of(obj, pos), "answer": _answer(fmt, options, truth, right, r)})
        return out

    def _scores(self, messages: list[dict[str, str]], r: random.Random) -> list[dict[str, Any]]:
        """Judge scores: 8-10 for the true label, 2-4 for another, 5-7 when the item is unknown."""
        out = []
        for pos, obj in enumerate(_candidate_lines(messages), 1):
            options = _options_of(obj)
            fmt, truth = self._truth(obj.get("question"), obj.get("context"), options)
            label = obj.get("label")
            if label is None and "answer" in obj:
                label = obj["answer"] if not options else answer_to_label(obj).get("label")
            if fmt is None or truth is None:
                score = r.randint(5, 7)
            elif _same_label(label, truth, fmt):
                score = r.randint(8, 10)
            else:
                score = r.randint(2, 4)
            out.append({"id": _id_of(obj, pos), "score": score})
        return out

    def _dimensions(self, messages: list[dict[str, str]]) -> list[dict[str, Any]]:
        """The attribute dimensions the pool of the seeds' format can honour."""
        shown = _valid(read_prompt(messages)[0])
        fmt = shown[0].infer_format() if shown else (self.pool_format or TaskFormat.parse("yesno_close"))
        try:
            pool = self.pool_for(fmt)
        except TreegenError:
            return []
        return [{"name": name, "values": values} for name, values in pool.dimensions()]

    def _longer(
        self, pool: _Pool, shown: list[Example], items: list[dict], temperature: float,
        rng: np.random.Generator, min_tokens: int,
    ) -> list[dict]:
        """More items, until their JSON alone is over ``min_tokens`` tokens (items repeat
        once the pool runs out)."""
        per_item = max(1, count_text(json.dumps(items[0], ensure_ascii=False), "gpt-4o")) if items else 1
        want = min(20_000, max(len(items), min_tokens // per_item + 2))
        more = self._sample(pool, shown, want, temperature, rng) or items
        while True:
            out = (more * (want // max(1, len(more)) + 1))[:want]
            if count_text(json.dumps(out, ensure_ascii=False), "gpt-4o") > min_tokens or want >= 20_000:
                return out
            want = min(20_000, want * 2)

    def _harder(self, pool: _Pool, shown: list[Example], temperature: float, rng: np.random.Generator) -> list[dict]:
        """The simulator's "harder" rewrite: one pool item near the shown example with a longer
        question (any near item when none is longer)."""
        if not shown:
            return self._sample(pool, [], 1, temperature, rng)
        return self._sample(pool, shown, 1, temperature, rng, pool.words > _words(shown[0].question))

    def _sample(
        self, pool: _Pool, shown: list[Example], k: int, temperature: float, rng: np.random.Generator,
        allowed: np.ndarray | None = None,
    ) -> list[dict]:
        """k items near the shown ones; ``allowed``: only those items (all, when none of them is left)."""
        n = len(pool.examples)
        if n == 0 or k <= 0:
            return []
        if shown:
            sims = pool.similarities([ex.text() for ex in shown])
            # The in-context examples themselves are not "new" examples.
            for ex in shown:
                for j in pool.by_key.get(dedup_key(ex), ()):
                    sims[j] = -np.inf
        else:
            sims = np.zeros(n, dtype=np.float32)
        if allowed is not None:
            restricted = np.where(allowed, sims, -np.inf).astype(np.float32)
            if np.isfinite(restricted).any():
                sims = restricted
        # Gumbel top-k: the same as drawing k times without replacement with weights
        # exp(sim / tau), in one vectorised step.
        scores = sims / temperature_tau(temperature) + rng.gumbel(size=n)
        k = min(k, int(np.isfinite(scores).sum()))
        if k <= 0:
            return []
        idx = np.argpartition(-scores, k - 1)[:k]
        idx = idx[np.argsort(-scores[idx])]
        return [pool.dicts[j] for j in idx]


@functools.lru_cache(maxsize=16)
def _synthetic_index(fmt: TaskFormat, seed: int) -> _Pool:
    """Synthetic pools are the same for the same format and seed: index each once per process."""
    return _Pool.fit(synthetic_pool(fmt, seed=seed), synthetic=True)  # numeric formats too (numeric_pool)


# -- request kinds (QUALITY_PROTOCOL.md) -----------------------------------------------------

KINDS = ("generate", "verify", "attributes", "harder", "judge")
# response_format json_schema name -> kind
SCHEMA_KINDS = {"examples": "generate", "verdicts": "verify", "attributes": "attributes", "harder": "harder", "judge": "judge"}
# the last line of the user message -> kind (without a json_schema name)
LAST_LINE_KINDS = {
    "Answer every question.": "verify", "List the attributes.": "attributes",
    "Rewrite it as 1 harder example.": "harder", "Score every example.": "judge",
}
_WRITE_K = re.compile(r"Write \d+ new examples?\.")
_ATTRIBUTE_LINE = re.compile(r"^\s*Attributes:(.*)$", re.MULTILINE)


def request_kind(messages: Sequence[dict[str, str]], schema_name: str | None = None) -> str:
    """What a chat request asks for: the json_schema name when it is one of ours, else the
    last line of the last user message; anything else is answered as a generation request."""
    if schema_name in SCHEMA_KINDS:
        return SCHEMA_KINDS[schema_name]
    lines = [ln.strip() for ln in _last_user(messages).splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    if _WRITE_K.fullmatch(last):
        return "generate"
    return LAST_LINE_KINDS.get(last, "generate")


def _schema_name(response_format: Any) -> str | None:
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema")
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            return spec["name"]
    return None


def _last_user(messages: Sequence[dict[str, str]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return str(m.get("content", ""))
    return ""


def _json_lines(text: str) -> list[dict]:
    """Every line of ``text`` that is one JSON object."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
    return out


def attribute_choice(messages: Sequence[dict[str, str]]) -> dict[str, str]:
    """The ``Attributes: name=value; name=value`` line of a generation prompt, as a dict (lower case)."""
    found = _ATTRIBUTE_LINE.findall(_last_user(messages))
    choice: dict[str, str] = {}
    if found:
        for part in found[-1].split(";"):
            name, eq, value = part.partition("=")
            if eq and name.strip() and value.strip():
                choice[name.strip().lower()] = value.strip().lower()
    return choice


def _question_key(question: str, context: str | None) -> str:
    return f"{normalise_text(context)}\n{normalise_text(question)}"


def _words(text: str) -> int:
    return len(text.split())


def _length_buckets(words: np.ndarray) -> np.ndarray:
    """short / medium / long by the terciles of the word counts (ties go to the shorter bucket)."""
    if len(words) == 0:
        return np.array([], dtype=object)
    low, high = np.percentile(words, [100 / 3, 200 / 3])
    return np.where(words <= low, "short", np.where(words <= high, "medium", "long")).astype(object)


# The synthetic pool's template families, recognised by their wording (treegen/sim/pool.py).
_TOPICS = [
    ("divisibility", re.compile(r"\bdivisible by\b")),
    ("arithmetic", re.compile(r"\b(plus|minus|times)\b")),
    ("number comparison", re.compile(r"\b(largest|biggest|greater than)\b")),
    ("taxonomy", re.compile(r"\b(kind of|one of the following is|name the)\b", re.IGNORECASE)),
    ("unit conversion", re.compile(r"\bare there\b", re.IGNORECASE)),
    ("calendar", re.compile(r"\b(after|earliest|earlier)\b")),
]
_PASSAGE_TOPICS = [("ages", "years old."), ("shop stock", "shop in"), ("timetable", "The train from")]


def _synthetic_topic(ex: Example) -> str | None:
    if ex.context:
        return next((name for name, mark in _PASSAGE_TOPICS if mark in ex.context), None)
    return next((name for name, pattern in _TOPICS if pattern.search(ex.question)), None)


def _format_of(options: Sequence[str], context: str | None) -> TaskFormat | None:
    """A candidate's task format from its options (none: numeric, when that format exists)."""
    has_context = bool(context and str(context).strip())
    if not options:
        try:
            return TaskFormat.parse("numeric_open" if has_context else "numeric")
        except TreegenError:  # a version of treegen without the numeric format
            return None
    if tuple(options) == YESNO_OPTIONS:
        return TaskFormat("yesno", 2, has_context)
    return TaskFormat("mcqa", len(options), has_context)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _canonical(x: float) -> str:
    """A number written as treegen's numeric labels are: "42", "3.5"."""
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return format(Decimal(repr(round(x, 6))).normalize(), "f")


def _wrong_number(x: float, r: random.Random) -> float:
    step = r.randint(1, max(3, int(abs(x) // 5)))
    return x + step * r.choice((-1, 1))


def _expression(x: float, r: random.Random) -> str:
    """A short arithmetic expression whose value is ``x`` (what a verifier writes for numeric tasks)."""
    a = r.randint(1, 20)
    if x != int(x) or abs(x) >= 1e15:
        return f"({_canonical(x + a)})-{a}"
    n = int(x)
    divisors = [d for d in range(2, 10) if n and n % d == 0]
    form = r.randrange(3 if divisors else 2)
    if form == 0:
        return f"({n - a})+{a}"
    if form == 1:
        return f"({n + a})-{a}"
    d = r.choice(divisors)
    return f"{d}*({n // d})"


def _same_label(given: Any, truth: str, fmt: TaskFormat) -> bool:
    if fmt.kind == "numeric":
        a, b = _number(given), _number(truth)
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(given, bool):
        given = "True" if given else "False"
    return isinstance(given, str) and option_key(given) == option_key(truth)


def _candidate_lines(messages: Sequence[dict[str, str]]) -> list[dict]:
    """The candidates of a verify or judge request: the user message's JSON lines with a question."""
    return [obj for obj in _json_lines(_last_user(messages)) if "question" in obj]


def _options_of(obj: dict) -> list[str]:
    options = obj.get("options")
    if not isinstance(options, list):
        return []
    return [("True" if o else "False") if isinstance(o, bool) else str(o) for o in options]


def _id_of(obj: dict, position: int) -> int:
    value = obj.get("id")
    return value if isinstance(value, int) and not isinstance(value, bool) else position


def _answer(fmt: TaskFormat | None, options: list[str], truth: str | None, right: bool, r: random.Random) -> str | int:
    """A verifier's answer in the protocol's form: "True"/"False", an option number, or an
    arithmetic expression (numeric); the true label when ``right``, else a wrong one, and a
    random one when the truth is unknown."""
    if not options:  # numeric
        x = _number(truth)
        if x is None:
            return _expression(float(r.randint(0, 100)), r)
        return _expression(x if right else _wrong_number(x, r), r)
    index = next((i for i, o in enumerate(options) if truth is not None and option_key(o) == option_key(truth)), None)
    if index is None:
        choice = r.randrange(len(options))
    elif right:
        choice = index
    else:
        choice = r.choice([i for i in range(len(options)) if i != index])
    if fmt is not None and fmt.kind == "yesno":
        return options[choice]
    return choice + 1


def _wrong_label(item: dict, r: random.Random) -> str:
    """Another option (or, for a numeric item, another number) than the item's label."""
    others = [o for o in item["options"] if o != item["label"]]
    if others:
        return str(r.choice(others))
    x = _number(item["label"])
    return item["label"] if x is None else _canonical(_wrong_number(x, r))


def _pad_entries(entries: list[dict[str, Any]], min_tokens: int) -> list[dict[str, Any]]:
    """The entries repeated (ids counting on) until their JSON is over ``min_tokens`` tokens:
    the ``ignore_max_tokens`` fault for the one-object replies."""
    base = entries or [{"id": 1}]
    out = list(entries)
    per = max(1, count_text(json.dumps(base, ensure_ascii=False), "gpt-4o") // len(base))
    want = min(20_000, min_tokens // per + len(base) + 2)
    while len(out) < want:
        extra = dict(base[len(out) % len(base)])
        if "id" in extra:
            extra["id"] = len(out) + 1
        out.append(extra)
    return out


def _valid(objs: list[dict]) -> list[Example]:
    out = []
    for obj in objs:
        try:
            out.append(example_from_dict(obj))
        except InvalidExample:
            continue
    return out


def _text_of(value: Any) -> str:
    """Message content as text; content given as a list of parts keeps its text parts."""
    if isinstance(value, list):
        return "".join(p.get("text", "") for p in value if isinstance(p, dict))
    return "" if value is None else str(value)


def _request_key(config_seed: int, request_seed: Any, messages: list[dict[str, str]]) -> str:
    blob = json.dumps([config_seed, request_seed, messages], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _error(message: str, type_: str, code: str | None) -> dict:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


@dataclass
class _ChatRequest:
    messages: list[dict[str, str]]
    model: str
    max_tokens: int | None
    temperature: float
    structure: "Structure | None"
    prompt_tokens: int
    key: str
    kind: str = "generate"  # see request_kind


@dataclass
class Structure:
    """A structured-output request: the reply is ``{wrapper: [item, ...]}`` as one JSON object.

    ``context`` says what a closed-book item (context None) does with its ``context`` key:
    "keep" (no schema: the item as the pool has it, ``"context": null``), "null" (the schema
    has a nullable ``context``), "omit" (the schema has no ``context``, or a non-nullable one).
    """

    wrapper: str = "examples"
    context: str = "keep"

    def shape(self, item: dict) -> dict:
        if item.get("context") is None and self.context != "keep":
            item = dict(item)
            if self.context == "omit":
                item.pop("context", None)
            else:
                item["context"] = None
        return item

    def render(self, items: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """Compact JSON, as constrained decoders emit it, and each item's span in it."""
        head = "{" + json.dumps(self.wrapper) + ": ["
        parts, spans, pos = [head], [], len(head)
        for i, it in enumerate(items):
            s = json.dumps(it, ensure_ascii=False)
            if i:
                parts.append(", ")
                pos += 2
            spans.append((pos, pos + len(s)))
            parts.append(s)
            pos += len(s)
        parts.append("]}")
        return "".join(parts), spans


def _read_response_format(value: Any, refused: list[str]) -> "Structure | None | str":
    """The structure asked for, None for plain text, or the 400 message for a bad or refused one.

    Both dialects: OpenAI / vLLM / Ollama ``{"type": "json_schema", "json_schema": {"name",
    "strict", "schema"}}``, and llama.cpp's ``{"type": "json_object", "schema": {...}}``."""
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        return "'response_format' must be an object with a 'type'."
    kind = value["type"]
    if kind == "text":
        return None
    allowed = ["text"] + [t for t in RESPONSE_FORMATS if t not in refused]
    if kind not in RESPONSE_FORMATS or kind in refused:
        # llama.cpp's wording, which the engine's dialect fallback recognises by 'response_format'.
        return (
            f"response_format type must be one of {', '.join(repr(a) for a in allowed)}, "
            f"but got: {kind!r} (simulated server)"
        )
    schema: Any = None
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict):
            return "'response_format.json_schema' must be an object with 'name' and 'schema'."
        schema = spec.get("schema")
    else:
        schema = value.get("schema")
    if schema is None:
        return Structure()  # JSON mode: one object, the items as they are
    if not isinstance(schema, dict):
        return "'response_format' schema must be a JSON Schema object."
    return _structure_of(schema)


def _structure_of(schema: dict) -> Structure:
    """The wrapper key and context policy a JSON schema of the reply implies."""
    defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}

    def resolve(node: Any) -> dict:
        while isinstance(node, dict) and isinstance(node.get("$ref"), str):
            node = defs.get(node["$ref"].rsplit("/", 1)[-1], {})
        return node if isinstance(node, dict) else {}

    props = resolve(schema).get("properties") or {}
    arrays = [name for name, sub in props.items() if resolve(sub).get("type") == "array"]
    wrapper = "examples" if "examples" in props or len(arrays) != 1 else arrays[0]
    item = resolve(resolve(props.get(wrapper, {})).get("items"))
    ctx = (item.get("properties") or {}).get("context")
    if ctx is None:
        return Structure(wrapper, "omit")
    ctx = resolve(ctx)
    types = ctx.get("type")
    nullable = (
        types == "null" or (isinstance(types, list) and "null" in types)
        or any(resolve(alt).get("type") == "null" for alt in ctx.get("anyOf", []) + ctx.get("oneOf", []))
    )
    return Structure(wrapper, "null" if nullable else "omit")


_HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Sign in - Corporate Proxy</title></head>\n"
    b"<body><h1>Authentication required</h1><p>Please sign in to continue.</p></body></html>\n"
)


def _broken_body(kind: str, payload: dict) -> tuple[int, dict[str, str], bytes]:
    """A 200 whose body is not the completion: a proxy's HTML page, nothing, or text."""
    if kind == "html":
        return 200, {"content-type": "text/html; charset=utf-8"}, _HTML_PAGE
    if kind == "empty":
        return 200, {}, b""
    # "notjson": says JSON, holds the first half of the real body
    text = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    return 200, {}, text[: len(text) // 2]


_CHATTER_BEFORE = [
    "Here are {n} new examples:", "Sure! Here are {n} new examples of the task:",
    "Here are {n} more examples in the same format.", "Certainly. {n} new examples follow.", "",
]
_CHATTER_AFTER = ["", "", "Let me know if you need more examples!", "I hope these help."]


def _render(items: list[dict], r: random.Random) -> tuple[str, list[tuple[int, int]]]:
    """Text of the reply and the (start, end) span of each item in it."""
    shape = r.choice(["array", "array_pretty", "fenced", "lines", "numbered"])
    chatter = r.random() < 0.5 and shape != "array"
    n = len(items)
    before = r.choice(_CHATTER_BEFORE).format(n=n) if chatter else ""
    after = r.choice(_CHATTER_AFTER) if chatter else ""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0

    def emit(s: str, is_item: bool = False) -> None:
        nonlocal pos
        if is_item:
            spans.append((pos, pos + len(s)))
        parts.append(s)
        pos += len(s)

    if before:
        emit(before + "\n\n")
    if shape in ("array", "array_pretty", "fenced"):
        pretty = shape != "array"
        if shape == "fenced":
            emit("```json\n")
        emit("[\n" if pretty else "[")
        for i, it in enumerate(items):
            if pretty:
                emit("  ")
                emit(json.dumps(it, ensure_ascii=False, indent=2).replace("\n", "\n  "), True)
            else:
                emit(json.dumps(it, ensure_ascii=False), True)
            if i < n - 1:
                emit(",\n" if pretty else ", ")
        emit("\n]" if pretty else "]")
        if shape == "fenced":
            emit("\n```")
    elif shape == "lines":
        for i, it in enumerate(items):
            emit(json.dumps(it, ensure_ascii=False), True)
            if i < n - 1:
                emit("\n")
    else:
        for i, it in enumerate(items):
            emit(f"{i + 1}. ")
            emit(json.dumps(it, ensure_ascii=False), True)
            if i < n - 1:
                emit("\n")
    if after:
        emit("\n\n" + after)
    return "".join(parts), spans


def _malformed(items: list[dict], r: random.Random, structure: Structure | None = None) -> str:
    """Prose only, or objects with broken JSON (some may survive, as with real models);
    with a structure, the one reply object with broken items in it."""
    if not items or r.random() < 0.3:
        return r.choice([
            "I'm sorry, but I can't create more examples like that.",
            "Here are some new examples: questions about everyday facts with true or false answers.",
        ])
    lines = []
    for it in items:
        s = json.dumps(it, ensure_ascii=False)
        how = r.randrange(4)
        if how == 0:
            s = s.replace('", "', '" "', 1)  # a missing comma
        elif how == 1:
            s = s.replace('"question": "', "'question': '", 1)  # Python-style quotes
        elif how == 2:
            s = s.replace('"label": ', '"label" ', 1)  # a missing colon
        lines.append(s)  # how == 3: left intact
    if structure is not None:
        return "{" + json.dumps(structure.wrapper) + ": [" + ", ".join(lines) + "]}"
    return "Here are the examples:\n" + "\n".join(lines)


def _cap_tokens(content: str, finish: str, max_tokens: int | None, model: str) -> tuple[str, str, int]:
    """Cut the content to at most ``max_tokens`` tokens (finish_reason "length")."""
    enc = get_encoding(encoding_name_for_model(model))
    tokens = enc.encode(content, disallowed_special=())
    if max_tokens is None or len(tokens) <= max_tokens:
        return content, finish, len(tokens)
    n = max_tokens
    while n > 0:
        cut = enc.decode(tokens[:n]).rstrip("\ufffd")  # a cut inside a multi-byte character
        used = count_text(cut, model)
        if used <= max_tokens:
            return cut, "length", used
        n -= 1
    return "", "length", 0


def benchmark(pool_path: str | None = None, n_requests: int = 300, k: int = 5) -> dict[str, float]:
    """Pool load time and CPU per reply (no HTTP), prompts built from the pool's own items.

    ``python -c "from treegen.sim.server import benchmark; print(benchmark('POOL.jsonl'))"``
    """
    from treegen.prompts import build_messages

    t0 = time.perf_counter()
    import sklearn.feature_extraction.text  # noqa: F401 - a one-off import, timed apart

    t1 = time.perf_counter()
    sim = Simulator(SimConfig(pool_path=pool_path))
    t2 = time.perf_counter()
    fmt = sim.pool_format or TaskFormat.parse("yesno_close")
    pool = sim.pool_for(fmt)
    t3 = time.perf_counter()
    rng = random.Random(0)
    bodies = [
        json.dumps({"model": "gpt-4o-mini", "messages": build_messages([ex], fmt, k), "temperature": 1.0}).encode()
        for ex in rng.sample(pool.examples, min(n_requests, len(pool.examples)))
    ]
    sim.handle("POST", "/v1/chat/completions", {}, bodies[0])  # warm the tokenizer
    c0 = time.thread_time()
    for body in bodies:
        sim.handle("POST", "/v1/chat/completions", {}, body)
    cpu = (time.thread_time() - c0) / len(bodies)
    return {
        "pool_size": len(pool.examples), "sklearn_import_s": round(t1 - t0, 3),
        "pool_load_s": round(t2 - t1 + t3 - t2, 3), "cpu_ms_per_reply": round(cpu * 1000, 3),
    }


# -- HTTP ---------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the openai client (httpx) expects
    server_version = "treegen-sim"
    simulator: Simulator  # set on the subclass made per server

    def _serve(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        status, headers, payload = self.simulator.handle(
            self.command, self.path, dict(self.headers.items()), body, self._client_gone
        )
        if status == 0:  # a request never answered: drop the connection the client left
            self.close_connection = True
            return
        try:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (e.g. its timeout fired)

    def _client_gone(self) -> bool:
        """Whether the client closed the connection (readable with nothing to read)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    do_GET = _serve
    do_POST = _serve
    do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by default
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class SimServer:
    """The simulator on a loopback HTTP port, served from a daemon thread."""

    def __init__(self, config: SimConfig, host: str = "127.0.0.1", port: int = 0):
        self.simulator = Simulator(config)
        handler = type("SimHandler", (_Handler,), {"simulator": self.simulator})
        try:
            self._httpd = _Server((host, port), handler)
        except OSError as exc:
            raise ConfigError(
                f"The simulator cannot listen on {host}:{port} ({exc.strerror or exc}). "
                "Pick another port with --port, or stop what is using this one."
            ) from None
        bound_host, self.port = self._httpd.server_address[:2]
        self.host = bound_host.decode() if isinstance(bound_host, bytes) else bound_host
        self.base_url = f"http://{self.host}:{self.port}/v1"
        self._thread: threading.Thread | None = None

    def start(self) -> "SimServer":
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, name="treegen-sim", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self.simulator.close()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def stats(self) -> dict:
        return self.simulator.stats()

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def __enter__(self) -> "SimServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(config: SimConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted (Ctrl-C)."""
    server = SimServer(config, host, port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.simulator.close()
        server._httpd.server_close()
