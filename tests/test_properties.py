"""Properties over hostile input: the loaders raise only treegen's own errors, parse_reply never raises.

Whatever bytes a seed or data file holds, ``load_seeds`` and ``load_examples`` either return
examples or raise a ``TreegenError`` (the CLI turns that into a message and exit 2); an
IndexError, RecursionError or UnicodeEncodeError would be a crash with a traceback.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from treegen.errors import TreegenError
from treegen.parsing import parse_reply
from treegen.task import Example, load_examples, load_seeds

# Files are written under one folder per session (hypothesis calls a test many times, and a
# function-scoped tmp_path would be shared across those calls anyway).
_counter = itertools.count()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


def _load_all(path: Path) -> None:
    for load in (load_seeds, load_examples):
        try:
            examples, fmt = load(path)
        except TreegenError as exc:
            assert str(path) in str(exc)  # every refusal names the file
            continue
        assert examples and all(isinstance(e, Example) for e in examples)
        for e in examples:  # what was accepted can be stored and printed
            e.to_json().encode("utf-8")
            assert e.label in e.options and e.infer_format() == fmt


def _write(folder: Path, content: bytes) -> Path:
    path = folder / f"f{next(_counter)}.jsonl"
    path.write_bytes(content)
    return path


# JSON-ish values: the shapes a seed line may have, including wrong types and odd strings.
_text = st.text(max_size=12)  # includes lone surrogates: written as \ud800 escapes by json.dumps
_scalar = st.none() | st.booleans() | st.integers() | st.floats() | _text
_value = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3), max_leaves=8)
_row = st.fixed_dictionaries(
    {},
    optional={
        "question": _text | _value,
        "context": st.none() | _text | _value,
        "options": st.lists(_text | st.booleans(), max_size=4) | _value,
        "label": _text | st.booleans() | _value,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_treegen_errors(folder: Path, content: bytes) -> None:
    _load_all(_write(folder, content))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(_row | _value, min_size=1, max_size=4),
    bom=st.booleans(),
    line_end=st.sampled_from(["\n", "\r\n"]),
    corrupt=st.none() | st.tuples(st.integers(min_value=0), st.binary(min_size=1, max_size=4)),
)
def test_json_lines_of_any_shape_raise_only_treegen_errors(folder: Path, rows, bom, line_end, corrupt) -> None:
    content = (line_end.join(json.dumps(r) for r in rows) + line_end).encode()
    if corrupt is not None:  # splice a few arbitrary bytes in somewhere
        at = corrupt[0] % (len(content) + 1)
        content = content[:at] + corrupt[1] + content[at:]
    _load_all(_write(folder, (b"\xef\xbb\xbf" if bom else b"") + content))


_JSONISH = st.text(alphabet='{}[]",:\\ \nabq0-.eE' + "\ud800\u00e9", max_size=200)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300) | _JSONISH)
def test_parse_reply_never_raises(text: str) -> None:
    for cand in parse_reply(text):
        assert (cand.obj is None) == (cand.error is not None)
        assert cand.error in (None, "invalid-json", "truncated")
        assert cand.obj is None or isinstance(cand.obj, dict)
        cand.raw.encode("utf-8")  # storable as it is


@settings(max_examples=100, deadline=None)
@given(content=st.binary(max_size=300))
def test_parse_reply_never_raises_on_bytes(content: bytes) -> None:
    assert isinstance(parse_reply(content), list)
