"""`treegen plan`: forecast arithmetic (pure) and a forecast against a simulated run (SIMULATED)."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

import treegen
from treegen import cli_batch
from treegen.config import from_options
from treegen.forecast import (CallSample, CompletionModel, YieldCurve, acceptance_posterior, accepted_before,
                              calls_to_reach, calls_to_target, fit_yield_curves, forecast, t_widen, warn_if_short)
from treegen.prices import load_price_table, price_for
from treegen.task import example_from_dict

SEEDS = [{"question": "Is 12 divisible by 4?", "options": ["True", "False"], "label": "True"},
         {"question": "Is a sparrow a kind of fish?", "options": ["True", "False"], "label": "False"}]
PRICE = price_for("gpt-4o-mini", load_price_table())


def test_constant_pilot_gives_the_exact_expected_figures() -> None:
    samples = [CallSample(100, 200, 5, True, 1.0)] * 8
    fc = forecast(samples, [100, 100], target=50, price=PRICE, concurrency=2)
    # 10 calls of 5, plus half a call: on average the call that reaches the target overshoots it.
    assert fc.calls.expected == 10.5
    assert fc.calls.low == 10  # never fewer than target / k
    assert fc.tokens.expected == pytest.approx(10.5 * 300, rel=1e-12)  # exp(log(200)): float only
    assert PRICE is not None
    assert fc.usd.expected == pytest.approx(10.5 * (100 * PRICE.input + 200 * PRICE.output) / 1e12)
    assert fc.batch_usd.expected == pytest.approx(10.5 * (100 * PRICE.batch_input + 200 * PRICE.batch_output) / 1e12)
    assert fc.seconds.expected == pytest.approx(10.5 * 1.0 / 2)


def test_a_zero_variance_small_pilot_still_gives_a_range() -> None:
    # Three identical calls, every candidate accepted (the REAL 3-call pilot that collapsed).
    samples = [CallSample(77, 160, 5, True, 6.0)] * 3
    fc = forecast(samples, [77], target=30, price=PRICE, k=5)
    assert fc.calls.low == 6 and fc.calls.high >= 8  # 15/15 accepted is not certainty
    assert fc.usd.low < 0.9 * fc.usd.expected and fc.usd.high > 1.2 * fc.usd.expected
    assert fc.tokens.low < fc.tokens.expected < fc.tokens.high


def test_the_floors_shrink_as_the_pilot_grows() -> None:
    def width(n: int) -> float:
        fc = forecast([CallSample(77, 160, 5, True, 6.0)] * n, [77], target=30, price=PRICE, k=5)
        return (fc.usd.high - fc.usd.low) / fc.usd.expected

    widths = [width(n) for n in (3, 12, 60)]
    assert widths[0] > widths[1] > widths[2] > 0
    assert CompletionModel.fit([100.0] * 3).sd > CompletionModel.fit([100.0] * 30).sd > 0  # the prior fades
    spread = CompletionModel.fit([50.0, 150.0] * 50)
    assert spread.sd == pytest.approx(0.55, rel=0.05)  # the pilot's own spread (log 3 / 2) wins
    a, b = acceptance_posterior(15, 15)
    assert (a, b) == (16.0, 1.0) and a / (a + b) < 1.0


def test_one_long_call_of_a_small_pilot_widens_the_range_without_dragging_it() -> None:
    # The REAL 3-call pilot that missed: one call of 338 completion tokens; the run averaged 165.
    long_one, even = [191.0, 229.0, 338.0], [191.0, 229.0, 229.0]
    model = CompletionModel.fit(long_one)
    assert model.expected < sum(long_one) / 3 - 10  # the median of the logs, not the mean
    assert model.expected > 229.0  # ...with the pilot's own skew: more than the median
    assert model.sd > CompletionModel.fit(even).sd  # the long call still widens

    def fc(completion: list[float]):
        samples = [CallSample(77, int(c), a, True, 6.0) for c, a in zip(completion, [5, 3, 4])]
        return forecast(samples, [77], target=30, price=PRICE, k=5)

    wide, narrow = fc(long_one), fc(even)
    assert wide.usd.high - wide.usd.low > narrow.usd.high - narrow.usd.low
    assert wide.usd.low <= narrow.usd.low  # the long call can only lower the low end, never raise it
    # A large log-normal pilot: the fit recovers the mean.
    rng = __import__("numpy").random.default_rng(1)
    big = rng.lognormal(5.2, 0.3, size=4000)
    assert CompletionModel.fit(big).expected == pytest.approx(float(big.mean()), rel=0.02)
    assert CompletionModel.fit([]).expected == 0.0


def test_rate_limits_bound_the_wall_time() -> None:
    samples = [CallSample(100, 200, 5, True, 0.1)] * 8
    fc = forecast(samples, [100], target=50, price=PRICE, concurrency=8, rpm=60)
    assert fc.seconds.expected == pytest.approx(10.5)  # 10.5 calls at one a second
    fc = forecast(samples, [100], target=50, price=PRICE, concurrency=8, tpm=600)
    assert fc.seconds.expected == pytest.approx(315.0)  # 3,150 tokens at 600 a minute


def test_spread_gives_a_range_that_narrows_with_a_bigger_pilot() -> None:
    def pilot(n: int) -> list[CallSample]:
        return [CallSample(100, 150 + 10 * (i % 5), [1, 5, 3, 0, 4][i % 5], i % 7 != 0, 1.0) for i in range(n)]

    small = forecast(pilot(10), [90, 110], target=200, price=PRICE)
    large = forecast(pilot(200), [90, 110], target=200, price=PRICE)
    for fc in (small, large):
        assert fc.usd.low < fc.usd.expected < fc.usd.high
    width = lambda fc: (fc.usd.high - fc.usd.low) / fc.usd.expected  # noqa: E731
    assert width(small) > width(large)
    assert t_widen(5) > t_widen(30) > t_widen(500) == 1.0


def test_calls_to_target_and_errors() -> None:
    assert calls_to_target([0, 2, 0, 3], 5) == 4  # type: ignore[arg-type]
    assert calls_to_target([0, 1], 5) == 3  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        forecast([], [100], target=5, price=PRICE)
    fc = forecast([CallSample(100, 100, 0, True, 1.0)] * 4, [100], target=5, price=PRICE)
    assert fc.calls.expected > 0 and fc.usd.high >= fc.usd.expected  # no acceptance: finite, wide


def _declining_pilot(curve: YieldCurve, n: int) -> list[float]:
    """Accepted per call that follow ``curve`` exactly (expected values, no noise)."""
    out: list[float] = []
    for _ in range(n):
        out.append(curve.per_call(sum(out)))
    return out


def test_yield_curve_calls_match_stepping_call_by_call() -> None:
    assert YieldCurve(4.0, float("inf"), 2.0).calls_to(100) == pytest.approx(25.0)
    curve = YieldCurve(4.0, 30.0, 2.0)
    accepted, calls = 0.0, 0
    while accepted < 200:  # small steps of the same curve: the integral the closed form gives
        accepted += curve.per_call(accepted) * 0.01
        calls += 1
    assert curve.calls_to(200) == pytest.approx(calls * 0.01, rel=0.01)
    assert curve.calls_to(200) > 3 * 200 / 4.0  # repeats make it far costlier than the first calls suggest
    assert calls_to_reach([1.0], [0.001], 2.0, 10**6)[0] == 1e8  # never: capped, still a number


def test_fit_recovers_a_decline_and_keeps_a_flat_pilot_flat() -> None:
    acc = _declining_pilot(YieldCurve(5.0, 40.0, 2.0), 16)
    assert acc[0] == 5.0 and acc[-1] < 2.5
    before = accepted_before(acc)
    assert before[0] == 0 and before[1] == 5.0
    m0, pool = fit_yield_curves([acc], [before], 2.0)
    assert m0[0] == pytest.approx(5.0, rel=0.05) and pool[0] == pytest.approx(40.0, rel=0.08)
    flat = [4.0] * 12
    m0, pool = fit_yield_curves([flat], [accepted_before(flat)], 2.0)
    assert m0[0] == pytest.approx(4.0) and pool[0] == float("inf")


def test_a_saturating_pilot_forecasts_more_calls_than_its_mean_suggests() -> None:
    acc = _declining_pilot(YieldCurve(5.0, 40.0, 2.0), 12)
    samples = [CallSample(100, 150, round(a), True, 1.0) for a in acc]
    mean = sum(round(a) for a in acc) / len(acc)
    naive = forecast(samples, [100], target=300, price=PRICE, saturating=True)
    moving = forecast(samples, [100], target=300, price=PRICE)
    assert naive.calls.expected > 2 * 300 / mean
    assert naive.curve is not None and naive.curve.gamma == 2.0 and naive.curve.pool < 100
    # Moving context: the no-decline figure is expected; the pilot's decline widens the high end.
    assert moving.calls.expected == pytest.approx(300 / mean + 0.5)
    assert moving.calls.high > 2 * moving.calls.expected
    assert moving.calls.low <= moving.calls.expected <= moving.calls.high
    assert naive.to_dict()["yield_curve"]["gamma"] == 2.0


def test_warn_if_short_only_when_the_cap_cannot_reach_the_target() -> None:
    seeds = [example_from_dict(s) for s in SEEDS]
    tight = from_options("yesno_close", {"backend": "sim", "target": 100_000, "max_usd": 0.01})
    assert "will not reach --target" in (warn_if_short(tight, seeds) or "")
    ample = from_options("yesno_close", {"backend": "sim", "target": 100, "max_usd": 5})
    assert warn_if_short(ample, seeds) is None
    no_target = from_options("yesno_close", {"backend": "sim", "max_usd": 0.01})
    assert warn_if_short(no_target, seeds) is None


def _app() -> typer.Typer:
    app = typer.Typer()
    cli_batch.register(app)
    return app


def test_plan_needs_a_pilot_or_a_run(tmp_path) -> None:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(s) + "\n" for s in SEEDS))
    res = CliRunner().invoke(_app(), ["plan", str(seeds), "--target", "10", "--backend", "sim"])
    assert res.exit_code != 0


def test_plan_on_the_simulator_lands_within_its_range(tmp_path) -> None:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(s) + "\n" for s in SEEDS))
    res = CliRunner().invoke(_app(), ["plan", str(seeds), "--target", "120", "--backend", "sim", "--pilot-calls", "12",
                                      "--embedder", "hashing", "--out", str(tmp_path / "runs"), "--name", "pilot",
                                      "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert set(doc) >= {"usd", "tokens", "calls", "seconds", "batch"}
    assert doc["simulated"] is True and doc["pilot_calls"] == 12
    actual = treegen.run(str(seeds), backend="sim", target=120, seed=7, embedder="hashing",
                         out=str(tmp_path / "runs"), name="actual")
    assert doc["usd"]["low"] <= actual.spent_usd <= doc["usd"]["high"], (doc["usd"], actual.spent_usd)
    assert doc["calls"]["low"] <= actual.calls <= doc["calls"]["high"]
    assert doc["batch"]["usd"]["expected"] < doc["usd"]["expected"]
