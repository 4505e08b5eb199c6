"""RunStore: the one owner of a run's SQL. Real SQLite files, built through the store."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import sqlite_utils

from factories import SCENARIO, build_run
from treegen.errors import RunDamagedError, RunNotFoundError
from treegen.migrations import migrations
from treegen.store import RunStore, call_spent_micro


def test_migrations_are_applied_once_and_recorded(tmp_path: Path) -> None:
    """Opening a database twice applies nothing the second time; every migration is named."""
    path = build_run(tmp_path / "r")
    db = sqlite_utils.Database(path)
    applied = [m.name for m in migrations.applied(db)]
    assert applied[0] == "m001_initial" and len(applied) == len(set(applied)) >= 4
    db.close()
    RunStore.open(path).close()
    db = sqlite_utils.Database(path)
    assert [m.name for m in migrations.applied(db)] == applied
    assert not migrations.pending(db)
    assert {"runs", "calls", "nodes", "metrics", "student_results", "prompts"} <= set(db.table_names())
    assert {"accepted_examples", "cost_by_depth", "cost_by_strategy", "calls_by_status"} <= set(db.view_names())


def test_a_run_from_before_m007_loses_the_dedup_key_index_and_keeps_its_keys(tmp_path: Path) -> None:
    """m007 drops an index no query used; a resume still reads the run's duplicate keys."""
    path = build_run(tmp_path / "r")
    conn = sqlite3.connect(path)
    conn.execute("create index idx_nodes_dedup_key on nodes (dedup_key)")  # as m001 left it
    conn.execute("delete from _sqlite_migrations where name = 'm007_drop_dedup_key_index'")
    conn.commit()
    keys = {r[0] for r in conn.execute("select dedup_key from nodes where status in ('seed', 'accepted')")}
    conn.close()
    with RunStore.open(path) as store:
        assert store.seen_keys() == keys and keys
    conn = sqlite3.connect(path)
    indexes = {r[0] for r in conn.execute("select name from sqlite_master where type = 'index'")}
    assert "idx_nodes_dedup_key" not in indexes and "idx_nodes_status_depth" in indexes
    conn.close()


def test_the_spent_rule_is_the_same_in_sql_and_python(tmp_path: Path) -> None:
    store = RunStore.open(build_run(tmp_path / "r"), readonly=True)
    assert store.ledger_totals()["micro"] == SCENARIO["spent_micro"]
    assert sum(call_spent_micro(c) for c in store.calls()) == SCENARIO["spent_micro"]
    assert store.ledger_totals()["tokens"] == SCENARIO["tokens_used"]
    # The view people browse agrees too.
    assert sum(r["spent_micro"] for r in store._rows("select * from cost_by_depth")) == SCENARIO["spent_micro"]


def test_a_sqlite_file_that_is_not_a_run_is_never_modified(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("create table notes (id integer primary key, text text)")
    conn.execute("insert into notes (text) values ('mine')")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    for readonly in (True, False):
        with pytest.raises(RunNotFoundError, match="not a treegen run"):
            RunStore.open(path, readonly=readonly)
    assert path.read_bytes() == before
    assert not Path(str(path) + "-wal").exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_database_is_refused_with_a_recovery_hint(tmp_path: Path, damage: str) -> None:
    path = build_run(tmp_path / "r")
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 3])
    else:
        path.write_bytes(data[:100] + b"\x00garbage" * 2000)
    with pytest.raises((RunDamagedError, RunNotFoundError)) as info:
        store = RunStore.open(path, readonly=True)
        store.calls()
        store.nodes()
    assert "damaged" in str(info.value) or "not a treegen run" in str(info.value)


def test_read_only_open_never_writes(tmp_path: Path) -> None:
    path = build_run(tmp_path / "r")
    store = RunStore.open(path, readonly=True)
    with pytest.raises(sqlite3.OperationalError):
        store.conn.execute("update runs set status = 'x'")
    assert store.run()["id"] == "run-test"


def test_each_call_keeps_its_request(tmp_path: Path) -> None:
    store = RunStore.open(build_run(tmp_path / "r"))
    messages = [{"role": "user", "content": "Write 3 examples"}]
    a = store.insert_call({"created_at": "t", "status": "pending", "attempt": 1}, messages=messages)
    b = store.insert_call({"created_at": "t", "status": "pending", "attempt": 2}, messages=messages)
    ha, hb = store.call(a)["prompt_hash"], store.call(b)["prompt_hash"]
    assert ha == hb  # stored once, referenced twice
    assert store.prompt_messages(ha) == messages
    assert store._one("select count(*) from prompts") == 1
    assert json.loads(json.dumps(store.run()["config"]))["k"] == 3
