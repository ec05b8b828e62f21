"""Shared by the PPO tests: a reward model that depends on the response, and launching forge (or a probe
module) as 2 CPU processes with `accelerate launch` and the shipped config files (tests/launch_support.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import torch

from tests.launch_support import REPO, launch_command, launch_env


def synthetic_reward_model(rm_final: Path, out_dir: Path, seed: int = 0) -> Path:
    """An RM checkpoint whose score head is a fixed random direction: a reward that clearly depends on the
    response (a briefly trained RM on a random model scores everything alike)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(rm_final, out_dir)
    path = out_dir / "adapter_model.safetensors"
    state = load_file(str(path))
    key = next(k for k in state if k.endswith("score.weight"))
    state[key] = torch.randn(state[key].shape, generator=torch.Generator().manual_seed(seed)) * 0.3
    save_file(state, str(path))
    return out_dir


def launch_module(config: str, module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Launch any module (forge_trl, or the PPO probe) as the config's processes and wait for it."""
    return subprocess.run(
        launch_command(config, module, *args),
        cwd=REPO,
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
