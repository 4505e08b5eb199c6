"""The fact-check corpus: an SQLite FTS5 index of passages, searched with BM25 (``--facts``).

A corpus is a JSONL file, one passage a line: ``{"text": ..., "title": ..., "id": ...}``
(``text`` required, the others optional). Rows of the unified dataset format are accepted
too: their ``context`` is the passage, else their ``question``. The index is built once
beside the run, in its own database file (``CORPUS_DB_NAME``, not the run's ``treegen.db``),
so its SQL lives in this module; the run database's SQL stays in ``treegen.store``.

Building streams the file, validates every line (blank lines skipped; a bad line stops the
build with its line number and the fix), inserts all passages in one transaction into a
temporary file and moves it into place with ``os.replace``: a refused or interrupted build
leaves the previous index, or none, never half of one. The source's SHA-256 and row count are
recorded in a ``meta`` table; building again from an unchanged file reuses the index.

Searching turns a candidate's text into a query that FTS5 cannot misread: words only (every
FTS5 operator character dropped), each quoted (so AND, OR, NOT, NEAR are plain words),
stopwords skipped, the rest ORed; passages come back best first by BM25.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
from pathlib import Path
from typing import Any, Iterator

from treegen.errors import DiskFullError, InputError, SeedFileError
from treegen.task import YESNO_OPTIONS, Example, iter_jsonl

CORPUS_DB_NAME = "facts.db"  # the index's file name beside a run
CORPUS_VERSION = 1  # bump when the index's layout changes: an older index is rebuilt
MAX_QUERY_TERMS = 64  # a long candidate's first distinct content words; BM25 needs no more
# Tokenizer: Porter stemming over unicode61 ("secreted" finds "secretion"), accents folded.
_TOKENIZE = "porter unicode61 remove_diacritics 2"
_WORD = re.compile(r"\w+")
_SURROGATE = re.compile("[\ud800-\udfff]")
_CHUNK = 1 << 20

# Common English function words: they match nearly every passage and only slow BM25 down.
STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her
here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not
now of off on once only or other our ours ourselves out over own same she should so some such than that the
their theirs them themselves then there these they this those through to too under until up very was we
were what when where which while who whom why will with would you your yours yourself yourselves
true false
""".split())


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def corpus_query(text: str, max_terms: int = MAX_QUERY_TERMS) -> str | None:
    """An FTS5 MATCH expression for ``text``: its distinct non-stopword words, each quoted,
    ORed; None when nothing is left to search for.

    Only word characters survive (``\\w``), so no FTS5 syntax (quotes, ``*``, ``^``, ``:``,
    parentheses, ``-``, ``+``) can reach the query; quoting makes AND/OR/NOT/NEAR words.
    """
    terms: list[str] = []
    seen: set[str] = set()
    for word in _WORD.findall(text.lower()):
        if word in STOPWORDS or word in seen or (len(word) < 2 and not word.isdigit()):
            continue
        seen.add(word)
        terms.append('"' + word.replace('"', '""') + '"')
        if len(terms) >= max_terms:
            break
    return " OR ".join(terms) if terms else None


class Corpus:
    """An opened corpus index. Use ``Corpus.build`` (builds or reuses) or ``Corpus.open``."""

    def __init__(self, conn: sqlite3.Connection, path: Path, source_sha256: str, n_passages: int):
        self._conn = conn
        self.path = path
        self.source_sha256 = source_sha256
        self.n_passages = n_passages

    # ------------------------------------------------------------ build and open
    @classmethod
    def build(cls, corpus_jsonl: str | Path, db_path: str | Path) -> "Corpus":
        """The index of ``corpus_jsonl`` at ``db_path``: reused when it was built from a file
        with the same SHA-256, else (re)built atomically. InputError (a SeedFileError naming
        the line) for a bad corpus file; nothing is written then."""
        source = Path(corpus_jsonl)
        db_path = Path(db_path)
        if not db_path.parent.is_dir():
            raise InputError(f"Cannot build the corpus index at {db_path}: the folder {db_path.parent} does not exist. Create it or give another path.")
        # Read the file through the seed reader's checks first: a missing, empty, binary or
        # oversized file is refused with its fix before anything is hashed or written.
        _first_line(source)
        digest = file_sha256(source)
        existing = _stored_meta(db_path)
        if existing is not None and existing.get("source_sha256") == digest and existing.get("version") == str(CORPUS_VERSION):
            return cls.open(db_path)
        tmp = db_path.with_name(f"{db_path.name}.{os.getpid()}.part")
        _unlink(tmp)
        try:
            n = _write_index(source, tmp, digest)
            os.replace(tmp, db_path)
        finally:
            _unlink(tmp)
            _unlink(Path(str(tmp) + "-journal"))
        corpus = cls.open(db_path)
        assert corpus.n_passages == n
        return corpus

    @classmethod
    def open(cls, db_path: str | Path) -> "Corpus":
        """An index built before, read-only. InputError when it is missing or not an index."""
        db_path = Path(db_path)
        if not db_path.is_file():
            raise InputError(f"No corpus index at {db_path}. Build it from the corpus JSONL with Corpus.build (treegen run --facts CORPUS.jsonl).")
        meta = _stored_meta(db_path)
        if meta is None:
            raise InputError(f"{db_path} is not a treegen corpus index (or it is damaged). Delete it; it is rebuilt from the corpus JSONL.")
        conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        return cls(conn, db_path, meta.get("source_sha256", ""), int(meta.get("rows", "0")))

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Corpus":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ search
    def search(self, query: str, k: int = 3) -> list[str]:
        """The texts of the ``k`` passages that match ``query`` best (BM25), best first.
        Any text is a safe query: it is reduced to quoted words (``corpus_query``)."""
        match = corpus_query(query)
        if match is None or k <= 0:
            return []
        rows = self._conn.execute(
            "SELECT text FROM passages WHERE passages MATCH ? ORDER BY bm25(passages, 1.0, 0.5) LIMIT ?",
            (match, int(k)),
        ).fetchall()
        return [r[0] for r in rows]


def evidence_for(corpus: Corpus, example: Example, k: int = 3, *, max_chars: int | None = None) -> list[str]:
    """Up to ``k`` passages of evidence for a candidate, best first. An open-book candidate's
    own context counts as evidence and comes first (then ``k - 1`` retrieved passages); the
    query is the question and options, never the label. ``max_chars`` cuts each passage."""
    if k <= 0:
        return []
    out: list[str] = []
    if example.context:
        out.append(example.context)
    options = [] if tuple(example.options) == YESNO_OPTIONS else list(example.options)
    query = " ".join([example.question, *options])
    for passage in corpus.search(query, k + 1):  # one spare: the context may be in the corpus
        if len(out) >= k:
            break
        if passage not in out:
            out.append(passage)
    if max_chars is not None:
        out = [p[:max_chars] for p in out]
    return out[:k]


# ---------------------------------------------------------------- building


_FIX = ('Write one JSON object a line with the passage in "text", e.g. {"text": "The Nile is 6,650 km long.", '
        '"title": "Nile"} ("title" and "id" are optional), or rows with a "context" or "question".')


def _first_line(source: Path) -> None:
    for _ in iter_jsonl(source, what="corpus"):
        return


def _passages(source: Path) -> Iterator[tuple[str, str | None, str | None]]:
    """(text, title, id) of every non-blank line; SeedFileError with the line for a bad one."""
    for lineno, obj in iter_jsonl(source, what="corpus"):
        yield _passage(source, lineno, obj)


def _passage(source: Path, lineno: int, obj: Any) -> tuple[str, str | None, str | None]:
    if not isinstance(obj, dict):
        raise SeedFileError(str(source), f"expected a JSON object, got {type(obj).__name__}", _FIX, lineno)
    for field in ("text", "context", "question"):
        value = obj.get(field)
        if value is None:
            continue
        if not isinstance(value, str):
            raise SeedFileError(str(source), f'"{field}" must be a string, not {type(value).__name__}', _FIX, lineno)
        if value.strip():
            text = value.strip()
            break
        if field == "text":
            raise SeedFileError(str(source), 'the "text" is empty', "Give the passage's text, or remove the line.", lineno)
    else:
        raise SeedFileError(str(source), 'the line has no "text" (the passage)', _FIX, lineno)
    title = obj.get("title")
    if title is not None and not isinstance(title, str):
        raise SeedFileError(str(source), f'"title" must be a string, not {type(title).__name__}', _FIX, lineno)
    ident = obj.get("id")
    if ident is not None and (isinstance(ident, bool) or not isinstance(ident, (str, int))):
        raise SeedFileError(str(source), f'"id" must be a string or an integer, not {type(ident).__name__}', _FIX, lineno)
    if _SURROGATE.search(text) or (title and _SURROGATE.search(title)):
        raise SeedFileError(str(source), "the line holds a lone surrogate escape (\\ud800-\\udfff)",
                            "Write the character itself, or a valid \\uXXXX\\uXXXX surrogate pair.", lineno)
    return text, title, None if ident is None else str(ident)


def _write_index(source: Path, db_path: Path, digest: str) -> int:
    """Write a complete index of ``source`` to the new file ``db_path``; the passage count."""
    conn = sqlite3.connect(str(db_path), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("BEGIN")
        conn.execute(f"CREATE VIRTUAL TABLE passages USING fts5(text, title, ext_id UNINDEXED, tokenize='{_TOKENIZE}')")
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.executemany("INSERT INTO passages (text, title, ext_id) VALUES (?, ?, ?)", _passages(source))
        n = conn.execute("SELECT count(*) FROM passages").fetchone()[0]
        if n == 0:
            raise SeedFileError(str(source), "the corpus holds no passages, only blank lines", "Add passages, one JSON object a line.")
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [
            ("version", str(CORPUS_VERSION)), ("source_sha256", digest), ("rows", str(n)), ("source", str(source)),
        ])
        conn.execute("INSERT INTO passages(passages) VALUES ('optimize')")  # one b-tree: faster queries
        conn.execute("COMMIT")
        return int(n)
    except sqlite3.OperationalError as exc:
        if "full" in str(exc).lower():
            raise DiskFullError(f"The disk filled up while building the corpus index {db_path}: free space and run again.") from None
        raise
    finally:
        conn.close()


def _stored_meta(db_path: Path) -> dict[str, str] | None:
    """The ``meta`` table of an index file, or None when there is none (missing, not SQLite,
    not an index)."""
    if not db_path.is_file():
        return None
    try:
        conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        rows = conn.execute("SELECT key, value FROM meta").fetchall()
        conn.execute("SELECT count(*) FROM passages WHERE rowid = 1").fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return {str(k): str(v) for k, v in rows}


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
