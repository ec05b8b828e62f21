"""Multi-process runs (`accelerate launch`, `torchrun`): which process is the main one, and the barrier.

A run launched with N processes executes `train.run` N times. Every process trains; only the main process writes
the run's files (metrics.jsonl, loss.png, final/), and the others wait for it before they return, so that every
process can read `final/` once `run` returns. Logging from forge is kept to warnings on the other processes.

Accelerate's `PartialState` owns the process group; TrainingArguments later re-creates the same state over the
already-initialised group, so creating it here first changes nothing for the trainer.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, TypeVar

T = TypeVar("T")

CPU_FLAG = "ACCELERATE_USE_CPU"


def launched_world_size() -> int:
    """How many processes the launcher started (1 when run as a plain `python -m forge_trl`)."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return 1


def _has_accelerator() -> bool:
    import torch

    probe = getattr(torch, "accelerator", None)
    if probe is not None and hasattr(probe, "is_available"):
        return bool(probe.is_available())
    return torch.cuda.is_available()


def prefer_cpu_backend() -> bool:
    """On a machine without GPUs, make a multi-process launch train on CPU over gloo.

    `accelerate launch --multi_gpu` (or a MULTI_GPU config) starts the processes through torchrun but does not
    tell them to use the CPU; accelerate then finds no device backend and every process silently trains alone,
    each believing it is the main process. Setting the CPU flag before the first PartialState turns that into
    one gloo process group. Returns whether the flag was set here."""
    if launched_world_size() <= 1 or os.environ.get(CPU_FLAG) or _has_accelerator():
        return False
    os.environ[CPU_FLAG] = "true"
    return True


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def _deepspeed_zero_stage() -> int | None:
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    if stage and stage.isdigit():
        return int(stage)
    config_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if config_file and os.path.isfile(config_file):
        import json

        with open(config_file, encoding="utf-8") as handle:
            stage = json.load(handle).get("zero_optimization", {}).get("stage")
        return int(stage) if isinstance(stage, int) else None
    return None


def check_launch() -> None:
    """Refuse the launches forge would run wrongly, before any model loads (every process raises the same)."""
    from forge_trl.errors import ConfigError

    fsdp, deepspeed = _flag("ACCELERATE_USE_FSDP"), _flag("ACCELERATE_USE_DEEPSPEED")
    if launched_world_size() > 1 and (fsdp or deepspeed) and not _has_accelerator():
        # accelerate only shards on GPUs; on CPU it would quietly fall back to plain data parallelism.
        raise ConfigError(
            f"{'FSDP' if fsdp else 'DeepSpeed'} needs GPUs and none is visible; for a multi-process CPU run use "
            "`accelerate launch --config_file conf/accelerate/cpu_2proc.yaml`"
        )
    if fsdp or (deepspeed and _deepspeed_zero_stage() == 3):
        # final/ is written by the main process from the model's live parameters (Injection.save). Under FSDP and
        # ZeRO-3 those hold only this process's shard, so the checkpoint would be wrong; gathering them first is
        # not implemented yet.
        raise ConfigError(
            f"{'FSDP' if fsdp else 'DeepSpeed ZeRO-3'} shards the weights and forge_trl cannot write final/ from "
            "sharded weights yet; use conf/accelerate/ddp.yaml (LoRA) or zero2.yaml (full-parameter) instead"
        )


def state():
    """The process group's state (created on first use; a single process gets a trivial one)."""
    from accelerate import PartialState

    return PartialState(cpu=_flag(CPU_FLAG))


def setup() -> None:
    """Call once at the start of a run, before anything is logged or written."""
    check_launch()
    if prefer_cpu_backend():
        logging.getLogger("forge_trl").debug(
            "no GPU: %d launched processes train on CPU over gloo", launched_world_size()
        )
    if launched_world_size() > 1 and not state().is_main_process:
        # Every process would otherwise repeat each info line; warnings and errors still show from all of them.
        logging.getLogger("forge_trl").setLevel(logging.WARNING)


def is_main_process() -> bool:
    """True in a single-process run, and on rank 0 of a multi-process one."""
    if launched_world_size() <= 1:
        return True
    return state().is_main_process


def wait_for_everyone() -> None:
    if launched_world_size() > 1:
        state().wait_for_everyone()


def on_main_then_wait(write: Callable[[], T]) -> T | None:
    """Call `write` on the main process only, then hold every process at a barrier until it is done.

    The barrier is reached even when `write` raises, so the other processes never wait forever on a failed main
    process; they return normally and the launcher reports the main process's non-zero exit."""
    try:
        return write() if is_main_process() else None
    finally:
        wait_for_everyone()
