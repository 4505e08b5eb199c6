"""Chain strategies (random, contrastive, similar): each chain shows one example, then moves
on to one child of that request, picked by the strategy's rule. Chains start at the seeds;
a chain whose request gave no child tries its example again (``expand_retries`` times in a
row at most, then the chain ends); a chain at the depth cap ends, so ``--max-depth`` bounds
the run.

Several chains walk side by side (``chains``, default 8, recorded in the run's config, and
independent of ``--concurrency``); they take turns, round robin, so the order of requests is
the same at any concurrency. The pick is seeded by (run seed, chain, step of that chain), so a
run is reproducible and a resumed run picks as the original would have.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Sequence

from treegen.strategies.base import Job, NodeInfo, Strategy

if TYPE_CHECKING:
    import numpy as np  # imported where similarities are computed: random chains never need it


class _Chain(Strategy):
    def __init__(self, params):
        super().__init__(params)
        self.current: list[NodeInfo] = []
        self.busy: set[int] = set()
        self.failures: list[int] = []  # expansions in a row that gave no child, per chain
        self.ended: set[int] = set()  # chains that reached max depth or used their retries
        self.steps: list[int] = []  # moves of each chain so far: seeds its picks
        self._last = -1  # the chain asked last: turns go round robin

    def start(self, seeds):
        super().start(seeds)
        n = max(1, self.params.chains)
        self.current = [self.seeds[i % len(self.seeds)] for i in range(n)]
        self.busy = set()
        self.failures = [0] * n
        self.ended = set()
        self.steps = [0] * n
        self._last = -1

    def restore(self, seeds, nodes, history):
        self.start(seeds)
        by_id = {n.id: n for n in list(seeds) + list(nodes)}
        for h in history:
            chain = h.get("chain")
            if chain is None or chain >= len(self.current):
                continue
            parent = by_id.get(h["parent_ids"][0]) if h["parent_ids"] else None
            children = [by_id[c] for c in h["child_ids"] if c in by_id]
            if parent is not None:
                self._advance(chain, parent, children, h["call_id"])

    def next_job(self) -> Job | None:
        n = len(self.current)
        for turn in range(1, n + 1):
            chain = (self._last + turn) % n
            node = self.current[chain]
            if chain in self.busy or chain in self.ended:
                continue
            if not self.depth_allowed(node.depth + 1):
                # A chain ends at the depth cap, so --max-depth bounds the run.
                self.ended.add(chain)
                continue
            self.busy.add(chain)
            self._last = chain
            return Job([node], depth=node.depth + 1, chain=chain)
        return None

    def on_result(self, job, children, call_id):
        self.busy.discard(job.chain)
        self._advance(job.chain, job.parents[0], list(children), call_id)

    def _advance(self, chain: int, parent: NodeInfo, children: list[NodeInfo], call_id: int | None) -> None:
        if not children:
            self.current[chain] = parent
            self.failures[chain] += 1
            if self.failures[chain] > self.params.expand_retries:
                self.ended.add(chain)  # a node that keeps yielding nothing ends its chain
            return
        self.failures[chain] = 0
        self.steps[chain] += 1  # only steps that moved the chain: the same live and on restore
        rng = random.Random(f"{self.params.seed}:{chain}:{self.steps[chain]}")
        self.current[chain] = self.pick(parent, children, rng)

    def pick(self, parent: NodeInfo, children: Sequence[NodeInfo], rng: random.Random) -> NodeInfo:
        raise NotImplementedError

    def exhausted(self) -> bool:
        return not self.depth_allowed(1) or len(self.ended) == len(self.current)

    def wants_vectors(self, job, candidates):
        # Only a pick among two children or more compares them to their parent: a reply with
        # one surviving candidate (or none) is decided without embedding anything.
        return self.uses_embeddings and candidates >= 2

    def _similarities(self, parent: NodeInfo, children: Sequence[NodeInfo]) -> np.ndarray:
        """Cosine of each child to its parent: from the vectors the nodes carry (computed by
        the engine off the event loop, see ``wants_vectors``), else by the callback (which
        embeds on the caller's thread: a reply recovered at start-up)."""
        import numpy as np

        pv = parent.vector
        if pv is not None and all(c.vector is not None for c in children):
            return np.array([float(np.dot(c.vector, pv)) for c in children])  # type: ignore[arg-type]
        if self.params.similarity is None:
            raise RuntimeError(f"the {self.name} strategy needs an embedder")
        return self.params.similarity(parent.example, [c.example for c in children])


class RandomChain(_Chain):
    """Random: a random child of the last request."""

    name = "random"

    def pick(self, parent, children, rng):
        return children[rng.randrange(len(children))]


class ContrastiveChain(_Chain):
    """Contrastive: the child least similar to its parent."""

    name = "contrastive"

    uses_embeddings = True

    def pick(self, parent, children, rng):
        import numpy as np

        return children[int(np.argmin(self._similarities(parent, children)))]


class SimilarChain(_Chain):
    """Similar: the child most similar to its parent."""

    name = "similar"

    uses_embeddings = True

    def pick(self, parent, children, rng):
        import numpy as np

        return children[int(np.argmax(self._similarities(parent, children)))]
