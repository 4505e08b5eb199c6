"""The strategy interface shared by every exploration strategy."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

from treegen.task import Example

if TYPE_CHECKING:
    import numpy as np  # annotations only: a run without embeddings never imports numpy (start-up)


@dataclass(frozen=True)
class NodeInfo:
    """What a strategy knows of a node: seeds and accepted examples only."""

    id: int
    depth: int
    root_id: int
    example: Example
    expanded: int = 0
    novelty: float | None = None
    # The example's unit-norm embedding when a decision of the strategy needed it
    # (``wants_vectors``): computed once, by the engine, off the event loop; carried here so a
    # node is never embedded twice. None until needed.
    vector: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass
class Job:
    """One request to make: show ``parents`` and ask for children at ``depth``."""

    parents: list[NodeInfo]
    depth: int
    chain: int | None = None
    round: int = 0  # tree: 0 for a node's first tries, r for its r-th retry round


@dataclass
class StrategyParams:
    seed: int = 0
    max_depth: int | None = None  # children deeper than this are never asked for
    branching: int = 1  # tree / novelty: expansion requests per node
    chains: int = 1  # random / contrastive / similar: chains walked side by side
    expand_retries: int = 2  # an expansion that gave no accepted child is tried again this often
    # Cosine similarity of one example to several, for nodes that carry no ``vector`` (a
    # fallback that embeds synchronously; the engine gives strategies with ``uses_embeddings``
    # nodes that carry their vectors, so it is not called on the event loop)
    similarity: Callable[[Example, Sequence[Example]], np.ndarray] | None = None
    extra: dict = field(default_factory=dict)


class Strategy:
    name = "base"
    # True: the strategy compares examples' embeddings (``wants_vectors`` says for which
    # replies), so the accepted children it is handed may carry their ``vector``.
    uses_embeddings = False

    def __init__(self, params: StrategyParams):
        self.params = params
        self.rng = random.Random(f"{params.seed}:{self.name}")
        self.seeds: list[NodeInfo] = []
        self.retries: dict[int, int] = {}  # node id -> retried empty expansions

    def start(self, seeds: Sequence[NodeInfo]) -> None:
        """A new run: the seed nodes are in the database."""
        self.seeds = list(seeds)

    def restore(self, seeds: Sequence[NodeInfo], nodes: Sequence[NodeInfo], history: Sequence[dict]) -> None:
        """A resumed run: seeds, accepted nodes (with their expansion counts) and the
        finished requests (dicts with call_id, chain, parent_ids, child_ids), oldest first."""
        self.start(seeds)

    def next_job(self) -> Job | None:
        """The next request, or None when nothing can be asked until a request finishes."""
        raise NotImplementedError

    def on_result(self, job: Job, children: Sequence[NodeInfo], call_id: int | None) -> None:
        """A request finished (``children`` are its accepted examples, maybe none)."""

    def exhausted(self) -> bool:
        """True when no request will ever be asked again (with none in flight)."""
        return False

    def wants_vectors(self, job: Job, candidates: int) -> bool:
        """Whether deciding a reply to ``job`` with ``candidates`` surviving candidates
        compares embeddings: the engine then embeds those candidates, and the parents that
        carry no ``vector`` yet, off the event loop before the reply's turn, and hands the
        accepted children over carrying their vectors."""
        return False

    # ---- bounded retries of expansions that gave nothing (tree, novelty) --------------
    def _restore_retries(self, nodes: Sequence[NodeInfo], history: Sequence[dict]) -> dict[int, int]:
        """Per node: how many extra expansions its empty replies have earned so far."""
        failed: dict[int, int] = {}
        for h in history:
            if not h["child_ids"] and len(h["parent_ids"]) == 1:
                failed[h["parent_ids"][0]] = failed.get(h["parent_ids"][0], 0) + 1
        self.retries = {n.id: min(failed.get(n.id, 0), self.params.expand_retries) for n in nodes}
        return self.retries

    def _earned_retry(self, job: Job, children: Sequence[NodeInfo], call_id: int | None) -> NodeInfo | None:
        """The parent to expand once more when this expansion gave nothing, within the bound."""
        if children or call_id is None or len(job.parents) != 1:
            return None
        node = job.parents[0]
        used = self.retries.get(node.id, 0)
        if used >= self.params.expand_retries:
            return None
        self.retries[node.id] = used + 1
        return node

    def depth_allowed(self, depth: int) -> bool:
        return self.params.max_depth is None or depth <= self.params.max_depth
