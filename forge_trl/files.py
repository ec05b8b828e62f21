"""Writing files and directories so that they survive a crash, a full disk and a power cut; and the lock that keeps
two runs out of one output_dir.

**Atomic writes.** A target (a checkpoint directory, `final/`, a JSONL file) is filled in a hidden temporary
sibling, `.<name>.tmp-<pid>-<random>`: next to the target, so the rename stays on one filesystem, and created with
mkdir/open (not mkdtemp) so it gets the umask's permissions. Before the rename every file in it and the sibling
itself are fsynced; after it, the parent directory. Without the fsyncs the kernel may put the rename on disk before
the data it names, and a power cut would leave a complete-looking checkpoint of empty or zeroed files; `kill -9`
never shows this, since the page cache outlives the process. An existing directory target is swapped out through
`.<name>.old-<pid>-<random>` and removed only once the new one is in place (a file is replaced in one rename).

**Full disk.** When writing fails for lack of storage (no space left, quota, read-only filesystem, I/O error), the
temporary sibling is removed, the previous target stays as it was, and a one-line StorageError names the target
and the cause.

**Run lock.** `<output_dir>/.forge_run.lock` holds the pid, host and start time of the process running there.
A second run on the same output_dir stops at once with a ConfigError; a lock whose process is gone is taken over
with a warning.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from forge_trl.errors import ConfigError, StorageError

log = logging.getLogger("forge_trl")

TMP_MARK = ".tmp-"
OLD_MARK = ".old-"
LOCK_FILE = ".forge_run.lock"

# Messages of writers that report a failed write without an errno: torch.save (its zip writer checks the file
# position after each write), and safetensors' Rust error, which carries the OS message as text.
_WRITE_FAILURE_MESSAGES = ("unexpected pos", "file write failed", "iostream error", "os error")


# ----------------------------------------------------------------------------------------------- atomic writes
def sibling(target: Path, mark: str) -> Path:
    """A hidden sibling of `target` that no other call or process uses: `.<name><mark><pid>-<random>`."""
    target = Path(target)
    return target.with_name(f".{target.name}{mark}{os.getpid()}-{secrets.token_hex(4)}")


def fsync_file(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the directory's entries (names created, renamed or removed in it) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some filesystems (and some network mounts) cannot sync a directory; their renames are as durable as
        # they get. Anything else, ENOSPC or EIO included, is a real failure.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file under `path`, then every directory bottom-up, `path` itself last (or just the file)."""
    path = Path(path)
    if not path.is_dir():
        fsync_file(path)
        return
    for root, _, names in os.walk(path, topdown=False):
        for name in names:
            file = os.path.join(root, name)
            if not os.path.islink(file):
                fsync_file(file)
        fsync_dir(root)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def publish(staged: Path, target: Path, *, overwrite: bool = True) -> None:
    """Move the finished file or directory `staged` to `target` durably: fsync it, rename it into place, fsync the
    parent. An existing directory target is renamed aside first and removed after the new one is in place; were the
    process to die between the two renames, `restore_interrupted_swaps` puts it back at the next start.

    With `overwrite=False` an existing target (also one that appears meanwhile) raises FileExistsError and
    `staged` is left for the caller."""
    staged, target = Path(staged), Path(target)
    fsync_tree(staged)
    exists = target.exists() or target.is_symlink()
    if exists and not overwrite:
        raise FileExistsError(errno.EEXIST, "already exists", str(target))
    if not staged.is_dir():
        if overwrite:
            os.replace(staged, target)  # one rename: a reader sees the old file or the new one, never neither
        else:
            os.link(staged, target)  # no-clobber: fails with FileExistsError when target appeared meanwhile
            os.unlink(staged)
    elif not exists:
        if overwrite:
            os.replace(staged, target)
        else:
            try:
                os.rename(staged, target)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise FileExistsError(errno.EEXIST, "already exists", str(target)) from None
                raise
    else:
        old = sibling(target, OLD_MARK)
        os.replace(target, old)
        try:
            os.replace(staged, target)
        except BaseException:
            os.replace(old, target)
            raise
        fsync_dir(target.parent)  # before the old version goes: on disk, one of the two is always complete
        _remove(old)
        return
    fsync_dir(target.parent)


def is_storage_failure(exc: BaseException) -> bool:
    """Whether `exc` means the disk refused a write (full, quota, read-only, I/O error, permissions) rather than a
    bug. A FileExistsError is neither: it is how a no-clobber write reports that someone else was first; nor is a
    network error (an OSError too)."""
    if isinstance(exc, (FileExistsError, ConnectionError)):
        return False
    if isinstance(exc, OSError):
        return True
    writer_error = isinstance(exc, RuntimeError) or type(exc).__name__ == "SafetensorError"
    return writer_error and any(marker in str(exc).lower() for marker in _WRITE_FAILURE_MESSAGES)


def _cause(exc: BaseException, where: Path) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    text = " ".join(str(exc).split())
    if "no space left on device" in text.lower():
        return "no space left on device"
    try:
        if shutil.disk_usage(where).free < 1 << 20:  # torch reports a full disk only as a short write
            return "no space left on device"
    except OSError:
        pass
    return f"a write failed ({text})"


def storage_error(exc: BaseException, target: Path, previous: Path | None) -> StorageError:
    """The one-line error for a write of `target` that failed with `exc`; `previous` is what stays in its place."""
    target = Path(target)
    kept = f"the previous {previous.name} is intact" if previous is not None else f"no {target.name} was written"
    where = target.parent if target.parent.exists() else Path(".")
    return StorageError(f"{_cause(exc, where)} while writing {target}; {kept}")


def _write_atomically(
    target: Path, fill: Callable[[Path], object], *, directory: bool, overwrite: bool, previous: Path | None
) -> Path:
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(errno.EEXIST, "already exists", str(target))
    if previous is None and target.exists():
        previous = target
    tmp = sibling(target, TMP_MARK)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if directory:
            tmp.mkdir()
        fill(tmp)
        publish(tmp, target, overwrite=overwrite)
    except BaseException as exc:
        _remove(tmp)
        if is_storage_failure(exc):
            raise storage_error(exc, target, previous) from exc
        raise
    return target


def write_dir_atomically(
    target: Path, fill: Callable[[Path], object], *, overwrite: bool = True, previous: Path | None = None
) -> Path:
    """Create directory `target`: `fill(tmp)` writes into an empty temporary sibling, which is then published.

    A failure leaves `target` as it was and removes the sibling; a storage failure becomes a StorageError that
    names `previous` as intact (default: `target` itself, when it exists). With `overwrite=False` an existing
    target raises FileExistsError."""
    return _write_atomically(target, fill, directory=True, overwrite=overwrite, previous=previous)


def write_file_atomically(target: Path, fill: Callable[[Path], object], *, overwrite: bool = True) -> Path:
    """Create file `target`: `fill(tmp)` creates the temporary sibling file `tmp`, which is then published; failures
    as in `write_dir_atomically`."""
    return _write_atomically(target, fill, directory=False, overwrite=overwrite, previous=None)


def write_text_atomically(target: Path, text: str, *, overwrite: bool = True) -> Path:
    """Write `text` (UTF-8, `\\n` line ends) to file `target` atomically."""
    return write_file_atomically(
        target, lambda tmp: tmp.write_text(text, encoding="utf-8", newline="\n"), overwrite=overwrite
    )


def _sibling_pattern(mark: str) -> re.Pattern:
    return re.compile(rf"^\.(?P<name>.+){re.escape(mark)}\d+-[0-9a-f]{{8}}$")


_TMP_SIBLING, _OLD_SIBLING = _sibling_pattern(TMP_MARK), _sibling_pattern(OLD_MARK)


def leftovers(directory: Path, name: str) -> list[Path]:
    """Temporary and swapped-out siblings of `directory / name` that interrupted writes left behind."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _TMP_SIBLING.match(path.name) or _OLD_SIBLING.match(path.name)
        if match and match["name"] == name:
            found.append(path)
    return sorted(found)


def restore_interrupted_swaps(directory: Path) -> list[Path]:
    """Put back each directory that a process stopped between the two renames of a swap left only as its
    `.<name>.old-...` sibling (the complete previous version). Returns the directories restored."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    restored = []
    for old in sorted(directory.iterdir()):
        match = _OLD_SIBLING.match(old.name)
        target = directory / match["name"] if match else None
        if target is not None and old.is_dir() and not target.exists():
            os.replace(old, target)
            restored.append(target)
    if restored:
        fsync_dir(directory)
    return restored


# ------------------------------------------------------------------------------------------------------ run lock
def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process, from Linux's /proc; None where unreadable. The
    start time tells a reused pid from the process that first had it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # the command name in parentheses may contain spaces
    return fields[0], fields[19]


def _process_start(pid: int) -> str | None:
    found = _proc_stat(pid)
    return found[1] if found else None


def _is_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    found = _proc_stat(pid)
    return found is None or found[0] not in ("Z", "X")  # an exited process not yet reaped is gone


def _read_holder(lock: Path) -> dict | None:
    """The lock's holder record; None when there is no lock; {} when its content is unreadable (a stale lock)."""
    try:
        text = lock.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    if text.isdigit():
        return {"pid": int(text)}
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else {}


def _holder_is_running(holder: dict) -> bool:
    """Whether the process the lock names still runs. On another host it cannot be checked: assume it does."""
    if holder.get("host", socket.gethostname()) != socket.gethostname():
        return True
    pid = holder.get("pid", 0)
    if not _is_alive(pid):
        return False
    started = holder.get("started")  # differs when the pid now names another process (after a reboot or restart)
    return started is None or _process_start(pid) in (None, started)


def _create_exclusively(lock: Path, record: str) -> bool:
    """Create `lock` holding `record`, unless it exists. The record is written to a sibling first and hard-linked
    into place, so that nobody ever reads a lock file without its content."""
    staged = sibling(lock, TMP_MARK)
    staged.write_text(record, encoding="utf-8")
    try:
        os.link(staged, lock)
        return True
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links: create-exclusive, then write
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(record)
        return True
    finally:
        staged.unlink(missing_ok=True)


def _set_aside_if_unchanged(lock: Path, stale: dict) -> bool:
    """Remove a stale lock, unless another process took it over in the meantime. The lock is renamed aside first
    (of two processes doing this at once, only one gets the file) and checked there; a live lock is put back."""
    aside = sibling(lock, OLD_MARK)
    try:
        os.replace(lock, aside)
    except FileNotFoundError:
        return False
    found = _read_holder(aside)
    if found == stale or not _holder_is_running(found or {}):
        aside.unlink(missing_ok=True)
        return True
    try:
        os.link(aside, lock)
    except FileExistsError:
        pass
    aside.unlink(missing_ok=True)
    return False


def _in_use(output_dir: Path, holder: dict, lock: Path) -> ConfigError:
    pid = holder.get("pid", "?")
    host = holder.get("host", socket.gethostname())
    if host != socket.gethostname():
        return ConfigError(
            f"output_dir {output_dir} is in use by a forge_trl process on host {host} (pid {pid}); wait for it or "
            f"use another output_dir (if that process is gone, delete {lock})"
        )
    return ConfigError(
        f"output_dir {output_dir} is in use by a running forge_trl process (pid {pid}); wait for it "
        "or use another output_dir"
    )


def take_run_lock(output_dir: Path) -> Path:
    """Take `<output_dir>/.forge_run.lock` for this process and return its path; see `run_lock`."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = output_dir / LOCK_FILE
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": _process_start(os.getpid())})
    for _ in range(5):
        if _create_exclusively(lock, record + "\n"):
            return lock
        holder = _read_holder(lock)
        if holder is None:  # released in the meantime
            continue
        if _holder_is_running(holder):
            raise _in_use(output_dir, holder, lock)
        if _set_aside_if_unchanged(lock, holder):
            log.warning(
                "taking over %s: the forge_trl process that held it (pid %s) is no longer running",
                lock,
                holder.get("pid", "unknown"),
            )
    holder = _read_holder(lock) or {}
    raise _in_use(output_dir, holder, lock)


def check_run_lock(output_dir: Path) -> None:
    """Raise the ConfigError of `run_lock` if a running process holds output_dir's lock; take nothing."""
    lock = Path(output_dir) / LOCK_FILE
    holder = _read_holder(lock)
    if holder and _holder_is_running(holder):
        raise _in_use(Path(output_dir), holder, lock)


def release_run_lock(lock: Path) -> None:
    """Remove the lock if it is still this process's (a lock taken over by another run is left to that run)."""
    holder = _read_holder(lock)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        Path(lock).unlink(missing_ok=True)


@contextmanager
def run_lock(output_dir: Path) -> Iterator[Path]:
    """Hold `<output_dir>/.forge_run.lock` for the block: one forge run per output_dir at a time.

    A lock held by a running process raises ConfigError at once. A lock whose process has exited (pid gone, or
    reused by another process since) is taken over with a warning; a lock from another host is treated as held,
    since its process cannot be checked from here. The lock is removed when the block ends, however it ends."""
    lock = take_run_lock(output_dir)
    try:
        yield lock
    finally:
        release_run_lock(lock)
