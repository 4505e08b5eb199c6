"""Start-up stays lean (issue 12, goal 6): which heavy packages the CLI and a one-call run import.

Module presence is asserted, not timings (the machine is shared; benchmarks/bench_startup.py
measures the CPU). Each check runs in a fresh interpreter: this test process has imported
much more already.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SEEDS = REPO / "examples" / "seeds.jsonl"

# Packages no `treegen run` of the tree strategy needs (reports, students, metrics, MiniLM,
# trio event loops, pandas through sqlite_utils).
NEVER_ON_RUN = ("pandas", "pyarrow", "networkx", "sklearn", "scipy", "torch", "transformers",
                "matplotlib", "faiss", "trio")
PANDAS = ("pandas", "pyarrow")  # pyarrow comes with pandas (through the store's sqlite_utils, for now)
# ...and what the CLI module itself must not import before a command runs.
NEVER_ON_CLI_IMPORT = NEVER_ON_RUN + ("numpy", "openai", "httpx2", "sqlite_utils", "tiktoken", "rich.progress",
                                      "rich.live", "treegen.engine", "treegen.reports", "treegen.export")


def _modules_after(code: str, tmp_path: Path) -> set[str]:
    """The names in sys.modules (really imported, not masked) after running ``code`` in a
    fresh interpreter with this repository first on the path."""
    out = tmp_path / "modules.json"
    driver = "\n".join([
        "import json, sys",
        f"sys.path.insert(0, {str(REPO)!r})",
        "try:",
        textwrap.indent(textwrap.dedent(code).strip("\n"), "    "),
        "finally:",
        f"    with open({str(out)!r}, 'w') as fh:",
        "        json.dump(sorted(k for k, v in sys.modules.items() if v is not None), fh)",
    ])
    res = subprocess.run([sys.executable, "-c", driver], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.exists(), res.stderr[-3000:]
    return set(json.loads(out.read_text()))


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return [n for n in names if n in modules]


def test_cli_import_loads_no_heavy_package(tmp_path: Path) -> None:
    modules = _modules_after("import treegen.cli", tmp_path)
    assert "treegen.cli" in modules and "typer" in modules  # the driver did import it
    assert _loaded(modules, NEVER_ON_CLI_IMPORT) == []


@pytest.fixture
def sim_base_url():
    """A simulator on loopback in this process: the run under test is another process."""
    from treegen.sim.server import SimConfig, SimServer

    server = SimServer(SimConfig()).start()
    try:
        yield server.base_url
    finally:
        server.stop()


def test_one_call_cli_run_against_a_server_imports_no_heavy_package(tmp_path: Path, sim_base_url: str) -> None:
    # The CLI path: `treegen run SEEDS --base-url URL --max-calls 1 -q`, as a user runs it.
    argv = ["treegen", "run", str(SEEDS), "--backend", "openai", "--base-url", sim_base_url,
            "--model", "gpt-4o-mini", "--max-calls", "1", "-q", "--out", str(tmp_path / "runs"), "--name", "r"]
    modules = _modules_after(f"""
        import os
        os.environ["OPENAI_API_KEY"] = "sk-test"
        sys.argv = {argv!r}
        from treegen.cli import main
        try:
            main()
        except SystemExit as exc:
            assert not exc.code, exc.code
    """, tmp_path)
    assert (tmp_path / "runs" / "r" / "treegen.db").exists()
    calls = sqlite3.connect(tmp_path / "runs" / "r" / "treegen.db").execute("select count(*) from calls").fetchone()
    assert calls == (1,)  # a real one-call run happened
    assert "openai" in modules  # the real SDK made the call
    assert _loaded(modules, tuple(n for n in NEVER_ON_RUN if n not in PANDAS)) == []


def test_one_call_run_does_not_import_pandas(tmp_path: Path, sim_base_url: str) -> None:
    modules = _modules_after(f"""
        import treegen
        treegen.run({str(SEEDS)!r}, backend="openai", base_url={sim_base_url!r}, api_key="sk-test",
                    max_calls=1, out={str(tmp_path / 'runs')!r})
    """, tmp_path)
    assert "treegen.engine" in modules
    assert _loaded(modules, ("pandas", "pyarrow")) == []


def test_one_call_run_on_the_in_process_simulator_imports_no_heavy_package(tmp_path: Path) -> None:
    modules = _modules_after(f"""
        import treegen
        treegen.run({str(SEEDS)!r}, backend="sim", max_calls=1, out={str(tmp_path / 'runs')!r})
    """, tmp_path)
    assert "treegen.sim.server" in modules
    assert _loaded(modules, tuple(n for n in NEVER_ON_RUN if n not in PANDAS)) == []


def test_migrations_on_a_new_database_leave_pandas_and_numpy_importable(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    modules = _modules_after(f"""
        import sqlite3
        from treegen import migrations
        conn = sqlite3.connect({str(db)!r}, isolation_level=None)
        migrations.apply_pending(conn)
        assert migrations.pending_names(conn) == []
        masked_during_import = "pandas" not in sys.modules and "numpy" not in sys.modules
        import numpy  # the mask is gone: both import normally afterwards
        assert masked_during_import
    """, tmp_path)
    assert "sqlite_utils" in modules and "numpy" in modules
    names = [r[0] for r in sqlite3.connect(db).execute("select name from _sqlite_migrations order by id")]
    assert names[0] == "m001_initial" and len(names) >= 6


def test_an_up_to_date_database_is_opened_without_sqlite_utils(tmp_path: Path) -> None:
    from treegen import migrations

    db = tmp_path / "run.db"
    conn = sqlite3.connect(db, isolation_level=None)
    migrations.apply_pending(conn)
    conn.close()
    modules = _modules_after(f"""
        import sqlite3
        from treegen import migrations
        migrations.apply_pending(sqlite3.connect({str(db)!r}, isolation_level=None))
    """, tmp_path)
    assert "treegen.migrations" in modules and "sqlite_utils" not in modules


def test_pending_migrations_are_found_and_applied_like_sqlite_utils_does(tmp_path: Path) -> None:
    import sqlite_utils

    from treegen import migrations

    names = [m.name for m in migrations.migration_set()._migrations]
    last = names[-1]
    # A database made by a treegen one migration older, through sqlite_utils itself.
    old = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    migrations.migration_set().apply(sqlite_utils.Database(old), stop_before=last)
    assert migrations.pending_names(old) == [last]
    migrations.apply_pending(old)
    assert migrations.pending_names(old) == []
    assert [m.name for m in migrations.migration_set().applied(sqlite_utils.Database(old))] == names
    # The same schema as a database migrated in one go.
    new = sqlite3.connect(tmp_path / "new.db", isolation_level=None)
    migrations.apply_pending(new)
    schema = "select type, name, sql from sqlite_master where name not like 'sqlite_%' order by name"
    assert old.execute(schema).fetchall() == new.execute(schema).fetchall()
    # No migrations table (a database sqlite_utils never touched): not "nothing pending".
    assert migrations.pending_names(sqlite3.connect(":memory:")) is None
