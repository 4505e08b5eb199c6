"""Strategy decisions on hand-made trees (no LLM)."""

from __future__ import annotations

import numpy as np

from treegen.task import Example
from treegen.strategies import NodeInfo, StrategyParams, make_strategy


def node(i, depth, root=1, q=None, novelty=None):
    return NodeInfo(i, depth, root, Example(q or f"question {i}", ("True", "False"), "True"), 0, novelty)


def test_tree_is_breadth_first_and_seeded():
    def order(seed):
        s = make_strategy("tree", StrategyParams(seed=seed, max_depth=3, expand_retries=0))
        s.start([node(1, 0)])
        job = s.next_job()
        s.on_result(job, [node(i, 1) for i in (2, 3, 4)], 1)
        jobs = [s.next_job() for _ in range(3)]
        for j, cid in zip(jobs, (5, 6, 7)):
            s.on_result(j, [node(cid * 10, 2)], cid)
        s.on_result(jobs[0], [], 8)
        return [j.parents[0].id for j in jobs], s.next_job().depth

    first, next_depth = order(0)
    assert sorted(first) == [2, 3, 4]  # all of depth 1 before any of depth 2
    assert next_depth == 3
    assert order(0) == order(0)
    assert any(order(seed)[0] != first for seed in range(1, 6))  # the frontier is shuffled


def test_tree_respects_max_depth_and_restores_the_frontier():
    s = make_strategy("tree", StrategyParams(max_depth=2, branching=2))
    seeds = [node(1, 0)]
    nodes = [NodeInfo(2, 1, 1, node(2, 1).example, expanded=1), NodeInfo(3, 1, 1, node(3, 1).example, expanded=2),
             NodeInfo(4, 2, 1, node(4, 2).example, expanded=0)]
    s.restore([NodeInfo(1, 0, 1, seeds[0].example, expanded=2)], nodes, [])
    jobs = []
    while (j := s.next_job()) is not None:
        jobs.append(j.parents[0].id)
    assert jobs == [2]  # node 2 has one expansion left; 3 is done; 4 is at the depth cap
    assert s.exhausted()


def test_naive_always_shows_a_seed():
    s = make_strategy("naive", StrategyParams())
    s.start([node(1, 0), node(2, 0)])
    jobs = [s.next_job() for _ in range(4)]
    assert [j.parents[0].id for j in jobs] == [1, 2, 1, 2] and {j.depth for j in jobs} == {1}


def _sim(parent, children):
    # similarity = how many words a child shares with its parent
    p = set(parent.question.split())
    return np.array([len(p & set(c.question.split())) for c in children], dtype=float)


def test_contrastive_and_similar_pick_opposite_children():
    parent = node(1, 0, q="red apple pie")
    kids = [node(2, 1, q="red apple tart"), node(3, 1, q="blue car"), node(4, 1, q="red wine")]
    picks = {}
    for name in ("contrastive", "similar"):
        s = make_strategy(name, StrategyParams(chains=1, similarity=_sim))
        s.start([parent])
        job = s.next_job()
        assert s.next_job() is None  # the only chain is busy
        s.on_result(job, kids, 10)
        picks[name] = s.next_job().parents[0].id
    assert picks == {"contrastive": 3, "similar": 2}


def test_random_chain_restores_to_the_same_place():
    seeds = [node(1, 0)]
    kids = [node(i, 1) for i in (2, 3, 4, 5)]
    live = make_strategy("random", StrategyParams(seed=3, chains=1))
    live.start(seeds)
    live.on_result(live.next_job(), kids, 42)
    expected = live.next_job().parents[0].id
    restored = make_strategy("random", StrategyParams(seed=3, chains=1))
    restored.restore(seeds, kids, [{"call_id": 42, "chain": 0, "parent_ids": [1], "child_ids": [2, 3, 4, 5]}])
    assert restored.next_job().parents[0].id == expected


def test_a_chain_ends_at_the_depth_cap_so_max_depth_bounds_the_run():
    # (It used to restart from its seed, so --max-depth alone never ended a chain strategy.)
    s = make_strategy("random", StrategyParams(chains=1, max_depth=1))
    s.start([node(1, 0)])
    s.on_result(s.next_job(), [node(2, 1)], 1)
    assert s.next_job() is None and s.exhausted()


def test_an_empty_expansion_is_retried_a_bounded_number_of_times():
    for strategy in ("tree", "novelty"):
        s = make_strategy(strategy, StrategyParams(expand_retries=2, max_depth=3))
        s.start([node(1, 0)])
        calls = 0
        while (job := s.next_job()) is not None:
            calls += 1
            s.on_result(job, [], calls)
            assert calls < 10
        assert calls == 3, strategy  # the first try and two retries
    chain = make_strategy("random", StrategyParams(chains=1, expand_retries=1))
    chain.start([node(1, 0)])
    tries = 0
    while (job := chain.next_job()) is not None and tries < 10:
        tries += 1
        chain.on_result(job, [], tries)
    assert tries == 2 and chain.exhausted()


def test_novelty_expands_the_most_novel_first():
    s = make_strategy("novelty", StrategyParams(seed=0, chains=4))  # a wave of 4: the seed, then 3
    s.start([node(1, 0)])
    job = s.next_job()
    s.on_result(job, [node(2, 1, novelty=0.1), node(3, 1, novelty=0.8), node(4, 1, novelty=0.4)], 1)
    assert [s.next_job().parents[0].id for _ in range(3)] == [3, 4, 2]
