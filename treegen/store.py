"""The run database: one SQLite file per run, ``<run folder>/treegen.db``, owned by ``RunStore``.

Every SQL statement treegen runs against a run lives here (the schema itself lives in
``migrations``). The engine, the reports, the students, the metrics and the tests all read and
write a run through this class, after simonw/llm's ``LogStore``.

The one rule for what a run has *spent* (``SPENT_MICRO_SQL``): the reconciled cost of every
call whose billing is known, plus the whole reservation of calls whose billing is unknown
(a timeout, a call lost in a crash). Calls still pending are in flight: held, not spent.

Read-only commands open the file read-only (``RunStore.open(path, readonly=True)``): they
never migrate, never switch the journal mode, never write. A SQLite file that is not a
treegen run is refused before anything touches it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from treegen import migrations
from treegen.errors import DiskFullError, RunDamagedError, RunNotFoundError
from treegen.task import Example, dedup_key

DB_NAME = "treegen.db"


class RunStatus:
    """What ``runs.status`` holds."""

    RUNNING = "running"
    COMPLETED = "completed"
    BUDGET = "stopped: budget reached"
    INTERRUPTED = "interrupted"
    FAILED = "failed"


class CallStatus:
    """What ``calls.status`` holds."""

    PENDING = "pending"  # written before sending; a crash leaves it, resume marks it lost
    OK = "ok"
    ERROR = "error"  # the server answered with an error: nothing billed
    TIMEOUT = "timeout"  # no answer: billing unknown, the reservation stays counted
    LOST = "lost"  # the process died while it was in flight: billing unknown
    REFUSED = "refused"  # never reached a server (connection refused): nothing billed
    ANOMALY = "usage-anomaly"  # the server reported more usage than was asked for: billed as reported
    BATCHED = "batched"  # part of a Batch job still in flight (reserved, not settled)


class NodeStatus:
    SEED = "seed"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


UNKNOWN_BILLING = (CallStatus.TIMEOUT, CallStatus.LOST)
IN_FLIGHT = (CallStatus.PENDING, CallStatus.BATCHED)
TREE_STATUSES = (NodeStatus.SEED, NodeStatus.ACCEPTED)

# The "spent" rule, once, as SQL over a ``calls`` row, and as a Python function below.
SPENT_MICRO_SQL = (
    "case when cost_micro is not null then cost_micro "
    "when status in ('timeout', 'lost') then coalesce(reserved_micro, 0) else 0 end"
)
SPENT_TOKENS_SQL = (
    "case when prompt_tokens is not null or completion_tokens is not null "
    "then coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0) "
    "when status in ('timeout', 'lost') then coalesce(reserved_tokens, 0) else 0 end"
)


# Calls that ask for examples (and may make nodes), as opposed to the quality modules' calls
# (verify, attributes, judge): strategy restore and request numbering look at these only.
GENERATION_SQL = "coalesce(purpose, 'generate') in ('generate', 'harder')"


def call_spent_micro(call: dict[str, Any]) -> int:
    """What one call counts against the dollar cap (the same rule as ``SPENT_MICRO_SQL``)."""
    if call["cost_micro"] is not None:
        return int(call["cost_micro"])
    if call["status"] in UNKNOWN_BILLING:
        return int(call["reserved_micro"] or 0)
    return 0


def call_spent_tokens(call: dict[str, Any]) -> int:
    """What one call counts against the token cap (the same rule as ``SPENT_TOKENS_SQL``)."""
    if call["prompt_tokens"] is not None or call["completion_tokens"] is not None:
        return int((call["prompt_tokens"] or 0) + (call["completion_tokens"] or 0))
    if call["status"] in UNKNOWN_BILLING:
        return int(call["reserved_tokens"] or 0)
    return 0


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


NODE_COLUMNS = (
    "parent_id", "root_id", "depth", "call_id", "strategy", "status", "reason", "question", "context",
    "options", "label", "dedup_key", "raw", "cost_share_micro", "expanded", "novelty", "created_at",
    "operation", "verdict",
)
_INSERT_NODE = f"insert into nodes ({', '.join(NODE_COLUMNS)}) values ({', '.join('?' for _ in NODE_COLUMNS)})"
_MARK_EXPANDED = "update nodes set expanded = coalesce(expanded, 0) + 1 where id = ?"
# Prompt hashes a store remembers as committed (insert_call skips writing them again).
KNOWN_PROMPTS = 4096


@lru_cache(maxsize=256)
def _insert_sql(table: str, cols: tuple[str, ...]) -> str:
    """The same text for the same columns: sqlite3 then reuses its prepared statement."""
    return f"insert into {table} ({', '.join(cols)}) values ({', '.join('?' for _ in cols)})"


@lru_cache(maxsize=256)
def _update_call_sql(cols: tuple[str, ...]) -> str:
    return f"update calls set {', '.join(f'{k} = ?' for k in cols)} where id = ?"


def node_row(ex: Example | None, *, parent_id: int | None, root_id: int | None, depth: int,
             call_id: int | None, strategy: str, status: str, reason: str | None, raw: str | None = None,
             cost_share: int = 0, novelty: float | None = None, key: str | None = None,
             operation: str | None = None, verdict: str | None = None,
             created_at: str | None = None) -> dict[str, Any]:
    """A ``nodes`` row for an example (or for a reply that held none: ``ex`` None).

    ``created_at``: the time to record (the nodes of one reply share it); now by default."""
    return {
        "parent_id": parent_id, "root_id": root_id, "depth": depth, "call_id": call_id,
        "strategy": strategy, "status": status, "reason": reason,
        "question": ex.question if ex else None, "context": ex.context if ex else None,
        "options": options_json(ex.options) if ex else None,
        "label": ex.label if ex else None, "dedup_key": (key or dedup_key(ex)) if ex else None,
        "raw": raw, "cost_share_micro": cost_share, "expanded": 0, "novelty": novelty,
        "created_at": created_at or utcnow(), "operation": operation or "generate", "verdict": verdict,
    }


def options_json(options: Sequence[str]) -> str:
    """The ``options`` column: a JSON list (cached by value: most examples repeat theirs)."""
    if isinstance(options, tuple):
        return _options_json_cached(options)
    return json.dumps(list(options), ensure_ascii=False)


@lru_cache(maxsize=4096)
def _options_json_cached(options: tuple[str, ...]) -> str:
    return json.dumps(list(options), ensure_ascii=False)


def node_example(row: dict[str, Any]) -> Example:
    return Example(
        question=row["question"],
        options=tuple(json.loads(row["options"])),
        label=row["label"],
        context=row["context"],
    )


def resolve_run_db(path: str | Path) -> Path:
    """The database of a run given its folder or the database file itself."""
    p = Path(path)
    candidate = p / DB_NAME if p.is_dir() else p
    if not candidate.is_file():
        raise RunNotFoundError(
            f"No treegen run at {path}: expected a run folder holding {DB_NAME}. "
            "List your runs with `treegen runs`, or start one with `treegen run SEEDS.jsonl`."
        )
    try:
        with candidate.open("rb") as fh:
            header = fh.read(16)
    except OSError as exc:
        raise RunNotFoundError(f"Cannot read {candidate}: {exc.strerror}.") from None
    if header != b"SQLite format 3\x00":
        raise RunDamagedError(candidate, "it does not start with a SQLite header")
    return candidate


@contextmanager
def _database_errors(path: Path | str) -> Iterator[None]:
    """sqlite3's errors as treegen's: a damaged file, a full disk."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        text = str(exc).lower()
        if "disk is full" in text or "database or disk is full" in text:
            raise DiskFullError(f"disk full while writing {path}: free space, then resume the run") from None
        if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "readonly" in text):
            raise
        if "malformed" in text or "not a database" in text or "file is encrypted" in text or "corrupt" in text:
            raise RunDamagedError(Path(path), str(exc)) from None
        raise


class _Transaction:
    """``begin immediate`` ... ``commit``, or ``rollback`` on any exception, sqlite3's errors
    mapped as ``_database_errors`` maps them. A plain class rather than two nested generator
    context managers: three of these run per call on the hot path."""

    __slots__ = ("conn", "path")

    def __init__(self, conn: sqlite3.Connection, path: Path):
        self.conn = conn
        self.path = path

    def __enter__(self) -> sqlite3.Connection:
        with _database_errors(self.path):
            self.conn.execute("begin immediate")
        return self.conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        with _database_errors(self.path):
            if exc_type is not None:
                self.conn.execute("rollback")
                if isinstance(exc, sqlite3.DatabaseError):
                    with _database_errors(self.path):
                        raise exc
                return  # the exception goes on
            self.conn.execute("commit")


class RunStore:
    """One run database. Construct with ``RunStore.create`` or ``RunStore.open``."""

    def __init__(self, conn: sqlite3.Connection, path: Path, readonly: bool = False):
        self.conn = conn
        self.conn.row_factory = sqlite3.Row
        self.path = path
        self.readonly = readonly
        self._tables: set[str] | None = None
        self._known_prompts: dict[str, None] = {}  # insertion-ordered: an LRU of committed prompt hashes

    # ---- opening ---------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, run: dict[str, Any], seeds: Sequence[Example]) -> "RunStore":
        """A new run database with its ``runs`` row and its seed nodes, in one transaction."""
        path = Path(path)
        store = cls(sqlite3.connect(str(path), isolation_level=None), path)
        store._writable_setup()
        with store.transaction():
            cols = list(run)
            store.conn.execute(
                f"insert into runs ({', '.join(cols)}) values ({', '.join('?' for _ in cols)})",
                [run[c] for c in cols])
            for ex in seeds:
                row = node_row(ex, parent_id=None, root_id=None, depth=0, call_id=None,
                               strategy=run.get("strategy") or "", status=NodeStatus.SEED, reason=None)
                nid = store.conn.execute(_INSERT_NODE, [row[c] for c in NODE_COLUMNS]).lastrowid
                store.conn.execute("update nodes set root_id = ? where id = ?", [nid, nid])
        return store

    @classmethod
    def open(cls, path: str | Path, readonly: bool = False) -> "RunStore":
        """An existing run (its folder or its database file).

        Refuses, untouched, a file that is not a SQLite database, a damaged one, and a SQLite
        database that is not a treegen run.
        """
        db_path = resolve_run_db(path)
        with _database_errors(db_path):
            if readonly:
                conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, isolation_level=None)
            else:
                conn = sqlite3.connect(str(db_path), isolation_level=None)
            store = cls(conn, db_path, readonly=readonly)
            try:
                store._check_is_run(path)
                if not readonly:
                    store._writable_setup()
            except BaseException:
                conn.close()
                raise
        return store

    @classmethod
    def open_results(cls, folder: str | Path, readonly: bool = False) -> "RunStore":
        """The database that holds student results: a run's, or one made for --data/--human."""
        folder = Path(folder)
        db_path = folder / DB_NAME if folder.suffix != ".db" else folder
        if db_path.exists():
            try:
                return cls.open(db_path, readonly=readonly)
            except RunNotFoundError:
                pass  # a results-only database (--data, --human) holds no run row
            with _database_errors(db_path):
                conn = (sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, isolation_level=None) if readonly
                        else sqlite3.connect(str(db_path), isolation_level=None))
                store = cls(conn, db_path, readonly=readonly)
                if not store.has_table("student_results"):
                    conn.close()
                    raise RunNotFoundError(f"{db_path} is a SQLite database but holds no treegen results.")
            if not readonly:
                store._writable_setup()
            return store
        if readonly:
            raise RunNotFoundError(f"No results at {folder}: train a student there first (`treegen train`).")
        db_path.parent.mkdir(parents=True, exist_ok=True)
        store = cls(sqlite3.connect(str(db_path), isolation_level=None), db_path)
        store._writable_setup()
        return store

    def _check_is_run(self, given: str | Path) -> None:
        try:
            names = {r[0] for r in self.conn.execute("select name from sqlite_master where type in ('table','view')")}
        except sqlite3.DatabaseError as exc:
            raise RunDamagedError(self.path, str(exc)) from None
        if "runs" not in names or "nodes" not in names or "calls" not in names:
            raise RunNotFoundError(
                f"{given} is a SQLite database but not a treegen run (it has no runs, nodes and calls "
                "tables); it was not modified. Point at a run folder made by `treegen run`."
            )
        try:
            if self.conn.execute("select count(*) from runs").fetchone()[0] == 0:
                raise RunNotFoundError(f"{given} is a treegen database but holds no run.")
            self.conn.execute("pragma quick_check(1)").fetchone()
        except sqlite3.DatabaseError as exc:
            raise RunDamagedError(self.path, str(exc)) from None

    def _writable_setup(self) -> None:
        with _database_errors(self.path):
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives kill -9
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.execute("PRAGMA busy_timeout=5000")
            if migrations.apply_pending(self.conn):  # sqlite_utils only when a migration must run (start-up)
                # A new schema writes hundreds of KB of pages to the WAL: fold them into the
                # database now, while there is room, rather than on a resume after a full disk.
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._tables = None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def transaction(self) -> "_Transaction":
        """Everything inside lands together or not at all (``with store.transaction() as c``)."""
        return _Transaction(self.conn, self.path)

    def has_table(self, name: str) -> bool:
        if self._tables is None:
            self._tables = {r[0] for r in self.conn.execute("select name from sqlite_master where type in ('table','view')")}
        return name in self._tables

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with _database_errors(self.path):
            return [dict(r) for r in self.conn.execute(sql, params)]

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with _database_errors(self.path):
            row = self.conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    # ---- the run ---------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """The run's row with ``config`` parsed from JSON."""
        rows = self._rows("select * from runs limit 1")
        if not rows:
            raise RunNotFoundError(f"{self.path} holds no treegen run.")
        row = rows[0]
        row["config"] = json.loads(row["config"] or "{}")
        return row

    @property
    def run_dir(self) -> Path:
        return self.path.parent

    def save_config(self, config_json: str) -> None:
        with self.transaction() as c:
            c.execute("update runs set config = ?, updated_at = ?", [config_json, utcnow()])

    def set_status(self, status: str, reason: str | None, elapsed_seconds: float | None = None) -> None:
        with self.transaction() as c:
            if elapsed_seconds is None:
                c.execute("update runs set status = ?, stop_reason = ?, updated_at = ?", [status, reason, utcnow()])
            else:
                c.execute("update runs set status = ?, stop_reason = ?, updated_at = ?, elapsed_seconds = ?",
                          [status, reason, utcnow(), elapsed_seconds])

    def add_elapsed(self, seconds: float) -> None:
        """Working time of a session, added as it goes so a killed process's time still counts."""
        with self.transaction() as c:
            c.execute("update runs set elapsed_seconds = coalesce(elapsed_seconds, 0) + ?, updated_at = ?",
                      [seconds, utcnow()])

    def mark_simulated(self) -> None:
        with self.transaction() as c:
            c.execute("update runs set simulated = 1")

    # ---- what the ledger needs -------------------------------------------------------
    def ledger_totals(self) -> dict[str, Any]:
        """Spent money and tokens by the one rule, calls made, accepted examples, elapsed time."""
        row = self._rows(
            f"select coalesce(sum({SPENT_MICRO_SQL}), 0) as micro, coalesce(sum({SPENT_TOKENS_SQL}), 0) as tokens, "
            "count(*) as calls from calls")[0]
        row["accepted"] = self.count_nodes(NodeStatus.ACCEPTED)
        row["elapsed"] = float(self._one("select coalesce(elapsed_seconds, 0) from runs") or 0.0)
        return row

    def mark_lost_calls(self) -> int:
        """Calls left pending by a crash: the server may have billed them; keep them counted."""
        with self.transaction() as c:
            return c.execute(
                "update calls set status = 'lost', cost_micro = null, "
                "error = 'the run stopped before the reply was recorded; counted at its reservation' "
                "where status = 'pending'").rowcount

    # ---- nodes -----------------------------------------------------------------------
    def count_nodes(self, status: str) -> int:
        return int(self._one("select count(*) from nodes where status = ?", [status]))

    def seen_keys(self) -> set[str]:
        return {r["dedup_key"] for r in self._rows(
            "select dedup_key from nodes where status in ('seed', 'accepted')")}

    def max_accepted_depth(self) -> int:
        return int(self._one("select coalesce(max(depth), 0) from nodes where status = 'accepted'") or 0)

    def max_tree_depth(self) -> int:
        return int(self._one("select coalesce(max(depth), 0) from nodes where status in ('seed', 'accepted')") or 0)

    def nodes(self, statuses: Iterable[str] = TREE_STATUSES) -> list[dict[str, Any]]:
        """Node rows with the given statuses, in creation order."""
        statuses = tuple(statuses)
        marks = ",".join("?" for _ in statuses)
        return self._rows(f"select * from nodes where status in ({marks}) order by id", statuses)

    def node(self, node_id: int) -> dict[str, Any] | None:
        rows = self._rows("select * from nodes where id = ?", [node_id])
        return rows[0] if rows else None

    def examples(self, include_seeds: bool = False) -> list[Example]:
        """The accepted examples of a run in creation order (seeds too if asked)."""
        statuses = TREE_STATUSES if include_seeds else (NodeStatus.ACCEPTED,)
        return [node_example(r) for r in self.nodes(statuses)]

    def node_status_counts(self) -> dict[str, int]:
        return {r["status"]: r["n"] for r in self._rows("select status, count(*) as n from nodes group by status")}

    def rejection_reasons(self) -> dict[str, int]:
        return {
            (r["reason"] or "unknown"): r["n"]
            for r in self._rows("select reason, count(*) as n from nodes where status = 'rejected' "
                                "group by reason order by n desc, reason")
        }

    def node_groups(self, key: str) -> list[dict[str, Any]]:
        """Nodes counted and costed by (``key``, status), ``key`` being depth or strategy."""
        if key not in ("depth", "strategy"):
            raise ValueError(key)
        return self._rows(f"select {key} as k, status, count(*) as n, coalesce(sum(cost_share_micro), 0) as cost "
                          f"from nodes group by {key}, status")

    def candidate_counts(self) -> list[dict[str, Any]]:
        return self._rows("select call_id, status, count(*) as n from nodes where call_id is not null "
                          "group by call_id, status")

    def mark_expanded(self, node_ids: Sequence[int]) -> None:
        with self.transaction() as c:
            c.executemany(_MARK_EXPANDED, [(i,) for i in node_ids])
            c.execute("update runs set updated_at = ?", [utcnow()])

    # ---- calls -----------------------------------------------------------------------
    def calls(self) -> list[dict[str, Any]]:
        return self._rows("select * from calls order by id")

    def call(self, call_id: int) -> dict[str, Any] | None:
        rows = self._rows("select * from calls where id = ?", [call_id])
        return rows[0] if rows else None

    def call_history(self) -> list[dict[str, Any]]:
        """Every answered call with the ids of the children it had accepted (strategy restore)."""
        children: dict[int, list[int]] = {}
        for r in self._rows("select call_id, id from nodes where status = 'accepted' and call_id is not null order by id"):
            children.setdefault(r["call_id"], []).append(r["id"])
        return [
            {"call_id": c["id"], "chain": c["chain"], "parent_ids": json.loads(c["parent_node_ids"] or "[]"),
             "child_ids": children.get(c["id"], [])}
            for c in self._rows(f"select id, chain, parent_node_ids from calls where status = 'ok' and {GENERATION_SQL} order by id")
        ]

    def request_counts(self) -> dict[tuple[int, ...], int]:
        """How many distinct requests were made with each set of in-context parents."""
        return {
            tuple(json.loads(r["parent_node_ids"] or "[]")): r["n"]
            for r in self._rows(f"select parent_node_ids, count(distinct request_key) as n from calls where {GENERATION_SQL} "
                                "group by parent_node_ids")
        }

    def count_requests(self) -> int:
        """The number the next logical request gets: past every request made so far (every
        attempt of one request shares its request_key, ``r<number>``; older runs used random
        keys, counted instead)."""
        numbered = self._one("select max(cast(substr(request_key, 2) as integer)) from calls "
                             f"where request_key glob 'r[0-9]*' and {GENERATION_SQL}")
        distinct = int(self._one(f"select count(distinct request_key) from calls where {GENERATION_SQL}") or 0)
        return max(distinct, int(numbered) + 1 if numbered is not None else 0)

    def unjudged_calls(self) -> list[dict[str, Any]]:
        """Answered calls whose candidates were never decided (the process died in between)."""
        return self._rows("select * from calls where status in ('ok', 'usage-anomaly') and n_parsed is null "
                          f"and response_text is not null and {GENERATION_SQL} order by id")

    def count_purpose(self, purpose: str) -> int:
        """Calls (attempts) a module has made so far in the run."""
        return int(self._one("select count(*) from calls where purpose = ?", [purpose]) or 0)

    def last_module_reply(self, purpose: str) -> str | None:
        """The newest answered reply of a run-level module call (``attributes``), if any."""
        return self._one("select response_text from calls where purpose = ? and status = 'ok' "
                         "and response_text is not null order by id desc limit 1", [purpose])

    def module_replies(self, for_call_id: int, purpose: str) -> list[dict[str, Any]]:
        """The answered calls a module (``verify``) made about one generation call, in order."""
        return self._rows("select * from calls where for_call_id = ? and purpose = ? and status = 'ok' "
                          "and response_text is not null order by id", [for_call_id, purpose])

    def insert_call(self, row: dict[str, Any], messages: Sequence[dict[str, Any]] | None = None) -> int:
        """A new call row (``pending`` before it is sent) with its request, committed at once.

        The messages are stored once per distinct prompt (``prompts``), referenced by hash; a
        prompt this store committed recently (a retry, a repeated request) is not written again.
        """
        cols = tuple(row)
        values = list(row.values())
        digest = text = None
        if messages is not None:
            text = json.dumps(list(messages), ensure_ascii=False, sort_keys=True)
            digest = hashlib.sha256(text.encode()).hexdigest()[:32]
            if "prompt_hash" in row:
                values[cols.index("prompt_hash")] = digest
            else:
                cols += ("prompt_hash",)
                values.append(digest)
        sql = _insert_sql("calls", cols)
        with self.transaction() as c:
            if digest is not None and digest not in self._known_prompts:
                c.execute("insert or ignore into prompts (hash, messages) values (?, ?)", [digest, text])
            call_id = int(c.execute(sql, values).lastrowid or 0)
        if digest is not None:
            self._remember_prompt(digest)
        return call_id

    def _remember_prompt(self, digest: str) -> None:
        """Prompts known to be committed, most recent last, at most ``KNOWN_PROMPTS`` of them."""
        known = self._known_prompts
        known.pop(digest, None)
        known[digest] = None
        if len(known) > KNOWN_PROMPTS:
            del known[next(iter(known))]

    def prompt_messages(self, prompt_hash: str) -> list[dict[str, Any]] | None:
        """The messages a call sent (for audit and replay)."""
        text = self._one("select messages from prompts where hash = ?", [prompt_hash]) if self.has_table("prompts") else None
        return None if text is None else json.loads(text)

    def update_call(self, call_id: int, fields: dict[str, Any]) -> None:
        with self.transaction() as c:
            self._update_call(c, call_id, fields)

    @staticmethod
    def _update_call(c: sqlite3.Connection, call_id: int, fields: dict[str, Any]) -> None:
        values = list(fields.values())
        values.append(call_id)
        c.execute(_update_call_sql(tuple(fields)), values)

    def record_reply(self, call_id: int, call_fields: dict[str, Any], nodes: Sequence[dict[str, Any]],
                     expanded_ids: Sequence[int], mark_simulated: bool = False) -> list[int]:
        """A reply, its usage and every candidate node in one transaction; returns the new node ids.

        ``runs.updated_at`` is not written here (it was one more statement and page per reply):
        ``add_elapsed`` writes it as working time passes (every couple of seconds in a run),
        and ``set_status`` at the end; the newest call and node times are in their own rows."""
        ids: list[int] = []
        with self.transaction() as c:
            if mark_simulated:
                c.execute("update runs set simulated = 1")
            self._update_call(c, call_id, call_fields)
            if nodes:
                # One statement for all the nodes: rowids of an INTEGER PRIMARY KEY table are
                # max + 1 each (a b-tree's last key: cheap at any size), and this transaction
                # holds the only writer.
                last = int(c.execute("select coalesce(max(id), 0) from nodes").fetchone()[0])
                c.executemany(_INSERT_NODE, [[row[k] for k in NODE_COLUMNS] for row in nodes])
                ids = list(range(last + 1, last + 1 + len(nodes)))
            if len(expanded_ids) == 1:
                c.execute(_MARK_EXPANDED, (expanded_ids[0],))
            elif expanded_ids:
                c.executemany(_MARK_EXPANDED, [(i,) for i in expanded_ids])
        return ids

    def latest_timestamps(self) -> list[str | None]:
        return [self._one(f"select max(created_at) from {t}") for t in ("calls", "nodes")]

    # ---- metrics and student results -------------------------------------------------
    def insert_metrics(self, rows: Sequence[dict[str, Any]]) -> int:
        self._insert_all("metrics", rows)
        return len(rows)

    def metrics(self, name: str | None = None) -> list[dict[str, Any]]:
        """Rows of ``metrics`` (every measurement, oldest first), of one measure if named."""
        if not self.has_table("metrics"):
            return []
        if name is None:
            return self._rows("select * from metrics order by id")
        return self._rows("select * from metrics where name = ? order by id", [name])

    def latest_metric(self, name: str) -> float | None:
        if not self.has_table("metrics"):
            return None
        value = self._one("select value from metrics where name = ? order by created_at desc, rowid desc limit 1", [name])
        return None if value is None else float(value)

    def insert_student_results(self, rows: Sequence[dict[str, Any]]) -> None:
        self._insert_all("student_results", rows)

    def student_results(self, task: str | None = None, student: str | None = None,
                        student_path: str | None = None, split: str | None = None,
                        max_n: int | None = None) -> list[dict[str, Any]]:
        if not self.has_table("student_results"):
            return []
        where: list[str] = []
        params: list[Any] = []
        for col, value in (("task", task), ("student", student), ("student_path", student_path), ("split", split)):
            if value is not None:
                where.append(f"{col} = ?")
                params.append(value)
        if max_n is not None:
            where.append("n <= ?")
            params.append(max_n)
        sql = "select * from student_results" + (" where " + " and ".join(where) if where else "") + " order by id"
        return self._rows(sql, params)

    def _insert_all(self, table: str, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        cols = list(rows[0])
        with self.transaction() as c:
            c.executemany(f"insert into {table} ({', '.join(cols)}) values ({', '.join('?' for _ in cols)})",
                          [[r.get(k) for k in cols] for r in rows])

    # ---- batches -----------------------------------------------------------------------
    # Batch mode (treegen.batching): the Batch jobs of a run and their requests' call rows.
    def insert_batch(self, row: dict[str, Any]) -> int:
        """A Batch job the provider created (its id recorded before it is polled), committed."""
        cols = list(row)
        with self.transaction() as c:
            return int(c.execute(f"insert into batches ({', '.join(cols)}) values ({', '.join('?' for _ in cols)})",
                                 [row[k] for k in cols]).lastrowid or 0)

    def update_batch(self, batch_id: int, fields: dict[str, Any]) -> None:
        cols = list(fields)
        with self.transaction() as c:
            c.execute(f"update batches set {', '.join(f'{k} = ?' for k in cols)} where id = ?",
                      [fields[k] for k in cols] + [batch_id])

    def batches(self) -> list[dict[str, Any]]:
        """The run's Batch jobs, oldest first, each with its calls counted by status."""
        if not self.has_table("batches"):
            return []
        rows = self._rows("select * from batches order by id")
        counts: dict[int, dict[str, int]] = {}
        for r in self._rows("select batch_wave, status, count(*) as n from calls where batch_wave is not null "
                            "group by batch_wave, status"):
            counts.setdefault(r["batch_wave"], {})[r["status"]] = r["n"]
        for row in rows:
            row["calls_by_status"] = counts.get(row["wave"], {})
        return rows

    def batch_for_wave(self, wave: int) -> dict[str, Any] | None:
        rows = self._rows("select * from batches where wave = ? order by id desc limit 1", [wave])
        return rows[0] if rows else None

    def batched_calls(self) -> list[dict[str, Any]]:
        """Calls sent (or about to be sent) in a Batch job whose reply is not recorded yet."""
        return self._rows("select * from calls where status = ? order by id", [CallStatus.BATCHED])

    def max_batch_wave(self) -> int:
        if not self.has_table("batches"):
            return 0
        return int(self._one("select max(coalesce((select max(batch_wave) from calls), 0), "
                             "coalesce((select max(wave) from batches), 0))") or 0)

    def spent_by_mode(self) -> dict[str, int]:
        """Spent micro-dollars of Batch calls and of synchronous calls (the one spent rule)."""
        if not self.has_table("batches"):
            return {"batch": 0, "sync": int(self._one(f"select coalesce(sum({SPENT_MICRO_SQL}), 0) from calls") or 0)}
        row = self._rows(
            f"select coalesce(sum(case when batch_wave is not null then {SPENT_MICRO_SQL} else 0 end), 0) as batch, "
            f"coalesce(sum(case when batch_wave is null then {SPENT_MICRO_SQL} else 0 end), 0) as sync from calls")[0]
        return {"batch": int(row["batch"]), "sync": int(row["sync"])}
