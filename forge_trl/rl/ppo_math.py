"""PPO's pure math: masked statistics, GAE, and the clipped policy and value losses.

Shapes: B rollouts, T response positions. `mask` is 1.0 on real response tokens (up to and including the stop
token) and 0.0 on the padding after it. Every function is deterministic and tested against hand-computed
values in tests/test_ppo_math.py.

Several processes (DDP, FSDP2) each hold a part of the batch. The functions stay local; the two places where the
global batch matters take it as an argument: `masked_whiten(total=...)` sums its statistics over the processes,
and the losses divide by `tokens`, the global token count shared out over the processes, so that averaging the
processes' gradients gives the gradient of the mean over every token of the global batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def masked_mean(values: torch.Tensor, mask: torch.Tensor, tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sum of the masked entries over `tokens` (default: the number of masked entries)."""
    count = mask.sum() if tokens is None else tokens
    return (values * mask).sum() / count.clamp_min(1.0)


def masked_whiten(
    values: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    total: Callable[[torch.Tensor], torch.Tensor] = _local,
) -> torch.Tensor:
    """(values - mean) / std over the masked entries, with the unbiased (Bessel-corrected, as in TRL's PPO)
    variance; `shift_mean=False` keeps the mean (reward whitening).

    `total` sums a tensor over the processes that hold the rest of the batch (the default: this process holds it
    all), so that every process whitens with the statistics of the whole batch."""
    sums = total(torch.stack([(values * mask).sum(), mask.sum()]))
    mean, count = sums[0] / sums[1].clamp_min(1.0), sums[1]
    squares = total(((values - mean) ** 2 * mask).sum())
    var = squares / (count - 1).clamp_min(1.0)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation over response tokens; returns (advantages, returns), both (B, T).

    delta_t = r_t + gamma * V_{t+1} - V_t with V past the last real token taken as 0, and
    A_t = delta_t + gamma * lam * A_{t+1}. Returns = A + V are the value targets.
    """
    values = values * mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        advantages[:, t] = last
    return advantages, advantages + values


def per_token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """-kl_coef * KL on every response token, plus the sequence score on its last real token."""
    rewards = -kl_coef * kl * mask
    last = (mask.sum(1).long() - 1).clamp_min(0)
    rewards[torch.arange(rewards.shape[0]), last] += scores
    return rewards


@dataclass
class PolicyLoss:
    loss: torch.Tensor
    clipfrac: torch.Tensor
    approx_kl: torch.Tensor  # 0.5 * E[(log ratio)^2] between the rollout policy and the current one


def clipped_policy_loss(logprobs, old_logprobs, advantages, mask, cliprange: float, tokens=None) -> PolicyLoss:
    """PPO's clipped surrogate: mean over tokens of max(-A r, -A clip(r, 1 - eps, 1 + eps)); `tokens` as in
    `masked_mean`, for the loss and both statistics."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask, tokens)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask, tokens)
        approx_kl = 0.5 * masked_mean(log_ratio**2, mask, tokens)
    return PolicyLoss(loss, clipfrac, approx_kl)


def clipped_value_loss(
    values, old_values, returns, mask, cliprange_value: float, tokens=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5 * mean of max((V - R)^2, (clip(V, V_old +- eps) - R)^2); returns (loss, clip fraction). `tokens` as in
    `masked_mean`."""
    moved = values - old_values
    clipped_values = old_values + torch.clamp(moved, -cliprange_value, cliprange_value)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask, tokens)
    with torch.no_grad():
        # Within the range, old + (V - old) is V only up to rounding, which alone must not count as clipped.
        clipped_tokens = (moved.abs() > cliprange_value) & (clipped > unclipped)
        clipfrac = masked_mean(clipped_tokens.float(), mask, tokens)
    return loss, clipfrac


class AdaptiveKLController:
    """Ziegler et al. (2019): nudge kl_coef so the observed KL tracks `target` over `horizon` episodes."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, episodes: int) -> None:
        error = max(min(current_kl / self.target - 1.0, 0.2), -0.2)
        self.value *= 1.0 + error * episodes / self.horizon
