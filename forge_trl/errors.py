"""User-facing errors.

A ForgeError is something the user can fix: a config key, a data row, a path, an incompatible choice.
The CLI prints it on one line and exits with status 2; tracebacks are reserved for our own bugs.
"""

from __future__ import annotations

import sys
from typing import Callable

EXIT_USER_ERROR = 2


class ForgeError(Exception):
    """An error caused by user input, reported as one line without a traceback."""

    kind = "error"

    def one_line(self) -> str:
        text = " ".join(str(self).split())
        return f"forge_trl: {self.kind}: {text}"


class ConfigError(ForgeError):
    kind = "config error"


def did_you_mean(word: str, candidates) -> str:
    """`"; did you mean 'x'?"` for the closest of `candidates` to a misspelt `word`, or "" when none is close."""
    import difflib

    close = difflib.get_close_matches(word, [str(c) for c in candidates], n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def require(condition: bool, key: str, message: str) -> None:
    """Raise a ConfigError naming `key` unless `condition` holds (the schemas' range checks)."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


class DataError(ForgeError):
    kind = "data error"

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None, field: str | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}" if line is not None else str(path)
        if field is not None:
            where = f"{where} field '{field}'" if where else f"field '{field}'"
        super().__init__(f"{where}: {message}" if where else message)
        self.path, self.line, self.field = path, line, field


class ModelError(ForgeError):
    kind = "model error"


class TrainingError(ForgeError):
    """Training could not go on (e.g. the loss stayed non-finite); checkpoints written before stay usable."""

    kind = "training error"


class StorageError(ForgeError):
    """The disk refused a write (full, quota, read-only, I/O error); what was there before stays intact."""

    kind = "storage error"


def run_command(action: Callable[[], object]) -> int:
    """Run a command-line entry point's work: 0 when it succeeds; a ForgeError becomes its one line on stderr and
    exit status 2 (tracebacks stay for bugs)."""
    try:
        action()
    except ForgeError as exc:
        print(exc.one_line(), file=sys.stderr)
        return EXIT_USER_ERROR
    return 0
