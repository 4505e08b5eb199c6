"""treegen: create labelled training data with an LLM by exploring a search tree under a hard cost limit.

The public API (imported lazily, so that ``import treegen`` and the CLI start fast)::

    treegen.run(seeds, **options) -> RunResult          # also from a notebook
    await treegen.arun(seeds, **options) -> RunResult
    treegen.resume(run_dir, **options) -> RunResult
    treegen.open_run(path) -> RunStore                    # read a run: examples, nodes, calls
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

__all__ = [
    "__version__", "run", "arun", "resume", "open_run", "RunResult", "RunConfig", "RunStore", "Example",
    "TaskFormat", "TreegenError", "InputError", "BackendError",
]

_LAZY = {
    "run": "treegen.api", "arun": "treegen.api", "resume": "treegen.api", "open_run": "treegen.api",
    "RunResult": "treegen.engine", "RunConfig": "treegen.config", "RunStore": "treegen.store",
    "Example": "treegen.task", "TaskFormat": "treegen.task", "TreegenError": "treegen.errors",
    "InputError": "treegen.errors", "BackendError": "treegen.errors",
}

if TYPE_CHECKING:
    from treegen.api import arun, open_run, resume, run
    from treegen.config import RunConfig
    from treegen.engine import RunResult
    from treegen.errors import BackendError, InputError, TreegenError
    from treegen.store import RunStore
    from treegen.task import Example, TaskFormat


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'treegen' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
