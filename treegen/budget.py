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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from treegen.prices import ModelPrice

# The flag that sets each cap, for messages and tables.
CAP_FLAGS = {
    "max_usd_micro": "max-usd", "max_tokens": "max-tokens", "max_calls": "max-calls",
    "target": "target", "max_depth": "max-depth", "max_seconds": "max-seconds",
}


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

    @staticmethod
    def flag(name: str) -> str:
        """The command-line flag of a cap field (``max_usd_micro`` -> ``max-usd``)."""
        return CAP_FLAGS[name]

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
    """A reservation that would cross a cap; ``reason`` names the cap.

    ``final`` when waiting cannot help (target, time, calls); a dollar or token cap may fit
    again once the requests in flight have settled below their reservations.
    """

    def __init__(self, reason: str, final: bool = True):
        self.reason = reason
        self.final = final
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
                f"(the next request could cost up to ${micro / 1e6:.6f})", final=False,
            )
        if c.max_tokens is not None and self.spent_tokens + self.held_tokens + tokens > c.max_tokens:
            raise BudgetReached(f"token cap of {c.max_tokens:,} reached (the next request could use {tokens:,})",
                                final=False)
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


def afford_max_tokens(ledger: Ledger, price: "ModelPrice | None", prompt_tokens: int, max_tokens: int,
                      floor: int) -> int:
    """The largest completion budget (at most ``max_tokens``) that the dollar and token caps
    still afford after ``prompt_tokens``; at least ``floor`` (so that the request can still
    hold its examples), else BudgetReached (not final while requests are in flight).

    This is what lets a run end with less than one worst-case request of its cap unspent.
    """
    from treegen.prices import PER_TOKENS

    c = ledger.caps
    best = max_tokens
    if c.max_tokens is not None:
        best = min(best, c.max_tokens - ledger.spent_tokens - ledger.held_tokens - prompt_tokens)
    if c.max_usd_micro is not None and price is not None:
        left = c.max_usd_micro - ledger.spent_micro - ledger.held_micro
        prompt_cost = -(-prompt_tokens * price.input // PER_TOKENS)
        if price.output > 0:
            # tokens t with ceil((prompt*in + t*out) / 1M) <= left
            best = min(best, ((left * PER_TOKENS) - prompt_tokens * price.input) // price.output)
        elif prompt_cost > left:
            best = -1
    if best < floor:
        which = "token" if c.max_tokens is not None and best < floor and (
            c.max_tokens - ledger.spent_tokens - ledger.held_tokens - prompt_tokens) < floor else "dollar"
        cap = f"${c.max_usd_micro / 1e6:g}" if which == "dollar" and c.max_usd_micro is not None else (
            f"{c.max_tokens:,}" if c.max_tokens is not None else "")
        raise BudgetReached(f"{which} cap of {cap} reached (what is left affords fewer than {floor} "
                            "completion tokens for the next request)", final=False)
    return best


@dataclass(frozen=True)
class Usage:
    """What a reply is counted at: the server's usage (the bill), or ours when it sent none."""

    prompt_tokens: int
    completion_tokens: int
    cost_micro: int
    anomaly: str | None  # why the reported usage cannot be right for this request, or None


def reconcile_usage(price: "ModelPrice | None", prompt_tokens: int | None, completion_tokens: int | None,
                    cached_tokens: int, text: str, model: str, reserved_prompt: int, max_tokens: int,
                    local_prompt: int) -> Usage:
    """The usage and cost of one reply (pure). A server that reports no usage is counted by
    us, at worst the reservation. Reported usage is recorded as reported (that is the bill);
    usage that the request could not have used is flagged as an anomaly."""
    from treegen.prices import cost_micro
    from treegen.tokens import count_text

    anomaly = None
    if prompt_tokens is None or completion_tokens is None:
        prompt_tokens = reserved_prompt
        completion_tokens = min(count_text(text, model), max_tokens)
    else:
        if completion_tokens > max_tokens + 2:
            anomaly = (f"it reported {completion_tokens:,} completion tokens for a request limited to "
                       f"max_tokens={max_tokens:,}")
        elif prompt_tokens > 4 * max(local_prompt, 1) + 1024:
            anomaly = f"it reported {prompt_tokens:,} prompt tokens for a prompt we count at {local_prompt:,}"
    cost = cost_micro(price, prompt_tokens, completion_tokens, cached_tokens) if price else 0
    return Usage(prompt_tokens, completion_tokens, cost, anomaly)
