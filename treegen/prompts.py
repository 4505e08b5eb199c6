"""The prompt that shows the in-context example(s) and asks for k new ones in the same format.

Contract with the simulator (and any reader of a logged prompt): every in-context example
stands alone on a line as one compact JSON object in the unified format, between the lines
``<examples>`` and ``</examples>``, and the request says ``Write {k} new examples``.
"""

from __future__ import annotations

import re
from typing import Sequence

from treegen.task import Example, TaskFormat

SYSTEM_PROMPT = (
    "You create training examples for a machine-learning task. Each example is one JSON object "
    'with the fields "question", "context", "options" and "label", where "label" is the exact '
    "text of the correct option. New examples must be correct, self-contained, varied, and "
    "different from the ones shown."
)


def format_instructions(fmt: TaskFormat) -> str:
    if fmt.kind == "yesno":
        ctx = (
            'Each example has a "context" passage and a yes/no "question" answerable from it.'
            if fmt.has_context
            else 'Each example is a yes/no "question" with "context": null.'
        )
        return ctx + ' "options" is always ["True", "False"] and "label" is "True" or "False".'
    ctx = 'Each example has a "context" passage.' if fmt.has_context else 'Each example has "context": null.'
    return (
        f'{ctx} "options" is a list of exactly {fmt.n_options} distinct answer texts and "label" '
        "is the text of the one correct option."
    )


def build_messages(
    examples: Sequence[Example], fmt: TaskFormat, k: int, task_description: str | None = None
) -> list[dict[str, str]]:
    """Chat messages asking for ``k`` new examples like ``examples``."""
    shown = "\n".join(ex.to_json() for ex in examples)
    intro = f"Task: {task_description}\n\n" if task_description else ""
    noun = "example" if len(examples) == 1 else "examples"
    user = (
        f"{intro}Here is {'an' if len(examples) == 1 else len(examples)} {noun} of the task:\n"
        f"<examples>\n{shown}\n</examples>\n\n"
        f"{format_instructions(fmt)}\n"
        f"Write {k} new examples of the same task, in the same format. "
        "Answer with a JSON array of the new objects and nothing else."
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


_EXAMPLES_BLOCK = re.compile(r"<examples>\n(.*?)\n</examples>", re.S)
_K = re.compile(r"Write (\d+) new examples")


def read_prompt(messages: Sequence[dict[str, str]]) -> tuple[list[dict], int]:
    """The in-context example objects and k from messages built by ``build_messages``.

    Used by the simulator. Returns ([], 1) for a prompt of another shape.
    """
    import json

    text = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "user")
    shown: list[dict] = []
    block = _EXAMPLES_BLOCK.search(text)
    if block:
        for line in block.group(1).splitlines():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                shown.append(obj)
    m = _K.search(text)
    return shown, int(m.group(1)) if m else 1
