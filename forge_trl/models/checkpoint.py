"""Forge checkpoints: `final/` = weights (safetensors) + tokenizer + resolved_config.yaml + forge_run.json.

`final/` is written into a temporary sibling and renamed into place, so it is either complete or absent:
a crash or a bad input never leaves a half-written `final/`.
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


def checkpoint_step(path: Path) -> int:
    return int(Path(path).name[len(CHECKPOINT_PREFIX):])


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Intermediate `checkpoint-N` directories of a run, oldest first."""
    found = [p for p in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*")
             if p.is_dir() and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=checkpoint_step)
