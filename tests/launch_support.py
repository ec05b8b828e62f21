"""Launching forge as 2 CPU processes (gloo) for the multi-process tests, and comparing what the runs wrote.

Every launch goes through `accelerate launch --config_file conf/accelerate/<name>.yaml -m forge_trl ...` with the
shipped config files, as a user would, with one thread per process (2 processes on a 2-core machine) and GPUs
hidden so the CPU path runs even where a GPU exists.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from forge_trl.commands.compose import compose
from forge_trl.train import run
from forge_trl.trainers.callbacks import read_metrics

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "conf" / "accelerate"
STEPS = 4
# Shared by the multi-process run and its one-process baseline: fp32, no dropout (no random numbers that could
# differ between the runs), a constant learning rate large enough that a wrong update shows in the weights.
COMMON = (
    "overwrite=true",
    "plot=false",
    "precision=fp32",
    f"task.max_steps={STEPS}",
    "task.logging_steps=1",
    "task.per_device_train_batch_size=2",
    "injection.dropout=0",
    "task.learning_rate=1e-3",
    "task.lr_scheduler_type=constant",
    "task.warmup_steps=0",
)


def launch_env() -> dict[str, str]:
    env = {
        **os.environ,
        "HYDRA_FULL_ERROR": "0",
        "OMP_NUM_THREADS": "1",  # two processes on a 2-core machine: one thread each
        "CUDA_VISIBLE_DEVICES": "",  # the gloo CPU path even where a GPU exists
    }
    env.pop("ACCELERATE_USE_CPU", None)  # forge must pick the CPU backend itself
    return env


def launch_command(config: str, module: str, *args: str, launch_args: tuple[str, ...] = ()) -> list[str]:
    """`accelerate launch --config_file conf/accelerate/<config>.yaml [launch_args] -m <module> <args>` of this
    interpreter."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONFIGS / f"{config}.yaml"),
        *launch_args,
        "-m",
        module,
        *args,
    ]


def accelerate_command(config: str, output_dir: Path, *overrides: str, launch_args: tuple[str, ...] = ()) -> list:
    """A forge training launch with the settings its one-process baseline shares (COMMON)."""
    return launch_command(config, "forge_trl", f"output_dir={output_dir}", *COMMON, *overrides, launch_args=launch_args)


def launch(config: str, output_dir: Path, *overrides: str, launch_args: tuple[str, ...] = (), timeout: int = 300):
    """Run one launch to the end; returns the CompletedProcess (stdout and stderr captured as text)."""
    return subprocess.run(
        accelerate_command(config, output_dir, *overrides, launch_args=launch_args),
        cwd=REPO,
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_process(output_dir: Path, *overrides: str) -> list[dict]:
    """The same run in this process; returns its metrics.jsonl records."""
    # use_cpu keeps the baseline on CPU even where a GPU is visible, like the launched run.
    run(compose([f"output_dir={output_dir}", *COMMON, "+task.trl_args.use_cpu=true", *overrides]))
    return read_metrics(output_dir)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def per_step(records: list[dict], key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in records if key in r and "train_runtime" not in r}


def worst_relative(a: dict[int, float], b: dict[int, float]) -> float:
    return max(abs(a[s] - b[s]) / max(abs(b[s]), 1e-8) for s in a)


def assert_close_curves(two: list[dict], one: list[dict], key: str, rtol: float, steps: int = STEPS) -> None:
    a, b = per_step(two, key), per_step(one, key)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1)), (key, sorted(a), sorted(b))
    worst = worst_relative(a, b)
    assert worst <= rtol, f"{key}: 2 processes {a} vs 1 process {b} (worst relative difference {worst:.2e})"


def weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors files in a checkpoint directory."""
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    assert tensors, f"no safetensors in {directory}"
    return tensors


def weight_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest relative difference between two checkpoints' tensors, ||a - b|| / ||b|| per tensor.

    Per tensor and in norm, not per element: Adam divides each gradient by its running magnitude, so an element
    whose gradient is nearly zero moves by a full learning-rate step whatever the sign of a 1e-9 rounding
    difference; that element differs while the tensor as a whole agrees to ~1e-6."""
    assert sorted(a) == sorted(b), (sorted(set(a) ^ set(b)))[:5]
    return max(float((a[k].float() - b[k].float()).norm() / b[k].float().norm().clamp_min(1e-12)) for k in a)


def failure_output(proc: subprocess.CompletedProcess) -> str:
    return (proc.stdout + proc.stderr)[-4000:]


def kill_job(launcher: subprocess.Popen) -> None:
    """SIGKILL a launched job at once: the launcher and every process under it. (torchrun starts its workers in
    their own sessions, so killing the launcher's process group would leave them training.)"""
    import signal

    import psutil

    try:
        processes = [psutil.Process(launcher.pid), *psutil.Process(launcher.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        processes = []
    for process in processes:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=30)
    launcher.wait(timeout=30)
