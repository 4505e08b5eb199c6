"""One small exception tree. Every message says what went wrong and how to fix it.

The CLI maps these to exit codes: ``InputError`` (bad input from the user: files, flags,
presets) exits 2 and nothing is written; other ``TreegenError`` exit 1.
"""

from __future__ import annotations


class TreegenError(Exception):
    """Base of every error treegen raises on purpose."""

    exit_code = 1


class InputError(TreegenError):
    """Bad input from the user: a file, a flag, a preset. Exit code 2, nothing written."""

    exit_code = 2


class SeedFileError(InputError):
    """A seed or data file that cannot be used, with the file, the line and the fix."""

    def __init__(self, path: str, message: str, fix: str, line: int | None = None):
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


class BackendError(TreegenError):
    """The LLM endpoint failed in a way retries could not fix (auth, bad URL, bad model)."""


class DatasetError(InputError):
    """A benchmark dataset that is missing or malformed."""


class StudentError(InputError):
    """A student that cannot be trained or loaded with what it was given."""
