"""The numeric task format: a question answered by a number (GSM8K-like), no options."""

from __future__ import annotations

import json
import re
from fractions import Fraction

import jsonschema
import pytest

from treegen.errors import InputError, StudentError
from treegen.parsing import parse_reply
from treegen.prompts import build_messages, read_prompt, render_example, system_prompt
from treegen.schema import answer_to_label, example_schema, label_to_answer
from treegen.sim.pool import numeric_pool, synthetic_pool
from treegen.task import (
    NOT_A_NUMBER, Example, InvalidExample, TaskFormat, canonical_number, check_format, example_from_dict, load_examples, load_seeds,
)

NUMERIC = TaskFormat.parse("numeric")
NUMERIC_OPEN = TaskFormat.parse("numeric_open")


def test_the_format_parses_and_names_itself() -> None:
    assert (NUMERIC.kind, NUMERIC.n_options, NUMERIC.has_context, NUMERIC.name) == ("numeric", 0, False, "numeric")
    assert (NUMERIC_OPEN.kind, NUMERIC_OPEN.has_context, NUMERIC_OPEN.name) == ("numeric", True, "numeric_open")
    assert TaskFormat.parse(" Numeric ") == NUMERIC and TaskFormat.parse(NUMERIC_OPEN.name) == NUMERIC_OPEN
    assert not NUMERIC.has_options and TaskFormat.parse("mcqa_4").has_options and TaskFormat.parse("yesno_open").has_options
    with pytest.raises(InputError, match="numeric"):
        TaskFormat.parse("numerical")


@pytest.mark.parametrize("value, canonical", [
    (42, "42"), (42.0, "42"), ("42.0", "42"), ("42", "42"), (" 3.50 ", "3.5"), ("-2", "-2"), (-2.5, "-2.5"),
    ("-0", "0"), (0.0, "0"), ("1e3", "1000"), ("2.5E-1", "0.25"), (".5", "0.5"), ("+7", "7"), ("1,234", "1234"),
    ("12,345.75", "12345.75"), (0.1 + 0.2, "0.3"), (10**15, "1000000000000000"),
])
def test_numbers_are_written_canonically(value, canonical) -> None:
    assert canonical_number(value) == canonical


@pytest.mark.parametrize("value", [
    "nan", "NaN", "inf", "-Infinity", float("nan"), float("inf"), True, False, None, "", "four", "4 apples", "$4",
    "1,23", "1.2.3", "0x10", "1e999", 10**16, "1_000", [4], {"n": 4},
])
def test_what_is_not_a_finite_number_is_refused(value) -> None:
    assert canonical_number(value) is None


def test_numeric_examples_are_read_and_validated() -> None:
    ex = example_from_dict({"question": " How many? ", "label": "42.0"})  # no options: inferred numeric
    assert ex == Example("How many?", (), "42", None) and ex.infer_format() == NUMERIC
    assert example_from_dict({"question": "q", "options": [], "label": 3.5}).label == "3.5"
    assert example_from_dict({"question": "q", "context": "c", "answer": 7}, NUMERIC_OPEN) == Example("q", (), "7", "c")
    assert example_from_dict(json.loads(json.dumps(ex.to_dict()))) == ex  # an exported row reads back
    with pytest.raises(InputError, match="needs a multiple-choice or yes/no task"):
        ex.label_index  # what asks for the right option's position gets a clear error, not a ValueError
    bad = {
        NOT_A_NUMBER: ({"question": "q", "label": "many"}, NUMERIC),
        "missing-field": ({"label": "3"}, NUMERIC),
        "empty-question": ({"question": " ", "label": "3"}, NUMERIC),
        "wrong-options": ({"question": "q", "options": ["1", "2"], "label": "1"}, NUMERIC),
        "wrong-context": ({"question": "q", "context": "c", "label": "1"}, NUMERIC),
    }
    for reason, (obj, fmt) in bad.items():
        with pytest.raises(InvalidExample) as err:
            example_from_dict(obj, fmt)
        assert err.value.reason == reason, (reason, err.value.reason)
    with pytest.raises(InvalidExample, match="not a finite number"):
        example_from_dict({"question": "q", "label": "inf"}, NUMERIC)
    with pytest.raises(InvalidExample, match="missing field 'options'"):  # a multiple-choice format needs options
        example_from_dict({"question": "q", "label": "1"}, TaskFormat.parse("mcqa_3"))
    with pytest.raises(InvalidExample) as err:
        check_format(ex, TaskFormat.parse("mcqa_3"))
    assert err.value.reason == "wrong-option-count"
    with pytest.raises(InvalidExample) as err:
        check_format(Example("q", (), "4.50", None), NUMERIC)  # built by hand, not canonical
    assert err.value.reason == NOT_A_NUMBER
    with pytest.raises(InvalidExample, match="missing field 'options'"):  # no options and no number: not numeric
        example_from_dict({"question": "q", "label": "Paris"})


def test_the_other_formats_read_as_before() -> None:
    assert example_from_dict({"question": "q", "options": ["1", "2"], "label": 2}).infer_format().name == "mcqa_2"
    assert example_from_dict({"question": "q", "options": ["True", "False"], "label": True}).label == "True"
    with pytest.raises(InvalidExample) as err:
        example_from_dict({"question": "q", "options": ["True", "False"], "label": "True"}, NUMERIC)
    assert err.value.reason == "wrong-options"


def test_seed_files_infer_numeric_and_refuse_bad_labels(tmp_path) -> None:
    path = tmp_path / "seeds.jsonl"
    path.write_text('{"question": "What is 6 times 7?", "label": "42"}\n\n{"question": "Half of 7?", "options": [], "label": 3.5}\n')
    examples, fmt = load_seeds(path)
    assert fmt == NUMERIC and [e.label for e in examples] == ["42", "3.5"]
    path.write_text('{"question": "What is 6 times 7?", "label": 42}\n{"question": "q", "options": ["a", "b"], "label": "a"}\n')
    with pytest.raises(InputError, match=r":2: this example is mcqa_2 but line 1 is numeric"):
        load_seeds(path)
    path.write_text('{"question": "How many?", "label": "lots"}\n')
    with pytest.raises(InputError, match=r":1: missing field 'options'.*numeric example"):
        load_seeds(path)
    with pytest.raises(InputError, match=r":1: label 'lots' is not a finite number.*Write the label as a number"):
        load_seeds(path, NUMERIC)


def test_the_cli_infers_numeric_from_the_seed_rows(tmp_path) -> None:
    from typer.testing import CliRunner

    from treegen.cli import app
    from treegen.store import RunStore

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"question": e.question, "label": e.label}) + "\n" for e in numeric_pool(3, seed=9)))
    out = tmp_path / "runs"
    result = CliRunner().invoke(app, ["run", str(seeds), "--backend", "sim", "--target", "6", "--max-usd", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    with RunStore.open(run_dir, readonly=True) as store:
        assert store.run()["task_format"] == "numeric"
        made = store.examples()
    assert len(made) >= 6
    assert all(e.options == () and canonical_number(e.label) == e.label for e in made)


def test_the_schema_takes_a_number_and_replies_parse_back() -> None:
    pool = numeric_pool(50, seed=3)
    for fmt, items in ((NUMERIC, pool[:4]), (NUMERIC_OPEN, numeric_pool(4, seed=3, has_context=True))):
        schema = example_schema(fmt, len(items))
        jsonschema.Draft202012Validator.check_schema(schema)
        item = schema["properties"]["examples"]["items"]
        assert "options" not in item["properties"] and item["properties"]["answer"] == {"type": "number"}
        rows = [label_to_answer(e.to_dict() if fmt.has_context else {k: v for k, v in e.to_dict().items() if k != "context"})
                for e in items]
        assert all(isinstance(r["answer"], (int, float)) and "options" not in r for r in rows)
        reply = json.dumps({"examples": rows})
        jsonschema.validate(json.loads(reply), schema)
        cands = parse_reply(reply)
        # both ways the pipeline reads a structured reply: as the object is, and through answer_to_label
        assert [example_from_dict(c.obj, fmt) for c in cands] == items
        assert [example_from_dict(answer_to_label(c.obj), fmt) for c in cands] == items
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"examples": [{"question": "q", "answer": "42"}]}, example_schema(NUMERIC, 1))


def test_answer_to_label_keeps_multiple_choice_by_number() -> None:
    assert answer_to_label({"question": "q", "options": ["a", "b"], "answer": 2})["label"] == "b"
    assert answer_to_label({"question": "q", "answer": 2.50}) == {"question": "q", "label": "2.5"}
    assert answer_to_label({"question": "q", "options": [], "answer": "7"}) == {"question": "q", "options": [], "label": "7"}
    odd = {"question": "q", "answer": "seven"}
    assert answer_to_label(odd) == odd  # left for validation to judge


def test_prompts_show_numbers_without_options() -> None:
    for structured, field in ((True, "answer"), (False, "label")):
        sentence = f"{field} is the number that answers the question"
        assert sentence in system_prompt(NUMERIC, structured)
        assert "option" not in system_prompt(NUMERIC, structured)
    assert "The context must answer the question." in system_prompt(NUMERIC_OPEN, True)
    ex = Example("Half of 7?", (), "3.5", None)
    assert render_example(ex, NUMERIC, structured=True) == '{"question":"Half of 7?","answer":3.5}'
    assert render_example(ex, NUMERIC, structured=False) == '{"question":"Half of 7?","label":3.5}'
    shown = numeric_pool(3, seed=1) + [Example("Six times seven?", (), "42", None)]
    for structured in (True, False):
        messages = build_messages(shown, NUMERIC, 2, structured=structured)
        objs, k = read_prompt(messages)  # what the simulator reads back
        assert k == 2 and [example_from_dict(o) for o in objs] == shown


_ARITH = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}
# Independent readings of some templates' questions: the pool's labels must agree with them.
_CHECKS = [
    (r"(?:What is|How much is|Compute) (\d+) (plus|minus|times) (\d+)[?.]", lambda m: _ARITH[m[2]](int(m[1]), int(m[3]))),
    (r"has (\d+) \w+\. It sells (\d+) on \w+ and then receives a delivery of (\d+)\.", lambda m: int(m[1]) - int(m[2]) + int(m[3])),
    (r"buys (\d+) \w+ at (\d+) dollars each and pays with a (\d+)-dollar note", lambda m: int(m[3]) - int(m[1]) * int(m[2])),
    (r"is (\d+) years old\. \w+ is (\d+) years older than \w+\. How old will \w+ be in (\d+) years", lambda m: sum(map(int, m.groups()))),
    (r"(\d+) metres long is cut into (\d+) pieces", lambda m: Fraction(int(m[1]), int(m[2]))),
    (r"costs (\d+) dollars\. This week it is sold at (\d+)% off", lambda m: Fraction(int(m[1]) * (100 - int(m[2])), 100)),
    (r"drives at (\d+) kilometres per hour for (\d) hours?\.", lambda m: int(m[1]) * int(m[2])),
    (r"drives at (\d+) kilometres per hour for an hour and a half\.", lambda m: Fraction(int(m[1]) * 3, 2)),
    (r"has (\d+) dollars and saves (\d+) dollars every week\. How many dollars will \w+ have after (\d+) weeks",
     lambda m: int(m[1]) + int(m[2]) * int(m[3])),
]


def test_the_numeric_pool_holds_true_answers() -> None:
    pool = numeric_pool(2000, seed=0)
    assert len(pool) == 2000 and pool == numeric_pool(2000, seed=0) and pool != numeric_pool(2000, seed=1)
    assert len({e.question for e in pool}) == 2000
    assert all(e.options == () and e.context is None and canonical_number(e.label) == e.label for e in pool)
    checked = 0
    for ex in pool:
        for pattern, truth in _CHECKS:
            m = re.search(pattern, ex.question)
            if m:
                assert Fraction(ex.label) == Fraction(truth(m)), ex
                checked += 1
                break
    assert checked > 1000  # most items are of a checked family
    assert any("." in e.label for e in pool) and any(int(Fraction(e.label)) > 100 for e in pool)


def test_the_open_book_pool_puts_the_setup_in_the_context() -> None:
    pool = synthetic_pool(NUMERIC_OPEN, n=300, seed=0)
    assert len(pool) == 300 and all(e.context and e.infer_format() == NUMERIC_OPEN for e in pool)
    assert synthetic_pool(NUMERIC, n=50, seed=0) == numeric_pool(50, seed=0)


def test_students_refuse_a_numeric_task_clearly(tmp_path) -> None:
    from treegen.evaluation import check_task_matches, infer_task
    from treegen.students import check_train, get_student

    pool = numeric_pool(200, seed=0)
    need = "students need a multiple-choice or yes/no task"
    with pytest.raises(StudentError, match=need):
        check_train("lexical", 10, pool)
    with pytest.raises(StudentError, match=need):
        get_student("lexical").fit(pool)
    with pytest.raises(StudentError, match=need):
        check_task_matches("strategyqa", NUMERIC, "The run")
    with pytest.raises(StudentError, match=need):
        infer_task(NUMERIC, tmp_path)


def test_a_data_file_of_numeric_rows_loads(tmp_path) -> None:
    path = tmp_path / "data.jsonl"
    pool = numeric_pool(30, seed=2, has_context=True)
    path.write_text("".join(e.to_json() + "\n" for e in pool))
    examples, fmt = load_examples(path)
    assert fmt == NUMERIC_OPEN and examples == pool
