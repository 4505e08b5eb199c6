"""Speed guards (issue 12): what the CLI imports at start, the client's plain-JSON reply path,
and the chain strategies' similarity from vectors the nodes carry. Cheap and deterministic."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from treegen.client import AttemptFailure, parse_completion
from treegen.strategies import NodeInfo, StrategyParams, make_strategy
from treegen.task import Example

HEAVY = ("torch", "transformers", "openai", "pandas", "pyarrow", "matplotlib", "networkx", "sqlite_utils",
         "sklearn", "rich", "treegen.sim.server", "treegen.export", "treegen.report_html")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


@pytest.mark.parametrize("module", ["treegen.cli_reports", "treegen.cli_sim", "treegen.cli_students",
                                    "treegen.cli_metrics", "treegen.render"])
def test_cli_area_modules_import_nothing_heavy(module):
    loaded = _modules_after(f"import {module}")
    assert module in loaded
    assert not {m for m in HEAVY if m in loaded}


def test_the_cli_imports_no_model_sdk_or_dataframe_library():
    loaded = _modules_after("import treegen.cli")
    assert "treegen.cli" in loaded
    assert not {m for m in ("torch", "transformers", "openai", "pandas", "pyarrow", "matplotlib", "networkx")
                if m in loaded}


def test_the_client_module_does_not_import_the_sdk_until_a_client_is_made():
    assert "openai" not in _modules_after("import treegen.client")


def test_export_help_lists_the_exporters_formats():
    from treegen.cli_reports import EXPORT_FORMATS
    from treegen.export import FORMATS

    assert EXPORT_FORMATS == FORMATS


def test_sim_server_stays_replaceable_by_a_stand_in(monkeypatch):
    import treegen.cli_sim as cli_sim
    from treegen.sim.server import SimServer

    assert cli_sim.SimServer is SimServer  # lazily resolved, the real class


def _completion(**over):
    body = {"id": "x", "model": "m", "system_fingerprint": "treegen-sim",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "[1]"}}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 3}}}
    body.update(over)
    return json.dumps(body).encode()


def test_a_completion_body_is_read_without_the_sdk_models():
    reply = parse_completion(_completion(), 200, "req-1", "http://h/v1")
    assert (reply.text, reply.finish_reason, reply.prompt_tokens, reply.completion_tokens, reply.cached_tokens,
            reply.request_id, reply.model, reply.simulated) == ("[1]", "stop", 11, 7, 3, "req-1", "m", True)
    bare = parse_completion(_completion(usage=None, system_fingerprint=None), 200, None, "http://h/v1")
    assert (bare.prompt_tokens, bare.completion_tokens, bare.cached_tokens, bare.simulated) == (None, None, 0, False)


@pytest.mark.parametrize("body, kind, says", [
    (b"<!DOCTYPE html><html>login</html>", "bad-body", "HTML"),
    (b"", "bad-body", "an empty body"),
    (b'{"object": "list"}', "bad-body", "not a JSON chat completion"),
    (b'{"choices": []}', "server", "no choices"),
])
def test_a_body_that_is_not_a_completion_is_a_clear_failure(body, kind, says):
    with pytest.raises(AttemptFailure) as info:
        parse_completion(body, 200, "r", "http://h/v1")
    assert info.value.kind == kind and says in info.value.message


def _node(i: int, depth: int, q: str, vector: list[float] | None) -> NodeInfo:
    ex = Example(question=q, options=("yes", "no"), label="yes")
    return NodeInfo(i, depth, 1, ex, vector=None if vector is None else np.asarray(vector, dtype=np.float32))


@pytest.mark.parametrize("name, expected", [("contrastive", 3), ("similar", 2)])
def test_chain_picks_from_the_vectors_nodes_carry_without_embedding(name, expected):
    def no_embedding(parent, children):
        raise AssertionError("the event loop must not embed: the nodes carry their vectors")

    s = make_strategy(name, StrategyParams(chains=1, similarity=no_embedding))
    assert s.uses_embeddings
    parent = _node(1, 0, "a", [1.0, 0.0])
    s.start([parent])
    job = s.next_job()
    kids = [_node(2, 1, "b", [0.9, 0.436]), _node(3, 1, "c", [0.0, 1.0]), _node(4, 1, "d", [0.6, 0.8])]
    s.on_result(job, kids, 10)
    assert s.next_job().parents[0].id == expected


def test_chain_falls_back_to_the_callback_for_nodes_without_vectors():
    calls = []

    def sim(parent, children):
        calls.append(len(children))
        return np.array([0.1, 0.9])

    s = make_strategy("similar", StrategyParams(chains=1, similarity=sim))
    s.start([_node(1, 0, "a", None)])
    s.on_result(s.next_job(), [_node(2, 1, "b", None), _node(3, 1, "c", None)], 5)
    assert calls == [2] and s.next_job().parents[0].id == 3


def test_vectors_do_not_change_node_equality():
    a, b = _node(1, 0, "a", [1.0, 0.0]), _node(1, 0, "a", [0.0, 1.0])
    assert a == b and hash(a) == hash(b) and "vector" not in repr(a)
