"""Novelty (ours): best-first search that expands the most novel examples first.

A node's novelty is 1 - its highest cosine similarity to every node accepted before it,
computed by the engine when the node is accepted. The frontier is a priority queue on
novelty, so money goes below the examples that opened new ground rather than below
paraphrases; ties are broken at random with the run's seed. Seeds come first.

Requests go in waves of ``chains`` (default 8): a wave is picked once every request of the
wave before it has finished, so the picks do not depend on ``--concurrency``.
"""

from __future__ import annotations

import heapq

from treegen.strategies.base import Job, NodeInfo, Strategy


class Novelty(Strategy):
    name = "novelty"

    def __init__(self, params):
        super().__init__(params)
        self.heap: list[tuple[float, float, int, NodeInfo]] = []
        # Best-first in waves of ``chains`` requests: a wave is picked from what every earlier
        # wave found, so the picks are the same at any concurrency.
        self.wave: list[NodeInfo] = []  # picked for the current wave, not yet asked
        self.outstanding = 0

    def _push(self, node: NodeInfo, times: int) -> None:
        if times <= 0 or not self.depth_allowed(node.depth + 1):
            return
        novelty = 2.0 if node.depth == 0 else (node.novelty if node.novelty is not None else 0.0)
        for _ in range(times):
            heapq.heappush(self.heap, (-novelty, self.rng.random(), node.id, node))

    def start(self, seeds):
        super().start(seeds)
        self.heap = []
        self.wave = []
        self.outstanding = 0
        for s in seeds:
            self._push(s, self.params.branching)

    def restore(self, seeds, nodes, history):
        super().start(seeds)
        self.heap = []
        self.wave = []
        self.outstanding = 0
        everything = list(seeds) + sorted(nodes, key=lambda n: n.id)
        retries = self._restore_retries(everything, history)
        for n in everything:
            self._push(n, self.params.branching + retries[n.id] - n.expanded)

    def next_job(self) -> Job | None:
        if not self.wave:
            if self.outstanding:
                return None  # the next wave is picked once this one has finished
            # A whole wave is picked at once, from what the earlier waves found.
            while self.heap and len(self.wave) < max(1, self.params.chains):
                self.wave.append(heapq.heappop(self.heap)[3])
            if not self.wave:
                return None
        node = self.wave.pop(0)
        self.outstanding += 1
        return Job([node], depth=node.depth + 1)

    def on_result(self, job, children, call_id):
        self.outstanding = max(0, self.outstanding - 1)
        for child in children:
            self._push(child, self.params.branching)
        retry = self._earned_retry(job, children, call_id)
        if retry is not None:
            self._push(retry, 1)

    def exhausted(self) -> bool:
        return not self.heap and not self.wave
