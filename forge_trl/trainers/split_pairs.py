"""`task.split_pairs`: run the chosen and rejected halves of a preference batch through the policy one after
the other, so that a DPO or ORPO step holds the activations of one half instead of both.

TRL's DPO and ORPO trainers send `[chosen; rejected]` through the model as one batch of 2·B sequences, so the
autograd graph keeps the activations of 2·B sequences until backward: that, not the reference pass, is what makes
DPO cost more memory than SFT at the same number of examples. Split, the first half runs under non-reentrant
activation checkpointing and the second half runs normally. In backward, autograd finishes the second half's graph
first (its nodes are newer) and frees it, then recomputes the first half. The peak is one half's activations plus
what the checkpoint keeps (its inputs and outputs); the cost is one extra forward over B sequences.

The split happens below TRL: the model's forward is wrapped for the duration of `compute_loss`, the two half
outputs are concatenated back, and TRL computes its loss and every logged metric from them as usual. Loss and
gradients equal the single-batch step up to floating-point summation order. Forwards without gradients (the
reference pass, evaluation) are not split.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch.utils.checkpoint import checkpoint

from forge_trl.trainers.trainer_base import TrainerBase


def _halves(value, batch: int):
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.size(0) == batch:
        return value[: batch // 2], value[batch // 2 :]
    return value, value


def _merge(first, second):
    """Concatenate two half-batch outputs along the batch dimension (per-batch scalars are averaged)."""
    if first is None or second is None:
        return None
    if isinstance(first, torch.Tensor):
        if first.dim() == 0:
            return (first + second) / 2
        return torch.cat([first, second], dim=0)
    if isinstance(first, (tuple, list)):
        return type(first)(_merge(a, b) for a, b in zip(first, second, strict=True))
    return first


def _merge_outputs(first, second):
    merged = {key: _merge(value, second.get(key)) for key, value in first.items()}
    return type(first)(**merged)


@contextlib.contextmanager
def split_pair_forward(module: torch.nn.Module, recorder=None):
    """While active, a gradient-enabled forward of `module` over an even batch runs as two half-batch forwards,
    the first checkpointed. `recorder` (a routed injection's RoutingRecorder) replays its router bookkeeping
    during the recomputation, so the recomputed graph saves the same tensors as the original one."""
    original = module.forward

    def recompute_context():
        return contextlib.nullcontext(), (recorder.replay() if recorder is not None else contextlib.nullcontext())

    @functools.wraps(original)
    def forward(*args, **kwargs):
        if len(args) == 1 and "input_ids" not in kwargs:  # ORPO passes the ids positionally
            kwargs["input_ids"], args = args[0], ()
        ids = kwargs.get("input_ids")
        if args or not torch.is_grad_enabled() or ids is None or ids.size(0) < 2 or ids.size(0) % 2:
            return original(*args, **kwargs)
        halves = {key: _halves(value, ids.size(0)) for key, value in kwargs.items()}
        first = {key: pair[0] for key, pair in halves.items()}
        second = {key: pair[1] for key, pair in halves.items()}
        first_out = checkpoint(lambda: original(**first), use_reentrant=False, context_fn=recompute_context)
        second_out = original(**second)
        return _merge_outputs(first_out, second_out)

    had_own_forward = "forward" in vars(module)  # e.g. TRL's fused LM head patches the instance
    module.forward = forward
    try:
        yield
    finally:
        if had_own_forward:
            module.forward = original
        else:
            del module.forward  # the class's forward shows through again


class SplitPairsMixin(TrainerBase):
    """Put before a TRL preference trainer (DPOTrainer, ORPOTrainer) in the MRO; `split_pairs=True` turns the
    split on."""

    def __init__(self, *args, split_pairs: bool = False, **kwargs):
        self.split_pairs = split_pairs
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, *args, **kwargs):
        if not (self.split_pairs and model.training):
            return super().compute_loss(model, inputs, *args, **kwargs)
        # Patch the unwrapped model: a DDP wrapper's forward still calls it, once, with the whole batch.
        with split_pair_forward(self.accelerator.unwrap_model(model), getattr(self, "routing", None)):
            return super().compute_loss(model, inputs, *args, **kwargs)
