"""Client-side rate limiting: smooth token buckets for requests and tokens per minute, FIFO fair.

A limit of N per minute refills its bucket continuously at N/60 per second. Bucket sizes
(the largest burst after an idle spell):

- requests: one request. Requests therefore leave exactly 60/RPM seconds apart. Providers
  may enforce a per-minute limit over shorter windows (OpenAI documents that 60,000 RPM can
  be enforced as 1,000 per second); one-request pacing never exceeds RPM/60 in any one-second
  window, and costs no throughput: when requests queue, the bucket is empty anyway.
- tokens: one second's worth (TPM/60), at least one token. A request needs
  ``min(tokens, bucket size)`` in the bucket and then takes all of its tokens, so a request
  larger than the bucket still passes once the bucket is full (no deadlock), and leaves the
  bucket in debt so the long-run rate stays TPM.

Waiters are served strictly in arrival order: a small request never overtakes a large one
that is waiting for tokens. A cancelled waiter leaves the queue without taking anything.
``pause(seconds)`` (a 429's Retry-After) holds every waiter back, not just the one that got it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Awaitable, Callable


class _Bucket:
    """A continuously refilling bucket that may go into debt (negative level)."""

    def __init__(self, per_second: float, capacity: float, now: float):
        self.rate = per_second
        self.capacity = capacity
        self.level = capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` (capped at the bucket size) is in the bucket."""
        self.refill(now)
        short = min(amount, self.capacity) - self.level
        # Rounding can leave a refill a hair short of a whole request: count that as there.
        return short / self.rate if short > 1e-9 * max(1.0, amount) else 0.0

    def take(self, amount: float, now: float) -> None:
        self.refill(now)
        self.level -= amount


class RateLimiter:
    """Requests-per-minute and tokens-per-minute limits as smooth token buckets, FIFO fair.

    ``window`` is the limits' period in seconds (60 for per-minute limits; tests shrink it).
    """

    def __init__(self, rpm: int | None = None, tpm: int | None = None, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        if window <= 0:
            raise ValueError("window must be positive")
        self.rpm = rpm
        self.tpm = tpm
        self.window = window
        self._clock = clock
        self._sleep = sleep  # clock and sleep are a seam for tests with a fake clock
        now = clock()
        self._requests = _Bucket(rpm / window, 1.0, now) if rpm else None
        self._tokens = _Bucket(tpm / window, max(1.0, tpm / window), now) if tpm else None
        self._paused_until = 0.0
        self._queue: deque[asyncio.Future[None]] = deque()

    def pause(self, seconds: float) -> None:
        """Hold every sender back for ``seconds`` from now (a 429's Retry-After)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def wait_seconds(self, tokens: int) -> float:
        """How long a request of ``tokens`` would wait now if nobody were queued before it."""
        now = self._clock()
        wait = self._paused_until - now
        if self._requests is not None:
            wait = max(wait, self._requests.wait(1.0, now))
        if self._tokens is not None:
            wait = max(wait, self._tokens.wait(float(tokens), now))
        return max(0.0, wait)

    def try_acquire(self, tokens: int) -> bool:
        """Take this request's turn now if nobody is queued and both limits allow it (no task,
        no wait: the common case on the hot path); False means call ``acquire``."""
        if self._queue or self.wait_seconds(tokens) > 0:
            return False
        now = self._clock()
        if self._requests is not None:
            self._requests.take(1.0, now)
        if self._tokens is not None:
            self._tokens.take(float(tokens), now)
        return True

    async def acquire(self, tokens: int) -> None:
        """Wait for this request's turn: after everyone queued before it, within both limits."""
        if self._requests is None and self._tokens is None and not self._queue \
                and self._paused_until <= self._clock():
            return
        me: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(me)
        try:
            if self._queue[0] is not me:
                await me  # woken by the waiter before us when it leaves
            while True:
                wait = self.wait_seconds(tokens)
                if wait <= 0:
                    break
                await self._sleep(wait)
            now = self._clock()
            if self._requests is not None:
                self._requests.take(1.0, now)
            if self._tokens is not None:
                self._tokens.take(float(tokens), now)
        finally:
            # Leave the queue (served or cancelled) and wake the new head.
            try:
                self._queue.remove(me)
            except ValueError:  # pragma: no cover - always queued above
                pass
            if self._queue and not self._queue[0].done():
                self._queue[0].set_result(None)

    @property
    def waiting(self) -> int:
        """Requests queued at the limiter now."""
        return len(self._queue)
