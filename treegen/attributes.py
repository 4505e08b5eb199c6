"""Attribute-guided generation (``--attributes FILE|auto``): dimensions such as topic or
difficulty, each with values; every generation request samples one value per dimension
(seeded) and its prompt asks for examples with them (``Attributes: topic=x; difficulty=y``).

A file is TOML or JSON, ``{"topic": ["science", "history"], "difficulty": ["easy", "hard"]}``
(the reply shape ``{"attributes": [{"name": ..., "values": [...]}]}`` is read too). ``auto``
asks the model once for the dimensions that fit the seeds; ``parse_auto`` reads its reply.
"""

from __future__ import annotations

import re

import json
import random
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from treegen.errors import ConfigError, InputError
from treegen.prompts import render_example
from treegen.schema import DIALECTS, response_format
from treegen.task import Example, TaskFormat, read_text_file
from treegen.verify import json_values

ATTRIBUTES_SCHEMA_NAME = "attributes"
ATTRIBUTES_LAST_LINE = "List the attributes."
AUTO_MAX_SEEDS = 20  # seeds shown to the auto request: enough to see the task, bounded cost
# What a model's auto reply may bring (a longer list would only lengthen every prompt).
_AUTO_MAX_DIMENSIONS = 8
_AUTO_MAX_VALUES = 12
_AUTO_MAX_VALUE_CHARS = 80
_MAX_REPLY_CHARS = 50_000
# attribute_line separates pairs with "; " and names from values with "=".
_FORBIDDEN_IN_NAME = ("=", ";", "\n")
_FORBIDDEN_IN_VALUE = (";", "\n")
_EXAMPLE_FILE = 'e.g. {"topic": ["science", "history"], "difficulty": ["easy", "hard"]} (JSON) or topic = ["science", "history"] (TOML)'

_AUTO_SYSTEM = (
    "List 3-5 attributes that vary across examples of this task (e.g. topic, domain, difficulty, length, style), "
    "each with 3-6 short values that fit the examples shown. "
    'Reply with one JSON object, e.g. {"attributes":[{"name":"topic","values":["science","history","sports"]},'
    '{"name":"difficulty","values":["easy","medium","hard"]}]}.'
)


@dataclass(frozen=True)
class Attributes:
    """Dimensions, each a name and its values, in order."""

    dimensions: tuple[tuple[str, tuple[str, ...]], ...]

    def to_json(self) -> str:
        return json.dumps({name: list(values) for name, values in self.dimensions}, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, s: str) -> "Attributes":
        try:
            data = json.loads(s)
        except (ValueError, RecursionError) as exc:
            raise InputError(f"The stored attributes are not JSON ({exc}). Give them again with --attributes FILE.") from None
        return _from_data(data, "the stored attributes")


def _pairs(data: Any) -> list[tuple[Any, Any]] | None:
    """(name, values) pairs from either accepted shape, or None when it is neither."""
    if isinstance(data, dict) and isinstance(data.get("attributes"), list):
        pairs = []
        for item in data["attributes"]:
            if not isinstance(item, dict):
                return None
            pairs.append((item.get("name"), item.get("values")))
        return pairs
    if isinstance(data, dict) and isinstance(data.get("attributes"), dict):
        data = data["attributes"]  # TOML: an [attributes] table
    if isinstance(data, dict):
        return list(data.items())
    return None


def _from_data(data: Any, where: str) -> Attributes:
    """Validated Attributes; InputError naming ``where`` and the fix otherwise."""
    pairs = _pairs(data)
    if pairs is None:
        raise InputError(f"{where}: expected an object mapping each dimension to its values, {_EXAMPLE_FILE}.")
    dims: list[tuple[str, tuple[str, ...]]] = []
    seen: set[str] = set()
    for name, values in pairs:
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"{where}: a dimension has no name. Name every dimension, {_EXAMPLE_FILE}.")
        name = name.strip()
        if any(ch in name for ch in _FORBIDDEN_IN_NAME):
            raise InputError(f"{where}: dimension name {name!r} holds '=', ';' or a line break. Rename it (e.g. with letters and _).")
        if name.casefold() in seen:
            raise InputError(f"{where}: dimension {name!r} is listed twice. Merge its values into one list.")
        seen.add(name.casefold())
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise InputError(f"{where}: the values of {name!r} must be a list of strings, {_EXAMPLE_FILE}.")
        clean = _unique(v.strip() for v in values)
        if not clean:
            raise InputError(f"{where}: dimension {name!r} has no non-empty value. Give it at least one, {_EXAMPLE_FILE}.")
        for value in clean:
            if any(ch in value for ch in _FORBIDDEN_IN_VALUE):
                raise InputError(f"{where}: value {value!r} of {name!r} holds ';' or a line break. Reword it (a comma is fine).")
        dims.append((name, clean))
    if not dims:
        raise InputError(f"{where}: no dimensions. Give at least one dimension with its values, {_EXAMPLE_FILE}.")
    return Attributes(tuple(dims))


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    """Non-empty values, first spelling kept, repeats (ignoring case) dropped: a repeat would
    only weight the sampling."""
    out: list[str] = []
    seen: set[str] = set()
    for value in values:
        if value and value.casefold() not in seen:
            seen.add(value.casefold())
            out.append(value)
    return tuple(out)


def load_attributes(path: str | Path) -> Attributes:
    """Attributes from a TOML or JSON file (chosen by suffix; otherwise JSON, then TOML)."""
    path = Path(path)
    text = read_text_file(path, "attributes file", missing_fix="Check the path, or use --attributes auto.",
                          folder_fix=f"Give a TOML or JSON attributes file, {_EXAMPLE_FILE}.",
                          save_fix="Save it as UTF-8.")
    suffix = path.suffix.lower()
    errors: list[str] = []
    for kind in (["toml"] if suffix == ".toml" else ["json"] if suffix == ".json" else ["json", "toml"]):
        try:
            data = json.loads(text) if kind == "json" else tomllib.loads(text)
        except (ValueError, RecursionError) as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
            errors.append(f"not valid {kind.upper()}: {exc}")
            continue
        return _from_data(data, str(path))
    raise InputError(f"{path}: {'; '.join(errors)}. Fix the file, {_EXAMPLE_FILE}.")


def sample_attributes(attrs: Attributes, rng: random.Random) -> dict[str, str]:
    """One value per dimension, in dimension order; the same rng state gives the same choice."""
    return {name: values[rng.randrange(len(values))] for name, values in attrs.dimensions}


def attribute_line(choice: dict[str, str]) -> str:
    """``Attributes: topic=science; difficulty=hard`` ("" for no choice)."""
    if not choice:
        return ""
    return "Attributes: " + "; ".join(f"{name}={value}" for name, value in choice.items())


def auto_messages(seeds: Sequence[Example], fmt: TaskFormat, task_description: str | None = None,
                  *, max_seeds: int = AUTO_MAX_SEEDS) -> list[dict[str, str]]:
    """Chat messages asking for the dimensions and values that fit the seeds (the first
    ``max_seeds`` of them, shown as the generation prompt shows examples)."""
    if not seeds:
        raise InputError("--attributes auto needs seed examples to look at. Give seeds, or an attributes file.")
    task = f"Task: {task_description.strip()} " if task_description and task_description.strip() else ""
    shown = "\n".join(render_example(ex, fmt) for ex in seeds[:max_seeds])
    return [
        {"role": "system", "content": task + _AUTO_SYSTEM},
        {"role": "user", "content": f"{shown}\n{ATTRIBUTES_LAST_LINE}"},
    ]


def auto_schema() -> dict[str, Any]:
    """``{"attributes": [{"name", "values"}]}``: 3-5 dimensions of 3-6 values; strict-mode compatible."""
    item = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "values": {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 6},
        },
        "required": ["name", "values"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {ATTRIBUTES_SCHEMA_NAME: {"type": "array", "items": item, "minItems": 3, "maxItems": 5}},
        "required": [ATTRIBUTES_SCHEMA_NAME],
        "additionalProperties": False,
    }


def auto_response_format(dialect: str) -> dict[str, Any] | None:
    """The ``response_format`` of the auto request; None for "off"."""
    if dialect not in DIALECTS:
        raise ConfigError(f"Unknown structured-output dialect {dialect!r}. Use one of: {', '.join(DIALECTS)}.")
    fmt = response_format(auto_schema(), dialect)
    if fmt is not None and fmt.get("type") == "json_schema":
        fmt = {**fmt, "json_schema": {**fmt["json_schema"], "name": ATTRIBUTES_SCHEMA_NAME}}
    return fmt


_PLACEHOLDER = re.compile(r"^(\.\.\.|…|etc\.?|value[ _-]?\d*|n/?a|none|null|true|false|yes|no|\W*)$", re.IGNORECASE)


def _placeholder(value: str) -> bool:
    """What a small model copies from the instructions or the labels rather than a value:
    "...", "value_1", "True"/"False" (observed from SmolLM2-135M)."""
    return bool(_PLACEHOLDER.match(value.strip()))


def _clean_auto(data: Any) -> Any:
    """A model's list made safe for the prompt line: separators replaced, long values and
    repeats dropped, at most a few dimensions and values. Shapes it cannot read pass through."""
    pairs = _pairs(data)
    if pairs is None:
        return data
    dims: dict[str, list[str]] = {}
    for name, values in pairs:
        if not isinstance(name, str) or not name.strip():
            continue
        name = " ".join(name.replace("=", "-").replace(";", ",").split())
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or name.casefold() in {n.casefold() for n in dims}:
            continue
        texts = [" ".join(str(v).replace(";", ",").split()) for v in values
                 if isinstance(v, (str, int, float)) and not isinstance(v, bool)]
        kept = list(_unique(t for t in texts if len(t) <= _AUTO_MAX_VALUE_CHARS and not _placeholder(t)))
        kept = kept[:_AUTO_MAX_VALUES]
        if len(kept) >= 2:  # one value does not vary anything
            dims[name] = kept
        if len(dims) == _AUTO_MAX_DIMENSIONS:
            break
    return dims


def parse_auto(text: str) -> Attributes:
    """The attributes of an auto reply, tolerant of prose and code fences around the JSON.

    Raises InputError when the reply holds no usable dimension."""
    for value in json_values(str(text or "")[:_MAX_REPLY_CHARS]):
        cleaned = _clean_auto(value)
        if isinstance(cleaned, dict) and cleaned:
            return _from_data(cleaned, "the model's attribute list")
    raise InputError(
        "The model's reply to the attributes request held no usable dimension (a name with values). "
        f"Run again, or give an attributes file with --attributes FILE, {_EXAMPLE_FILE}."
    )
