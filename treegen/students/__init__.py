"""Students: small models trained on created (or human) examples, one interface.

Registry (``STUDENTS``, in this order): ``lexical`` (hashed n-grams + LSA, seconds),
``minilm-frozen`` (frozen all-MiniLM-L6-v2 embeddings + linear heads, minutes; the default of
``treegen train``), ``minilm-ft`` (fine-tuned transformer, tens of minutes; torch and
transformers are imported only when it trains or loads).

Module map: ``base`` (interface, progress callback, saving, linear machinery), ``lexical``,
``minilm_frozen``, ``finetuned``. Each student module imports ``base`` only, and this package
imports them: no cycle. Each student class declares ``name``, ``min_train`` (fewest training
examples) and ``options`` (constructor keywords and their types); the functions below read them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from treegen.errors import ConfigError
from treegen.students.base import (
    META_FILE, ProgressCallback, Student, accuracy, argmax_options, check_train, filled_text, is_yesno,
    pairwise_design, progress_counter, read_meta,
)
from treegen.students.finetuned import FineTunedStudent, default_epochs
from treegen.students.lexical import LexicalStudent
from treegen.students.minilm_frozen import EmbeddingCache, MiniLMFrozenStudent

STUDENTS: dict[str, Any] = {cls.name: cls for cls in (LexicalStudent, MiniLMFrozenStudent, FineTunedStudent)}

# The best student that trains in minutes on a CPU (CommonsenseQA test: 38.8% against lexical's
# 25.2%, benchmarks/results/students.md).
DEFAULT_STUDENT = "minilm-frozen"

__all__ = [
    "DEFAULT_STUDENT", "META_FILE", "STUDENTS", "EmbeddingCache", "FineTunedStudent", "LexicalStudent",
    "MiniLMFrozenStudent", "ProgressCallback", "Student", "accuracy", "argmax_options", "check_train",
    "default_epochs", "filled_text", "get_student", "is_yesno", "load_student", "min_train_examples",
    "pairwise_design", "progress_counter", "student_class", "student_options",
]


def student_class(name: str) -> Any:
    """The class registered as ``name``; ConfigError naming the choices for an unknown one."""
    if name not in STUDENTS:
        raise ConfigError(f"Unknown student {name!r}. Choose one of: {', '.join(STUDENTS)}.")
    return STUDENTS[name]


def min_train_examples(name: str) -> int:
    """Fewest training examples the ``name`` student accepts (its ``min_train``)."""
    return int(student_class(name).min_train)


def student_options(name: str) -> dict[str, type]:
    """The constructor options the ``name`` student declares, with their types."""
    return dict(student_class(name).options)


def _check_option(name: str, key: str, value: Any, kind: type) -> None:
    if value is None:
        return
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise ConfigError(f"Bad option for the {name} student: {key} must be {kind.__name__}, got {value!r}.")


def get_student(name: str, **kwargs: Any) -> Student:
    """A new, untrained student; ConfigError for an unknown name or an option it does not declare."""
    cls = student_class(name)
    options = cls.options
    for key, value in kwargs.items():
        if key == "cache" and cls is MiniLMFrozenStudent:
            continue  # a shared EmbeddingCache: a programmatic option, not a user one
        if key not in options:
            raise ConfigError(
                f"Bad option for the {name} student: {key!r}. It takes: {', '.join(options) or 'no options'}."
            )
        _check_option(name, key, value, options[key])
    student: Student = cls(**kwargs)
    return student


def load_student(path: str | Path) -> Student:
    """A trained student saved with ``save``; StudentError for a missing or corrupt folder."""
    meta = read_meta(path, known=STUDENTS)
    student: Student = STUDENTS[meta["student"]].load(path)
    return student
