"""Examples in the unified format of Lee et al. (EMNLP 2023), task formats, validation.

One JSON object a line: ``question``, optional ``context``, ``options`` (list of str) and
``label`` (the text of the right option). Three task formats:

- multiple choice with k free-text options (``mcqa_k``; ``mcqa_k_open`` with a context),
- yes/no with a context (``yesno_open``),
- yes/no without one (``yesno_close``).

Yes/no options are always ``["True", "False"]``; a label may be given as a JSON boolean or
as the string, and is stored as the string.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from treegen.errors import InputError, SeedFileError

YESNO_OPTIONS = ("True", "False")
MAX_SEED_FILE_BYTES = 50 * 1024 * 1024  # seeds are a handful of examples; data files use read_jsonl
MAX_DATA_FILE_BYTES = 1024 * 1024 * 1024


@dataclass(frozen=True)
class TaskFormat:
    """The shape of a task: multiple choice with ``n_options`` options, or yes/no."""

    kind: str  # "mcqa" or "yesno"
    n_options: int
    has_context: bool

    @property
    def name(self) -> str:
        if self.kind == "yesno":
            return "yesno_open" if self.has_context else "yesno_close"
        return f"mcqa_{self.n_options}" + ("_open" if self.has_context else "")

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, name: str) -> "TaskFormat":
        name = name.strip().lower()
        if name == "yesno_open":
            return cls("yesno", 2, True)
        if name == "yesno_close":
            return cls("yesno", 2, False)
        m = re.fullmatch(r"mcqa_(\d+)(_open)?", name)
        if m and int(m.group(1)) >= 2:
            return cls("mcqa", int(m.group(1)), bool(m.group(2)))
        raise InputError(
            f"Unknown task format {name!r}. Use yesno_open, yesno_close or mcqa_K "
            "(K options, K >= 2; add _open when examples have a context), e.g. mcqa_5."
        )


@dataclass(frozen=True)
class Example:
    question: str
    options: tuple[str, ...]
    label: str
    context: str | None = None

    @property
    def label_index(self) -> int:
        return self.options.index(self.label)

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "context": self.context,
            "options": list(self.options),
            "label": self.label,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    def text(self) -> str:
        """One string for embedding and similarity: context, question and options."""
        parts = [self.context or "", self.question, " | ".join(self.options)]
        return "\n".join(p for p in parts if p)

    def infer_format(self) -> TaskFormat:
        has_context = bool(self.context and self.context.strip())
        if tuple(self.options) == YESNO_OPTIONS:
            return TaskFormat("yesno", 2, has_context)
        return TaskFormat("mcqa", len(self.options), has_context)


def normalise_text(text: str | None) -> str:
    """Lower case, accents folded, punctuation dropped, white space collapsed."""
    if not text:
        return ""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return " ".join(text.split())


def dedup_key(example: Example) -> str:
    """Normalised exact-match key: two examples with the same key are duplicates.

    Options are sorted so that a reordering is still a duplicate; the label is left out so
    that the same question with a flipped label is a duplicate too.
    """
    options = "|".join(sorted(normalise_text(o) for o in example.options))
    return f"{normalise_text(example.context)}\n{normalise_text(example.question)}\n{options}"


class InvalidExample(ValueError):
    """A candidate that is not a valid example; ``reason`` is a short machine-readable tag."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(detail)


def _as_label(value: Any) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return value.strip()
    raise InvalidExample("bad-label", f"label must be a string or a boolean, not {type(value).__name__}")


def example_from_dict(obj: Any, fmt: TaskFormat | None = None, strict: bool = True) -> Example:
    """Validate one object and build an Example, or raise InvalidExample with the reason.

    With ``fmt`` the example must also be of that format (option count, True/False options,
    context present or absent). ``strict`` also refuses repeated options: generated
    candidates must not have them, but a few human benchmark rows do (CommonsenseQA), so
    data files are read with ``strict=False``.
    """
    if not isinstance(obj, dict):
        raise InvalidExample("not-an-object", f"expected a JSON object, got {type(obj).__name__}")
    for field in ("question", "options", "label"):
        if field not in obj:
            raise InvalidExample("missing-field", f"missing field {field!r}")
    question = obj["question"]
    if not isinstance(question, str) or not question.strip():
        raise InvalidExample("empty-question", "question must be a non-empty string")
    context = obj.get("context")
    if context is not None and not isinstance(context, str):
        raise InvalidExample("bad-context", "context must be a string or null")
    if context is not None and not context.strip():
        context = None
    options = obj["options"]
    if not isinstance(options, list) or not all(isinstance(o, (str, bool)) for o in options):
        raise InvalidExample("bad-options", "options must be a list of strings")
    options = tuple(_as_label(o) for o in options)
    if len(options) < 2:
        raise InvalidExample("bad-options", "options must hold at least two options")
    if any(not o for o in options):
        raise InvalidExample("empty-option", "options must not be empty strings")
    if strict and len({normalise_text(o) for o in options}) != len(options):
        raise InvalidExample("repeated-option", "options must differ from each other")
    label = _as_label(obj["label"])
    if label not in options:
        # Accept a label that differs only in case or surrounding space, as models write it.
        matches = [o for o in options if o.strip().lower() == label.lower()]
        if len(matches) != 1:
            raise InvalidExample("label-not-in-options", f"label {label!r} is not one of the options {list(options)}")
        label = matches[0]
    example = Example(question=question.strip(), options=options, label=label, context=context)
    if fmt is not None:
        check_format(example, fmt)
    return example


def check_format(example: Example, fmt: TaskFormat) -> None:
    if fmt.kind == "yesno":
        if tuple(example.options) != YESNO_OPTIONS:
            raise InvalidExample("wrong-options", 'yes/no options must be exactly ["True", "False"]')
    else:
        if len(example.options) != fmt.n_options:
            raise InvalidExample(
                "wrong-option-count", f"expected {fmt.n_options} options, got {len(example.options)}"
            )
        if tuple(example.options) == YESNO_OPTIONS:
            raise InvalidExample("wrong-options", "multiple-choice options must be free text, not True/False")
    has_context = example.context is not None
    if has_context != fmt.has_context:
        want = "a context" if fmt.has_context else "no context"
        raise InvalidExample("wrong-context", f"format {fmt.name} needs {want}")


def _check_file(path: Path, max_bytes: int, what: str) -> None:
    if not path.exists():
        raise SeedFileError(str(path), "no such file", "Check the path.")
    if path.is_dir():
        raise SeedFileError(str(path), "is a folder, not a file", f"Give the path of a JSONL {what} file.")
    size = path.stat().st_size
    if size == 0:
        raise SeedFileError(
            str(path), "the file is empty",
            'Add at least one example, one JSON object a line: {"question": ..., "options": [...], "label": ...}.',
        )
    if size > max_bytes:
        raise SeedFileError(
            str(path),
            f"the file is {size / 1e6:,.0f} MB, more than the {max_bytes / 1e6:,.0f} MB treegen reads as {what}",
            f"A {what} file holds a handful of examples: take a few, e.g. `head -n 20 {path} > seeds.jsonl`.",
        )
    with path.open("rb") as fh:
        head = fh.read(8192)
    if b"\x00" in head:
        raise SeedFileError(str(path), "this is a binary file, not JSON lines", f"Give a UTF-8 JSONL {what} file.")


def iter_jsonl(path: str | Path, max_bytes: int = MAX_DATA_FILE_BYTES, what: str = "data") -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed object) for each non-blank line; SeedFileError names the line."""
    path = Path(path)
    _check_file(path, max_bytes, what)
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if b"\x00" in raw:
                raise SeedFileError(str(path), "this is a binary file, not JSON lines", f"Give a UTF-8 JSONL {what} file.", lineno)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise SeedFileError(str(path), "the line is not UTF-8 text", "Save the file as UTF-8.", lineno) from None
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise SeedFileError(
                    str(path), f"not valid JSON ({exc.msg} at column {exc.colno})",
                    'Write one JSON object a line, e.g. {"question": "...", "context": null, "options": ["True", "False"], "label": "True"}.',
                    lineno,
                ) from None


def load_examples(
    path: str | Path,
    fmt: TaskFormat | None = None,
    max_bytes: int = MAX_DATA_FILE_BYTES,
    what: str = "data",
) -> tuple[list[Example], TaskFormat]:
    """Read and validate a JSONL file of examples; all must share one format.

    The format is inferred from the first example unless given. Raises SeedFileError with the
    file, the line and the fix for the first bad line.
    """
    examples: list[Example] = []
    first_line = None
    for lineno, obj in iter_jsonl(path, max_bytes=max_bytes, what=what):
        try:
            ex = example_from_dict(obj, strict=False)
        except InvalidExample as exc:
            raise SeedFileError(str(path), exc.detail, _fix_for(exc.reason), lineno) from None
        ex_fmt = ex.infer_format()
        if fmt is None:
            fmt, first_line = ex_fmt, lineno
        if ex_fmt != fmt:
            origin = f"line {first_line}" if first_line else "--format"
            raise SeedFileError(
                str(path),
                f"this example is {ex_fmt.name} but {origin} is {fmt.name}; one file holds one task format",
                "Put examples of different formats in different files, or fix this line.",
                lineno,
            )
        examples.append(ex)
    if not examples:
        raise SeedFileError(str(path), "the file holds no examples, only blank lines", "Add at least one example.")
    assert fmt is not None
    return examples, fmt


def load_seeds(path: str | Path, fmt: TaskFormat | None = None) -> tuple[list[Example], TaskFormat]:
    """Seeds: validated like any data file, capped at a small size, no duplicates among them."""
    examples, fmt = load_examples(path, fmt, max_bytes=MAX_SEED_FILE_BYTES, what="seed")
    seen: dict[str, int] = {}
    for i, ex in enumerate(examples):
        key = dedup_key(ex)
        if key in seen:
            raise SeedFileError(
                str(path), f"seed {i + 1} repeats seed {seen[key] + 1}", "Remove the duplicate seed."
            )
        seen[key] = i
    return examples, fmt


def _fix_for(reason: str) -> str:
    return {
        "missing-field": 'Every line needs "question", "options" and "label" ("context" is optional).',
        "label-not-in-options": "The label must be the text of one of the options, spelled the same.",
        "bad-options": 'Write options as a JSON list of strings, e.g. ["True", "False"].',
        "not-an-object": "Write one JSON object a line, not a list or a bare value.",
        "empty-question": "Give every example a non-empty question.",
        "repeated-option": "Make the options of an example differ from each other.",
        "empty-option": "Remove or fill in the empty option.",
    }.get(reason, "Fix this line.")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows atomically (to a temporary file, then renamed): a failed write leaves nothing."""
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    n = 0
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return n
