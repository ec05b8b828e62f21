"""Multi-process runs (`accelerate launch`, `torchrun`): process roles, sharding on CPU, gathering, failures.

A run launched with N processes executes `train.run` N times. Every process trains; only the main process writes
the run's files (metrics.jsonl, loss.png, final/), and the others wait for it before they return, so that every
process can read `final/` once `run` returns. Logging from forge is kept to warnings on the other processes.

The engine is accelerate's: DDP (`conf/accelerate/ddp.yaml`, `cpu_2proc.yaml`) or FSDP2 (`fsdp2.yaml`, torch's
`fully_shard`, one unit per decoder layer). forge adds three things around it:
- on a machine without GPUs, the launched processes form a gloo group (`prefer_cpu_backend`), and an FSDP launch
  really shards there (`accelerate_fsdp_on_cpu`) instead of silently running DDP, as accelerate 1.15 would;
- `full_state_dict` gathers sharded weights so that final/ is written in the one-process format;
- a bounded collective timeout, and one line instead of a traceback when a peer process fails.

Accelerate's `PartialState` owns the process group; TrainingArguments later re-creates the same state over the
already-initialised group, so creating it here first changes nothing for the trainer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
from datetime import timedelta
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")

CPU_FLAG = "ACCELERATE_USE_CPU"
FSDP_FLAG = "ACCELERATE_USE_FSDP"
DEEPSPEED_FLAG = "ACCELERATE_USE_DEEPSPEED"


def _launcher_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return default


def launched_world_size() -> int:
    """How many processes the launcher started (1 when run as a plain `python -m forge_trl`)."""
    return _launcher_int(("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"), 1)


def launched_rank() -> int:
    return _launcher_int(("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"), 0)


def _has_accelerator() -> bool:
    import torch

    probe = getattr(torch, "accelerator", None)
    if probe is not None and hasattr(probe, "is_available"):
        return bool(probe.is_available())
    return torch.cuda.is_available()


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def prefer_cpu_backend() -> bool:
    """On a machine without GPUs, make a multi-process launch train on CPU over gloo.

    `accelerate launch --multi_gpu` (or a MULTI_GPU/FSDP config) starts the processes through torchrun but does
    not tell them to use the CPU; accelerate then finds no device backend and every process silently trains alone,
    each believing it is the main process. Setting the CPU flag before the first PartialState turns that into
    one gloo process group. Returns whether the flag was set here."""
    if launched_world_size() <= 1 or os.environ.get(CPU_FLAG) or _has_accelerator():
        return False
    os.environ[CPU_FLAG] = "true"
    return True


def fsdp_requested() -> bool:
    """The launch asked for FSDP (`distributed_type: FSDP` in the accelerate config)."""
    return _flag(FSDP_FLAG) and launched_world_size() > 1


def check_launch() -> None:
    """Refuse the launches forge would run wrongly, before any model loads (every process raises the same)."""
    from forge_trl.errors import ConfigError

    if _flag(DEEPSPEED_FLAG):
        # Not an engine forge tests: its ZeRO-3 partitions weights outside torch's state-dict API that final/ is
        # gathered with, and accelerate runs it on GPUs only. FSDP2 covers the same ground (ZeRO-3-like sharding).
        raise ConfigError(
            "DeepSpeed launches are not supported by forge_trl; for sharded training use "
            "`accelerate launch --config_file conf/accelerate/fsdp2.yaml` (FSDP2: weights, gradients and optimizer "
            "state sharded), or ddp.yaml"
        )


@contextlib.contextmanager
def accelerate_fsdp_on_cpu() -> Iterator[None]:
    """While the trainer creates its Accelerator, let an FSDP launch on CPU processes become FSDP.

    accelerate 1.15 turns `ACCELERATE_USE_FSDP` into its FSDP mode only for device process groups (its
    AcceleratorState checks for MULTI_GPU and friends); on CPU processes it keeps MULTI_CPU and the run quietly
    becomes plain data parallelism with a whole model per process. torch's `fully_shard` itself runs on CPU over
    gloo, so the process state is shown as a device group while the Accelerator reads it, and as FSDP afterwards:
    every later `AcceleratorState()` copies the process state's type again, and FSDP is what it must keep reading
    (FSDP takes the same barrier/gather paths as the CPU group in accelerate). Everything after that (sharding per
    decoder layer, gradient reduce-scatter, DCP checkpoints) is accelerate's own FSDP2 path. No-op on GPUs and
    without an FSDP launch."""
    if not fsdp_requested() or _has_accelerator():
        yield
        return
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    partial = PartialState()
    partial.distributed_type = DistributedType.MULTI_GPU
    try:
        yield
    finally:
        partial.distributed_type = DistributedType.FSDP


def state(timeout_s: float | None = None):
    """The process group's state (created on first use; a single process gets a trivial one)."""
    from accelerate import PartialState

    # The timeout reaches init_process_group only when this call creates the group; later calls return the state.
    kwargs = {"timeout": timedelta(seconds=timeout_s)} if timeout_s is not None else {}
    return PartialState(cpu=_flag(CPU_FLAG), **kwargs)


def _stopped_by_launcher(signum, frame) -> None:
    print(
        f"forge_trl: rank {launched_rank()}: stopped by the launcher (signal {signum}): another process of this "
        "launch failed or was stopped, its error is above. Relaunch with resume=true to continue from the newest "
        "complete checkpoint",
        file=sys.stderr,
        flush=True,
    )
    raise SystemExit(128 + signum)


def setup(timeout_s: float = 1800) -> None:
    """Call once at the start of a run, before anything is logged or written."""
    check_launch()
    if prefer_cpu_backend():
        logging.getLogger("forge_trl").debug(
            "no GPU: %d launched processes train on CPU over gloo", launched_world_size()
        )
    if launched_world_size() <= 1:
        return
    group = state(timeout_s)  # every collective of the run waits at most timeout_s for its peers
    if not group.is_main_process:
        # Every process would otherwise repeat each info line; warnings and errors still show from all of them.
        logging.getLogger("forge_trl").setLevel(logging.WARNING)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        # torchrun stops the surviving processes with SIGTERM when one fails: one line each, and `finally` blocks
        # (the output_dir lock, a staged checkpoint) still run.
        signal.signal(signal.SIGTERM, _stopped_by_launcher)


# How gloo and NCCL word a collective that lost its peer: dead ("Connection reset by peer"), or silent for longer
# than the timeout ("Application timeout caused pair closure", "Timed out").
PEER_LOST_MARKERS = ("connection closed", "connection reset", "pair closure", "timed out", "timeout", "gloo", "nccl")


def peer_failure(exc: BaseException) -> str | None:
    """One line for an error that means another process of the launch died or hung, else None."""
    if launched_world_size() <= 1:
        return None
    import torch.distributed as dist

    from forge_trl.errors import ForgeError

    if isinstance(exc, ForgeError):
        return None
    text = str(exc)
    lowered = text.lower()
    lost = isinstance(exc, getattr(dist, "DistError", ())) or any(marker in lowered for marker in PEER_LOST_MARKERS)
    if not lost:
        return None
    # gloo prefixes its messages with a source location ("[.../pair.cc:537] Read error ...").
    first = re.sub(r"^\[[^\]]*\]\s*", "", text.strip().splitlines()[0]) if text.strip() else type(exc).__name__
    first = first.split(". ")[0][:160]
    return (
        f"forge_trl: rank {launched_rank()}: lost contact with another process of this launch ({first}); "
        "relaunch with resume=true to continue from the newest complete checkpoint"
    )


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


def is_sharded(model) -> bool:
    """Whether `model`'s parameters are FSDP2 shards (DTensors) rather than whole tensors."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_state_dict(model, names: set[str] | None = None) -> dict | None:
    """The whole, unsharded state dict of an FSDP2-sharded `model` (only the entries in `names`, when given), on
    the main process, on CPU.

    A collective: every process must call it, with the same `names`. Returns None on the other processes, and
    everywhere when `model` is not sharded (then its live parameters are already whole). Keys are the model's own
    (`state_dict()`) names. Entries are gathered one at a time (`DTensor.full_tensor`), each moved to CPU on the
    main process and dropped on the others, so a process holds at most one whole tensor besides its shards; a
    tensor under two names (tied embeddings) is gathered once."""
    if not is_sharded(model):
        return None
    from torch.distributed.tensor import DTensor

    main = is_main_process()
    gathered: dict = {}
    by_tensor: dict[int, object] = {}
    # keep_vars: the parameters themselves, so that tied weights show as one object under both names.
    for name, value in model.state_dict(keep_vars=True).items():
        if names is not None and name not in names:
            continue
        if id(value) not in by_tensor:
            whole = value.full_tensor() if isinstance(value, DTensor) else value
            by_tensor[id(value)] = whole.detach().to("cpu", copy=True) if main else None
        if main:
            gathered[name] = by_tensor[id(value)]
    return gathered if main else None


# ----------------------------------------------------------------------------------------------- checkpoints
LAUNCH_FILE = "forge_launch.json"
SHARDED_WEIGHTS_DIR = "pytorch_model_fsdp_0"  # accelerate's DCP directory inside a sharded checkpoint


def launch_record() -> dict:
    """How this run is launched, as stored in each checkpoint it writes."""
    return {"processes": launched_world_size(), "fsdp": fsdp_requested()}


def write_launch_record(directory) -> None:
    import json
    from pathlib import Path

    (Path(directory) / LAUNCH_FILE).write_text(json.dumps(launch_record()), encoding="utf-8")


def is_sharded_checkpoint(checkpoint) -> bool:
    from pathlib import Path

    return (Path(checkpoint) / SHARDED_WEIGHTS_DIR).is_dir()


def check_resume_launch(checkpoint) -> None:
    """Refuse to resume `checkpoint` under a launch that cannot continue it exactly.

    A checkpoint holds one RNG state and one data position per process and, when sharded, DCP shards whose
    optimizer state matches the sharded layout; a different process count would change the global batch and the
    sample order, so it stops here rather than continuing a different run."""
    import json
    from pathlib import Path

    from forge_trl.errors import ConfigError

    path = Path(checkpoint)
    sharded = is_sharded_checkpoint(path)
    record_file = path / LAUNCH_FILE
    saved = json.loads(record_file.read_text(encoding="utf-8")) if record_file.is_file() else None
    now = launch_record()
    if saved is not None and saved.get("processes") != now["processes"]:
        raise ConfigError(
            f"resume: {path} was written by {saved.get('processes')} process(es) and this launch has "
            f"{now['processes']}; resume with --num_processes {saved.get('processes')} (the per-process data "
            "position and RNG state cannot be redistributed)"
        )
    if sharded and not now["fsdp"]:
        raise ConfigError(
            f"resume: {path} is a sharded FSDP2 checkpoint (DCP); resume it under the same launch: "
            "accelerate launch --config_file conf/accelerate/fsdp2.yaml"
        )
    if saved is not None and saved.get("fsdp") and not sharded and not now["fsdp"]:
        raise ConfigError(f"resume: {path} was written by an FSDP2 launch; resume it under the same launch")


# ----------------------------------------------------------------------------------------------- collectives
def group_size() -> int:
    """Processes in the initialised process group (1 without one)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def sum_over_processes(tensor):
    """`tensor` summed over the processes of the run, in place and returned (unchanged in one process).
    A collective: every process calls it at the same point."""
    import torch.distributed as dist

    if group_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def mean_over_processes(tensor):
    return sum_over_processes(tensor).div_(group_size())
