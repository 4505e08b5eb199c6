"""`treegen plan`: what reaching a target will cost, before the money is spent.

Prompt tokens are counted exactly (``treegen.tokens`` on ``treegen.prompts.build_messages``)
for every example that can be shown: the seeds and the pilot's accepted examples. Completion
tokens per call, the accepted examples per call and the share of calls billed come from a
pilot: a small capped run (``--pilot-calls M``) or an existing run (``--from RUN``).

The range is predictive, not only a confidence interval on the mean: each bootstrap
replicate resamples the pilot's calls (parameter uncertainty) and then plays a whole run
call by call from that resample until the target is reached (the run's own randomness); the
2.5th and 97.5th percentiles are widened by the Student-t to normal quantile ratio for the
pilot's size, so a pilot of a handful of calls gives an honestly wide range.

Everything here but ``pilot_samples`` and ``run_pilot`` is a pure function.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from treegen.prices import PER_TOKENS, ModelPrice

DAY_S = 24 * 3600.0
Z95 = 1.959963984540054


@dataclass(frozen=True)
class CallSample:
    """One pilot call (an HTTP attempt): what it was billed and what it gave."""

    prompt_tokens: int
    completion_tokens: int
    accepted: int
    billed: bool  # a reply came back (errors cost nothing)
    seconds: float


@dataclass(frozen=True)
class Interval:
    expected: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Forecast:
    target: int
    pilot_calls: int
    calls: Interval
    tokens: Interval
    usd: Interval
    seconds: Interval
    batch_usd: Interval
    batch_seconds_max: float  # Batch jobs may take up to their 24 h window each
    waves: int  # Batch jobs expected (tree: one per depth; chains: calls / batch_wave)
    widen: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "pilot_calls": self.pilot_calls,
            "usd": self.usd.to_dict(), "tokens": self.tokens.to_dict(), "calls": self.calls.to_dict(),
            "seconds": self.seconds.to_dict(),
            "batch": {"usd": self.batch_usd.to_dict(), "tokens": self.tokens.to_dict(),
                      "calls": self.calls.to_dict(), "waves": self.waves,
                      "seconds": {"expected": None, "low": None, "high": self.batch_seconds_max}},
            "range": {"level": 0.95, "widen": self.widen},
        }


def t_widen(n: int) -> float:
    """Student-t (n-1 degrees of freedom) over normal 97.5% quantile: how much wider a range
    from n pilot calls must be than a large-sample one. 1.0 for large n."""
    if n >= 200:
        return 1.0
    from scipy import stats

    return float(stats.t.ppf(0.975, max(n - 1, 1)) / Z95)


def call_cost_micro(price: ModelPrice | None, prompt: float, completion: float, batch: bool = False) -> float:
    """Expected cost (micro-dollars, not rounded) of a call with these token counts."""
    if price is None:
        return 0.0
    if batch:
        return (prompt * price.batch_input + completion * price.batch_output) / PER_TOKENS
    return (prompt * price.input + completion * price.output) / PER_TOKENS


def calls_to_target(accepted_per_call: np.ndarray, target: int) -> int:
    """How many calls of this sequence it takes to reach ``target`` (len+1 when it never does)."""
    reached = np.nonzero(np.cumsum(accepted_per_call) >= target)[0]
    return int(reached[0]) + 1 if len(reached) else len(accepted_per_call) + 1


def forecast(samples: Sequence[CallSample], prompt_tokens: Sequence[int], target: int,
             price: ModelPrice | None, *, concurrency: int = 8, rpm: int | None = None, tpm: int | None = None,
             batch_wave: int = 50, tree_like: bool = True, k: int = 5, replicates: int = 400,
             seed: int = 0) -> Forecast:
    """Forecast of calls, tokens, dollars and seconds to reach ``target`` accepted examples."""
    if not samples:
        raise ValueError("a forecast needs at least one pilot call")
    if not prompt_tokens:
        raise ValueError("a forecast needs the prompt token counts of at least one example")
    if target < 1:
        raise ValueError("target must be at least 1")
    acc = np.array([s.accepted for s in samples], dtype=float)
    comp = np.array([s.completion_tokens if s.billed else 0 for s in samples], dtype=float)
    billed = np.array([1.0 if s.billed else 0.0 for s in samples])
    secs = np.array([s.seconds for s in samples], dtype=float)
    prompts = np.array(prompt_tokens, dtype=float)
    n = len(samples)
    rng = np.random.default_rng(seed)

    def one_run(idx: np.ndarray, p_mean: float) -> tuple[float, float, float, float, float]:
        a = acc[idx]
        if a.sum() == 0:
            # No acceptance in this resample: the worst the pilot allows, half an example
            # over all its calls.
            per = 0.5 / len(idx)
            calls = math.ceil(target / per)
            draws = rng.integers(0, len(idx), size=min(calls, 200_000))
        else:
            mean_a = a.mean()
            horizon = int(math.ceil(target / mean_a * 1.5)) + 20
            draws = rng.integers(0, len(idx), size=horizon)
            calls = calls_to_target(a[draws], target)
            while calls > horizon:  # rare: the sequence ran short
                horizon *= 2
                draws = rng.integers(0, len(idx), size=horizon)
                calls = calls_to_target(a[draws], target)
            draws = draws[:calls]
        sel = idx[draws]
        c_total = float(comp[sel].sum()) * calls / max(len(sel), 1)
        b_total = float(billed[sel].sum()) * calls / max(len(sel), 1)
        p_total = b_total * p_mean
        return calls, p_total, c_total, float(secs[sel].mean()), b_total

    def summarise(calls: float, p_total: float, c_total: float, sec_mean: float) -> tuple[float, ...]:
        tokens = p_total + c_total
        usd = call_cost_micro(price, p_total, c_total) / 1e6
        busd = call_cost_micro(price, p_total, c_total, batch=True) / 1e6
        seconds = calls * sec_mean / max(concurrency, 1)
        if rpm:
            seconds = max(seconds, calls / rpm * 60.0)
        if tpm:
            seconds = max(seconds, tokens / tpm * 60.0)
        return calls, tokens, usd, busd, seconds

    reps = []
    for _ in range(replicates):
        idx = rng.integers(0, n, size=n)
        p_mean = float(prompts[rng.integers(0, len(prompts), size=len(prompts))].mean())
        calls, p_total, c_total, sec_mean, _ = one_run(idx, p_mean)
        reps.append(summarise(calls, p_total, c_total, sec_mean))
    arr = np.array(reps)
    # The expected values: the pilot's means, no resampling.
    a_mean = acc.mean() if acc.sum() > 0 else 0.5 / n
    calls_e = target / a_mean
    exp = summarise(calls_e, calls_e * billed.mean() * prompts.mean(), calls_e * comp.mean(), secs.mean())
    widen = t_widen(n)

    def interval(col: int) -> Interval:
        e = float(exp[col])
        lo, hi = np.percentile(arr[:, col], [2.5, 97.5])
        lo = min(float(lo), e)
        hi = max(float(hi), e)
        return Interval(e, max(0.0, e - (e - lo) * widen), e + (hi - e) * widen)

    calls_i = interval(0)
    waves = _waves(calls_e, tree_like, batch_wave, k, target)
    return Forecast(target=target, pilot_calls=n, calls=calls_i, tokens=interval(1), usd=interval(2),
                    seconds=interval(4), batch_usd=interval(3), batch_seconds_max=waves * DAY_S, waves=waves,
                    widen=widen)


def _waves(calls: float, tree_like: bool, batch_wave: int, k: int, target: int) -> int:
    if tree_like:  # one per depth; each depth multiplies the frontier by up to k
        return max(1, math.ceil(math.log(max(target, 2), max(k, 2)))) + 1
    return max(1, math.ceil(calls / max(batch_wave, 1)))


def samples_from_calls(calls: Sequence[dict[str, Any]]) -> list[CallSample]:
    """Pilot samples from a run's call rows: every finished attempt (in flight ones skipped)."""
    out = []
    for c in calls:
        if c["status"] in ("pending", "batched"):
            continue
        billed = c["cost_micro"] is not None and c["completion_tokens"] is not None
        out.append(CallSample(prompt_tokens=int(c["prompt_tokens"] or 0),
                              completion_tokens=int(c["completion_tokens"] or 0),
                              accepted=int(c["n_accepted"] or 0), billed=billed,
                              seconds=(c["duration_ms"] or 0) / 1000.0))
    return out


def prompt_token_counts(examples: Sequence[Any], fmt: Any, k: int, model: str, task_description: str | None,
                        structured: bool) -> list[int]:
    """Exact prompt tokens of a request showing each of ``examples`` (one per request)."""
    from treegen.prompts import build_messages
    from treegen.tokens import count_messages

    return [count_messages(build_messages([ex], fmt, k, task_description, structured=structured), model)
            for ex in examples]


def minimum_cost_micro(prompt_tokens: Sequence[int], completion_per_example: float, target: int, k: int,
                       price: ModelPrice, batch: bool = False) -> int:
    """The least a target can cost: every example asked for accepted, the cheapest prompt, and
    completions as long as the seeds themselves (a lower bound, used to warn, never to cap)."""
    calls = math.ceil(target / max(k, 1))
    per_call = call_cost_micro(price, min(prompt_tokens), completion_per_example * k, batch=batch)
    return int(math.floor(calls * per_call))


def warn_if_short(cfg: Any, seeds: Sequence[Any]) -> str | None:
    """A warning when ``--max-usd`` cannot reach ``--target`` even if every example asked for
    were accepted and each were no longer than the seeds (None when it may, or when the
    run has no target, no dollar cap or no price). No pilot, no network: a lower bound only."""
    from treegen.prompts import render_example
    from treegen.task import TaskFormat
    from treegen.tokens import count_text

    caps = cfg.caps
    if caps.target is None or caps.max_usd_micro is None or cfg.price is None or not seeds:
        return None
    fmt = TaskFormat.parse(cfg.task_format)
    structured = cfg.structured != "off"
    prompts = prompt_token_counts(seeds, fmt, cfg.k, cfg.model, cfg.task_description, structured)
    per_example = min(count_text(render_example(s, fmt), cfg.model) for s in seeds) + 1
    least = minimum_cost_micro(prompts, per_example, caps.target, cfg.k, cfg.price, batch=bool(cfg.batch))
    if least <= caps.max_usd_micro:
        return None
    return (f"--max-usd ${caps.max_usd_micro / 1e6:g} will not reach --target {caps.target:,}: even with every "
            f"example accepted it needs at least ${least / 1e6:.4f}. Raise --max-usd, lower --target, or run "
            "`treegen plan` for a forecast from a pilot.")


# ---- from a run (reads the store; not pure) -------------------------------------------------
def forecast_from_run(store: Any, cfg: Any, seeds: Sequence[Any], target: int, seed: int = 0) -> Forecast:
    """The forecast for ``cfg`` and ``target`` from the calls of a run (a pilot, or ``--from``)."""
    from treegen.task import TaskFormat

    samples = samples_from_calls(store.calls())
    if not samples:
        from treegen.errors import InputError

        raise InputError(f"{store.run_dir} has no finished calls to forecast from: give --pilot-calls M "
                         "to run a pilot, or --from a run that made calls.")
    fmt = TaskFormat.parse(cfg.task_format)
    shown = list(seeds) + list(store.examples())
    prompts = prompt_token_counts(shown, fmt, cfg.k, cfg.model, cfg.task_description, cfg.structured != "off")
    return forecast(samples, prompts, target, cfg.price, concurrency=cfg.concurrency, rpm=cfg.rpm, tpm=cfg.tpm,
                    batch_wave=cfg.batch_wave, tree_like=cfg.strategy in ("tree", "novelty", "naive"), k=cfg.k,
                    seed=seed)


async def run_pilot(seeds: Any, options: dict[str, Any], pilot_calls: int, api_key: str | None = None) -> Any:
    """A pilot: a normal synchronous run capped at ``pilot_calls`` calls, recorded in its own run
    folder (its cost counted, its examples usable as seeds). Returns (store, cfg)."""
    from treegen.api import execute_async, prepare_run

    opts = {k: v for k, v in options.items() if k not in ("target", "max_usd", "max_tokens", "max_seconds",
                                                           "max_depth", "budget", "batch")}
    opts["max_calls"] = pilot_calls
    store, cfg = prepare_run(seeds, opts, api_key)
    await execute_async(store, cfg, api_key)
    return store, cfg
