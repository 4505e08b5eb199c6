"""Intrinsic measures of a created dataset (AgoraBench, Kim et al. 2024) for `treegen metrics`.

- LLM-as-judge: a model scores a seeded sample of the accepted examples from 1 (useless or
  wrong) to 10 (correct, clear, useful), several examples per request. Every judge request is
  a call of the run (purpose ``judge``): written pending before it is sent, its worst case
  reserved against the judge's own dollar cap first, its usage and cost recorded after, so
  judging is costed and capped like generating.
- Perplexity under the local reference model (the llama.cpp GGUF that ``treegen.local``
  serves): the mean negative log-probability of each example's tokens, from the server's
  ``/v1/completions`` with ``echo`` and ``logprobs``.

Why a BOS prefix for perplexity: llama-cpp-python 0.3.x pairs echoed prompt tokens with
their log-probabilities assuming the prompt starts with the BOS token; a model that does not
add one (SmolLM2) gets every prompt token scored one position late (measured: "Tower" after
"Is the Eiffel" -5.95 by the server, -0.17 computed in-process). With the BOS text written
in front of the prompt the server's figures match an in-process computation to 0.005 nats.
The first token is reported as null (OpenAI's convention): it is left out.

No SQL here (``RunStore``), no rich (the CLI draws).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from treegen.errors import BackendError, ConfigError, InputError
from treegen.task import Example, TaskFormat

if TYPE_CHECKING:
    from treegen.prices import ModelPrice
    from treegen.store import RunStore

JUDGE_SCHEMA_NAME = "judge"
JUDGE_LAST_LINE = "Score every example."
JUDGE_PURPOSE = "judge"
JUDGE_SAMPLE = 50
JUDGE_ATTEMPTS = 3  # HTTP attempts per judge request (each one a recorded call)
JUDGE_PER_REQUEST = 10  # examples per judge request: fewer requests, one shared instruction
JUDGE_MAX_USD = 0.10  # default cap of one judge measurement (50 examples cost ~$0.001 on gpt-4o-mini)
LOW_SCORE = 4  # a score at or below this counts as a low-quality example
PPL_SAMPLE = 200

_JUDGE_SYSTEM = (
    "You rate training examples for a question-answering dataset. For each example (one JSON object a line, "
    "with its id) give a score from 1 to 10: 1 = useless or wrong (the label is not the right answer, the "
    "question is unclear or unanswerable), 10 = correct, clear and useful. Reply with JSON: "
    '{"scores": [{"id": 1, "score": 7}, ...]}, one entry per example.'
)

ProgressCallback = Callable[[int, int, str], None]


# ---------------------------------------------------------------- sampling


def sample_nodes(store: "RunStore", n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` accepted nodes of the run drawn with ``seed`` (all of them when there are fewer),
    in creation order: the same sample for the same run and seed."""
    from treegen.store import NodeStatus

    nodes = store.nodes(statuses=(NodeStatus.ACCEPTED,))
    if n < 1:
        raise InputError(f"The sample size must be at least 1, got {n}. Use e.g. --judge-sample 50.")
    if len(nodes) <= n:
        return nodes
    picked = sorted(random.Random(seed).sample(range(len(nodes)), n))
    return [nodes[i] for i in picked]


# ---------------------------------------------------------------- LLM-as-judge: requests


def judge_line(example: Example, fmt: TaskFormat, item_id: int) -> str:
    """One example as the judge sees it: compact JSON with its id and its label as text."""
    obj: dict[str, Any] = {"id": item_id, "question": example.question}
    if fmt.has_context:
        obj["context"] = example.context or ""
    if fmt.has_options:
        obj["options"] = list(example.options)
    obj["label"] = example.label
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def judge_messages(examples: Sequence[Example], fmt: TaskFormat, task_description: str | None = None
                   ) -> list[dict[str, str]]:
    """The judge request: the instruction, then one example a line (ids from 1), then the last line."""
    system = _JUDGE_SYSTEM if not task_description else f"Task: {task_description.strip()} {_JUDGE_SYSTEM}"
    lines = [judge_line(ex, fmt, i) for i, ex in enumerate(examples, 1)]
    return [{"role": "system", "content": system},
            {"role": "user", "content": "\n".join([*lines, JUDGE_LAST_LINE])}]


def judge_schema(n: int) -> dict[str, Any]:
    item = {"type": "object", "properties": {"id": {"type": "integer"}, "score": {"type": "integer"}},
            "required": ["id", "score"], "additionalProperties": False}
    return {"type": "object",
            "properties": {"scores": {"type": "array", "items": item, "minItems": n, "maxItems": n}},
            "required": ["scores"], "additionalProperties": False}


def judge_response_format(n: int, dialect: str) -> dict[str, Any] | None:
    """``response_format`` of a judge request for ``n`` examples; None for dialect ``off``."""
    if dialect == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": JUDGE_SCHEMA_NAME, "strict": True, "schema": judge_schema(n)}}
    if dialect == "json_object":
        return {"type": "json_object", "schema": judge_schema(n)}
    if dialect == "off":
        return None
    raise ConfigError(f"Unknown structured-output dialect {dialect!r}. Use json_schema, json_object or off.")


def judge_max_tokens(n: int) -> int:
    """Completion budget of a judge reply for ``n`` examples (about 10 tokens an entry)."""
    return 32 + 24 * n


def parse_scores(text: str, n: int) -> list[int | None]:
    """One score per example (ids 1..n), None where the reply gave none or an unusable one.

    Accepts the object ``{"scores": [...]}``, a bare list, and a fenced JSON block; a score
    must be a whole number from 1 to 10 (``7.0`` counts as 7); repeated ids keep the first.
    """
    out: list[int | None] = [None] * n
    obj = _loads_lenient(text)
    items = obj.get("scores") if isinstance(obj, dict) else obj
    if not isinstance(items, list):
        return out
    for item in items:
        if not isinstance(item, dict):
            continue
        i, score = item.get("id"), item.get("score")
        if isinstance(i, bool) or isinstance(score, bool):
            continue
        if isinstance(i, str) and i.strip().isdigit():
            i = int(i.strip())
        if isinstance(score, str):
            try:
                score = float(score.strip())
            except ValueError:
                continue
        if not isinstance(i, int) or not isinstance(score, (int, float)) or not 1 <= i <= n:
            continue
        if float(score).is_integer() and 1 <= score <= 10 and out[i - 1] is None:
            out[i - 1] = int(score)
    return out


def _loads_lenient(text: str) -> Any:
    text = (text or "").strip()
    if text.startswith("```"):
        text = text.strip("`")
        text = text[text.find("\n") + 1:] if "\n" in text else text
    for candidate in (text, text[text.find("{"): text.rfind("}") + 1] if "{" in text else ""):
        try:
            return json.loads(candidate)
        except (json.JSONDecodeError, ValueError):
            continue
    return None


# ---------------------------------------------------------------- LLM-as-judge: running


@dataclass
class JudgeSettings:
    model: str
    sample: int = JUDGE_SAMPLE
    seed: int = 0
    max_usd_micro: int | None = None  # None: no dollar cap (only when the price is unknown and free)
    per_request: int = JUDGE_PER_REQUEST
    dialect: str = "json_schema"
    timeout: float = 60.0
    task_description: str | None = None


@dataclass
class JudgeResult:
    model: str
    simulated: bool
    sampled: int  # examples drawn
    scores: dict[int, int]  # node id -> score, for the examples that were scored
    calls: int
    spent_micro: int
    stopped: str | None = None  # why judging stopped before every sampled example was sent
    notes: list[str] = field(default_factory=list)

    @property
    def n_scored(self) -> int:
        return len(self.scores)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.scores.values()) if self.scores else None

    @property
    def low_share(self) -> float | None:
        return sum(s <= LOW_SCORE for s in self.scores.values()) / len(self.scores) if self.scores else None


def judge_run(store: "RunStore", settings: JudgeSettings, base_url: str | None, api_key: str | None,
              price: "ModelPrice | None", *, simulated_endpoint: bool = False, http_client: Any = None,
              on_progress: ProgressCallback | None = None) -> JudgeResult:
    """Score a seeded sample of the run's accepted examples with a judge model.

    ``store`` must be writable and the caller must hold the run's lock: every request is a
    ``calls`` row (purpose ``judge``), written pending before it is sent. Requests whose worst
    case would cross ``settings.max_usd_micro`` are not sent (``stopped`` says so).
    """
    return asyncio.run(_judge_async(store, settings, base_url, api_key, price, simulated_endpoint,
                                    http_client, on_progress))


async def _judge_async(store: "RunStore", s: JudgeSettings, base_url: str | None, api_key: str | None,
                       price: "ModelPrice | None", simulated_endpoint: bool, http_client: Any,
                       on_progress: ProgressCallback | None) -> JudgeResult:
    from treegen.budget import BudgetReached, Caps, Ledger, reconcile_usage
    from treegen.client import AttemptFailure, ChatClient, backoff_seconds
    from treegen.prices import worst_case_micro
    from treegen.redact import redact
    from treegen.schema import fallback_dialects, is_response_format_refusal
    from treegen.store import CallStatus, node_example, utcnow
    from treegen.tokens import count_messages

    if s.per_request < 1:
        raise ConfigError(f"Examples per judge request must be at least 1, got {s.per_request}.")
    run = store.run()
    fmt = TaskFormat.parse(run["task_format"])
    nodes = sample_nodes(store, s.sample, s.seed)
    if not nodes:
        raise InputError(f"The run {run['id']} has no accepted example to judge. Let it run first (`treegen resume`).")
    ledger = Ledger(Caps(max_usd_micro=s.max_usd_micro))
    client = ChatClient(base_url, api_key, s.model, timeout=s.timeout, http_client=http_client)
    exact_tokens = simulated_endpoint or client.base_url.startswith("https://api.openai.com")
    result = JudgeResult(model=s.model, simulated=simulated_endpoint, sampled=len(nodes), scores={}, calls=0,
                         spent_micro=0)
    batches = [nodes[i:i + s.per_request] for i in range(0, len(nodes), s.per_request)]
    dialects = fallback_dialects(s.dialect)
    dialect = dialects[0]
    rng = random.Random(s.seed)  # backoff jitter
    try:
        for b, batch in enumerate(batches):
            examples = [node_example(r) for r in batch]
            messages = judge_messages(examples, fmt, s.task_description)
            local_prompt = count_messages(messages, s.model)
            # Our count is exact for OpenAI's tokenizer (and the simulator's); other servers
            # may count up to twice as many tokens: reserved at that.
            reserved_prompt = local_prompt if exact_tokens else 2 * local_prompt + 64
            max_tokens = judge_max_tokens(len(batch))
            attempt = 0
            while True:
                attempt += 1
                micro = worst_case_micro(price, reserved_prompt, max_tokens) if price else 0
                try:
                    reservation = ledger.reserve(micro, reserved_prompt + max_tokens)
                except BudgetReached as exc:
                    result.stopped = (f"judge cap reached: {exc.reason}; {sum(len(x) for x in batches[b:]):,} of "
                                      f"{len(nodes):,} sampled examples not sent (raise --judge-max-usd)")
                    return result
                call_id = store.insert_call({
                    "created_at": utcnow(), "parent_node_ids": "[]", "depth": None, "strategy": None,
                    "attempt": attempt, "request_key": f"judge-{utcnow()}-{b}", "model": s.model,
                    "status": CallStatus.PENDING, "reserved_prompt_tokens": reserved_prompt,
                    "reserved_tokens": reservation.tokens, "reserved_micro": reservation.micro,
                    "simulated": int(simulated_endpoint), "base_url": client.base_url, "purpose": JUDGE_PURPOSE,
                    "params": json.dumps({"max_tokens": max_tokens, "temperature": 0.0, "response_format": dialect,
                                          "judged_node_ids": [r["id"] for r in batch], "seed": s.seed}),
                }, messages=messages)
                result.calls += 1
                started = time.monotonic()
                try:
                    reply = await client.chat(messages, max_tokens=max_tokens, temperature=0.0, top_p=None,
                                              seed=s.seed, timeout=s.timeout,
                                              response_format=judge_response_format(len(batch), dialect))
                except AttemptFailure as failure:
                    unknown = failure.billing_unknown
                    status = CallStatus.TIMEOUT if unknown else (
                        CallStatus.REFUSED if failure.kind == "refused" else CallStatus.ERROR)
                    store.update_call(call_id, {
                        "status": status, "http_status": failure.http_status,
                        "error": redact(f"{failure.kind}: {failure.message}", [api_key] if api_key else []),
                        "request_id": failure.request_id, "duration_ms": int(1000 * (time.monotonic() - started)),
                        "cost_micro": None if unknown else 0,
                    })
                    ledger.settle(reservation, None if unknown else 0, None if unknown else 0)
                    refusal = failure.http_status is not None and is_response_format_refusal(
                        failure.http_status, failure.message)
                    if refusal and dialects.index(dialect) + 1 < len(dialects):
                        dialect = dialects[dialects.index(dialect) + 1]
                        continue
                    if failure.kind in ("fatal", "refused", "bad-body"):
                        raise BackendError(f"The judge endpoint failed: {failure.message}") from None
                    if attempt < JUDGE_ATTEMPTS:  # a timeout, a 5xx, a rate limit: again, then move on
                        await asyncio.sleep(backoff_seconds(attempt, rng, retry_after=failure.retry_after))
                        continue
                    result.notes.append(f"judge request {b + 1} failed ({failure.kind}): its examples are unscored")
                    break
                usage = reconcile_usage(price, reply.prompt_tokens, reply.completion_tokens, reply.cached_tokens,
                                        reply.text, s.model, reserved_prompt, max_tokens, local_prompt)
                scores = parse_scores(reply.text, len(batch))
                store.update_call(call_id, {
                    "status": CallStatus.ANOMALY if usage.anomaly else CallStatus.OK, "error": usage.anomaly,
                    "simulated": int(simulated_endpoint or reply.simulated),
                    "finish_reason": reply.finish_reason, "request_id": reply.request_id,
                    "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                    "cached_tokens": reply.cached_tokens, "cost_micro": usage.cost_micro,
                    "duration_ms": int(1000 * (time.monotonic() - started)),
                    "response_text": reply.text.encode("utf-8", "replace").decode("utf-8"),
                    # n_parsed set: a resumed run must not read this reply as ungraded candidates.
                    "n_parsed": sum(x is not None for x in scores),
                })
                ledger.settle(reservation, usage.cost_micro, usage.prompt_tokens + usage.completion_tokens)
                result.simulated = result.simulated or reply.simulated
                for row, score in zip(batch, scores):
                    if score is not None:
                        result.scores[int(row["id"])] = score
                missing = sum(x is None for x in scores)
                if missing:
                    result.notes.append(f"judge request {b + 1}: {missing} of {len(batch)} examples got no usable score")
                break
            if on_progress is not None:
                on_progress(b + 1, len(batches), "judge requests")
    finally:
        result.spent_micro = ledger.spent_micro
        await client.aclose()
    return result


def judge_metric_rows(result: JudgeResult, settings: JudgeSettings, endpoint: str) -> list[dict[str, Any]]:
    """The judge's figures as ``metrics`` rows (``judge_mean``, ``judge_low_share``)."""
    from treegen.store import utcnow

    if not result.scores:
        return []
    params = {
        "judge_model": result.model, "sample": settings.sample, "sampled": result.sampled, "seed": settings.seed,
        "per_request": settings.per_request, "calls": result.calls, "spent_micro": result.spent_micro,
        "endpoint": endpoint, "low_score": LOW_SCORE, "label": "SIMULATED" if result.simulated else "REAL",
        "stopped": result.stopped,
    }
    now = utcnow()
    reference = f"judge:{result.model}"
    return [
        {"created_at": now, "reference": reference, "name": "judge_mean", "value": result.mean,
         "params": json.dumps({**params, "scores": {str(k): v for k, v in result.scores.items()}}),
         "n_items": result.n_scored, "simulated": int(result.simulated)},
        {"created_at": now, "reference": reference, "name": "judge_low_share", "value": result.low_share,
         "params": json.dumps(params), "n_items": result.n_scored, "simulated": int(result.simulated)},
    ]


# ---------------------------------------------------------------- perplexity


@dataclass
class PerplexityResult:
    model_file: str
    quantisation: str | None
    values: list[float]  # one per scored text
    sampled: int
    notes: list[str] = field(default_factory=list)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None


def example_text(example: Example) -> str:
    """What perplexity scores: the example's context, question and options (as the other
    measures read it: ``treegen.metrics.item_text``), then its label."""
    from treegen.metrics import item_text

    return f"{item_text(example)}\n{example.label}"


def bos_prefix(model_path: str) -> str:
    """The BOS token's text when the model does not add one itself, else "" (see the module doc).

    Loads the GGUF's vocabulary only (no weights, no compute)."""
    import contextlib
    import os

    import llama_cpp

    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        vocab = llama_cpp.Llama(model_path, vocab_only=True, verbose=False)
    try:
        bos = vocab.token_bos()
        if bos < 0:
            raise BackendError(f"{model_path} has no BOS token: the server cannot align its log-probabilities.")
        probe = vocab.tokenize(b"a", add_bos=True, special=False)
        if probe and probe[0] == bos:
            return ""
        return vocab.detokenize([bos], special=True).decode("utf-8")
    finally:
        vocab.close()


def text_perplexity(client: Any, model: str, text: str, prefix: str) -> tuple[float, int]:
    """Perplexity of ``text`` (exp of the mean negative log-probability of its tokens after the
    first) and the number of tokens scored, from the server's echoed prompt log-probabilities."""
    completion = client.completions.create(model=model, prompt=prefix + text, max_tokens=1, echo=True,
                                           logprobs=1, temperature=0.0)
    logprobs = completion.choices[0].logprobs
    usage = completion.usage
    if logprobs is None or not logprobs.token_logprobs or usage is None:
        raise BackendError("The local model server returned no prompt log-probabilities (is it llama-cpp-python "
                           "with logits_all, the default of its server?).")
    # The echo holds the prompt's tokens after the BOS (the first reported as null), then the
    # generated one(s): keep the prompt's.
    prompt_part = logprobs.token_logprobs[:max(int(usage.prompt_tokens) - 1, 0)]
    values = [float(v) for v in prompt_part if v is not None]
    if not values:
        raise BackendError(f"The text {text[:40]!r} is too short to score (one token).")
    return math.exp(-statistics.fmean(values)), len(values)


def perplexity_of_texts(texts: Sequence[str], model_path: str | None = None, threads: int | None = None,
                        on_progress: ProgressCallback | None = None) -> PerplexityResult:
    """Perplexity of each text under the local reference model, served by ``treegen.local``."""
    import openai

    from treegen.local import DEFAULT_THREADS, LocalServer, quantisation_of

    server = LocalServer(model_path, threads=threads or DEFAULT_THREADS)
    prefix = bos_prefix(str(server.model_path))
    values: list[float] = []
    notes: list[str] = []
    with server:
        client = openai.OpenAI(base_url=server.base_url, api_key="not-needed", max_retries=0, timeout=120.0)
        try:
            for i, text in enumerate(texts):
                try:
                    ppl, _n = text_perplexity(client, server.model_name, text, prefix)
                    values.append(ppl)
                except openai.APIStatusError as exc:  # a text longer than the context, say
                    notes.append(f"text {i + 1} not scored: {exc.message}")
                if on_progress is not None:
                    on_progress(i + 1, len(texts), "perplexity")
        finally:
            client.close()
    return PerplexityResult(model_file=server.model_path.name, quantisation=quantisation_of(server.model_path),
                            values=values, sampled=len(texts), notes=notes)


def perplexity_run(store: "RunStore", sample: int = PPL_SAMPLE, seed: int = 0, model_path: str | None = None,
                   threads: int | None = None, on_progress: ProgressCallback | None = None) -> PerplexityResult:
    """Perplexity of a seeded sample of the run's accepted examples."""
    from treegen.store import node_example

    nodes = sample_nodes(store, sample, seed)
    if not nodes:
        raise InputError(f"The run {store.run()['id']} has no accepted example to score. Let it run first.")
    return perplexity_of_texts([example_text(node_example(r)) for r in nodes], model_path, threads, on_progress)


def perplexity_metric_rows(result: PerplexityResult, seed: int, sample: int) -> list[dict[str, Any]]:
    """``ppl_mean`` and ``ppl_median`` rows, labelled REAL with the model file and quantisation."""
    from treegen.store import utcnow

    if not result.values:
        return []
    params = json.dumps({"model_file": result.model_file, "quantisation": result.quantisation, "sample": sample,
                         "sampled": result.sampled, "seed": seed, "label": "REAL",
                         "text": "context, question, options, label"})
    now = utcnow()
    reference = f"ppl:{result.model_file}"
    return [
        {"created_at": now, "reference": reference, "name": name, "value": value, "params": params,
         "n_items": len(result.values), "simulated": 0}
        for name, value in (("ppl_mean", result.mean), ("ppl_median", result.median))
    ]


# ---------------------------------------------------------------- the endpoint a judge talks to


@dataclass
class JudgeEndpoint:
    backend: str  # sim | local | openai
    base_url: str | None
    model: str
    price: "ModelPrice | None"
    simulated: bool
    dialect: str = "json_schema"  # llama.cpp's server takes the schema as json_object
    timeout: float = 60.0  # the local model on a CPU answers slowly


def judge_endpoint(run: dict[str, Any], backend: str | None, base_url: str | None, model: str | None,
                   api_key: str | None, max_usd_micro: int | None) -> JudgeEndpoint:
    """Where the judge's requests go and what they cost, from the flags and the run's config.

    Defaults: the run's own backend and model. A real endpoint (``openai``) needs the judge
    model's price, else its dollar cap could not hold: refused with the fix."""
    from treegen.config import BACKENDS, resolve_price, validate_base_url
    from treegen.prices import ModelPrice

    config = run["config"]
    if base_url is not None:
        if backend not in (None, "openai"):
            raise ConfigError(f"--base-url goes with --backend openai (the default with a URL), not {backend}.")
        backend = "openai"
        base_url = validate_base_url(base_url)
    backend = backend or config.get("backend") or ("sim" if run.get("simulated") else "openai")
    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)} (got {backend!r}).")
    if backend == "openai" and base_url is None:
        base_url = run.get("base_url") if config.get("backend", "openai") == "openai" else None
        if base_url is None and not api_key:
            raise ConfigError("The judge needs an endpoint: set OPENAI_API_KEY, or pass --base-url URL of an "
                              "OpenAI-compatible server, or --backend sim / --backend local.")
    same_backend = backend == (config.get("backend") or ("sim" if run.get("simulated") else "openai"))
    if model is None and backend == "local" and not same_backend:
        from treegen.config import LOCAL_MODEL_NAME

        model = LOCAL_MODEL_NAME
    model = model or run.get("model") or "gpt-4o-mini"
    price: ModelPrice | None = None
    stored = config.get("price")
    if stored and model == run.get("model"):
        price = ModelPrice(**stored)
    elif backend != "local":
        price = resolve_price(model, None, None, needed=False)
    if price is None and backend == "openai" and max_usd_micro is not None:
        raise ConfigError(f"No price known for judge model {model!r}, so --judge-max-usd cannot be enforced. "
                          "Add the model to budgets/prices.toml (see `treegen prices`), or judge with a priced model.")
    if backend == "local":
        return JudgeEndpoint(backend, None, model, price, False, dialect="json_object", timeout=300.0)
    return JudgeEndpoint(backend, base_url, model, price, backend == "sim")


def serve_judge_endpoint(run: dict[str, Any], endpoint: JudgeEndpoint) -> Any:
    """A context manager yielding the base URL: the given server, or the simulator / the local
    model started for the judge (with the run's pool and seed for the simulator) and stopped after."""
    from treegen.api import endpoint as serve
    from treegen.config import LocalSettings, RunConfig, SimSettings

    config = run["config"]
    sim = None
    if endpoint.backend == "sim":
        stored = config.get("sim") or {}
        sim = SimSettings(pool_path=stored.get("pool_path"), seed=int(stored.get("seed") or 0))  # no faults
    local = None
    if endpoint.backend == "local":
        stored_local = config.get("local") or {}
        local = LocalSettings(model_path=stored_local.get("model_path") if config.get("backend") == "local" else None)
    cfg = RunConfig(task_format=run["task_format"], backend=endpoint.backend, base_url=endpoint.base_url,
                    model=endpoint.model, sim=sim, local=local)
    return serve(cfg)
