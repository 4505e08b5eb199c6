"""Naive: always show a seed (cycling through them); children are never expanded."""

from __future__ import annotations

from treegen.strategies.base import Job, Strategy


class Naive(Strategy):
    name = "naive"

    def __init__(self, params):
        super().__init__(params)
        self._next = 0

    def restore(self, seeds, nodes, history):
        self.start(seeds)
        self._next = len(history)

    def next_job(self) -> Job | None:
        if not self.depth_allowed(1):
            return None
        seed = self.seeds[self._next % len(self.seeds)]
        self._next += 1
        return Job([seed], depth=1)

    def exhausted(self) -> bool:
        return not self.depth_allowed(1)
