"""Durable atomic writes, a full disk, and the output_dir lock (forge_trl/files.py).

- Every file written and the temporary directory are fsynced before the rename, the parent after it: otherwise a
  power cut can leave a complete-looking checkpoint whose files never reached the disk.
- A disk that fills up while a run saves a checkpoint or final/ leaves the previous one intact and newest, no
  partial checkpoint, and a one-line StorageError.
- A second run on an output_dir that a live process holds is refused at once (exit 2, one line); a lock whose process
  has exited is taken over with a warning.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from forge_trl.errors import ConfigError, StorageError
from forge_trl.files import (
    LOCK_FILE,
    run_lock,
    write_dir_atomically,
    write_file_atomically,
    write_text_atomically,
)
from forge_trl.models.checkpoint import discard_partial_checkpoints, list_checkpoints, staging_dir

SFT = [
    "task=sft",
    "data=demo_sft",
    "task.per_device_train_batch_size=2",
    "task.logging_steps=1",
    "data.max_rows=16",
    "plot=false",
]
ADAPTER = "adapter_model.safetensors"


def enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def record_fsyncs_and_renames(monkeypatch) -> list[tuple[str, ...]]:
    """Record, in order, the path of every fsync and every os.replace (source, destination); both still happen."""
    events: list[tuple[str, ...]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst, **kwargs):
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def assert_synced_then_renamed(events: list[tuple[str, ...]], target: Path, files: list[str]) -> None:
    """The rename onto `target` came after fsyncs of each of `files` (relative to the renamed source) and of the
    source itself, and was followed by an fsync of the parent directory."""
    at = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2] == str(target))
    source = events[at][1]
    synced_before = {e[1] for e in events[:at] if e[0] == "fsync"}
    missing = {os.path.join(source, f) for f in files} - synced_before
    assert not missing, f"not fsynced before the rename: {sorted(missing)}"
    if os.path.isdir(target):
        assert source in synced_before, "the temporary directory itself was not fsynced before its rename"
    assert ("fsync", str(target.parent)) in events[at + 1 :], "the parent directory was not fsynced after the rename"


# ------------------------------------------------------------------------------------------------------- fsync
@pytest.mark.parametrize("existing", [False, True], ids=["new", "replacing"])
def test_directory_files_and_the_directory_are_fsynced_before_the_rename(tmp_path, monkeypatch, existing):
    target = tmp_path.resolve() / "run" / "checkpoint-1"
    if existing:
        write_dir_atomically(target, lambda tmp: (tmp / "old.bin").write_bytes(b"old"))
    events = record_fsyncs_and_renames(monkeypatch)

    def fill(tmp: Path) -> None:
        (tmp / "weights.bin").write_bytes(b"w" * 4096)
        (tmp / "state").mkdir()
        (tmp / "state" / "trainer_state.json").write_text("{}")

    write_dir_atomically(target, fill)
    assert_synced_then_renamed(events, target, ["weights.bin", "state", "state/trainer_state.json"])
    assert sorted(p.name for p in target.iterdir()) == ["state", "weights.bin"]
    assert [p.name for p in target.parent.iterdir()] == ["checkpoint-1"]  # no temporary or swapped-out sibling


def test_a_single_file_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    target = tmp_path.resolve() / "bench.json"
    target.write_text("old")
    events = record_fsyncs_and_renames(monkeypatch)
    write_text_atomically(target, '{"new": 1}')
    at = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2] == str(target))
    assert ("fsync", events[at][1]) in events[:at]
    assert ("fsync", str(target.parent)) in events[at + 1 :]
    assert target.read_text() == '{"new": 1}'


# ------------------------------------------------------------------------------------------------- full disk
def test_enospc_while_filling_keeps_the_previous_target_and_removes_the_temporary_one(tmp_path):
    target = tmp_path / "final"
    write_dir_atomically(target, lambda tmp: (tmp / "weights.bin").write_bytes(b"v1"))

    def fill(tmp: Path) -> None:
        (tmp / "weights.bin").write_bytes(b"v2 half")
        raise enospc()

    with pytest.raises(StorageError) as caught:
        write_dir_atomically(target, fill)
    assert caught.value.one_line() == (
        f"forge_trl: storage error: no space left on device while writing {target}; the previous final is intact"
    )
    assert (target / "weights.bin").read_bytes() == b"v1"
    assert [p.name for p in tmp_path.iterdir()] == ["final"]


def full_disk_errors() -> list[Exception]:
    """What torch.save and safetensors raise when the disk fills up mid-write (seen on a full 1 MiB tmpfs): neither
    is an OSError."""
    from safetensors import SafetensorError

    return [
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),
        SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
    ]


@pytest.mark.parametrize("error", full_disk_errors(), ids=["torch", "safetensors"])
def test_a_full_disk_reported_by_torch_or_safetensors_is_a_storage_error(tmp_path, error):
    target = tmp_path / "weights"
    target.write_bytes(b"previous")

    def fill(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise error

    with pytest.raises(StorageError, match=re.escape(f"while writing {target}; the previous weights is intact")):
        write_file_atomically(target, fill)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["weights"]


def test_other_errors_are_not_storage_errors(tmp_path):
    def fill(tmp: Path) -> None:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        write_dir_atomically(tmp_path / "final", fill)
    assert list(tmp_path.iterdir()) == []


def test_enospc_while_saving_the_second_checkpoint_keeps_the_first_as_newest(tmp_path, monkeypatch):
    from transformers import Trainer

    from forge_trl.commands.compose import compose
    from forge_trl.train import resolve_resume, run

    out = tmp_path.resolve() / "run"
    events = record_fsyncs_and_renames(monkeypatch)
    save_rng = Trainer._save_rng_state

    def full_disk_at_step_4(self, output_dir):
        # By now the save of step 4 has written its weights and optimizer state into the staging directory.
        if self.state.global_step == 4:
            raise enospc()
        return save_rng(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", full_disk_at_step_4)
    with pytest.raises(StorageError) as caught:
        run(compose([f"output_dir={out}", *SFT, "task.max_steps=4", "task.save_steps=2"]))

    assert caught.value.one_line() == (
        f"forge_trl: storage error: no space left on device while writing {out / 'checkpoint-4'}; "
        "the previous checkpoint-2 is intact"
    )
    assert list_checkpoints(out, complete_only=False) == [out / "checkpoint-2"]
    assert not staging_dir(out).exists(), "the partial checkpoint-4 was left in the staging directory"
    assert not (out / "final").exists()
    assert not (out / LOCK_FILE).exists(), "the failed run left its output_dir lock behind"
    assert '"global_step": 2' in (out / "checkpoint-2" / "trainer_state.json").read_text()
    assert resolve_resume("true", out) == str(out / "checkpoint-2")
    # The first checkpoint was fsynced in its staging directory before its rename.
    staged = next(e[1] for e in events if e[0] == "replace" and e[2] == str(out / "checkpoint-2"))
    assert Path(staged).parent == staging_dir(out)
    assert_synced_then_renamed(events, out / "checkpoint-2", [ADAPTER, "trainer_state.json"])


def test_enospc_while_writing_final_keeps_the_existing_final(tmp_path, monkeypatch):
    from forge_trl.commands.compose import compose
    from forge_trl.train import run

    out = tmp_path / "run"
    final = run(compose([f"output_dir={out}", *SFT, "task.max_steps=2"]))
    before = {p.name: p.read_bytes() for p in final.iterdir()}

    real_write_text = Path.write_text
    locked_while_writing_final = []

    def full_disk_in_final(self, *args, **kwargs):
        if self.parent.name.startswith(".final.tmp-"):  # weights and tokenizer are already in the new final
            locked_while_writing_final.append((out / LOCK_FILE).is_file())
            raise enospc()
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk_in_final)
    with pytest.raises(StorageError) as caught:
        run(compose([f"output_dir={out}", *SFT, "task.max_steps=2", "overwrite=true", "seed=1"]))
    assert caught.value.one_line() == (
        f"forge_trl: storage error: no space left on device while writing {final}; the previous final is intact"
    )
    assert {p.name: p.read_bytes() for p in final.iterdir()} == before
    assert not [p.name for p in out.iterdir() if p.name.startswith(".final")]
    assert locked_while_writing_final == [True], "the run did not hold output_dir's lock while writing final/"
    assert not (out / LOCK_FILE).exists()


def test_interrupted_writes_are_found_and_an_interrupted_swap_is_undone(tmp_path):
    """A process killed mid-write leaves temporary siblings (removed at the next start); one killed between the two
    renames of a swap leaves the previous final/ only as its `.old-` sibling (put back)."""
    for name in (".final.tmp-41-0a1b2c3d", ".checkpoint-4.tmp-41-0a1b2c3d", ".checkpoint-staging.partial"):
        (tmp_path / name).mkdir()
    (tmp_path / ".final.old-41-0a1b2c3d").mkdir()
    (tmp_path / ".final.old-41-0a1b2c3d" / "forge_run.json").write_text("{}")
    (tmp_path / "checkpoint-2").mkdir()

    removed = discard_partial_checkpoints(tmp_path)
    assert sorted(p.name for p in removed) == [
        ".checkpoint-4.tmp-41-0a1b2c3d",
        ".checkpoint-staging.partial",
        ".final.tmp-41-0a1b2c3d",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "final"]
    assert (tmp_path / "final" / "forge_run.json").is_file()


# ------------------------------------------------------------------------------------------------------- lock
def write_lock(output_dir: Path, pid: int) -> Path:
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = output_dir / LOCK_FILE
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    return lock


def exited_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()  # reaped: the pid names no process now
    return proc.pid


def test_the_lock_is_released_when_the_block_raises(tmp_path):
    with pytest.raises(RuntimeError):
        with run_lock(tmp_path) as lock:
            assert json.loads(lock.read_text())["pid"] == os.getpid()
            with pytest.raises(ConfigError, match="is in use by a running forge_trl process"):
                with run_lock(tmp_path):  # the same output_dir again, from another holder's point of view
                    pass
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_train_run_takes_the_lock_before_loading_anything(tmp_path):
    from forge_trl.commands.compose import compose
    from forge_trl.train import run

    out = tmp_path / "run"
    holder = subprocess.Popen(["sleep", "120"])
    try:
        write_lock(out, holder.pid)
        with pytest.raises(ConfigError, match=re.escape(f"(pid {holder.pid}); wait for it or use another output_dir")):
            run(compose([f"output_dir={out}", *SFT, "task.max_steps=1"]))
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    finally:
        holder.kill()
        holder.wait()


def test_a_run_on_a_locked_output_dir_is_refused_at_once(tmp_path, cli):
    out = tmp_path / "run"
    holder = subprocess.Popen(["sleep", "120"])
    try:
        lock = write_lock(out, holder.pid)
        content = lock.read_text()
        result = cli(f"output_dir={out}", "task.max_steps=1", "plot=false")
        assert result.returncode == 2, result.stderr[-3000:]
        assert "Traceback" not in result.stderr + result.stdout
        # Other lines on stderr are third-party import noise (e.g. a missing optional kernel), as in test_bad_inputs.
        assert [line for line in result.stderr.splitlines() if line.startswith("forge_trl:")] == [
            f"forge_trl: config error: output_dir {out} is in use by a running forge_trl process (pid {holder.pid}); "
            "wait for it or use another output_dir"
        ]
        assert lock.read_text() == content, "the refused run touched the holder's lock"
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE], "the refused run wrote into output_dir"
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, cli):
    out = tmp_path / "run"
    pid = exited_pid()
    write_lock(out, pid)
    result = cli(
        f"output_dir={out}", "task.max_steps=2", "task.per_device_train_batch_size=2", "data.max_rows=16", "plot=false"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"taking over {out / LOCK_FILE}: the forge_trl process that held it (pid {pid}) is no longer running" in (
        result.stdout + result.stderr
    )
    assert (out / "final").is_dir()
    assert not (out / LOCK_FILE).exists(), "the finished run left its lock behind"
