"""What every command prints, and what it keeps off the terminal: one logging setup for all of them.

Every record goes to the root logger. The terminal handler (stderr) shows forge's own lines and every third-party
line a user can act on; notices a user cannot act on (`is_quiet`) go only to the command's log file:
`<output_dir>/forge.log` for a training run, a `forge.log` in the output directory of the commands that have one,
nowhere for the others. Records logged before the log file is known (bitsandbytes warns while it is imported,
long before a run's output_dir is composed) wait in a buffer and are written to the file when it is attached.

Python warnings become log records too (`logging.captureWarnings`), so the same rule sorts them: a FutureWarning
or DeprecationWarning raised in a dependency is quiet; one raised in forge_trl, and every other category, is shown.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
from pathlib import Path

LOG_FILE = "forge.log"
TERMINAL_FORMAT = "[%(levelname)s] %(name)s: %(message)s"
FILE_FORMAT = "%(asctime)s [%(levelname)s] %(name)s: %(message)s"

# (logger name prefix, text in the message) of notices a user cannot act on.
QUIET_NOTICES = (
    # bitsandbytes, at import on a CPU without the optional `kernels` package (transformers and peft import it).
    ("bitsandbytes", "kernels-community"),
    # TRL's ORPO/CPO trainers switch remove_unused_columns off themselves and ask the user to set it.
    ("trl", "remove_unused_columns"),
)
# Warning categories that are quiet when a dependency raises them (they are for that dependency's developers).
QUIET_WARNINGS = ("FutureWarning", "DeprecationWarning", "PendingDeprecationWarning")
# A captured warning's message is `warnings.formatwarning`'s: "<file>:<line>: <Category>: <text>".
_WARNING_HEADER = re.compile(r"(?P<file>.+?):\d+: (?P<category>\w+): ")
_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])
# Records are kept for the log file from the start of a command until it knows its output directory (a few
# seconds); MemoryHandler needs a capacity, though without a target it only keeps them.
_PENDING_CAPACITY = 10_000


def is_quiet(record: logging.LogRecord) -> bool:
    """Whether a record is a notice a user cannot act on (log file only)."""
    if record.name == "py.warnings":
        header = _WARNING_HEADER.match(record.getMessage())
        return header is not None and header["category"] in QUIET_WARNINGS and not _in_forge(header["file"])
    message = None
    for prefix, text in QUIET_NOTICES:
        if record.name == prefix or record.name.startswith(prefix + "."):
            message = record.getMessage() if message is None else message
            if text in message:
                return True
    return False


def _in_forge(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep)


def _not_quiet(record: logging.LogRecord) -> bool:
    return not is_quiet(record)


class _Terminal(logging.StreamHandler):
    """A StreamHandler on whatever sys.stderr is when it writes (tests and notebooks swap it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _Setup:
    """The handlers this module installed on the root logger (and nothing else: pytest's stay)."""

    terminal: logging.Handler | None = None
    pending: logging.handlers.MemoryHandler | None = None
    file: logging.FileHandler | None = None


def setup_logging(*, log_file: str | Path | None = None, pending: bool = False, level: int = logging.INFO) -> None:
    """Install the terminal handler, and the log file when it is known (`log_to_file` attaches it later when
    `pending`: until then records are kept). Without either, quiet notices are dropped. Calling it again replaces
    what the previous call installed."""
    root = logging.getLogger()
    for handler in (_Setup.terminal, _Setup.pending, _Setup.file):
        if handler is not None:
            root.removeHandler(handler)
            handler.close()
    _Setup.terminal = _Setup.pending = _Setup.file = None
    root.setLevel(level)
    terminal = _Terminal()
    terminal.setFormatter(logging.Formatter(TERMINAL_FORMAT))
    terminal.addFilter(_not_quiet)
    root.addHandler(terminal)
    _Setup.terminal = terminal
    if pending:
        _Setup.pending = logging.handlers.MemoryHandler(
            _PENDING_CAPACITY, flushLevel=logging.CRITICAL + 1, flushOnClose=False
        )
        root.addHandler(_Setup.pending)
    logging.captureWarnings(True)
    if log_file is not None:
        log_to_file(log_file)


def log_to_file(path: str | Path) -> Path:
    """Write every record from now on (and those kept so far) to `path`, appending; replaces an earlier log file
    (each job of a sweep logs into its own directory)."""
    path = Path(path)
    if int(os.environ.get("RANK", "0")) > 0:  # one file per process of a multi-process launch
        path = path.with_name(f"{path.stem}.rank{os.environ['RANK']}{path.suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    root = logging.getLogger()
    if _Setup.pending is not None:
        _Setup.pending.setTarget(handler)
        _Setup.pending.flush()
        root.removeHandler(_Setup.pending)
        _Setup.pending.close()
        _Setup.pending = None
    if _Setup.file is not None:
        root.removeHandler(_Setup.file)
        _Setup.file.close()
    root.addHandler(handler)
    _Setup.file = handler
    return path


def close_log_file() -> None:
    """Stop writing the log file (and drop records kept for one); the terminal handler stays."""
    root = logging.getLogger()
    for handler in (_Setup.pending, _Setup.file):
        if handler is not None:
            root.removeHandler(handler)
            handler.close()
    _Setup.pending = _Setup.file = None


def quiet_third_party_logs() -> None:
    """For scripts that configure logging themselves (benchmarks/): keep the quiet notices off the root
    logger's current handlers and route warnings through logging. Commands use `setup_logging`."""
    for handler in logging.getLogger().handlers:
        if _not_quiet not in handler.filters:
            handler.addFilter(_not_quiet)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # it may warn before any handler exists
    logging.captureWarnings(True)
