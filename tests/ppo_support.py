"""Shared by the PPO tests: a reward model that depends on the response, and launching forge (or a probe
module) as 2 CPU processes with `accelerate launch` and the shipped config files, as a user would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "conf" / "accelerate"


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


def launch_env() -> dict[str, str]:
    env = {
        **os.environ,
        "HYDRA_FULL_ERROR": "0",
        "OMP_NUM_THREADS": "1",  # two processes on a 2-core machine: one thread each
        "CUDA_VISIBLE_DEVICES": "",  # the gloo CPU path even where a GPU exists
    }
    env.pop("ACCELERATE_USE_CPU", None)  # forge must pick the CPU backend itself
    return env


def launch_command(config: str, module: str, *args: str) -> list[str]:
    """`accelerate launch --config_file conf/accelerate/<config>.yaml -m <module> <args>` of this interpreter."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONFIGS / f"{config}.yaml"),
        "-m",
        module,
        *args,
    ]


def launch(config: str, module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        launch_command(config, module, *args),
        cwd=REPO,
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
