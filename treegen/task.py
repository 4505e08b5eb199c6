"""Examples in the unified format of Lee et al. (EMNLP 2023), task formats, validation.

One JSON object a line: ``question``, optional ``context``, ``options`` (list of str) and
``label`` (the text of the right option). Three task formats:

- multiple choice with k free-text options (``mcqa_k``; ``mcqa_k_open`` with a context),
- yes/no with a context (``yesno_open``),
- yes/no without one (``yesno_close``),
- a number that answers the question (``numeric``; ``numeric_open`` with a context), as in
  GSM8K: no options (``options == ()``, absent or ``[]`` in JSON), and the label is the number
  written canonically (``canonical_number``: "42", "3.5", "-2"; "42.0" is stored as "42").

Yes/no options are always ``["True", "False"]``; a label may be given as a JSON boolean or
as the string, and is stored as the string.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import stat
import unicodedata
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Iterable, Iterator

from treegen.errors import InputError, SeedFileError

YESNO_OPTIONS = ("True", "False")

# Size limits. The functions read these module-level defaults at call time (a parameter of
# None means "the default"), so a program may change them once for all calls.
# Seeds are a handful of examples that go into prompts; data files (pools, reference and
# test sets) are whole benchmark splits.
MAX_SEED_FILE_BYTES = 5_000_000  # CLI: --max-seed-bytes
# question + context + options, in characters. The longest example of the benchmark datasets
# is 19,195 characters (BioASQ train).
MAX_SEED_EXAMPLE_CHARS = 20_000  # CLI: --max-example-chars
MAX_DATA_FILE_BYTES = 1024 * 1024 * 1024
MAX_DATA_EXAMPLE_CHARS = 200_000

DUPLICATE_OPTIONS = "duplicate-options"  # InvalidExample.reason for an example whose options repeat
NOT_A_NUMBER = "label-not-a-number"  # InvalidExample.reason for a numeric example whose label is no number

# Numeric labels: magnitudes up to 10**15 (integers beyond it lose precision as floats) and at
# most 12 decimal places (a float such as 0.1 + 0.2 = 0.30000000000000004 is stored as "0.3").
MAX_NUMERIC_LABEL = Decimal(10) ** 15
NUMERIC_DECIMALS = 12

# A JSON line may spell one character with up to 12 bytes (a \uXXXX\uXXXX pair), plus
# keys and punctuation: a line longer than this cannot hold an example within the limit,
# and it is refused before it is parsed, so a 50 MB line is never held in memory whole.
_LINE_BYTES_PER_CHAR = 12
_LINE_SLACK_BYTES = 64 * 1024
_SURROGATE = re.compile("[\ud800-\udfff]")
_BOM = "\ufeff"


@dataclass(frozen=True)
class TaskFormat:
    """The shape of a task: multiple choice with ``n_options`` options, yes/no, or a number
    (``kind == "numeric"``, ``n_options == 0``)."""

    kind: str  # "mcqa", "yesno" or "numeric"
    n_options: int
    has_context: bool

    @property
    def name(self) -> str:
        if self.kind == "yesno":
            return "yesno_open" if self.has_context else "yesno_close"
        if self.kind == "numeric":
            return "numeric_open" if self.has_context else "numeric"
        return f"mcqa_{self.n_options}" + ("_open" if self.has_context else "")

    @property
    def has_options(self) -> bool:
        """False for numeric formats: what needs options (students, option metrics) checks this."""
        return self.kind != "numeric"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, name: str) -> "TaskFormat":
        name = name.strip().lower()
        if name == "yesno_open":
            return cls("yesno", 2, True)
        if name == "yesno_close":
            return cls("yesno", 2, False)
        if name in ("numeric", "numeric_open"):
            return cls("numeric", 0, name == "numeric_open")
        m = re.fullmatch(r"mcqa_(\d+)(_open)?", name)
        if m and int(m.group(1)) >= 2:
            return cls("mcqa", int(m.group(1)), bool(m.group(2)))
        raise InputError(
            f"Unknown task format {name!r}. Use yesno_open, yesno_close, mcqa_K "
            "(K options, K >= 2; add _open when examples have a context), e.g. mcqa_5, "
            "or numeric (numeric_open with a context) for questions answered by a number."
        )


@dataclass(frozen=True)
class Example:
    question: str
    options: tuple[str, ...]
    label: str
    context: str | None = None

    @property
    def label_index(self) -> int:
        if not self.options:
            # A numeric example: whatever asks for the right option's position needs a choice task.
            raise InputError(
                "This needs a multiple-choice or yes/no task, but the example is numeric (its answer is "
                "a number, it has no options). Use it with an mcqa_K or yesno run or data file."
            )
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
        if not self.options:
            return TaskFormat("numeric", 0, has_context)
        if tuple(self.options) == YESNO_OPTIONS:
            return TaskFormat("yesno", 2, has_context)
        return TaskFormat("mcqa", len(self.options), has_context)


def normalise_text(text: str | None) -> str:
    """Lower case, accents folded, punctuation dropped, white space collapsed."""
    if not text:
        return ""
    if not text.isascii():  # ASCII has no accents to fold: most texts skip this (hot path)
        text = unicodedata.normalize("NFKD", text)
        text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = _NOT_WORD.sub(" ", text.lower())
    return " ".join(text.split())


_NOT_WORD = re.compile(r"[^\w\s]")


def dedup_key(example: Example) -> str:
    """Normalised exact-match key: two examples with the same key are duplicates.

    Options are sorted so that a reordering is still a duplicate; the label is left out so
    that the same question with a flipped label is a duplicate too.
    """
    options = example.options
    part = _options_part_cached(options) if isinstance(options, tuple) else _options_part(options)
    return f"{normalise_text(example.context)}\n{normalise_text(example.question)}\n{part}"


def _options_part(options: Iterable[str]) -> str:
    """The options' part of ``dedup_key``."""
    return "|".join(sorted(normalise_text(o) for o in options))


# Cached: most candidates repeat their options (every yes/no example has the same two), and
# this is on every reply's path.
_options_part_cached = functools.lru_cache(maxsize=4096)(_options_part)


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


_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,3})?")
_GROUPED_NUMBER = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")  # 1,234.5: thousands separators


def canonical_number(value: Any) -> str | None:
    """A number's canonical text ("42", "3.5", "-2", "1000"), or None when ``value`` is not
    a finite number within the limits.

    Takes a JSON number (not a boolean) or a string of one: plain or scientific notation, or
    with thousands separators ("1,234"). Trailing zeros go ("42.0" -> "42"), more than
    ``NUMERIC_DECIMALS`` decimal places are rounded, "-0" is "0". Magnitudes above
    ``MAX_NUMERIC_LABEL`` are refused.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = Decimal(value) if abs(value) <= MAX_NUMERIC_LABEL else None
    elif isinstance(value, float):
        number = Decimal(repr(value)) if math.isfinite(value) else None
    elif isinstance(value, str):
        text = value.strip()
        if _GROUPED_NUMBER.fullmatch(text):
            text = text.replace(",", "")
        elif not _NUMBER.fullmatch(text):
            return None
        try:
            number = Decimal(text)
        except InvalidOperation:
            return None
    else:
        return None
    if number is None or not number.is_finite() or abs(number) > MAX_NUMERIC_LABEL:
        return None
    exponent = number.as_tuple().exponent  # an int for a finite number
    if isinstance(exponent, int) and exponent < -NUMERIC_DECIMALS:
        number = number.quantize(Decimal(1).scaleb(-NUMERIC_DECIMALS), rounding=ROUND_HALF_EVEN)
    number = number.normalize()
    if number == 0:
        return "0"
    return format(number, "f")


def _has_no_options(obj: dict[str, Any]) -> bool:
    return obj.get("options") in (None, [])


def _numeric_label_value(obj: dict[str, Any]) -> Any:
    """The label of a numeric row: ``label``, or ``answer`` as structured outputs write it."""
    return obj["label"] if "label" in obj else obj.get("answer")


def _is_numeric_row(obj: dict[str, Any], fmt: TaskFormat | None) -> bool:
    if fmt is not None:
        return fmt.kind == "numeric"
    # Without a format: a row with no options whose label is a number is a numeric example.
    return _has_no_options(obj) and canonical_number(_numeric_label_value(obj)) is not None


def read_text_file(path: Path, what: str, *, missing_fix: str, folder_fix: str, save_fix: str) -> str:
    """A small user file (attributes, constraints) as text, or an InputError naming ``what``
    and the fix: missing, a folder, unreadable, not UTF-8 (a BOM is allowed)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what}. {missing_fix}") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder. {folder_fix}") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {what} ({exc.strerror or exc}). Check its permissions.") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path}: the {what} is not UTF-8 text. {save_fix}") from None


def _question_and_context(obj: dict[str, Any]) -> tuple[str, str | None]:
    """The question (a non-empty string) and the context (a string, or None when absent or
    blank) of a row, as every format reads them."""
    question = obj["question"]
    if not isinstance(question, str) or not question.strip():
        raise InvalidExample("empty-question", "question must be a non-empty string")
    context = obj.get("context")
    if context is not None and not isinstance(context, str):
        raise InvalidExample("bad-context", "context must be a string or null")
    if context is not None and not context.strip():
        context = None
    return question, context


def _numeric_example_from_dict(obj: dict[str, Any], fmt: TaskFormat | None) -> Example:
    if "question" not in obj:
        raise InvalidExample("missing-field", "missing field 'question'")
    if "label" not in obj and "answer" not in obj:
        raise InvalidExample("missing-field", "missing field 'label' (the number that answers the question)")
    question, context = _question_and_context(obj)
    if not _has_no_options(obj):
        raise InvalidExample("wrong-options", "a numeric example has no options (leave them out or write [])")
    for name, value in (("question", question), ("context", context)):
        if value and _SURROGATE.search(value):
            raise InvalidExample("bad-text", f"the {name} holds a lone surrogate escape (\\ud800-\\udfff), which is not a character")
    raw = _numeric_label_value(obj)
    label = canonical_number(raw)
    if label is None:
        shown = raw if not isinstance(raw, str) or len(raw) <= 40 else raw[:40] + "..."
        raise InvalidExample(
            NOT_A_NUMBER,
            f"label {shown!r} is not a finite number (at most {MAX_NUMERIC_LABEL:.0e} in size); "
            "a numeric example's label is the number that answers the question",
        )
    example = Example(question=question.strip(), options=(), label=label, context=context)
    if fmt is not None:
        check_format(example, fmt)
    return example


def example_from_dict(obj: Any, fmt: TaskFormat | None = None, strict: bool = True) -> Example:
    """Validate one object and build an Example, or raise InvalidExample with the reason.

    With ``fmt`` the example must also be of that format (option count, True/False options,
    context present or absent). ``strict`` also refuses repeated options (reason
    ``duplicate-options``; compared after folding case, Unicode compatibility forms and white
    space): seeds and generated candidates must not have them, but a few human benchmark rows
    do (CommonsenseQA), so data files are read with ``strict=False``.
    """
    if not isinstance(obj, dict):
        raise InvalidExample("not-an-object", f"expected a JSON object, got {type(obj).__name__}")
    if _is_numeric_row(obj, fmt):
        return _numeric_example_from_dict(obj, fmt)
    for field in ("question", "options", "label"):
        if field not in obj:
            raise InvalidExample("missing-field", f"missing field {field!r}")
    question, context = _question_and_context(obj)
    raw_options = obj["options"]
    if not isinstance(raw_options, list):
        raise InvalidExample("bad-options", "options must be a list of strings")
    listed: list[str] = []
    for o in raw_options:  # what _as_label does, in one pass (this is on every reply's path)
        if isinstance(o, str):
            listed.append(o.strip())
        elif isinstance(o, bool):
            listed.append("True" if o else "False")
        else:
            raise InvalidExample("bad-options", "options must be a list of strings")
    options = tuple(listed)
    if len(options) < 2:
        raise InvalidExample("bad-options", "options must hold at least two options")
    if any(not o for o in options):
        raise InvalidExample("empty-option", "options must not be empty strings")
    # ASCII text holds no surrogate: most examples skip the search.
    if not (question.isascii() and (context is None or context.isascii()) and all(o.isascii() for o in options)):
        for name, value in (("question", question), ("context", context), *(("option", o) for o in options)):
            if value and _SURROGATE.search(value):
                # json.loads turns an escaped lone surrogate ("\\ud800") into a str that cannot
                # be encoded (SQLite, files, the API would fail later): refuse it here.
                raise InvalidExample("bad-text", f"the {name} holds a lone surrogate escape (\\ud800-\\udfff), which is not a character")
    if strict and options not in _DISTINCT_OPTIONS:
        _check_distinct(options)
        if len(_DISTINCT_OPTIONS) < 4096:  # bounded: most runs repeat a few option sets (True/False)
            _DISTINCT_OPTIONS.add(options)
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


def option_key(option: str) -> str:
    """What two options must not share: equal after folding case, Unicode forms, spaces.

    Lighter than ``normalise_text`` on purpose: "-1" and "1", or "C" and "C++", are different
    answers even though they differ only in punctuation.
    """
    if option.isascii():  # NFKC leaves ASCII as it is, and casefold is lower there
        return " ".join(option.lower().split())
    return " ".join(unicodedata.normalize("NFKC", option).casefold().split())


_DISTINCT_OPTIONS: set[tuple[str, ...]] = set()  # option sets already found distinct


def _check_distinct(options: tuple[str, ...]) -> None:
    first: dict[str, int] = {}
    for i, option in enumerate(options):
        key = option_key(option)
        if key in first:
            j = first[key]
            raise InvalidExample(
                DUPLICATE_OPTIONS,
                f"options {j + 1} and {i + 1} are the same ({options[j]!r} and {option!r}, ignoring case and spaces)",
            )
        first[key] = i


def example_chars(example: Example) -> int:
    """The size that ``max_example_chars`` limits: question, context and options."""
    return len(example.question) + len(example.context or "") + sum(len(o) for o in example.options)


def check_format(example: Example, fmt: TaskFormat) -> None:
    if fmt.kind == "numeric":
        if example.options:
            raise InvalidExample("wrong-options", f"format {fmt.name} has no options; the label is a number")
        if canonical_number(example.label) != example.label:
            raise InvalidExample(NOT_A_NUMBER, f"label {example.label!r} is not a number in canonical form, e.g. \"42\" or \"3.5\"")
    elif fmt.kind == "yesno":
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


def _size(n: int) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 10_000_000 else f"{n / 1e6:,.1f} MB" if n >= 1_000_000 else f"{n:,} bytes"


def _raise_limit_hint(what: str, flag: str, param: str) -> str:
    if what == "seed":
        return f"or raise the limit with `treegen run ... {flag} N` ({param}=N in Python)"
    return f"or raise the limit with {param}=N"


def _check_file(path: Path, max_file_bytes: int, what: str) -> int:
    """Refuse what is not a readable, non-empty regular file within the size limit; its size."""
    try:
        st = os.stat(path)  # follows symlinks: a link to a regular file is fine
    except FileNotFoundError:
        raise SeedFileError(str(path), "no such file", "Check the path.") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise SeedFileError(str(path), f"cannot read this path ({exc})", "Check the path.") from None
    if stat.S_ISDIR(st.st_mode):
        raise SeedFileError(str(path), "is a folder, not a regular file", f"Give the path of a JSONL {what} file.")
    if not stat.S_ISREG(st.st_mode):
        # A FIFO or a device: opening a FIFO would block, and its size says nothing.
        kind = "a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "a device or socket"
        raise SeedFileError(
            str(path), f"is {kind}, not a regular file",
            f"Save the {what} examples to a file first (e.g. `cat ... > {'seeds' if what == 'seed' else 'data'}.jsonl`) and give its path.",
        )
    size = st.st_size
    if size == 0:
        raise SeedFileError(
            str(path), "the file is empty",
            'Add at least one example, one JSON object a line: {"question": ..., "options": [...], "label": ...}.',
        )
    if size > max_file_bytes:
        raise SeedFileError(str(path), *_too_big(path, size, max_file_bytes, what))
    return size


def _too_big(path: Path, size: int, max_file_bytes: int, what: str) -> tuple[str, str]:
    reason = f"the file is {_size(size)} ({size:,} bytes), more than the {_size(max_file_bytes)} treegen reads as a {what} file"
    if what == "seed":
        fix = (f"A seed file holds a handful of examples: take a few, e.g. `head -n 20 {path} > seeds.jsonl`, "
               + _raise_limit_hint(what, "--max-seed-bytes", "max_file_bytes") + ".")
    else:
        fix = f"Split the file, {_raise_limit_hint(what, '', 'max_file_bytes')}."
    return reason, fix


def _example_limit_fix(what: str) -> str:
    return f"Shorten the example, {_raise_limit_hint(what, '--max-example-chars', 'max_example_chars')}."


def iter_jsonl(
    path: str | Path,
    max_file_bytes: int | None = None,
    what: str = "data",
    max_line_bytes: int | None = None,
) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed object) for each non-blank line; SeedFileError names the line.

    ``max_file_bytes`` defaults to ``MAX_DATA_FILE_BYTES``; ``max_line_bytes`` (default: no
    limit beyond the file's) refuses a longer line before it is read whole or parsed. A UTF-8
    byte order mark is skipped. Anything else that is not JSON text (binary, UTF-16, invalid
    UTF-8, nesting deeper than Python parses, an integer of more than 4,300 digits) is a
    SeedFileError, never another exception.
    """
    path = Path(path)
    if max_file_bytes is None:
        max_file_bytes = MAX_DATA_FILE_BYTES
    _check_file(path, max_file_bytes, what)
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise SeedFileError(str(path), f"cannot open the file ({exc.strerror or exc})", "Check its permissions.") from None
    with fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):  # replaced between the check and the open
            raise SeedFileError(str(path), "is not a regular file", f"Give the path of a JSONL {what} file.")
        head = fh.read(8192)
        fh.seek(0)
        if head.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise SeedFileError(str(path), "the file is UTF-16 text, not UTF-8", "Save the file as UTF-8.", 1)
        if b"\x00" in head:
            raise SeedFileError(str(path), "this is a binary file, not JSON lines", f"Give a UTF-8 JSONL {what} file.")
        read = 0
        lineno = 0
        while True:
            raw = fh.readline(max_line_bytes + 1) if max_line_bytes is not None else fh.readline()
            if not raw:
                return
            lineno += 1
            read += len(raw)
            if read > max_file_bytes:  # the file grew after it was measured
                raise SeedFileError(str(path), *_too_big(path, read, max_file_bytes, what))
            if max_line_bytes is not None and len(raw) > max_line_bytes:
                raise SeedFileError(
                    str(path),
                    f"the line is longer than {max_line_bytes:,} bytes, more than an example within the size limit can take",
                    _example_limit_fix(what), lineno,
                )
            if b"\x00" in raw:
                raise SeedFileError(str(path), "this is a binary file, not JSON lines", f"Give a UTF-8 JSONL {what} file.", lineno)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise SeedFileError(str(path), "the line is not UTF-8 text", "Save the file as UTF-8.", lineno) from None
            if line.startswith(_BOM):  # editors on Windows write one; files joined with cat repeat it
                line = line[1:]
            if not line.strip():
                continue
            yield lineno, _parse_line(path, line, lineno)


def _parse_line(path: Path, line: str, lineno: int) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise SeedFileError(
            str(path), f"not valid JSON ({exc.msg} at column {exc.colno})",
            'Write one JSON object a line, e.g. {"question": "...", "context": null, "options": ["True", "False"], "label": "True"}.',
            lineno,
        ) from None
    except RecursionError:
        raise SeedFileError(
            str(path), "the JSON is nested deeper than treegen reads",
            'An example is flat: {"question": "...", "context": null, "options": ["...", "..."], "label": "..."}.',
            lineno,
        ) from None
    except ValueError as exc:  # int() refuses more than sys.get_int_max_str_digits() digits
        if "digits" not in str(exc):
            raise SeedFileError(str(path), f"not valid JSON ({exc})", "Fix this line.", lineno) from None
        raise SeedFileError(
            str(path), "a number on this line has too many digits to read",
            "Write long numbers as strings, in quotes (labels and options are text anyway).",
            lineno,
        ) from None


def load_examples(
    path: str | Path,
    fmt: TaskFormat | None = None,
    max_file_bytes: int | None = None,
    what: str = "data",
    max_example_chars: int | None = None,
    allow_duplicate_options: bool = True,
) -> tuple[list[Example], TaskFormat]:
    """Read and validate a JSONL file of examples; all must share one format.

    The format is inferred from the first example unless given. Raises SeedFileError with the
    file, the line and the fix for the first bad line. Limits default to
    ``MAX_DATA_FILE_BYTES`` and ``MAX_DATA_EXAMPLE_CHARS`` (``load_seeds`` passes the seed
    ones). Benchmark rows may repeat an option (CommonsenseQA does), so that is allowed
    unless ``allow_duplicate_options=False``.
    """
    if max_file_bytes is None:
        max_file_bytes = MAX_DATA_FILE_BYTES
    if max_example_chars is None:
        max_example_chars = MAX_DATA_EXAMPLE_CHARS
    max_line_bytes = max_example_chars * _LINE_BYTES_PER_CHAR + _LINE_SLACK_BYTES
    examples: list[Example] = []
    first_line = None
    for lineno, obj in iter_jsonl(path, max_file_bytes=max_file_bytes, what=what, max_line_bytes=max_line_bytes):
        try:
            # A row without options in a numeric file is judged as numeric (so a bad label is
            # named as such); any other row is inferred, so a mixed file names both formats.
            as_numeric = fmt is not None and fmt.kind == "numeric" and isinstance(obj, dict) and _has_no_options(obj)
            ex = example_from_dict(obj, fmt if as_numeric else None, strict=not allow_duplicate_options)
        except InvalidExample as exc:
            raise SeedFileError(str(path), exc.detail, _fix_for(exc.reason), lineno) from None
        size = example_chars(ex)
        if size > max_example_chars:
            raise SeedFileError(
                str(path),
                f"the example is {size:,} characters (question, context and options), more than the "
                f"{max_example_chars:,} treegen reads in a {what} file",
                _example_limit_fix(what), lineno,
            )
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


def load_seeds(
    path: str | Path,
    fmt: TaskFormat | None = None,
    max_example_chars: int | None = None,
    max_file_bytes: int | None = None,
) -> tuple[list[Example], TaskFormat]:
    """Seeds: validated like any data file, but smaller (``MAX_SEED_FILE_BYTES``,
    ``MAX_SEED_EXAMPLE_CHARS`` by default), no repeated options, no duplicates among them."""
    examples, fmt = load_examples(
        path, fmt,
        max_file_bytes=MAX_SEED_FILE_BYTES if max_file_bytes is None else max_file_bytes,
        what="seed",
        max_example_chars=MAX_SEED_EXAMPLE_CHARS if max_example_chars is None else max_example_chars,
        allow_duplicate_options=False,
    )
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
        "missing-field": 'Every line needs "question", "options" and "label" ("context" is optional); '
                         'a numeric example has "question" and a number "label", no options.',
        NOT_A_NUMBER: 'Write the label as a number, e.g. 42 or "3.5" (digits only: no units, no words).',
        "label-not-in-options": "The label must be the text of one of the options, spelled the same.",
        "bad-options": 'Write options as a JSON list of strings, e.g. ["True", "False"].',
        "not-an-object": "Write one JSON object a line, not a list or a bare value.",
        "empty-question": "Give every example a non-empty question.",
        DUPLICATE_OPTIONS: "Make the options of an example differ from each other.",
        "bad-text": "Write the character itself, or a valid \\uXXXX\\uXXXX surrogate pair.",
        "bad-context": "Write the context as a string, or null for none.",
        "bad-label": 'Write the label as the text of one of the options, e.g. "True".',
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
