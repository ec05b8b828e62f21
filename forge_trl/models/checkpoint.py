"""Forge checkpoints: `final/` = weights (safetensors) + tokenizer + resolved_config.yaml + forge_run.json.

`final/` is written into a temporary sibling and renamed into place, so it is either complete or absent:
a crash or a bad input never leaves a half-written `final/`. Intermediate `checkpoint-N/` directories are staged
the same way (forge's Trainer hook in tasks/base.py, and forge's PPO), so a process killed while saving leaves the
previous checkpoint as the newest one that `resume=true` finds.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

RUN_INFO_FILE = "forge_run.json"
RESOLVED_CONFIG_FILE = "resolved_config.yaml"
FORMAT_VERSION = 1
TRACKED_PACKAGES = ("forge_trl", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "hydra-core")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def read_run_info(path: str | os.PathLike) -> dict | None:
    """The checkpoint's forge_run.json, or None when `path` is not a forge checkpoint."""
    file = Path(path) / RUN_INFO_FILE
    if not file.is_file():
        return None
    return json.loads(file.read_text(encoding="utf-8"))


def write_atomically(target: Path, fill: Callable[[Path], None], *, overwrite: bool) -> Path:
    """Create directory `target` by filling a temporary sibling and renaming it into place."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_final(
    output_dir: Path,
    *,
    save_weights: Callable[[Path], None],
    tokenizer,
    resolved_config_yaml: str,
    run_info: dict,
    overwrite: bool,
) -> Path:
    def fill(tmp: Path) -> None:
        save_weights(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / RESOLVED_CONFIG_FILE).write_text(resolved_config_yaml, encoding="utf-8")
        info = {"format_version": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **run_info}
        info["versions"] = package_versions()
        (tmp / RUN_INFO_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")

    return write_atomically(Path(output_dir) / "final", fill, overwrite=overwrite)


CHECKPOINT_PREFIX = "checkpoint-"
# The file each kind of checkpoint writes last: its presence means the checkpoint is complete even where it was
# written in place (by an older forge_trl, or by plain transformers). HF Trainer's state, and forge's PPO state.
COMPLETE_MARKERS = ("trainer_state.json", "ppo_state.json")
STAGING_SUFFIX = ".partial"


def checkpoint_step(path: Path) -> int:
    return int(Path(path).name[len(CHECKPOINT_PREFIX):])


def is_complete_checkpoint(path: Path) -> bool:
    return any((Path(path) / marker).is_file() for marker in COMPLETE_MARKERS)


def list_checkpoints(output_dir: Path, *, complete_only: bool = True) -> list[Path]:
    """Intermediate `checkpoint-N` directories of a run, oldest first; by default only complete ones."""
    found = [p for p in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*")
             if p.is_dir() and p.name[len(CHECKPOINT_PREFIX):].isdigit()
             and (not complete_only or is_complete_checkpoint(p))]
    return sorted(found, key=checkpoint_step)


def staging_dir(output_dir: Path) -> Path:
    """Where a checkpoint is written before it is renamed into `output_dir`. The name carries no process id, so
    every rank of a multi-process run writes its shards into the same place; the leading dot keeps it out of
    `list_checkpoints` and out of transformers' own `checkpoint-N` search."""
    return Path(output_dir) / f".{CHECKPOINT_PREFIX}staging{STAGING_SUFFIX}"


def discard_partial_checkpoints(output_dir: Path) -> list[Path]:
    """Remove what a killed process left half-written: staged checkpoints and temporary `final/` or PPO
    checkpoint siblings. Returns what was removed."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    leftovers = [p for p in output_dir.iterdir() if p.is_dir() and (
        p.name.startswith(f".{CHECKPOINT_PREFIX}") or p.name.startswith((".final.tmp-", ".final.old-")))]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return sorted(leftovers)
