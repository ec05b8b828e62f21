"""Token routing shared by the routed strategies (mixture_lora, moe_expert_lora, native_moe_expert_lora).

Routed layers report each training forward to a `RoutingRecorder` attached to the model. The recorder turns the
reports into two things:

- the load-balancing loss that the trainer adds to the task loss of every task (see
  `forge_trl.tasks.base.ForgeTrainerMixin`), with padding tokens masked out;
- routing health metrics for the log: router entropy, per-expert token share, dead-expert fraction, and a
  warning when one expert takes more than `COLLAPSE_SHARE` of a layer's tokens.

Only forwards that run while the trainer computes the training loss are recorded (`recorder.collecting` and
grad enabled): reference passes run under `no_grad`, evaluation is not collected, and a gradient-checkpointing
recomputation during backward happens after collection has closed.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

log = logging.getLogger("forge_trl")

COLLAPSE_SHARE = 0.9
# An expert counts as dead over a logging interval when it received less than this share of a uniform load.
DEAD_EXPERT_SHARE = 0.01

# A model's own balancing loss: (tuple of per-layer router logits, attention_mask or None) -> scalar loss.
NativeLoss = Callable[[tuple[torch.Tensor, ...], torch.Tensor | None], torch.Tensor]


def expert_load(probs: torch.Tensor, top_idx: torch.Tensor | None) -> torch.Tensor:
    """(N,) share of the routed load per expert: hard top-k assignments, or the soft probabilities when every
    expert takes part (dense gating, `top_idx` None)."""
    if top_idx is None:
        load = probs.detach().sum(0)
    else:
        load = torch.zeros_like(probs).scatter_add_(1, top_idx, torch.ones_like(top_idx, dtype=probs.dtype)).sum(0)
    return load / load.sum().clamp_min(1e-12)


def switch_balance_loss(probs: torch.Tensor, top_idx: torch.Tensor | None, token_mask: torch.Tensor | None):
    """Switch-Transformer balancing loss `N * sum_e f_e * P_e` for one layer.

    probs:     (T, N) router softmax in fp32.
    top_idx:   (T, k) experts each token was sent to; None for dense gating.
    token_mask:(T,) bool, True for real tokens (padding excluded); None means all tokens count.

    f_e is the share of routed (token, slot) assignments that went to expert e (for dense gating, the share of
    probability mass, held constant) and P_e the mean router probability of e, both over real tokens. Perfect
    balance gives 1.0; everything on one expert gives N.
    """
    num_experts = probs.shape[-1]
    if token_mask is not None:
        probs = probs[token_mask]
        top_idx = None if top_idx is None else top_idx[token_mask]
    if probs.shape[0] == 0:
        return probs.new_zeros(())
    return num_experts * torch.sum(expert_load(probs, top_idx) * probs.mean(0))


@dataclass
class _LayerStats:
    # Kept on the model's device and read only when metrics are logged, so recording never syncs a GPU.
    counts: torch.Tensor  # (N,) routed assignments per expert over the logging interval
    entropy_sum: torch.Tensor  # () summed router entropy
    tokens: int = 0


@dataclass
class RoutingRecorder:
    """Collects router outputs during training forwards; owned by one model."""

    # Weight of the balancing loss in the total loss (0 disables the loss; metrics are still logged).
    coef: float = 0.0
    # Optional model-native loss: called with (tuple of per-layer router logits, attention_mask) -> Tensor.
    native_loss: NativeLoss | None = None
    collecting: bool = False
    # True while activation checkpointing recomputes a forward (see tasks/pair_split.py): the router ops run again,
    # so the recomputed graph saves what the original saved, but nothing is recorded twice.
    replaying: bool = False
    attention_mask: torch.Tensor | None = None
    _losses: list = field(default_factory=list)
    _logits: list = field(default_factory=list)
    _stats: dict = field(default_factory=dict)
    _warned: set = field(default_factory=set)

    # ----------------------------------------------------------------------------------------------- capture
    def attach(self, hf_model: torch.nn.Module) -> None:
        """Remember each forward's attention mask, so padding tokens can be left out of the balancing loss."""

        def remember_mask(_module, args, kwargs):
            self.attention_mask = kwargs.get("attention_mask")

        hf_model.register_forward_pre_hook(remember_mask, with_kwargs=True)

    @contextlib.contextmanager
    def collect(self):
        self._losses.clear()
        self._logits.clear()
        self.collecting = True
        try:
            yield
        finally:
            self.collecting = False

    @contextlib.contextmanager
    def replay(self):
        self.replaying = True
        try:
            yield
        finally:
            self.replaying = False

    def active(self) -> bool:
        return self.collecting and torch.is_grad_enabled()

    def token_mask(self, num_tokens: int) -> torch.Tensor | None:
        mask = self.attention_mask
        if mask is None or mask.dim() != 2 or mask.numel() != num_tokens:
            return None  # padding-free batches and generation steps carry no usable (B, S) mask
        return mask.reshape(-1).bool()

    def record(self, layer: str, router_logits: torch.Tensor, top_idx: torch.Tensor | None) -> None:
        """One routed layer's forward: router logits (T, N) and the chosen experts (T, k), None when dense."""
        if not (self.active() or (self.replaying and torch.is_grad_enabled())):
            return
        logits = router_logits.float()
        probs = logits.softmax(-1)
        mask = self.token_mask(logits.shape[0])
        loss = None if self.native_loss is not None else switch_balance_loss(probs, top_idx, mask)
        if self.replaying:
            return
        if loss is None:
            # Each layer's logits with the mask of the forward they came from (a split batch has two).
            self._logits.append((logits, self.attention_mask))
        else:
            self._losses.append(loss)
        with torch.no_grad():
            real_probs = probs if mask is None else probs[mask]
            real_idx = top_idx if mask is None or top_idx is None else top_idx[mask]
            counts = expert_load(real_probs, real_idx) * real_probs.shape[0]
            entropy = -(real_probs * real_probs.clamp_min(1e-12).log()).sum()
            stats = self._stats.get(layer)
            if stats is None:
                stats = self._stats[layer] = _LayerStats(torch.zeros_like(counts), torch.zeros_like(entropy))
            stats.counts += counts
            stats.entropy_sum += entropy
            stats.tokens += real_probs.shape[0]

    # ----------------------------------------------------------------------------------------------- results
    def pop_loss(self) -> torch.Tensor | None:
        """The balancing loss of the forwards collected since `collect()` began (mean over layers)."""
        if self.native_loss is not None and self._logits:
            loss = self._native_loss(self.native_loss)
        elif self._losses:
            loss = torch.stack(self._losses).mean()
        else:
            loss = None
        self._losses.clear()
        self._logits.clear()
        return loss

    def _native_loss(self, native_loss: NativeLoss) -> torch.Tensor:
        """The model's own balancing loss, per forward (consecutive layers that share one attention mask), then
        averaged over the forwards weighted by their tokens."""
        groups: list[tuple[torch.Tensor | None, list[torch.Tensor]]] = []
        for logits, mask in self._logits:
            if groups and groups[-1][0] is mask:
                groups[-1][1].append(logits)
            else:
                groups.append((mask, [logits]))
        if len(groups) == 1:
            return native_loss(tuple(groups[0][1]), groups[0][0])
        weights = torch.tensor([float(layers[0].shape[0]) for _, layers in groups])
        losses = torch.stack([native_loss(tuple(layers), mask) for mask, layers in groups])
        return (losses * (weights / weights.sum()).to(losses)).sum()

    def pop_metrics(self) -> dict[str, float]:
        """Routing health over the interval since the last call; warns once per layer on collapse."""
        if not self._stats:
            return {}
        shares, entropies, dead = [], [], []
        for layer, stats in self._stats.items():
            counts = stats.counts.float().cpu()
            total = float(counts.sum())
            if total == 0:
                continue
            share = counts / total
            num_experts = share.numel()
            shares.append(float(share.max()))
            entropies.append(float(stats.entropy_sum) / max(stats.tokens, 1) / math.log(num_experts))
            dead.append(float((share < DEAD_EXPERT_SHARE / num_experts).float().mean()))
            top = float(share.max())
            if top > COLLAPSE_SHARE and layer not in self._warned:
                self._warned.add(layer)
                log.warning(
                    "router collapse in %s: expert %d takes %.0f%% of tokens (threshold %.0f%%); consider a larger "
                    "injection.aux_loss_coef",
                    layer,
                    int(share.argmax()),
                    100 * top,
                    100 * COLLAPSE_SHARE,
                )
        self._stats.clear()
        if not shares:
            return {}
        return {
            "moe/router_entropy": sum(entropies) / len(entropies),  # normalised: 1.0 is uniform routing
            "moe/max_expert_share": max(shares),
            "moe/dead_expert_fraction": sum(dead) / len(dead),
        }

    def sum_over_processes(self) -> None:
        """Make the interval's statistics global: each layer's expert counts, entropy and token count summed over
        the processes of a multi-process run, so that the logged routing metrics and expert shares describe the
        global batch rather than one process's part of it. A collective: every process calls it at the same
        logging step, and every process has recorded the same layers (they run the same model)."""
        from forge_trl.distributed import group_size, sum_over_processes

        if group_size() == 1:
            return
        for layer in sorted(self._stats):
            stats = self._stats[layer]
            packed = torch.cat(
                [
                    stats.counts.float(),
                    stats.entropy_sum.float().reshape(1),
                    stats.counts.new_full((1,), stats.tokens, dtype=torch.float32),
                ]
            )
            sum_over_processes(packed)
            num_experts = stats.counts.numel()
            stats.counts = packed[:num_experts].to(stats.counts.dtype)
            stats.entropy_sum = packed[num_experts].to(stats.entropy_sum.dtype)
            stats.tokens = int(packed[num_experts + 1])

    def expert_shares(self) -> dict[str, list[float]]:
        """Per-layer token share of each expert over the current interval (for tests and reports)."""
        shares = {}
        for layer, stats in self._stats.items():
            counts = stats.counts.float().cpu()
            if float(counts.sum()) > 0:
                shares[layer] = (counts / counts.sum()).tolist()
        return shares


def attach_recorder(
    peft_model: torch.nn.Module,
    layer_cls: type[torch.nn.Module] | None,
    coef: float,
    native_loss: NativeLoss | None = None,
) -> RoutingRecorder:
    """Give a wrapped model one recorder, shared by every routed layer of type `layer_cls` (None: the caller
    hooks the routers itself, as native_moe_expert_lora does)."""
    recorder = RoutingRecorder(coef=coef, native_loss=native_loss)
    hf_model = peft_model.get_base_model()
    recorder.attach(hf_model)
    hf_model.forge_routing = recorder
    for name, module in peft_model.named_modules():
        if layer_cls is not None and isinstance(module, layer_cls):
            module.routing = recorder
            module.layer_name = name.split("model.", 1)[-1]
    return recorder


def find_recorder(model: torch.nn.Module) -> RoutingRecorder | None:
    """The recorder attached by a routed injection, if the model has one."""
    for module in model.modules():
        recorder = getattr(module, "forge_routing", None)
        if isinstance(recorder, RoutingRecorder):
            return recorder
    return None
