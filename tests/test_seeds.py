"""Seeds are validated before anything is spent: bad input gets file, line, fix, exit 2, no run."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from treegen.cli import app
from treegen.task import (
    InvalidExample,
    TaskFormat,
    dedup_key,
    example_from_dict,
    load_seeds,
)

runner = CliRunner()
GOOD = {"question": "Is ice cold?", "context": None, "options": ["True", "False"], "label": "True"}


def run_with(tmp_path, seeds_path, *extra):
    out = tmp_path / "runs"
    result = runner.invoke(app, ["run", str(seeds_path), "--backend", "sim", "--target", "5", "--out", str(out), *extra])
    return result, out


@pytest.mark.parametrize(
    "content, expected",
    [
        (b'{"question": "x", "options": ["a", "b"], "label": "a"\n', ":1: not valid JSON"),
        (json.dumps(GOOD).encode() + b"\n" + b'{"question": "y", "options": ["True", "False"]}\n', ":2: missing field 'label'"),
        (b'{"question": "x", "options": ["a", "b"], "label": "c"}\n', "label 'c' is not one of the options"),
        (json.dumps(GOOD).encode() + b'\n{"question": "Which?", "options": ["a", "b", "c"], "label": "a"}\n',
         ":2: this example is mcqa_3 but line 1 is yesno_close"),
        (b"", "the file is empty"),
        (b"\n\n  \n", "holds no examples"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary file"),
        (b'["not", "an", "object"]\n', "expected a JSON object"),
        (b'{"question": "x", "options": "a,b", "label": "a"}\n', "options must be a list"),
        (b'{"question": "", "options": ["a", "b"], "label": "a"}\n', "question must be a non-empty string"),
        (json.dumps(GOOD).encode() + b"\n" + json.dumps(GOOD).encode() + b"\n", "seed 2 repeats seed 1"),
        (b"\xff\xfe{bad utf8}\n", "not UTF-8"),
    ],
)
def test_bad_seed_files(tmp_path, content, expected):
    path = tmp_path / "seeds.jsonl"
    path.write_bytes(content)
    result, out = run_with(tmp_path, path)
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert str(path) in result.output.replace("\n", "")  # names the file
    assert not out.exists()  # no run created


def test_huge_file_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "huge.jsonl"
    with path.open("wb") as fh:  # a sparse 2 GB file: refused on its size, never read
        fh.truncate(2 * 1024**3)
    result, out = run_with(tmp_path, path)
    assert result.exit_code == 2
    assert "2,147 MB" in result.output and "head -n" in result.output
    assert not out.exists()


def test_missing_file_and_folder(tmp_path):
    result, out = run_with(tmp_path, tmp_path / "nope.jsonl")
    assert result.exit_code == 2 and "no such file" in result.output
    result, out = run_with(tmp_path, tmp_path)
    assert result.exit_code == 2 and "is a folder" in result.output
    assert not out.exists()


def test_format_flag_must_match_the_seeds(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_text(json.dumps(GOOD) + "\n")
    result, out = run_with(tmp_path, path, "--format", "mcqa_4")
    assert result.exit_code == 2 and "one file holds one task format" in result.output
    result, out = run_with(tmp_path, path, "--format", "mcqa_x")
    assert result.exit_code == 2 and "Unknown task format" in result.output
    assert not out.exists()


def test_no_cap_is_refused(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_text(json.dumps(GOOD) + "\n")
    out = tmp_path / "runs"
    result = runner.invoke(app, ["run", str(path), "--backend", "sim", "--out", str(out)])
    assert result.exit_code == 2 and "--max-usd" in result.output
    assert not out.exists()


def test_formats_inferred_and_labels_normalised(tmp_path):
    path = tmp_path / "s.jsonl"
    rows = [
        {"question": "Q1", "context": "C", "options": ["True", "False"], "label": False},
        {"question": "Q2", "context": "D", "options": ["True", "False"], "label": "True"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples, fmt = load_seeds(path)
    assert fmt == TaskFormat("yesno", 2, True) and fmt.name == "yesno_open"
    assert [e.label for e in examples] == ["False", "True"]


def test_candidate_validation_reasons():
    fmt = TaskFormat.parse("mcqa_3")
    ok = example_from_dict({"question": "q", "options": ["a", "b", "c"], "label": " B "}, fmt)
    assert ok.label == "b"  # case and space forgiven when unambiguous
    cases = {
        "wrong-option-count": {"question": "q", "options": ["a", "b"], "label": "a"},
        "label-not-in-options": {"question": "q", "options": ["a", "b", "c"], "label": "d"},
        "repeated-option": {"question": "q", "options": ["a", "A", "c"], "label": "a"},
        "wrong-context": {"question": "q", "context": "text", "options": ["a", "b", "c"], "label": "a"},
        "missing-field": {"options": ["a", "b", "c"], "label": "a"},
        "wrong-options": {"question": "q", "options": ["True", "False", "x"], "label": "x"},
    }
    for reason, obj in cases.items():
        if reason == "wrong-options":
            fmt2 = TaskFormat.parse("yesno_close")
            with pytest.raises(InvalidExample) as exc:
                example_from_dict(obj, fmt2)
        else:
            with pytest.raises(InvalidExample) as exc:
                example_from_dict(obj, fmt)
        assert exc.value.reason == reason


def test_dedup_key_ignores_case_punctuation_and_option_order():
    a = example_from_dict({"question": "Is  ice cold?", "options": ["x", "y"], "label": "x"})
    b = example_from_dict({"question": "is ice, cold", "options": ["y", "x"], "label": "y"})
    c = example_from_dict({"question": "Is ice hot?", "options": ["x", "y"], "label": "x"})
    assert dedup_key(a) == dedup_key(b) != dedup_key(c)


def test_migrations_are_applied_once_and_recorded(tmp_path):
    """Opening a database twice applies nothing the second time; every migration is named."""
    from treegen.migrations import migrations
    from treegen.store import open_db

    db = open_db(tmp_path / "t.db")
    applied = [m.name for m in migrations.applied(db)]
    assert applied[0] == "m001_initial" and len(applied) == len(set(applied)) >= 3
    db.close()
    db = open_db(tmp_path / "t.db")
    assert [m.name for m in migrations.applied(db)] == applied
    assert not migrations.pending(db)
    assert {"runs", "calls", "nodes", "metrics", "student_results"} <= set(db.table_names())
