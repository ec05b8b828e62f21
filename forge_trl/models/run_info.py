"""`forge_run.json`: what a forge checkpoint is, as one typed record (RunInfo), written and read only here.

A later stage reads it to rebuild the checkpoint's structure (base model, injection, head); the bench reads the
task, the parent and the reward model an RL stage trained against; sweep reports read the metrics.

Format versions:
- 1 (forge_trl before RunInfo): the same keys without `reward_model`. An RL checkpoint's reward model is
  recovered from its resolved_config.yaml (`task.reward_model.checkpoint_path`).
- 2: adds `reward_model`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

import yaml

from forge_trl.errors import ModelError

RUN_INFO_FILE = "forge_run.json"
RESOLVED_CONFIG_FILE = "resolved_config.yaml"
FORMAT_VERSION = 2
TRACKED_PACKAGES = ("forge_trl", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "hydra-core")
# What a reader needs to rebuild the checkpoint's structure; every other key has a neutral default.
REQUIRED_KEYS = {
    "format_version": (int, "an integer"),
    "task": (str, "a string"),
    "head": (str, "a string"),
    "base_model": (str, "a string"),
    "injection": (dict, "an object"),
}


def package_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


@dataclass(kw_only=True)
class RunInfo:
    """One checkpoint's forge_run.json. Field order is the file's key order."""

    format_version: int = FORMAT_VERSION
    created: str = field(default_factory=_now)
    task: str
    head: str  # causal_lm or seq_cls
    base_model: str  # built-in name, hub id or absolute path of the base weights
    parent: Optional[str] = None  # absolute path of the forge checkpoint this run started from
    injection: dict[str, Any]  # the injection's settings(); {"name": "full"} for a full-parameter run
    model: dict[str, Any] = field(default_factory=dict)  # the run's `model` config block
    precision: Optional[str] = None
    step: int = 0
    trainable_parameters: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)  # row counts and files (PreparedData.stats)
    reward_model: Optional[str] = None  # RL stages (ppo, grpo, rloo): absolute path of the RM checkpoint
    # How the run was launched: {"processes": N, "sharded": bool} (sharded: FSDP2, gathered for this file's
    # weights). Empty for checkpoints written before it was recorded.
    launch: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=package_versions)

    @property
    def injection_name(self) -> str:
        return self.injection["name"]


def write_run_info(directory: str | os.PathLike, info: RunInfo) -> Path:
    file = Path(directory) / RUN_INFO_FILE
    file.write_text(json.dumps(asdict(info), indent=2, default=str) + "\n", encoding="utf-8")
    return file


def read_run_info(directory: str | os.PathLike) -> RunInfo | None:
    """The checkpoint's RunInfo, or None when `directory` is not a forge checkpoint (no forge_run.json)."""
    file = Path(directory) / RUN_INFO_FILE
    if not file.is_file():
        return None
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{file} is not valid JSON ({exc}); rewrite the checkpoint with forge_trl") from None
    if not isinstance(raw, dict):
        raise ModelError(f"{file}: expected a JSON object, got {type(raw).__name__}")
    for key, (kind, expected) in REQUIRED_KEYS.items():
        # bool is an int to isinstance, and never a format version
        if not isinstance(raw.get(key), kind) or isinstance(raw.get(key), bool):
            found = "missing" if key not in raw else f"got {type(raw[key]).__name__}"
            raise ModelError(
                f"{file}: key '{key}' must be {expected} ({found}); this is not a complete forge checkpoint"
            )
    version = raw["format_version"]
    if version > FORMAT_VERSION:
        raise ModelError(
            f"{file}: format_version {version} is newer than this forge_trl reads (up to "
            f"{FORMAT_VERSION}); upgrade forge_trl to load this checkpoint"
        )
    if version < 1:
        raise ModelError(f"{file}: format_version {version} is not a forge format (1 to {FORMAT_VERSION})")
    if not isinstance(raw["injection"].get("name"), str):
        raise ModelError(f"{file}: key 'injection' has no 'name'; this is not a complete forge checkpoint")
    if version == 1:
        raw["reward_model"] = _reward_model_of_version_1(Path(directory))
    return RunInfo(
        format_version=version,
        created=raw.get("created", ""),
        task=raw["task"],
        head=raw["head"],
        base_model=raw["base_model"],
        parent=raw.get("parent"),
        injection=raw["injection"],
        model=raw.get("model") or {},
        precision=raw.get("precision"),
        step=raw.get("step", 0),
        trainable_parameters=raw.get("trainable_parameters", 0),
        metrics=raw.get("metrics") or {},
        data=raw.get("data") or {},
        reward_model=raw.get("reward_model"),
        launch=raw.get("launch") or {},
        versions=raw.get("versions") or {},
    )


def _reward_model_of_version_1(directory: Path) -> str | None:
    """Version 1 did not record the reward model; the resolved config of an RL stage names it (only the RL
    tasks have `task.reward_model`)."""
    file = directory / RESOLVED_CONFIG_FILE
    if not file.is_file():
        return None
    try:
        resolved = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ModelError(f"{file} is not valid YAML: {' '.join(str(exc).split())}") from None
    task = resolved.get("task") if isinstance(resolved, dict) else None
    reward = task.get("reward_model") if isinstance(task, dict) else None
    path = reward.get("checkpoint_path") if isinstance(reward, dict) else None
    # Relative paths were relative to where the run was started, which is not recorded; the previous release's
    # bench read them from the current directory, and so does this.
    return str(Path(path).expanduser().resolve()) if path else None
