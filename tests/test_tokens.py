"""tiktoken works offline from the rank files bpe-openai ships, and they are the real ones."""

from __future__ import annotations

import gzip
import hashlib
import inspect
import re

import pytest
from tiktoken_ext import openai_public

from treegen.tokens import _rank_file, count_messages, count_text, encoding_name_for_model, get_encoding


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_rank_files_match_tiktokens_expected_hash(name):
    # tiktoken pins the sha256 of each rank file it would download; the shipped copy must match.
    source = inspect.getsource(getattr(openai_public, name))
    expected = re.search(r'expected_hash="([0-9a-f]{64})"', source).group(1)
    data = gzip.decompress(_rank_file(name).read_bytes())
    assert hashlib.sha256(data).hexdigest() == expected


def test_known_counts_and_round_trip():
    enc = get_encoding("cl100k_base")
    assert enc.encode("hello world") == [15339, 1917]  # the published cl100k ids
    text = "Is a kilogram of feathers as heavy as a kilogram of iron? ünïcödé 🙂"
    for name in ("o200k_base", "cl100k_base"):
        assert get_encoding(name).decode(get_encoding(name).encode(text)) == text
    assert count_text("", "gpt-4o-mini") == 0


def test_model_families_and_message_framing():
    assert encoding_name_for_model("gpt-4o-mini-2024-07-18") == "o200k_base"
    assert encoding_name_for_model("gpt-3.5-turbo") == "cl100k_base"
    assert encoding_name_for_model("llama3:8b") == "o200k_base"  # an estimate, corrected by the server's counts
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}]
    body = sum(count_text(m["role"], "gpt-4o") + count_text(m["content"], "gpt-4o") for m in messages)
    assert count_messages(messages, "gpt-4o") == body + 3 * len(messages) + 3


def test_fixed_parts_are_counted_once_and_counts_do_not_change():
    from treegen.tokens import _count_fixed

    system = {"role": "system", "content": "Write new, varied, correct examples like the ones shown, not copies. (test-unique)"}
    users = [{"role": "user", "content": f'{{"question":"Is {i} prime?","options":["True","False"],"label":"True"}}\nWrite 5 new examples.'}
             for i in range(50)]
    before = _count_fixed.cache_info()
    counts = [count_messages([system, u], "gpt-4o-mini") for u in users]
    after = _count_fixed.cache_info()
    # the system text and the two role names are encoded once, not 50 times
    assert after.misses - before.misses <= 3
    assert after.hits - before.hits >= 3 * 50 - 3
    # and the cache changes no count: the same as encoding every part on every call
    for u, got in zip(users, counts):
        body = sum(count_text(m["role"], "gpt-4o") + count_text(m["content"], "gpt-4o") for m in (system, u))
        assert got == body + 3 * 2 + 3


def test_rank_table_cache_is_written_reused_and_rebuilt_when_damaged(tmp_path, monkeypatch):
    from treegen import tokens

    monkeypatch.setenv("TREEGEN_CACHE_DIR", str(tmp_path / "cache"))
    parsed = tokens.load_ranks("cl100k_base")
    cached = tmp_path / "cache" / "cl100k_base.ranks.marshal"
    assert cached.is_file()
    assert len(parsed) == 100256 and parsed[b"hello"] == 15339
    # Reused: a copy whose table was changed (stamp intact) is what comes back.
    import marshal

    stamp, table = marshal.loads(cached.read_bytes())
    table[b"hello"] = -1
    cached.write_bytes(marshal.dumps((stamp, table)))
    assert tokens.load_ranks("cl100k_base")[b"hello"] == -1
    # Damaged or stale: parsed again from the shipped file, and the copy rewritten.
    for bad in (b"not marshal", marshal.dumps(((0, "cl100k_base", 1, 1), table)), cached.read_bytes()[:1000]):
        cached.write_bytes(bad)
        assert tokens.load_ranks("cl100k_base") == parsed
        assert marshal.loads(cached.read_bytes())[1] == parsed


def test_rank_table_without_a_writable_cache_is_still_parsed(tmp_path, monkeypatch):
    from treegen import tokens

    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("TREEGEN_CACHE_DIR", str(blocker / "cache"))
    assert tokens.load_ranks("cl100k_base")[b"hello"] == 15339
    assert blocker.read_text() == "a file where the cache folder would go"
