"""Seeds are validated before anything is spent: bad input gets file, line, fix, exit 2, no run."""

from __future__ import annotations

import json
import os
import threading

import pytest
from typer.testing import CliRunner

import treegen.task as task
from treegen.errors import InputError, SeedFileError
from treegen.task import (
    DUPLICATE_OPTIONS,
    InvalidExample,
    TaskFormat,
    dedup_key,
    example_from_dict,
    load_examples,
    load_seeds,
)

runner = CliRunner()
GOOD = {"question": "Is ice cold?", "context": None, "options": ["True", "False"], "label": "True"}
LONE_SURROGATE = b'{"question": "Is \\ud800 cold?", "options": ["True", "False"], "label": "True"}\n'
DEEP = b"[" * 100_000 + b"]" * 100_000 + b"\n"
DIGITS = b'{"question": "q", "options": ["a", "b"], "label": ' + b"7" * 5000 + b"}\n"
DUPLICATES = b'{"question": "Pick one", "options": ["A", "A"], "label": "A"}\n'


def run_with(tmp_path, seeds_path, *extra):
    from treegen.cli import app  # imported here so the loader tests run while the CLI is being edited

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
        (LONE_SURROGATE, ":1: the question holds a lone surrogate"),
        (DEEP, ":1: the JSON is nested deeper than treegen reads"),
        (DIGITS, ":1: a number on this line has too many digits"),
        (DUPLICATES, ":1: options 1 and 2 are the same"),
        (json.dumps(dict(GOOD, question="x" * 25_000)).encode(), "--max-example-chars"),
    ],
    ids=["bad-json", "missing-label", "label-not-an-option", "two-formats", "empty", "blank", "binary", "not-object",
         "options-not-list", "empty-question", "duplicate-seed", "not-utf8", "lone-surrogate", "deep-nesting",
         "5000-digits", "duplicate-options", "example-too-long"],
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
    from treegen.cli import app

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
        "duplicate-options": {"question": "q", "options": ["a", "A", "c"], "label": "a"},
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


# -- the loaders themselves: every bad file is a SeedFileError naming file, line and fix --

def write(tmp_path, content: bytes, name: str = "seeds.jsonl"):
    path = tmp_path / name
    path.write_bytes(content)
    return path


def refusal(loader, path, **kwargs) -> SeedFileError:
    with pytest.raises(SeedFileError) as exc:
        loader(path, **kwargs)
    assert isinstance(exc.value, InputError) and exc.value.exit_code == 2
    assert str(path) in str(exc.value)
    return exc.value


@pytest.mark.parametrize("loader", [load_seeds, load_examples])
@pytest.mark.parametrize(
    "content, line, words",
    [
        (LONE_SURROGATE, 1, "lone surrogate"),
        (json.dumps(GOOD).encode() + b"\n" + DEEP, 2, "nested deeper"),
        (DIGITS, 1, "too many digits"),
        (json.dumps(GOOD, ensure_ascii=False).encode("utf-16"), 1, "UTF-16"),
    ],
    ids=["lone-surrogate", "deep-nesting", "5000-digits", "utf-16"],
)
def test_hostile_lines_are_refused_with_the_line(tmp_path, loader, content, line, words) -> None:
    err = refusal(loader, write(tmp_path, content))
    assert err.line == line and words in err.reason and err.fix


def test_one_huge_example_is_refused_with_the_limit_and_the_flag(tmp_path) -> None:
    # A 50 MB one-line example: over the seed file limit, named with the flag that raises it.
    path = tmp_path / "seeds.jsonl"
    with path.open("w") as fh:
        fh.write('{"question": "' + "x" * 50_000_000 + '", "options": ["True", "False"], "label": "True"}\n')
    err = refusal(load_seeds, path)
    assert "50 MB" in err.reason and "5.0 MB" in err.reason
    assert "--max-seed-bytes" in err.fix and "max_file_bytes" in err.fix
    # As a data file (1 GiB allowed) the line is refused on its length, before it is parsed.
    err = refusal(load_examples, path)
    assert err.line == 1 and "longer than" in err.reason and "max_example_chars" in err.fix


def test_example_size_limit_default_parameter_and_module_default(tmp_path, monkeypatch) -> None:
    big = dict(GOOD, question="q" * 21_000)  # 21,009 characters with the options
    path = write(tmp_path, (json.dumps(GOOD) + "\n" + json.dumps(big) + "\n").encode())
    err = refusal(load_seeds, path)
    assert err.line == 2 and "21,009 characters" in err.reason and "20,000" in err.reason
    assert "--max-example-chars" in err.fix
    examples, fmt = load_seeds(path, max_example_chars=25_000)
    assert len(examples) == 2 and fmt.name == "yesno_close"
    assert len(load_examples(path)[0]) == 2  # data files allow long benchmark contexts
    refusal(load_examples, path, max_example_chars=1_000)
    monkeypatch.setattr(task, "MAX_SEED_EXAMPLE_CHARS", 30_000)
    assert len(load_seeds(path)[0]) == 2


def test_seed_file_size_parameter_and_module_default(tmp_path, monkeypatch) -> None:
    rows = [dict(GOOD, question=f"Is {i} even?") for i in range(50)]
    path = write(tmp_path, "".join(json.dumps(r) + "\n" for r in rows).encode())
    size = path.stat().st_size
    assert len(load_seeds(path)[0]) == 50
    err = refusal(load_seeds, path, max_file_bytes=1_000)
    assert f"{size:,} bytes" in err.reason and "1,000 bytes" in err.reason
    monkeypatch.setattr(task, "MAX_SEED_FILE_BYTES", 2_000)
    refusal(load_seeds, path)
    assert len(load_seeds(path, max_file_bytes=size)[0]) == 50


def test_duplicate_options_refused_in_seeds_allowed_in_data_files(tmp_path) -> None:
    for options in (["A", "A"], ["Paris", " paris "], ["ｆｕｌｌ", "full"]):  # same, case/space, NFKC
        row = {"question": "Pick one", "options": options, "label": options[0]}
        path = write(tmp_path, (json.dumps(row, ensure_ascii=False) + "\n").encode())
        err = refusal(load_seeds, path)
        assert err.line == 1 and "options 1 and 2 are the same" in err.reason
        assert "differ" in err.fix
        # Benchmark rows may repeat an option (CommonsenseQA): data files keep them.
        assert load_examples(path)[0][0].options == tuple(o.strip() for o in options)
        refusal(load_examples, path, allow_duplicate_options=False)


def test_options_differing_in_punctuation_are_not_duplicates(tmp_path) -> None:
    row = {"question": "x = ?", "options": ["-1", "1", "C", "C++"], "label": "-1"}
    assert example_from_dict(row).options == ("-1", "1", "C", "C++")


def test_duplicate_options_in_a_candidate_have_their_reason() -> None:
    with pytest.raises(InvalidExample) as exc:
        example_from_dict({"question": "q", "options": ["x", "X ", "y"], "label": "y"}, TaskFormat.parse("mcqa_3"))
    assert exc.value.reason == DUPLICATE_OPTIONS == "duplicate-options"


def test_lone_surrogate_in_a_candidate_is_invalid_not_a_crash() -> None:
    obj = json.loads('{"question": "q", "options": ["a\\udc00", "b"], "label": "b"}')
    with pytest.raises(InvalidExample) as exc:
        example_from_dict(obj)
    assert exc.value.reason == "bad-text"
    ok = example_from_dict(json.loads('{"question": "\\ud83d\\ude00?", "options": ["a", "b"], "label": "b"}'))
    assert ok.question == "\U0001F600?"  # a valid pair is one character, kept


def test_a_byte_order_mark_is_read(tmp_path) -> None:
    rows = [GOOD, dict(GOOD, question="Is fire hot?")]
    path = write(tmp_path, b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\r\n" for r in rows).encode())
    examples, fmt = load_seeds(path)
    assert [e.question for e in examples] == ["Is ice cold?", "Is fire hot?"] and fmt.name == "yesno_close"


def test_a_folder_is_not_a_regular_file(tmp_path) -> None:
    for loader in (load_seeds, load_examples):
        err = refusal(loader, tmp_path)
        assert "is a folder, not a regular file" in err.reason


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_named_pipe_is_refused_without_blocking(tmp_path) -> None:
    fifo = tmp_path / "seeds.jsonl"
    os.mkfifo(fifo)
    errors: list[BaseException] = []

    def load() -> None:
        try:
            load_seeds(fifo)
        except BaseException as exc:  # noqa: BLE001 - the test inspects whatever was raised
            errors.append(exc)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():  # it opened the pipe and waits for a writer: release it, then fail
        os.close(os.open(fifo, os.O_WRONLY))
        pytest.fail("load_seeds blocked on a named pipe")
    assert len(errors) == 1 and isinstance(errors[0], SeedFileError)
    assert "named pipe (FIFO), not a regular file" in str(errors[0])
    assert "the file is empty" not in str(errors[0])
