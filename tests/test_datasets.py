"""The benchmark registry, loading with fallbacks, seeds, `data list` and `data fetch`."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import threading

import pytest
from typer.testing import CliRunner

from treegen import datasets
from treegen.cli import app
from treegen.cli_students import register
from treegen.errors import DatasetError

if "train" not in {c.name for c in app.registered_commands}:
    register(app)
runner = CliRunner()


def test_registry_groups_and_ood():
    assert datasets.GROUPS["mcqa_5"] == ["csqa", "riddle_sense"]
    assert len(datasets.TASKS) == 10
    assert datasets.ood_tasks("csqa") == ["riddle_sense"]
    assert datasets.ood_tasks("pubmedqa") == ["boolq_open", "bioasq"]
    assert datasets.ood_tasks("yesno_close/boolq") == ["strategyqa", "creak"]
    assert datasets.task_group("boolq_open") == "yesno_open"


def test_bare_boolq_is_ambiguous():
    with pytest.raises(DatasetError, match="boolq_open .* or boolq_close"):
        datasets.get_task("boolq")
    with pytest.raises(DatasetError, match="Unknown task 'nope'"):
        datasets.get_task("nope")


def test_load_split_labels_and_fallback(datasets_dir):
    ex, fmt, note = datasets.load_split("boolq_close", "test", datasets_dir, limit=50)
    assert fmt.name == "yesno_close" and len(ex) == 50
    assert {e.label for e in ex} <= {"True", "False"}  # JSON booleans normalised
    ex, fmt, note = datasets.load_split("piqa", "train", datasets_dir, limit=5)
    assert "no train split here: using dev" in note and fmt.name == "mcqa_2"
    assert not datasets.has_train("piqa", datasets_dir) and datasets.has_train("csqa", datasets_dir)


def test_csqa_rows_with_repeated_options_are_kept(datasets_dir):
    # The published test split has 1,241 rows, 15 of them with a repeated option: all are scored.
    ex, _fmt, note = datasets.load_split("csqa", "test", datasets_dir)
    assert len(ex) == 1241 and note == ""
    assert any(len(set(e.options)) < len(e.options) for e in ex)


def test_data_dir_precedence_and_missing(tmp_path, monkeypatch, datasets_dir):
    monkeypatch.setenv("TREEGEN_DATA_DIR", str(datasets_dir))
    assert datasets.data_dir() == datasets_dir
    assert datasets.data_dir(tmp_path) == tmp_path  # the flag wins
    monkeypatch.setenv("TREEGEN_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(DatasetError, match="treegen data fetch"):
        datasets.data_dir()


def test_sample_seeds_reproducible(datasets_dir):
    a = datasets.sample_seeds("csqa", 3, 42, datasets_dir)
    b = datasets.sample_seeds("csqa", 3, 42, datasets_dir)
    c = datasets.sample_seeds("csqa", 3, 7, datasets_dir)
    assert a == b and a != c and len(a) == 3
    assert all(len(e.options) == 5 for e in a)


def test_majority_floor_by_hand():
    from treegen.task import Example

    t = Example("q", ("True", "False"), "True")
    f = Example("q", ("True", "False"), "False")
    assert datasets.test_majority_floor([t, t, f]) == pytest.approx(2 / 3)
    assert datasets.majority_accuracy([f, f], [t, t, f]) == pytest.approx(1 / 3)


def test_cli_data_list(datasets_dir):
    result = runner.invoke(app, ["data", "list", "--data-dir", str(datasets_dir)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "8,500" in result.output and "riddle_sense" in result.output and "boolq_open" in result.output
    assert result.output.count("dev is used for training") == 2  # piqa and boolq_open have no train file


def test_cli_missing_data_dir_exit_2(tmp_path):
    result = runner.invoke(app, ["data", "list", "--data-dir", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "No dataset folder" in result.output


@pytest.fixture
def mirror(tmp_path, datasets_dir):
    """An HTTP mirror on localhost serving a small copy of the datasets (first 20 lines a file)."""
    root = tmp_path / "mirror"
    for src in datasets_dir.glob("*/*/*.jsonl"):
        dst = root / src.relative_to(datasets_dir)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with src.open("rb") as fh:
            dst.write_bytes(b"".join(fh.readline() for _ in range(20)))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[assignment]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_data_fetch_from_local_mirror(tmp_path, mirror):
    root, url = mirror
    dest = tmp_path / "fetched"
    result = runner.invoke(app, ["data", "fetch", "--url", url, "--data-dir", str(dest)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    got = sorted(p.relative_to(dest) for p in dest.glob("*/*/*.jsonl"))
    assert got == sorted(p.relative_to(root) for p in root.glob("*/*/*.jsonl"))
    assert (dest / "mcqa_5/csqa/test.jsonl").read_bytes() == (root / "mcqa_5/csqa/test.jsonl").read_bytes()
    ex, _fmt, _ = datasets.load_split("csqa", "test", dest)
    assert len(ex) == 20


def test_data_fetch_checks_sha_and_lines(tmp_path, mirror):
    root, url = mirror
    rel = "yesno_close/creak/dev.jsonl"
    good = hashlib.sha256((root / rel).read_bytes()).hexdigest()
    with pytest.raises(DatasetError, match="sha256"):
        datasets.fetch(url, tmp_path / "a", manifest={rel: "0" * 64})
    datasets.fetch(url, tmp_path / "b", manifest={rel: good})
    # A corrupt line on the mirror: the command fails with exit 2 and names the line.
    (root / rel).write_text((root / rel).read_text() + '{"question": "x"\n')
    result = runner.invoke(app, ["data", "fetch", "--url", url, "--data-dir", str(tmp_path / "c")])
    assert result.exit_code == 2 and "line 21" in result.output
    assert not (tmp_path / "c" / rel).exists()
    shutil.rmtree(tmp_path / "a", ignore_errors=True)


def test_evaluation_limit_is_a_random_sample(datasets_dir):
    # PubMedQA test is sorted by label: its first 200 rows are all True.
    head, _f, _n = datasets.load_split("pubmedqa", "test", datasets_dir, limit=200)
    assert {e.label for e in head} == {"True"}
    sample, _f, note = datasets.load_split("pubmedqa", "test", datasets_dir, limit=200, sample=True)
    again, _f, _n = datasets.load_split("pubmedqa", "test", datasets_dir, limit=200, sample=True)
    assert len(sample) == 200 and sample == again and "random sample" in note
    assert 0.4 < datasets.test_majority_floor(sample) < 0.7
