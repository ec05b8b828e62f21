"""PPO's tensors over several processes: gradients averaged, norms made global, sharded weights gathered and
scattered for checkpoints.

PPO keeps its own loop, so it does the two things DDP's wrapper and accelerate's `prepare` would do itself:
- A data-parallel launch (DDP) keeps one whole model per process: after each backward the trainable parameters'
  gradients are averaged over the processes (`average_gradients`).
- An FSDP2 launch shards each base model with accelerate's own FSDP2 preparation: one unit per decoder layer, the
  trainable adapter weights become DTensor shards, and FSDP reduce-scatters their (averaged) gradients itself.
  What sits outside the sharded models (the value head) is still a whole tensor per process and averaged here.

Every function below that communicates is a collective: each process calls it at the same point, with its
parameters in the same order (they run the same model), and a single process communicates nothing.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch.distributed.tensor import DTensor, distribute_tensor

from forge_trl.distributed import group_size, sum_over_processes


def is_shard(tensor: torch.Tensor) -> bool:
    """Whether `tensor` is this process's shard of an FSDP2-sharded parameter (or of its gradient or state)."""
    return isinstance(tensor, DTensor)


def shard_models(accelerator, models: Iterable[torch.nn.Module]) -> None:
    """Shard each model in place with accelerate's FSDP2 preparation (`fully_shard` per `_no_split_modules` layer,
    the embeddings and the final norm + LM head as their own units, then the model itself as the root).

    `accelerator.prepare` would insist on an optimizer to remap, which PPO creates only once the parameters are
    sharded; the preparation it runs for the model is this function."""
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    for model in models:
        fsdp2_prepare_model(accelerator, model)


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average the whole (not sharded) parameters' gradients over the processes, in one all-reduce.

    Every process runs the same graph, so the same parameters have gradients everywhere. Shards are left alone:
    FSDP2 reduce-scattered their mean gradient during backward."""
    if group_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None and not is_shard(p.grad)]
    if not grads:
        return
    flat = sum_over_processes(torch.cat([g.reshape(-1) for g in grads])).div_(group_size())
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def global_grad_norm(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """The L2 norm of all gradients of the global model, the same number on every process.

    Shards hold disjoint parts of a gradient, so their squared norms are summed over the processes; the whole
    gradients are equal everywhere after `average_gradients` and are counted once."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    sharded = [g.to_local() for g in grads if is_shard(g)]
    replicated = [g for g in grads if not is_shard(g)]
    device = (sharded or replicated)[0].device  # a collective's tensor lives where the backend works (NCCL: GPU)
    squares = torch.zeros((), dtype=torch.float32, device=device)
    if sharded:
        squares = sum_over_processes(torch.stack([g.float().pow(2).sum() for g in sharded]).sum().to(device))
    if replicated:
        squares = squares + torch.stack([g.float().pow(2).sum() for g in replicated]).sum().to(device)
    return squares.sqrt().cpu()


def scale_gradients(params: list[torch.nn.Parameter], factor: float) -> None:
    """Multiply every gradient (this process's shard of a sharded one) by `factor`, in place."""
    with torch.no_grad():
        for param in params:
            if param.grad is not None:
                (param.grad.to_local() if is_shard(param.grad) else param.grad).mul_(factor)


def clip_factor(total_norm: float, max_norm: float | None) -> float:
    """The factor gradient clipping scales by (torch's clip_grad_norm_ rule); NaN for a non-finite norm."""
    if not math.isfinite(total_norm):
        return math.nan
    if not max_norm or max_norm <= 0:
        return 1.0
    return min(1.0, max_norm / (total_norm + 1e-6))


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` whole, on CPU: a shard is gathered from every process (a collective), anything else is copied."""
    if is_shard(tensor):
        tensor = tensor.full_tensor()
    return tensor.detach().cpu().clone()


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` laid out like `like`: this process's shard of it when `like` is a shard, else `full` itself on
    `like`'s device. Every process holds the same `full` (read from one checkpoint), so each cuts its own shard
    without communicating."""
    full = full.to(device=like.device, dtype=like.dtype)
    if not is_shard(like):
        return full
    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)


def whole_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """`optimizer.state_dict()` with every sharded state tensor gathered whole (a collective): the same file a
    one-process run writes, whatever the launch."""
    state = optimizer.state_dict()
    return {
        "state": {
            index: {key: whole(value) if torch.is_tensor(value) else value for key, value in sorted(entry.items())}
            for index, entry in sorted(state["state"].items())
        },
        "param_groups": state["param_groups"],
    }


def load_whole_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a `whole_optimizer_state` into `optimizer`, each process keeping its shards of the sharded parameters'
    state (exp_avg, exp_avg_sq: shaped like their parameter; the step count stays whole)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    local = {
        index: {
            key: shard_like(value, params[index])
            if torch.is_tensor(value) and value.shape == params[index].shape
            else value
            for key, value in entry.items()
        }
        for index, entry in state["state"].items()
    }
    optimizer.load_state_dict({"state": local, "param_groups": state["param_groups"]})
