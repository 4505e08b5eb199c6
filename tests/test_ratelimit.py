"""The smooth rate limiter: spacing, utilisation, FIFO order, oversized requests, pauses, and no
429s from a real HTTP server that enforces the same limit per second."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from treegen.client import AttemptFailure, ChatClient
from treegen.ratelimit import RateLimiter


class FakeClock:
    """Time that moves only when the limiter sleeps: exact, instant tests."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def _grant_times(limiter: RateLimiter, clock: FakeClock, sizes: list[int], concurrency: int) -> list[float]:
    """Send requests of ``sizes`` through ``concurrency`` workers; the fake time of each grant."""
    times: list[float] = []
    queue = list(sizes)

    async def worker() -> None:
        while queue:
            tokens = queue.pop(0)
            await limiter.acquire(tokens)
            times.append(clock())

    async def main() -> None:
        await asyncio.gather(*(worker() for _ in range(concurrency)))

    asyncio.run(main())
    return times


def _busiest(times: list[float], width: float) -> int:
    """Most grants in any half-open window of ``width`` seconds."""
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - width:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_requests_are_spaced_and_every_minute_is_used():
    clock = FakeClock()
    limiter = RateLimiter(rpm=300, clock=clock, sleep=clock.sleep)
    times = _grant_times(limiter, clock, [100] * 1500, concurrency=16)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) == pytest.approx(0.2, abs=1e-9)  # 60 s / 300, never a burst
    assert _busiest(times, 1.0) <= 5  # RPM/60 in every second: a per-second enforcer is never tripped
    # The old sliding window sent the minute's 300 in the first seconds, then idled. Smooth
    # spacing must not cost throughput: every full minute holds >= 95% of the limit.
    minutes = [sum(1 for t in times if m * 60 <= t < (m + 1) * 60) for m in range(4)]
    assert all(n >= 0.95 * 300 for n in minutes), minutes
    assert _busiest(times, 60.0) <= 301  # and never more than the limit (+ the first request)


def test_tokens_per_minute_are_smooth_and_an_oversized_request_passes():
    clock = FakeClock()
    limiter = RateLimiter(tpm=60_000, clock=clock, sleep=clock.sleep)  # 1,000 tokens/s, bucket 1,000
    times = _grant_times(limiter, clock, [250] * 400, concurrency=8)
    assert times[3] == 0.0 and times[4] == pytest.approx(0.25)  # one second's worth at once, then paced
    # 100,000 tokens over (100 s): the long-run rate is the limit.
    assert times[-1] == pytest.approx((400 * 250 - 1000) / 1000.0)
    clock2 = FakeClock()
    big = RateLimiter(tpm=600, clock=clock2, sleep=clock2.sleep)  # 10 tokens/s, a 10-token bucket
    times = _grant_times(big, clock2, [5000, 5000, 1], concurrency=3)
    # The 5,000-token request is larger than the bucket: it passes when the bucket is full,
    # and the debt holds the next one back for the time the limit needs to pay it off.
    assert times[0] == 0.0
    assert times[1] == pytest.approx(500.0)
    assert times[2] == pytest.approx(500.0 + 500.0 - 0.9)


def test_waiters_are_served_first_come_first_served():
    clock = FakeClock()
    limiter = RateLimiter(tpm=6_000, clock=clock, sleep=clock.sleep)  # 100 tokens/s
    order: list[str] = []

    async def send(name: str, tokens: int, delay: int) -> None:
        for _ in range(delay):
            await asyncio.sleep(0)  # arrive in this order
        await limiter.acquire(tokens)
        order.append(name)

    async def main() -> None:
        await asyncio.gather(send("a", 100, 0), send("big", 100, 1), send("small", 1, 2))

    asyncio.run(main())
    # "small" would fit long before "big", but it arrived later: it does not overtake.
    assert order == ["a", "big", "small"]


def test_a_cancelled_waiter_takes_nothing_and_does_not_block_the_queue():
    clock = FakeClock()
    limiter = RateLimiter(rpm=60, clock=clock, sleep=clock.sleep)  # one a second

    async def main() -> list[float]:
        await limiter.acquire(1)  # t = 0
        waiting = asyncio.ensure_future(limiter.acquire(1))
        later = asyncio.ensure_future(limiter.acquire(1))
        await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await later
        return [clock(), limiter.waiting]

    t, waiting = asyncio.run(main())
    assert t == pytest.approx(1.0)  # the cancelled request did not use the second slot
    assert waiting == 0


def test_pause_holds_every_sender_back():
    clock = FakeClock()
    limiter = RateLimiter(rpm=6000, clock=clock, sleep=clock.sleep)

    async def main() -> float:
        await limiter.acquire(1)
        limiter.pause(7.5)  # a 429 with Retry-After: 7.5
        await limiter.acquire(1)
        return clock()

    assert asyncio.run(main()) == pytest.approx(7.5)


def test_no_limits_means_no_wait():
    limiter = RateLimiter()

    async def main() -> float:
        t0 = time.monotonic()
        for _ in range(1000):
            await limiter.acquire(10_000)
        return time.monotonic() - t0

    assert asyncio.run(main()) < 0.5


class _PerSecondServer(ThreadingHTTPServer):
    """An OpenAI-compatible endpoint allowing ``per_second`` requests a second (a token bucket
    holding one second's worth, as providers that quantise per-minute limits do); 429 beyond."""

    daemon_threads = True

    def __init__(self, per_second: float):
        super().__init__(("127.0.0.1", 0), _PerSecondHandler)
        self.per_second = per_second
        self.level = per_second
        self.stamp = time.monotonic()
        self.lock = threading.Lock()
        self.arrivals: list[float] = []
        self.rejected = 0

    def admit(self) -> bool:
        with self.lock:
            now = time.monotonic()
            self.level = min(self.per_second, self.level + (now - self.stamp) * self.per_second)
            self.stamp = now
            if self.level < 1.0:
                self.rejected += 1
                return False
            self.level -= 1.0
            self.arrivals.append(now)
            return True


class _PerSecondHandler(BaseHTTPRequestHandler):
    server: _PerSecondServer

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.server.admit():
            status, body = 200, {
                "id": "x", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
            }
        else:
            status, body = 429, {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        if status == 429:
            self.send_header("retry-after", "1")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def test_no_429_from_a_server_enforcing_the_same_limit_per_second():
    rpm = 600  # 10 a second, scaled down from a run's minute to three seconds
    server = _PerSecondServer(per_second=rpm / 60)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        async def main() -> int:
            limiter = RateLimiter(rpm=rpm, tpm=10_000_000)
            client = ChatClient(f"http://127.0.0.1:{server.server_address[1]}/v1", "k", "m")
            failures = 0
            todo = list(range(25))

            async def worker() -> None:
                nonlocal failures
                while todo:
                    todo.pop()
                    await limiter.acquire(50)
                    try:
                        await client.chat([{"role": "user", "content": "hi"}], max_tokens=5, temperature=None,
                                          top_p=None, seed=None, timeout=10)
                    except AttemptFailure:
                        failures += 1

            await asyncio.gather(*(worker() for _ in range(8)))
            await client.aclose()
            return failures

        failures = asyncio.run(main())
    finally:
        server.shutdown()
        server.server_close()
    arrivals = server.arrivals
    assert failures == 0 and server.rejected == 0
    assert len(arrivals) == 25
    span = arrivals[-1] - arrivals[0]
    # 25 requests paced at 10 a second: 2.4 s, not a burst; and >= 95% of the allowed rate.
    assert span >= 2.35
    assert 24 / span >= 0.95 * rpm / 60
    assert _busiest(arrivals, 1.0) <= rpm / 60 + 1


def test_try_acquire_takes_a_free_turn_and_refuses_when_a_wait_is_due():
    """The hot path's shortcut: a turn taken without a task when the bucket has room; refused
    (so the caller queues) when it would have to wait, or when others are queued."""
    from treegen.ratelimit import RateLimiter

    limiter = RateLimiter(rpm=60)  # one a second, a small burst
    taken = 0
    while limiter.try_acquire(10):
        taken += 1
        assert taken < 100
    assert taken >= 1
    assert limiter.wait_seconds(10) > 0
    assert RateLimiter().try_acquire(10)  # no limits: always free
