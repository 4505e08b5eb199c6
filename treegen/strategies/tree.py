"""Tree: breadth-first. Every accepted child becomes a parent at the next depth.

The frontier is taken depth by depth, shallowest first; within a depth the next node is
drawn at random with the run's seed (a shuffle). Each node is expanded ``branching`` times.

A depth is finished before the next one starts (a barrier): while any request for a shallower
depth is in flight, nothing deeper is asked. Retries of empty expansions form their own round
after the depth's first round. So the requests, and the order they are made in, are the same at
any concurrency, which makes a run reproducible from its seed whatever ``--concurrency`` is.
"""

from __future__ import annotations

from treegen.strategies.base import Job, NodeInfo, Strategy


class Tree(Strategy):
    name = "tree"

    def __init__(self, params):
        super().__init__(params)
        # (depth, round) -> nodes to expand; round 0 is the first try, round r the r-th retry
        self.frontier: dict[tuple[int, int], list[NodeInfo]] = {}
        self.outstanding: dict[tuple[int, int], int] = {}  # requests in flight per (depth, round)

    def _push(self, node: NodeInfo, times: int, round_: int = 0) -> None:
        if times > 0 and self.depth_allowed(node.depth + 1):
            self.frontier.setdefault((node.depth, round_), []).extend([node] * times)

    def start(self, seeds):
        super().start(seeds)
        self.frontier = {}
        self.outstanding = {}
        for s in seeds:
            self._push(s, self.params.branching)

    def restore(self, seeds, nodes, history):
        super().start(seeds)
        self.frontier = {}
        self.outstanding = {}
        everything = list(seeds) + sorted(nodes, key=lambda n: n.id)
        retries = self._restore_retries(everything, history)
        for n in everything:
            self._push(n, self.params.branching + retries[n.id] - n.expanded)

    def next_job(self) -> Job | None:
        for key in sorted(self.frontier):
            # The barrier: a level waits for every request of the levels before it.
            if any(n > 0 for k, n in self.outstanding.items() if k < key):
                return None
            level = self.frontier[key]
            if level:
                node = level.pop(self.rng.randrange(len(level)))
                if not level:
                    del self.frontier[key]
                self.outstanding[key] = self.outstanding.get(key, 0) + 1
                return Job([node], depth=node.depth + 1, round=key[1])
            del self.frontier[key]
        return None

    def on_result(self, job, children, call_id):
        node = job.parents[0]
        key = (node.depth, job.round)
        if self.outstanding.get(key):
            self.outstanding[key] -= 1
        for child in children:
            self._push(child, self.params.branching)
        retry = self._earned_retry(job, children, call_id)
        if retry is not None:
            self._push(retry, 1, round_=self.retries[retry.id])

    def exhausted(self) -> bool:
        return not self.frontier
