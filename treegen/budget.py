"""Caps and the ledger that enforces them.

Before a request is sent its worst case (counted prompt tokens plus max_tokens, at list
price) is reserved; a request whose reservation would cross a cap is not sent. When the
reply comes back the reservation is settled with the usage the server reported; when the
outcome is unknown (a timeout, a crash) the whole reservation stays counted. So what is
counted never exceeds a cap, with any concurrency and any faults.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field


@dataclass
class Caps:
    max_usd_micro: int | None = None
    max_tokens: int | None = None
    max_calls: int | None = None
    target: int | None = None  # accepted examples
    max_depth: int | None = None
    max_seconds: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Caps":
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})

    def describe(self) -> str:
        parts = []
        if self.max_usd_micro is not None:
            parts.append(f"${self.max_usd_micro / 1e6:g}")
        if self.max_tokens is not None:
            parts.append(f"{self.max_tokens:,} tokens")
        if self.max_calls is not None:
            parts.append(f"{self.max_calls:,} calls")
        if self.target is not None:
            parts.append(f"{self.target:,} examples")
        if self.max_depth is not None:
            parts.append(f"depth {self.max_depth}")
        if self.max_seconds is not None:
            parts.append(f"{self.max_seconds:g} s")
        return ", ".join(parts) or "none"


class BudgetReached(Exception):
    """A reservation that would cross a cap; ``reason`` names the cap."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


@dataclass
class Reservation:
    micro: int
    tokens: int
    examples: int
    settled: bool = False


@dataclass
class Ledger:
    """Spent and held-back money, tokens, calls and examples of one run (in memory).

    Rebuilt from the database on resume; the database is written before the ledger is
    updated, so the ledger never counts what the database does not hold.
    """

    caps: Caps
    spent_micro: int = 0
    spent_tokens: int = 0
    calls: int = 0  # HTTP attempts sent or in flight
    accepted: int = 0
    elapsed_before: float = 0.0  # seconds spent in earlier sessions of the run (resume)
    held_micro: int = 0
    held_tokens: int = 0
    held_examples: int = 0  # examples asked for by requests in flight
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - self.started)

    def stop_reason(self) -> str | None:
        """The cap that ends the run now, whatever is in flight, or None."""
        c = self.caps
        if c.target is not None and self.accepted >= c.target:
            return f"target of {c.target:,} accepted examples reached"
        if c.max_seconds is not None and self.elapsed() >= c.max_seconds:
            return f"time cap of {c.max_seconds:g} s reached"
        if c.max_calls is not None and self.calls >= c.max_calls:
            return f"call cap of {c.max_calls:,} reached"
        return None

    def examples_open(self) -> int | None:
        """How many more examples may still be asked for (None: no target)."""
        if self.caps.target is None:
            return None
        return self.caps.target - self.accepted - self.held_examples

    def reserve(self, micro: int, tokens: int, examples: int = 0) -> Reservation:
        """Hold back the worst case of one request, or raise BudgetReached naming the cap."""
        reason = self.stop_reason()
        if reason:
            raise BudgetReached(reason)
        c = self.caps
        if c.max_usd_micro is not None and self.spent_micro + self.held_micro + micro > c.max_usd_micro:
            raise BudgetReached(
                f"dollar cap of ${c.max_usd_micro / 1e6:g} reached "
                f"(the next request could cost up to ${micro / 1e6:.6f})"
            )
        if c.max_tokens is not None and self.spent_tokens + self.held_tokens + tokens > c.max_tokens:
            raise BudgetReached(f"token cap of {c.max_tokens:,} reached (the next request could use {tokens:,})")
        self.calls += 1
        self.held_micro += micro
        self.held_tokens += tokens
        self.held_examples += examples
        return Reservation(micro, tokens, examples)

    def settle(self, r: Reservation, micro: int | None, tokens: int | None, accepted: int = 0) -> None:
        """Replace a reservation by what the server reported; None keeps the worst case."""
        if r.settled:
            raise RuntimeError("reservation settled twice")
        r.settled = True
        self.held_micro -= r.micro
        self.held_tokens -= r.tokens
        self.held_examples -= r.examples
        self.spent_micro += r.micro if micro is None else micro
        self.spent_tokens += r.tokens if tokens is None else tokens
        self.accepted += accepted

    def release(self, r: Reservation) -> None:
        """Give back a reservation whose request was never sent."""
        if r.settled:
            raise RuntimeError("reservation settled twice")
        r.settled = True
        self.held_micro -= r.micro
        self.held_tokens -= r.tokens
        self.held_examples -= r.examples
        self.calls -= 1
