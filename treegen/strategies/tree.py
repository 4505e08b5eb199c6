"""Tree: breadth-first. Every accepted child becomes a parent at the next depth.

The frontier is taken depth by depth, shallowest first; within a depth the next node is
drawn at random with the run's seed (a shuffle). Each node is expanded ``branching`` times.
"""

from __future__ import annotations

from treegen.strategies.base import Job, NodeInfo, Strategy


class Tree(Strategy):
    name = "tree"

    def __init__(self, params):
        super().__init__(params)
        self.frontier: dict[int, list[NodeInfo]] = {}

    def _push(self, node: NodeInfo, times: int) -> None:
        if times > 0 and self.depth_allowed(node.depth + 1):
            self.frontier.setdefault(node.depth, []).extend([node] * times)

    def start(self, seeds):
        super().start(seeds)
        self.frontier = {}
        for s in seeds:
            self._push(s, self.params.branching)

    def restore(self, seeds, nodes, history):
        super().start(seeds)
        self.frontier = {}
        everything = list(seeds) + sorted(nodes, key=lambda n: n.id)
        retries = self._restore_retries(everything, history)
        for n in everything:
            self._push(n, self.params.branching + retries[n.id] - n.expanded)

    def next_job(self) -> Job | None:
        for depth in sorted(self.frontier):
            level = self.frontier[depth]
            if level:
                node = level.pop(self.rng.randrange(len(level)))
                if not level:
                    del self.frontier[depth]
                return Job([node], depth=node.depth + 1)
        return None

    def on_result(self, job, children, call_id):
        for child in children:
            self._push(child, self.params.branching)
        retry = self._earned_retry(job, children, call_id)
        if retry is not None:
            self._push(retry, 1)

    def exhausted(self) -> bool:
        return not self.frontier
