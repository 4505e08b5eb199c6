"""The ledger: reservations never let counted spending cross a cap, whatever the order of events."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treegen.budget import BudgetReached, Caps, Ledger
from treegen.acceptance import split_cost
from treegen.client import backoff_seconds
from treegen.ratelimit import RateLimiter


def test_reservation_that_would_cross_the_cap_is_refused():
    ledger = Ledger(Caps(max_usd_micro=1000))
    r1 = ledger.reserve(600, 10)
    with pytest.raises(BudgetReached, match="dollar cap"):
        ledger.reserve(500, 10)  # 600 held + 500 > 1000
    ledger.settle(r1, 100, 10)  # the server reported less than the worst case
    r2 = ledger.reserve(500, 10)  # 100 spent + 500 fits now
    ledger.settle(r2, None, None)  # unknown outcome: the whole reservation stays counted
    assert ledger.spent_micro == 600 and ledger.held_micro == 0


def test_token_and_call_caps():
    ledger = Ledger(Caps(max_tokens=100, max_calls=2))
    ledger.settle(ledger.reserve(0, 60), 0, 50)
    with pytest.raises(BudgetReached, match="token cap"):
        ledger.reserve(0, 60)
    ledger.settle(ledger.reserve(0, 40), 0, 40)
    with pytest.raises(BudgetReached, match="call cap"):
        ledger.reserve(0, 1)


def test_release_gives_everything_back_and_double_settle_is_an_error():
    ledger = Ledger(Caps(max_usd_micro=10, target=3))
    r = ledger.reserve(10, 5, examples=3)
    assert ledger.examples_open() == 0
    ledger.release(r)
    assert (ledger.held_micro, ledger.calls, ledger.examples_open()) == (0, 0, 3)
    with pytest.raises(RuntimeError):
        ledger.settle(r, 1, 1)


@settings(max_examples=200, deadline=None)
@given(
    cap=st.integers(1, 50_000),
    ops=st.lists(st.tuples(st.integers(1, 5_000), st.floats(0, 1.5), st.booleans()), max_size=60),
    seed=st.integers(0, 1000),
)
def test_counted_spending_never_exceeds_the_cap(cap, ops, seed):
    """Requests interleave at random (concurrency), some come back with less than reserved,
    some never come back (unknown billing): spent + held never crosses the cap."""
    rng = random.Random(seed)
    ledger = Ledger(Caps(max_usd_micro=cap))
    open_ = []
    for worst, ratio, unknown in ops:
        try:
            open_.append((ledger.reserve(worst, worst), ratio, unknown))
        except BudgetReached:
            pass
        assert ledger.spent_micro + ledger.held_micro <= cap
        if open_ and rng.random() < 0.5:
            r, ratio, unknown = open_.pop(rng.randrange(len(open_)))
            actual = None if unknown else min(r.micro, int(r.micro * ratio))
            ledger.settle(r, actual, actual)
            assert ledger.spent_micro + ledger.held_micro <= cap
    for r, _, _ in open_:
        ledger.settle(r, None, None)
    assert ledger.spent_micro <= cap


def test_split_cost_is_exact():
    assert split_cost(10, 3) == [4, 3, 3]
    assert sum(split_cost(12345, 7)) == 12345
    assert split_cost(5, 0) == []


def test_backoff_never_shortens_retry_after():
    rng = random.Random(0)
    for attempt in range(1, 8):
        assert backoff_seconds(attempt, rng, retry_after=7.5) >= 7.5
        assert backoff_seconds(attempt, rng) <= 30.0


def test_rate_limiter_holds_back_the_request_over_the_limit():
    import asyncio
    import time

    async def main():
        limiter = RateLimiter(rpm=3, window=0.5)
        t0 = time.monotonic()
        for _ in range(4):
            await limiter.acquire(1)
        return time.monotonic() - t0

    assert asyncio.run(main()) >= 0.45  # the 4th waited for the window to slide
