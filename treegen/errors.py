"""One small exception tree. Every message says what went wrong and how to fix it.

::

    TreegenError                  exit 1: something failed while working
    ├── InputError                exit 2: bad input from the user; nothing was created or written
    │   ├── SeedFileError         a seed or data file, with the file, the line and the fix
    │   ├── ConfigError           a flag, preset, profile or price table that does not make sense
    │   │   └── UnknownModelPriceError   a dollar cap for a model the price table does not know
    │   ├── RunNotFoundError      no run at that path, or a SQLite file that is not a treegen run
    │   ├── RunDamagedError       a run database that is truncated or garbage
    │   ├── RunLockedError        another treegen process is working on the run
    │   ├── OutputError           an export or report path that cannot be written
    │   ├── DatasetError          a benchmark dataset that is missing or malformed
    │   └── StudentError          a student that cannot be trained or loaded with what it was given
    ├── BackendError              the LLM endpoint failed in a way retries could not fix
    │   └── UsageAnomalyError     the server reported more usage than a request can use
    └── DiskFullError             the disk filled up: free space, then resume

The CLI maps ``exit_code`` to the process's exit status and prints the message on stderr.
"""

from __future__ import annotations

from pathlib import Path


class TreegenError(Exception):
    """Base of every error treegen raises on purpose."""

    exit_code = 1


class InputError(TreegenError):
    """Bad input from the user: a file, a flag, a preset. Exit code 2, nothing written."""

    exit_code = 2


class SeedFileError(InputError):
    """A seed or data file that cannot be used, with the file, the line and the fix."""

    def __init__(self, path: str | Path, message: str, fix: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.reason = message
        self.fix = fix
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}. {fix}")


class ConfigError(InputError):
    """A flag, preset or price table that does not make sense."""


class UnknownModelPriceError(ConfigError):
    """A dollar cap was asked for a model the price table does not know."""


class RunNotFoundError(InputError):
    """A run folder or database that does not exist or is not a treegen run."""


class RunDamagedError(InputError):
    """A run database that SQLite cannot read: truncated, overwritten, not a database."""

    def __init__(self, path: Path, detail: str):
        self.path = path
        super().__init__(
            f"the run database {path} is damaged ({detail}). Nothing was changed. If you have a copy, "
            f"restore it; otherwise recover what SQLite can read with "
            f"`sqlite3 {path} .recover | sqlite3 {path.parent / 'recovered.db'}` and open that."
        )


class RunLockedError(InputError):
    """Another process is working on the run; two would overspend and duplicate work."""


class OutputError(InputError):
    """An output path (export, report, run folder) that cannot be written."""


class DatasetError(InputError):
    """A benchmark dataset that is missing or malformed."""


class StudentError(InputError):
    """A student that cannot be trained or loaded with what it was given."""


class BackendError(TreegenError):
    """The LLM endpoint failed in a way retries could not fix (auth, bad URL, bad model)."""


class UsageAnomalyError(BackendError):
    """The server reported usage beyond what a request could use (max_tokens ignored, absurd counts)."""


class DiskFullError(TreegenError):
    """The disk filled up while writing the run; everything committed before is kept."""
