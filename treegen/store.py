"""Run databases: one SQLite file per run, ``<run folder>/treegen.db``, opened through sqlite-utils.

The database is the complete record of a run; every report is computed from it.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlite_utils

from treegen import migrations
from treegen.errors import RunNotFoundError
from treegen.task import Example

DB_NAME = "treegen.db"


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def open_db(path: str | Path) -> sqlite_utils.Database:
    """Open (creating if needed) a run database and bring its schema up to date."""
    db = sqlite_utils.Database(str(path))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives kill -9 of the process
    db.execute("PRAGMA foreign_keys=ON")
    migrations.apply(db)
    return db


def resolve_run_db(path: str | Path) -> Path:
    """The database of a run given its folder or the database file itself."""
    p = Path(path)
    candidate = p / DB_NAME if p.is_dir() else p
    if not candidate.is_file():
        raise RunNotFoundError(
            f"No treegen run at {path}: expected a run folder holding {DB_NAME}. "
            "List your runs with `ls runs/`, or start one with `treegen run SEEDS.jsonl`."
        )
    with candidate.open("rb") as fh:
        if fh.read(16) != b"SQLite format 3\x00":
            raise RunNotFoundError(f"{candidate} is not a SQLite database, so not a treegen run.")
    return candidate


def open_run(path: str | Path) -> sqlite_utils.Database:
    """Open an existing run (folder or database path); RunNotFoundError if there is none."""
    db = open_db(resolve_run_db(path))
    if not db["runs"].exists() or db["runs"].count == 0:
        raise RunNotFoundError(f"{path} is a SQLite database but holds no treegen run.")
    return db


def run_row(db: sqlite_utils.Database) -> dict[str, Any]:
    """The run's row with ``config`` parsed from JSON."""
    row = next(db["runs"].rows, None)
    if row is None:
        raise RunNotFoundError("This database holds no treegen run.")
    row = dict(row)
    row["config"] = json.loads(row["config"] or "{}")
    return row


def node_example(row: dict[str, Any]) -> Example:
    return Example(
        question=row["question"],
        options=tuple(json.loads(row["options"])),
        label=row["label"],
        context=row["context"],
    )


def run_examples(db: sqlite_utils.Database, include_seeds: bool = False) -> list[Example]:
    """The accepted examples of a run in creation order (seeds too if asked)."""
    statuses = ("accepted", "seed") if include_seeds else ("accepted",)
    marks = ",".join("?" for _ in statuses)
    rows = db.query(f"select * from nodes where status in ({marks}) order by id", statuses)
    return [node_example(r) for r in rows]
