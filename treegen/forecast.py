"""`treegen plan`: what reaching a target will cost, before the money is spent.

Prompt tokens are counted exactly (``treegen.tokens`` on ``treegen.prompts.build_messages``)
for every example that can be shown: the seeds and the pilot's accepted examples. Completion
tokens per call, the accepted examples per call and the share of calls billed come from a
pilot: a small capped run (``--pilot-calls M``) or an existing run (``--from RUN``).

A call yields less as a run grows: its candidates repeat examples accepted before. The pilot's
accepted per call, in order, are fitted as a yield curve of the examples accepted so far,
``m0 * (1 + A/pool)**-gamma`` (maximum likelihood over a grid of pools; a flat pilot keeps an
infinite pool), and the calls to the target are its integral. Naive (the same seeds on every call)
saturates: gamma 1 and 2, expected at their geometric mean. Strategies that show what they
accepted (tree, chains) move on from the seeds' neighbourhood: expected with no decline, a mild
decline (gamma 0.5) widening the high end.

The range is predictive, not only a confidence interval on the mean: each bootstrap replicate
resamples the pilot's calls and refits the curve (parameter uncertainty, half the replicates per
gamma), then adds the run's own randomness (calls vary by cv * sqrt(calls)); the 2.5th and
97.5th percentiles are widened by the Student-t to normal quantile ratio for the pilot's size
(plus the priors' pseudo-calls).

A pilot of a few identical calls resamples to no spread at all, so the spread has floors that
fade as the pilot grows: the acceptance share gets at least the spread of its Beta(1 + accepted,
1 + rejected) posterior (15/15 accepted is not certainty); accepted per call vary at least
binomially. Completion tokens per call are log-normal (``CompletionModel``): centred on the
median of the pilot's logs, so one long call of a handful does not drag the forecast, with the
pilot's spread pooled with a prior one (log-sd 0.2, worth 4 calls), varying over the run's calls. Calls are whole (the last is paid in full; +0.5 on the expected) and
the low end is not under target / k (k asked per call; more if the pilot saw more).

Everything here but ``forecast_from_run`` and ``run_pilot`` is a pure function.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from numpy.typing import ArrayLike

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
    curve: "YieldCurve | None" = None  # the fitted yield per call (expected values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "pilot_calls": self.pilot_calls,
            "usd": self.usd.to_dict(), "tokens": self.tokens.to_dict(), "calls": self.calls.to_dict(),
            "seconds": self.seconds.to_dict(),
            "batch": {"usd": self.batch_usd.to_dict(), "tokens": self.tokens.to_dict(),
                      "calls": self.calls.to_dict(), "waves": self.waves,
                      "seconds": {"expected": None, "low": None, "high": self.batch_seconds_max}},
            "range": {"level": 0.95, "widen": self.widen},
            "yield_curve": None if self.curve is None else {
                "accepted_per_call_at_start": self.curve.m0,
                "pool": None if math.isinf(self.curve.pool) else self.curve.pool, "gamma": self.curve.gamma},
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


# Candidate pool sizes for the yield-curve fit (log-spaced), and "no decline" (inf) last.
POOL_GRID = np.append(np.logspace(math.log10(2.0), 6.0, 90), np.inf)
MAX_CALLS = 1e8  # a forecast that needs more is "never"; kept finite so the figures stay numbers
# Decline exponents: a strategy that shows the same seeds on every call (naive) samples one fixed
# distribution, so repeats pile up fast (saturation, with a tail of rare items); one that shows
# what it accepted (tree, chains) keeps moving to new neighbourhoods, so its decline is milder.
GAMMA_SATURATING = (1.0, 2.0)
GAMMA_MOVING = 0.5


@dataclass(frozen=True)
class YieldCurve:
    """Expected accepted examples per call once ``A`` are accepted: ``m0 * (1 + A/pool)**-gamma``.

    Repeats of earlier examples are why a call yields less as a run grows; ``pool`` is the scale
    (in accepted examples) at which the yield has fallen by 2**gamma (inf: it does not fall)."""

    m0: float
    pool: float
    gamma: float

    def per_call(self, accepted: float) -> float:
        if math.isinf(self.pool):
            return self.m0
        return self.m0 * (1.0 + accepted / self.pool) ** -self.gamma

    def calls_to(self, target: float) -> float:
        """Calls to go from 0 to ``target`` accepted (the integral of 1 / per_call)."""
        return float(calls_to_reach(np.array([self.m0]), np.array([self.pool]), self.gamma, target)[0])


def calls_to_reach(m0: ArrayLike, pool: ArrayLike, gamma: float, target: float) -> np.ndarray:
    """``YieldCurve.calls_to`` for arrays of curves (capped at MAX_CALLS)."""
    rate = np.maximum(np.asarray(m0, dtype=float), 1e-12)
    scale = np.asarray(pool, dtype=float)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        finite = np.isfinite(scale)
        p = np.where(finite, scale, 1.0)
        g1 = gamma + 1.0
        # log form so huge targets over tiny pools do not overflow
        log_growth = g1 * np.log1p(target / p)
        declining = p / (g1 * rate) * np.expm1(np.minimum(log_growth, 700.0))
        calls = np.where(finite, declining, target / rate)
    return np.minimum(np.nan_to_num(calls, nan=MAX_CALLS, posinf=MAX_CALLS), MAX_CALLS)


def accepted_before(accepted_per_call: ArrayLike) -> np.ndarray:
    """Accepted examples the run held when each call (in order) was answered."""
    a = np.asarray(accepted_per_call, dtype=float)
    return np.concatenate([[0.0], np.cumsum(a)[:-1]])


def fit_yield_curves(accepted: ArrayLike, before: ArrayLike, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-likelihood (Poisson) yield curves, one per row of ``accepted``/``before``
    (shape (R, n): R resamples of n pilot calls). Returns (m0, pool), each shape (R,)."""
    a = np.atleast_2d(np.asarray(accepted, dtype=float))
    x = np.atleast_2d(np.asarray(before, dtype=float))
    with np.errstate(divide="ignore"):
        g = (1.0 + x[:, :, None] / POOL_GRID[None, None, :]) ** -gamma  # (R, n, G); inf pool -> 1
    total = a.sum(axis=1)  # (R,)
    m0 = total[:, None] / g.sum(axis=1)  # (R, G): the best m0 for each pool size
    with np.errstate(divide="ignore", invalid="ignore"):
        ll = (a[:, :, None] * np.log(m0[:, None, :] * g)).sum(axis=1) - total[:, None]
    ll = np.where(np.isfinite(ll), ll, -np.inf)
    # Ties (e.g. a flat pilot) go to the largest pool: no decline unless the pilot shows one.
    best = (ll.shape[1] - 1) - np.argmax(ll[:, ::-1], axis=1)
    rows = np.arange(len(a))
    m0_best = m0[rows, best]
    none = total <= 0  # no acceptance at all: the worst the pilot allows, half an example over its calls
    m0_best = np.where(none, 0.5 / a.shape[1], m0_best)
    return m0_best, np.where(none, np.inf, POOL_GRID[best])


def forecast(samples: Sequence[CallSample], prompt_tokens: Sequence[int], target: int,
             price: ModelPrice | None, *, concurrency: int = 8, rpm: int | None = None, tpm: int | None = None,
             batch_wave: int = 50, tree_like: bool = True, k: int = 5, replicates: int = 400,
             seed: int = 0, saturating: bool = False) -> Forecast:
    """Forecast of calls, tokens, dollars and seconds to reach ``target`` accepted examples.

    ``samples`` in the order the pilot made them: the yield per call is fitted as a function of
    how many examples were accepted before (``YieldCurve``) and carried to the target.
    ``saturating``: the strategy shows the same examples on every call (naive)."""
    if not samples:
        raise ValueError("a forecast needs at least one pilot call")
    if not prompt_tokens:
        raise ValueError("a forecast needs the prompt token counts of at least one example")
    if target < 1:
        raise ValueError("target must be at least 1")
    # Half the replicates fit each decline exponent. Saturating (same seeds every call): a
    # 12-call pilot cannot tell a hard saturation from a long tail, so gamma 2 and gamma 1;
    # the expected value is their geometric mean. Moving context: the pilot (still near the
    # seeds) shows repeats that the run may outgrow, so no decline (gamma 0, the expected value:
    # what such runs did on the simulator, benchmarks/results/forecast.md) and a mild one
    # (gamma 0.5), which widens the high end.
    gammas = list(GAMMA_SATURATING) if saturating else [0.0, GAMMA_MOVING]
    acc = np.array([s.accepted for s in samples], dtype=float)
    before = accepted_before(acc)
    comp = np.array([s.completion_tokens if s.billed else 0 for s in samples], dtype=float)
    billed = np.array([1.0 if s.billed else 0.0 for s in samples])
    secs = np.array([s.seconds for s in samples], dtype=float)
    prompts = np.array(prompt_tokens, dtype=float)
    n = len(samples)
    rng = np.random.default_rng(seed)

    def summarise(calls: np.ndarray, p_total: np.ndarray, c_total: np.ndarray,
                  sec_mean: np.ndarray) -> np.ndarray:
        tokens = p_total + c_total
        usd = np.array([call_cost_micro(price, p, c) / 1e6 for p, c in zip(p_total, c_total)])
        busd = np.array([call_cost_micro(price, p, c, batch=True) / 1e6 for p, c in zip(p_total, c_total)])
        seconds = calls * sec_mean / max(concurrency, 1)
        if rpm:
            seconds = np.maximum(seconds, calls / rpm * 60.0)
        if tpm:
            seconds = np.maximum(seconds, tokens / tpm * 60.0)
        return np.stack([calls, tokens, usd, busd, seconds], axis=1)

    # Each replicate: resample the pilot's calls (parameter uncertainty: the curve is refitted
    # on the resample), then the run's own randomness: calls to the target vary with the
    # spread of accepted per call, sd ~ cv * sqrt(calls).
    idx = rng.integers(0, n, size=(replicates, n))
    parts = np.array_split(np.arange(replicates), len(gammas))
    calls = np.empty(replicates)
    for gamma, rows in zip(gammas, parts):
        m0, pool = fit_yield_curves(acc[idx[rows]], before[idx[rows]], gamma)
        calls[rows] = calls_to_reach(m0, pool, gamma, target)
    a_res = acc[idx]
    mean_a = a_res.mean(axis=1)
    # A few identical pilot calls resample to zero spread; the acceptance share gets the spread
    # of its Beta posterior where the bootstrap shows less (15/15 accepted is not certainty).
    candidates = max(float(k) * n, float(acc.sum()), 1.0)
    level = acceptance_level_factor(float(acc.sum()), candidates, mean_a / max(k, 1), rng)
    calls = calls / level
    share = np.clip(acc.sum() / candidates * level, 1e-6, 1.0)
    # Run randomness: at least binomial spread of accepted per call (k candidates at that share).
    cv_floor = np.sqrt((1.0 - share) / (max(k, 1) * share))
    cv = np.where(mean_a > 0, a_res.std(axis=1) / np.maximum(mean_a, 1e-12), 1.0)
    cv = np.maximum(cv, cv_floor)
    calls = np.maximum(1.0, calls + rng.standard_normal(replicates) * cv * np.sqrt(calls))
    # The call that reaches the target is paid whole: calls come in whole numbers.
    calls = np.ceil(calls - 1e-9)
    p_mean = prompts[rng.integers(0, len(prompts), size=(replicates, len(prompts)))].mean(axis=1)
    b_share = billed[idx].mean(axis=1)
    comp_model = CompletionModel.fit(comp[billed > 0])
    comp_mean = comp_model.run_means(calls * b_share, rng)
    arr = summarise(calls, calls * b_share * p_mean, calls * b_share * comp_mean, secs[idx].mean(axis=1))
    # The expected values: the curve fitted on the whole pilot, no resampling.
    curves = [YieldCurve(float(m[0]), float(p[0]), gamma)
              for gamma in gammas for m, p in [fit_yield_curves(acc[None, :], before[None, :], gamma)]]
    if saturating:  # between the two declines: their geometric mean
        curve = curves[-1]
        calls_e = math.exp(sum(math.log(max(c.calls_to(target), 1e-12)) for c in curves) / len(curves))
    else:  # moving context: no decline expected (the runs outgrow the pilot's repeats)
        curve = curves[0]
        calls_e = curve.calls_to(target)
    # On average the last call overshoots the target by half a call, and it is paid in full.
    calls_e = min(calls_e + 0.5, MAX_CALLS)
    exp = summarise(np.array([calls_e]), np.array([calls_e * billed.mean() * prompts.mean()]),
                    np.array([calls_e * billed.mean() * comp_model.expected]), np.array([secs.mean()]))[0]
    # The priors above count as pilot calls for the small-sample widening (they already floor
    # the spread a handful of calls cannot show).
    widen = t_widen(n + int(COMPLETION_PRIOR_CALLS))

    def interval(col: int) -> Interval:
        e = float(exp[col])
        lo, hi = np.percentile(arr[:, col], [2.5, 97.5])
        lo = min(float(lo), e)
        hi = max(float(hi), e)
        return Interval(e, max(0.0, e - (e - lo) * widen), e + (hi - e) * widen)

    calls_i = interval(0)
    most = max(float(k), float(acc.max()))
    if most > 0:  # fewer calls would need replies with more examples than asked for (or seen)
        least = float(math.ceil(target / most))
        calls_i = Interval(calls_i.expected, max(calls_i.low, min(least, calls_i.expected)), calls_i.high)
    waves = _waves(calls_e, tree_like, batch_wave, k, target)
    return Forecast(target=target, pilot_calls=n, calls=calls_i, tokens=interval(1), usd=interval(2),
                    seconds=interval(4), batch_usd=interval(3), batch_seconds_max=waves * DAY_S, waves=waves,
                    widen=widen, curve=curve)


# Prior pseudo-observations on the share of candidates accepted: Beta(1, 1), uniform. Two
# candidates' worth: negligible against a pilot of dozens of calls, decisive against three.
ACCEPT_PRIOR = (1.0, 1.0)
# Prior on completion tokens per call: a log-sd of 0.2 (about a coefficient of variation of 0.2),
# worth 4 calls. Real small models vary more from call to call than a 3-call pilot shows (REAL
# rows in benchmarks/results/forecast.md); the pilot's own spread takes over as it grows.
COMPLETION_PRIOR_CV = 0.2
COMPLETION_PRIOR_CALLS = 4.0


def acceptance_posterior(accepted: float, candidates: float,
                         prior: tuple[float, float] = ACCEPT_PRIOR) -> tuple[float, float]:
    """Beta posterior (a, b) of the share of candidates accepted."""
    accepted = min(max(accepted, 0.0), candidates)
    return prior[0] + accepted, prior[1] + candidates - accepted


def acceptance_level_factor(accepted: float, candidates: float, resampled_share: np.ndarray,
                            rng: np.random.Generator) -> np.ndarray:
    """Per replicate, a multiplier on the yield (1 on average) that tops the bootstrap's spread
    of the acceptance share up to the Beta posterior's, where the bootstrap shows less (a pilot
    of identical calls shows none). Shape of the Beta draw kept; only the missing variance added."""
    a, b = acceptance_posterior(accepted, candidates)
    draw = rng.beta(a, b, size=len(resampled_share))
    post_mean = a / (a + b)
    post_var = a * b / ((a + b) ** 2 * (a + b + 1.0))
    boot_var = float(np.var(resampled_share))
    missing = max(0.0, 1.0 - boot_var / post_var) if post_var > 0 else 0.0
    # The draw's relative deviation, scaled so its variance is the missing part only.
    return np.maximum(1.0 + (draw - post_mean) / post_mean * math.sqrt(missing), 1e-3)


@dataclass(frozen=True)
class CompletionModel:
    """Completion tokens per billed call, log-normal: ``log`` tokens have centre ``center`` and
    spread ``sd``, fitted on ``n`` pilot calls.

    The centre is the median of the logs, not the mean: completion lengths are right-skewed (one
    call of a 3-call REAL pilot wrote 338 tokens, the run's calls averaged 165), and with a
    handful of calls a single long one must not drag the forecast. The spread is the pilot's,
    pooled with a prior (``COMPLETION_PRIOR_CV`` worth ``COMPLETION_PRIOR_CALLS`` calls), so a long
    call still widens the range while it no longer shifts it. The expected tokens per call are
    the log-normal mean with the pilot's own spread, exp(center + pilot_var / 2): the prior widens
    the range, it does not move the expected (a pilot of identical calls expects exactly them)."""

    center: float
    sd: float
    n: int
    pilot_var: float = 0.0  # the pilot's own variance of log tokens (0 for one call)

    @classmethod
    def fit(cls, completion: ArrayLike, prior_sd: float = COMPLETION_PRIOR_CV,
            prior_calls: float = COMPLETION_PRIOR_CALLS) -> "CompletionModel":
        c = np.asarray(completion, dtype=float)
        if len(c) == 0:
            return cls(center=-math.inf, sd=0.0, n=0)  # nothing billed: no completion tokens
        logs = np.log(np.maximum(c, 1.0))
        ss = float(((logs - logs.mean()) ** 2).sum())
        sd = math.sqrt((prior_calls * prior_sd ** 2 + ss) / (prior_calls + len(c) - 1))
        pilot_var = ss / (len(c) - 1) if len(c) > 1 else 0.0
        return cls(center=float(np.median(logs)), sd=sd, n=len(c), pilot_var=pilot_var)

    @property
    def expected(self) -> float:
        return 0.0 if self.n == 0 else math.exp(self.center + self.pilot_var / 2)

    def run_means(self, calls: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Per replicate, the mean completion tokens per billed call over a run of ``calls``
        billed calls: the centre's own uncertainty (the variance of a median of n normal
        draws, pi / (2n + 4 - pi) sd^2: 0.458 for n = 3, exact 0.449; pi / 2n for large n) plus
        the run's averaging over its calls (log-sd sd / sqrt(calls))."""
        if self.n == 0:
            return np.zeros(len(calls))
        center_sd = self.sd * math.sqrt(math.pi / (2 * self.n + 4 - math.pi))
        centers = self.center + center_sd * rng.standard_normal(len(calls))
        run_sd = self.sd / np.sqrt(np.maximum(calls, 1.0))
        return np.exp(centers + self.pilot_var / 2 + run_sd * rng.standard_normal(len(calls)) - run_sd ** 2 / 2)


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
                    seed=seed, saturating=cfg.strategy == "naive")


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
