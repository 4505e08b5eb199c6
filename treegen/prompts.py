"""The prompt that shows the in-context example(s) and asks for k new ones in the same format.

Short on purpose: every token of it is paid on every request. Layout, fixed part first so a
provider's prompt cache (and ``treegen.tokens``' count cache) sees one prefix per run:

- system (fixed for a run): what to write, the one rule the examples cannot show (the
  label is the text of the correct option; for a numeric format, the number that answers the
  question), and, without structured outputs, the reply
  format in one line. With structured outputs the JSON schema carries the format.
- user (varies): the example(s), one compact JSON object a line, in the order of the
  schema's fields and without the fields the format does not have (no ``"context": null``
  in closed-book formats, no ``"options"`` in numeric ones), then ``Write {k} new examples.``

Contract with the simulator (``read_prompt``) and any reader of a logged prompt: every line
of the user message that is a JSON object is an in-context example, and the request says
``Write {k} new example(s)``.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any, Sequence

from treegen.task import Example, TaskFormat, canonical_number

_ROLE = "Write new, varied, correct examples like the ones shown, not copies."
_PLAIN_FORMAT = "One JSON object a line, nothing else."


@functools.lru_cache(maxsize=64)
def system_prompt(fmt: TaskFormat, structured: bool = False, task_description: str | None = None) -> str:
    """The fixed part of a run's prompt (one string per format, reply mode and description).

    The shown examples teach the fields; only what they cannot show is said: the label's
    meaning, that a context must answer the question, and (without a schema) the reply format.
    """
    parts = [f"Task: {task_description.strip()}" if task_description and task_description.strip() else "", _ROLE]
    if fmt.kind == "yesno":
        parts.append('label is "True" or "False".')
    elif fmt.kind == "numeric":
        field = "answer" if structured else "label"
        parts.append(f"{field} is the number that answers the question (digits only, no units).")
    elif structured:
        parts.append("answer is the number of the correct option (1 is the first).")
    else:
        parts.append("label is the correct option's text.")
    if fmt.has_context:
        parts.append("The context must answer the question.")
    if not structured:
        parts.append(_PLAIN_FORMAT)
    return " ".join(p for p in parts if p)


def example_fields(example: Example, fmt: TaskFormat | None = None, structured: bool = False) -> dict[str, Any]:
    """The fields a model sees and writes: ``context`` only when the format has one; with a
    schema, a multiple-choice answer by the option's number (what the schema asks for). A
    numeric example has no options and shows its label as a JSON number (``"answer"`` with a
    schema, ``"label"`` without)."""
    has_context = fmt.has_context if fmt is not None else example.context is not None
    fields: dict[str, Any] = {"question": example.question}
    if has_context:
        fields["context"] = example.context or ""
    numeric = fmt.kind == "numeric" if fmt is not None else not example.options
    if numeric:
        fields["answer" if structured else "label"] = _number(example.label)
        return fields
    fields["options"] = list(example.options)
    if structured and fmt is not None and fmt.kind == "mcqa":
        fields["answer"] = example.label_index + 1
    else:
        fields["label"] = example.label
    return fields


def _number(label: str) -> Any:
    """A numeric label as a JSON number; left as text if it is not one (shown as it is)."""
    from treegen.schema import json_number

    canonical = canonical_number(label)
    return json_number(canonical) if canonical is not None else label


def render_example(example: Example, fmt: TaskFormat | None = None, structured: bool = False) -> str:
    """One example as the prompt shows it: compact JSON, no spaces after separators."""
    return json.dumps(example_fields(example, fmt, structured), ensure_ascii=False, separators=(",", ":"))


def build_messages(
    examples: Sequence[Example], fmt: TaskFormat, k: int, task_description: str | None = None,
    *, structured: bool = False,
) -> list[dict[str, str]]:
    """Chat messages asking for ``k`` new examples like ``examples``.

    ``structured``: the request also carries the JSON schema of the reply (structured
    outputs), so the prompt leaves the reply format to it. Without it (the default, safe
    for any server) the system message asks for one JSON object a line.
    """
    shown = "\n".join(render_example(ex, fmt, structured) for ex in examples)
    ask = f"Write {k} new example{'' if k == 1 else 's'}."
    return [
        {"role": "system", "content": system_prompt(fmt, structured, task_description)},
        {"role": "user", "content": f"{shown}\n{ask}"},
    ]


_K = re.compile(r"Write (\d+) new example")


def read_prompt(messages: Sequence[dict[str, str]]) -> tuple[list[dict], int]:
    """The in-context example objects and k from messages built by ``build_messages``.

    Used by the simulator. Returns ([], 1) for a prompt of another shape. Also reads the
    earlier prompt shape (examples between ``<examples>`` lines), so logged runs replay.
    """
    text = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "user")
    shown: list[dict] = []
    for line in text.splitlines():
        line = line.strip()
        if not (line.startswith("{") and line.endswith("}")):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            from treegen.schema import answer_to_label

            shown.append(answer_to_label(obj))  # a structured prompt shows answers by number
    m = _K.search(text)
    return shown, int(m.group(1)) if m else 1
