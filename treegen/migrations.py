"""Schema of a run database: append-only named migrations, each applied in a transaction.

Never edit or reorder a migration that has shipped: add a new one at the end. Databases made
by any earlier treegen are brought up to date when they are opened.
"""

from __future__ import annotations

import functools
import sqlite3
import sys
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import sqlite_utils

# sqlite_utils is imported only when a migration must run (a new database, or one made by an
# older treegen): it costs ~0.1 s of CPU at start-up, and pulls in pandas and numpy when
# installed (see import_sqlite_utils). An up-to-date database is checked with plain sqlite3.
MIGRATION_SET = "treegen"
MIGRATIONS_TABLE = "_sqlite_migrations"  # sqlite_utils.Migrations.migrations_table
_MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = []


def _migration(fn: Callable[[sqlite_utils.Database], None]) -> Callable[[sqlite_utils.Database], None]:
    """Registers a migration in order, named after its function, as ``sqlite_utils.Migrations()`` does."""
    _MIGRATIONS.append(fn)
    return fn


@_migration
def m001_initial(db: sqlite_utils.Database) -> None:
    db.table("runs").create(
        {
            "id": str,  # run id, also the folder name
            "created_at": str,
            "updated_at": str,
            "status": str,  # running | completed | stopped: budget reached | interrupted | failed
            "stop_reason": str,
            "simulated": int,  # 1 when every call went to the simulator
            "task_format": str,
            "strategy": str,
            "model": str,
            "base_url": str,
            "seed": int,
            "elapsed_seconds": float,  # summed over every session of the run (resume)
            "config": str,  # JSON: generation settings, caps, prices (never the API key)
        },
        pk="id",
    )
    db.table("calls").create(
        {
            "id": int,
            "created_at": str,
            "parent_node_ids": str,  # JSON list: the in-context example(s) shown
            "depth": int,  # depth of the children this call makes
            "strategy": str,
            "chain": int,  # for chain strategies (random, contrastive, similar): which chain
            "attempt": int,  # 1 for the first HTTP attempt of a request, 2 for its first retry...
            "request_key": str,  # the same for every attempt of one logical request
            "model": str,
            "status": str,  # pending | ok | error | timeout | lost
            "http_status": int,
            "error": str,
            "request_id": str,
            "finish_reason": str,
            "prompt_tokens": int,
            "completion_tokens": int,
            "cached_tokens": int,
            "reserved_prompt_tokens": int,
            "reserved_tokens": int,  # worst case held back before sending
            "reserved_micro": int,  # worst-case cost held back before sending, micro-dollars
            "cost_micro": int,  # reconciled cost from the usage the server reported; NULL if unknown
            "duration_ms": int,
            "simulated": int,
            "response_text": str,  # persisted before anything is counted: no paid reply is lost
            "n_parsed": int,
            "n_accepted": int,
        },
        pk="id",
        not_null={"created_at", "status", "attempt"},
    )
    db.table("nodes").create(
        {
            "id": int,
            "parent_id": int,
            "root_id": int,
            "depth": int,
            "call_id": int,
            "strategy": str,
            "status": str,  # seed | accepted | rejected
            "reason": str,  # why rejected: invalid-json, label-not-in-options, duplicate, ...
            "question": str,
            "context": str,
            "options": str,  # JSON list
            "label": str,
            "dedup_key": str,
            "raw": str,  # the candidate as the model wrote it, for rejected ones
            "cost_share_micro": int,  # the call's cost split over the candidates it produced
            "expanded": int,  # number of expansion calls that finished with this node in context
            "novelty": float,  # 1 - max cosine similarity to the nodes accepted before it
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("call_id", "calls", "id")],
    )
    db.table("nodes").create_index(["status", "depth"])
    db.table("nodes").create_index(["dedup_key"])
    db.table("nodes").create_index(["parent_id"])
    db.table("calls").create_index(["status"])


@_migration
def m002_metrics(db: sqlite_utils.Database) -> None:
    # Quality figures from `treegen metrics`, appended on every measurement (history kept);
    # `treegen compare` reads name, value and created_at.
    db.table("metrics").create(
        {
            "id": int,
            "created_at": str,
            "reference": str,  # task name, or file:<path> for a reference file
            "name": str,  # distinct_1, self_bleu, mauve, contamination_rate, drift_depth_2, ...
            "value": float,
            "params": str,  # JSON: parameters of the measure (K, sample sizes, embedder, student, seed)
            "n_items": int,
            "simulated": int,  # 1 when the measured run used the simulator
        },
        pk="id",
    )
    db.table("metrics").create_index(["name", "created_at"])


@_migration
def m003_student_results(db: sqlite_utils.Database) -> None:
    # One row per (trained student, evaluated dataset): `treegen eval` and `treegen compare`.
    db.table("student_results").create(
        {
            "id": int,
            "created_at": str,
            "source": str,  # run | data | human: what the student was trained on
            "source_ref": str,  # run id, data file path, or the human task name
            "student": str,  # lexical | minilm-frozen | minilm-ft
            "student_path": str,  # the saved student folder
            "task": str,  # the task the student was trained for (its ID task)
            "dataset": str,  # the task evaluated here (the ID task itself, or an OOD one)
            "role": str,  # id | ood
            "split": str,  # test | dev
            "accuracy": float,
            "n": int,  # examples evaluated
            "majority": float,  # majority-class accuracy on the same split (the PGR floor)
            "n_train": int,
            "seed": int,
            "seconds": float,  # evaluation time
            "train_seconds": float,
            "simulated": int,  # 1 when trained on simulated data
            "note": str,
        },
        pk="id",
    )
    db.table("student_results").create_index(["student", "task", "dataset"])


# The spent rule as m004 wrote it into its views (a migration's text never changes afterwards,
# so it is not the store's live constant): known cost, else the reservation when billing is unknown.
_SPENT_M004 = ("case when cost_micro is not null then cost_micro "
               "when status in ('timeout', 'lost') then coalesce(reserved_micro, 0) else 0 end")


@_migration
def m004_requests_views(db: sqlite_utils.Database) -> None:
    # Each call's request beside its response, so a run can be audited and replayed: the
    # messages are stored once in ``prompts`` (deduplicated by hash) and referenced.
    db.table("prompts").create({"hash": str, "messages": str}, pk="hash")
    db.table("calls").add_column("prompt_hash", str, fk="prompts", fk_col="hash")
    db.table("calls").add_column("params", str)  # JSON: max_tokens, temperature, seed, response_format dialect
    db.table("calls").add_column("base_url", str)
    # parent_id is a node of the same tree (declared for tools such as Datasette).
    if not any(fk.column == "parent_id" for fk in db.table("nodes").foreign_keys):
        db.table("nodes").add_foreign_key("parent_id", "nodes", "id")
    db.create_view("accepted_examples", """
        select id, depth, parent_id, root_id, strategy, question, context, options, label,
               cost_share_micro, novelty, created_at
        from nodes where status = 'accepted' order by id""")
    db.create_view("cost_by_depth", f"""
        select depth, count(*) as calls,
               sum({_SPENT_M004}) as spent_micro,
               sum(coalesce(n_accepted, 0)) as accepted
        from calls group by depth order by depth""")
    db.create_view("cost_by_strategy", f"""
        select strategy, count(*) as calls,
               sum({_SPENT_M004}) as spent_micro,
               sum(coalesce(n_accepted, 0)) as accepted
        from calls group by strategy order by strategy""")
    db.create_view("calls_by_status", """
        select status, count(*) as calls, sum(coalesce(prompt_tokens, 0)) as prompt_tokens,
               sum(coalesce(completion_tokens, 0)) as completion_tokens
        from calls group by status order by calls desc""")



@_migration
def m005_batches(db: sqlite_utils.Database) -> None:
    # Batch mode (treegen.batching): one row per Batch job sent to the provider, and on each
    # call the wave it was sent in and its custom_id in the batch's input file.
    db.table("batches").create(
        {
            "id": int,
            "wave": int,  # the run's wave number (1, 2, ...); the provider's metadata says treegen_wave
            "provider_batch_id": str,
            "input_file_id": str,
            "output_file_id": str,
            "error_file_id": str,
            "status": str,  # the provider's: validating | in_progress | finalizing | completed | ...
            "requests": int,
            "completed": int,
            "failed": int,
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
    )
    db.table("batches").create_index(["wave"])
    db.table("calls").add_column("batch_wave", int)
    db.table("calls").add_column("custom_id", str)
    db.table("calls").create_index(["batch_wave"])


@_migration
def m006_quality_modules(db: sqlite_utils.Database) -> None:
    # Quality in the loop: a call's purpose (generate, verify, attributes, harder, judge) so
    # every module's spend is counted apart; a verify call names the generation call whose
    # candidates it checked. A node records the operation that made it (generate | harder)
    # and the verifier's votes.
    db.table("calls").add_column("purpose", str)  # NULL in older runs: generate
    db.table("calls").add_column("for_call_id", int)
    db.table("nodes").add_column("operation", str)  # NULL in older runs: generate
    db.table("nodes").add_column("verdict", str)  # JSON: {"votes": [...], "outcome": ...}
    db.table("calls").create_index(["purpose"])
    db.create_view("cost_by_purpose", f"""
        select coalesce(purpose, 'generate') as purpose, count(*) as calls,
               sum({_SPENT_M004}) as spent_micro,
               sum(coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0)) as tokens,
               sum(coalesce(n_accepted, 0)) as accepted
        from calls group by coalesce(purpose, 'generate') order by purpose""")


@_migration
def m007_drop_dedup_key_index(db: sqlite_utils.Database) -> None:
    # No query looks nodes up by dedup_key (the run's keys are read once, by status, on
    # resume); the index only cost writes: each reply's nodes landed on as many random index
    # pages, 0.15 -> 0.07 ms of CPU per reply's commit (benchmarks/results/cpu.md, session 5).
    db.execute("drop index if exists idx_nodes_dedup_key")


# What sqlite_utils imports only when installed, to map their types' columns (pd.Timestamp,
# np.int64, ...): treegen's migrations never give it such values, and they cost ~0.3 s (pandas)
# and ~0.15 s (numpy) of CPU at start-up.
_OPTIONAL_FOR_SQLITE_UTILS = ("pandas", "numpy")


def import_sqlite_utils() -> Any:
    """``import sqlite_utils`` without letting it import pandas or numpy, unless loaded already.

    The mask (``sys.modules[name] = None`` makes ``import name`` raise ImportError, which
    sqlite_utils expects when they are not installed) lives for this import only: ``import
    pandas`` works normally afterwards, and sqlite_utils then lacks only the pandas/numpy
    column types, which treegen does not use.
    """
    if "sqlite_utils" in sys.modules:
        return sys.modules["sqlite_utils"]
    masked = [name for name in _OPTIONAL_FOR_SQLITE_UTILS if name not in sys.modules]
    for name in masked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import sqlite_utils
    finally:
        for name in masked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    return sqlite_utils


@functools.lru_cache(maxsize=1)
def migration_set() -> sqlite_utils.Migrations:
    """The ``sqlite_utils.Migrations`` set of every migration above, in order."""
    sqlite_utils = import_sqlite_utils()
    migrations = sqlite_utils.Migrations(MIGRATION_SET)
    for fn in _MIGRATIONS:
        migrations()(fn)
    return migrations


def __getattr__(name: str) -> Any:
    # ``from treegen.migrations import migrations`` still gives the set, built on first use.
    if name == "migrations":
        return migration_set()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def pending_names(conn: sqlite3.Connection) -> list[str] | None:
    """Names of the migrations not yet applied, read with plain sqlite3; None when the
    migrations table is missing or not in the shape sqlite_utils keeps it in (then
    ``Migrations.apply`` has work to do on the table itself)."""
    try:
        columns = conn.execute(f"PRAGMA table_info({MIGRATIONS_TABLE})").fetchall()
        if [c[1] for c in columns if c[5]] != ["id"] or "migration_set" not in {c[1] for c in columns}:
            return None
        applied = {r[0] for r in conn.execute(
            f"select name from {MIGRATIONS_TABLE} where migration_set = ?", [MIGRATION_SET])}
    except sqlite3.DatabaseError:
        return None
    return [fn.__name__ for fn in _MIGRATIONS if fn.__name__ not in applied]


def apply_pending(conn: sqlite3.Connection) -> bool:
    """Bring the database on ``conn`` up to date; imports sqlite_utils only when there is work.
    True when a migration ran."""
    if pending_names(conn) == []:
        return False
    migration_set().apply(import_sqlite_utils().Database(conn))
    return True


def apply(db: sqlite_utils.Database) -> None:
    migration_set().apply(db)
