"""Token counting with tiktoken, offline.

tiktoken downloads its encodings on first use, which fails without the internet. The
``bpe-openai`` package ships the same ``cl100k_base`` and ``o200k_base`` rank files; we build
the tiktoken ``Encoding`` from them, with tiktoken's own split patterns and special tokens.
"""

from __future__ import annotations

import binascii
import functools
import gzip
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import tiktoken

_CL100K_MODELS = ("gpt-3.5", "gpt-4-", "gpt-4", "text-embedding-3", "text-embedding-ada")


def encoding_name_for_model(model: str) -> str:
    """o200k_base for the gpt-4o / gpt-4.1 / o-series / gpt-5 families, cl100k_base for older ones.

    Models outside OpenAI's families (a Llama on vLLM, say) count with o200k_base as an
    estimate; the engine corrects reservations with the counts the server reports.
    """
    m = model.lower()
    if m.startswith(("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o")):
        return "o200k_base"
    if m.startswith(_CL100K_MODELS):
        return "cl100k_base"
    return "o200k_base"


def _rank_file(name: str) -> Path:
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("Token counting needs the bpe-openai package: pip install bpe-openai")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / f"{name}.tiktoken.gz"


_RANKS_CACHE_VERSION = 1


def load_ranks(name: str) -> dict[bytes, int]:
    """The rank table of an encoding: token bytes -> rank.

    Parsing the shipped base64 file costs ~0.12 s of CPU (o200k_base); a marshal copy of the
    parsed table loads in ~0.04 s, so it is kept in ``config.cache_dir()``, stamped with the
    source file's size and mtime. A stale, unreadable or damaged copy is rebuilt; a cache
    that cannot be written is skipped (the table is still parsed)."""
    import marshal
    import os

    from treegen.config import cache_dir

    source = _rank_file(name)
    stat = source.stat()
    stamp = (_RANKS_CACHE_VERSION, name, stat.st_size, stat.st_mtime_ns)
    cached = cache_dir() / f"{name}.ranks.marshal"
    try:
        loaded = marshal.loads(cached.read_bytes())
        if isinstance(loaded, tuple) and len(loaded) == 2 and loaded[0] == stamp and isinstance(loaded[1], dict):
            return loaded[1]
    except (OSError, EOFError, ValueError, TypeError):
        pass
    with gzip.open(source, "rb") as fh:
        fields = fh.read().split()
    ranks = dict(zip(map(binascii.a2b_base64, fields[0::2]), map(int, fields[1::2])))
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
        partial.write_bytes(marshal.dumps((stamp, ranks)))
        os.replace(partial, cached)  # whole or absent: a reader never sees half a table
    except OSError:
        pass
    return ranks


@functools.lru_cache(maxsize=4)
def get_encoding(name: str) -> tiktoken.Encoding:
    """Built once per encoding and process, on the first count, not at import: ~0.2 s of CPU
    for o200k_base (the rank table from ``load_ranks``, then tiktoken's own tables)."""
    import tiktoken
    from tiktoken_ext import openai_public

    constructor = {"o200k_base": openai_public.o200k_base, "cl100k_base": openai_public.cl100k_base}[name]
    ranks = load_ranks(name)
    # Take the pattern and special tokens from tiktoken's own definition; only the ranks
    # (the download) come from the local file.
    real_loader = openai_public.load_tiktoken_bpe
    try:
        openai_public.load_tiktoken_bpe = lambda *a, **k: ranks
        params = constructor()
    finally:
        openai_public.load_tiktoken_bpe = real_loader
    return tiktoken.Encoding(**params)


def count_text(text: str, model: str) -> int:
    return len(get_encoding(encoding_name_for_model(model)).encode(text, disallowed_special=()))


@functools.lru_cache(maxsize=512)
def _count_fixed(encoding_name: str, text: str) -> int:
    """Tokens of a text that recurs (a run's system prompt, role names): counted once."""
    return len(get_encoding(encoding_name).encode(text, disallowed_special=()))


def count_messages(messages: Sequence[dict[str, str]], model: str) -> int:
    """Prompt tokens of a chat request, with OpenAI's per-message framing (3 + 3 tokens).

    Only user messages are encoded on every call: system prompts and role names repeat on
    every request of a run and come from a small cache keyed by encoding and text.
    """
    name = encoding_name_for_model(model)
    enc = get_encoding(name)
    total = 3  # every reply is primed with <|start|>assistant<|message|>
    for message in messages:
        total += 3
        varying = message.get("role") == "user"
        for key, value in message.items():
            text = str(value)
            if key == "content" and varying:
                total += len(enc.encode(text, disallowed_special=()))
            else:
                total += _count_fixed(name, text)
            if key == "name":
                total += 1
    return total
