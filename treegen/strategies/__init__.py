"""Exploration strategies: which example(s) the LLM is shown next, and which nodes to expand.

Every strategy has one interface (``base.Strategy``): the engine asks ``next_job()`` for the
next request, reports each finished request with ``on_result()``, and on resume hands the
strategy the nodes and calls already in the database through ``restore()``.

After Lee et al., EMNLP 2023: naive, random, contrastive, similar, tree. Ours: novelty.
"""

from __future__ import annotations

from treegen.errors import ConfigError
from treegen.strategies.base import Job, NodeInfo, Strategy, StrategyParams
from treegen.strategies.chain import ContrastiveChain, RandomChain, SimilarChain
from treegen.strategies.naive import Naive
from treegen.strategies.novelty import Novelty
from treegen.strategies.tree import Tree

STRATEGIES: dict[str, type[Strategy]] = {
    "naive": Naive,
    "random": RandomChain,
    "contrastive": ContrastiveChain,
    "similar": SimilarChain,
    "tree": Tree,
    "novelty": Novelty,
}


def make_strategy(name: str, params: StrategyParams) -> Strategy:
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            f"Unknown strategy {name!r}. Choose one of: {', '.join(STRATEGIES)}, "
            "or give a preset from strategies/ by name or path."
        ) from None
    return cls(params)


__all__ = ["Job", "NodeInfo", "Strategy", "StrategyParams", "STRATEGIES", "make_strategy"]
