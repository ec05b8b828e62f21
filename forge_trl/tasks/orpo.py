"""`task=orpo`: odds-ratio preference optimisation (TRL's experimental ORPOTrainer).

Loss = NLL(chosen) + orpo_lambda * odds-ratio loss, with per-token average log-probs, and no reference model.
`orpo_lambda` is TRL's `ORPOConfig.beta`.

The odds ratio needs log(1 - p) from a per-token average log-prob x = log p. TRL 1.16 picks between its two
stable forms with one `torch.where`, which still differentiates the branch it discards: for x within ~6e-8 of 0
(a response the model is all but certain of, common once bf16 logits saturate) exp(x) rounds to 1, the discarded
log1p(-exp(x)) has an infinite derivative, and 0 * inf puts NaN into every gradient (trl issue #3237 is the same
family of cancellation problems). forge computes each branch on inputs that are safe for it and caps x at
`MAX_AVG_LOGP`, where the odds are already 1e6 : 1 and the odds-ratio term is saturated anyway.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from forge_trl.config import TaskConfig, require
from forge_trl.tasks import TASKS
from forge_trl.tasks.base import Task, TaskContext
from forge_trl.tasks.pair_split import SplitPairsTask, with_split_pairs

LN_HALF = -math.log(2.0)
# Highest per-token average log-prob the odds ratio sees: p = 1 - 1e-6. At x = 0 exactly the odds are infinite
# (inf - inf when both responses are certain); near 0 the derivative 1 / (1 - e^x) grows like 1/|x|.
MAX_AVG_LOGP = -1e-6


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate and with finite gradients everywhere in (-inf, 0).

    Near 0, log(-expm1(x)) keeps the digits that 1 - exp(x) would cancel; far from 0, log1p(-exp(x)) keeps those
    that expm1 would lose. Each branch is evaluated only on inputs that are safe for it (-1.0 stands in elsewhere),
    so the unused branch contributes an exact 0 gradient rather than 0 * inf."""
    near = x > LN_HALF
    stand_in = torch.full_like(x, -1.0)
    close = torch.log(-torch.expm1(torch.where(near, x, stand_in)))
    far = torch.log1p(-torch.exp(torch.where(near, stand_in, x)))
    return torch.where(near, close, far)


def odds_ratio_terms(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor):
    """(log sigmoid(log odds ratio), log odds ratio) per example, from per-token average log-probs.

    log odds(p) = log p - log(1 - p), and the log odds ratio is log odds(chosen) - log odds(rejected)."""
    chosen = chosen_logps.float().clamp(max=MAX_AVG_LOGP)
    rejected = rejected_logps.float().clamp(max=MAX_AVG_LOGP)
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
    return torch.nn.functional.logsigmoid(log_odds), log_odds


def stable_orpo_trainer(trainer_cls: type) -> type:
    """TRL's ORPOTrainer with the odds-ratio loss computed by `odds_ratio_terms`."""

    class StableORPOTrainer(trainer_cls):
        def odds_ratio_loss(self, policy_chosen_logps, policy_rejected_logps):
            # Same outputs as TRL's: losses, chosen/rejected rewards, mean log-sigmoid ratio, mean log odds.
            ratio, log_odds = odds_ratio_terms(policy_chosen_logps, policy_rejected_logps)
            device = self.accelerator.device
            chosen_rewards = self.beta * policy_chosen_logps.float().to(device).detach()
            rejected_rewards = self.beta * policy_rejected_logps.float().to(device).detach()
            return self.beta * ratio, chosen_rewards, rejected_rewards, torch.mean(ratio), torch.mean(log_odds)

    StableORPOTrainer.__name__ = StableORPOTrainer.__qualname__ = "ORPOTrainer"
    return StableORPOTrainer


@dataclass
class ORPOTaskConfig(TaskConfig):
    name: str = "orpo"
    learning_rate: float = 8e-6
    # Weight of the odds-ratio term: 0.1-0.3 after SFT on small data, up to 1.0 for standalone ORPO.
    orpo_lambda: float = 0.1
    # Chosen and rejected through the policy one after the other: see DPOTaskConfig.split_pairs.
    split_pairs: bool = False

    def __post_init__(self):
        super().__post_init__()
        require(self.orpo_lambda > 0, "task.orpo_lambda", f"must be positive, got {self.orpo_lambda}")


@TASKS.register("orpo")
class ORPOTask(SplitPairsTask, Task):
    name = "orpo"
    schema = ORPOTaskConfig
    data_layouts = ("prompted_preference", "preference")

    def task_args(self, ctx: TaskContext) -> dict:
        return dict(beta=ctx.cfg.task.orpo_lambda, max_length=ctx.cfg.data.max_length)

    def trl_classes(self):
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOConfig, with_split_pairs(stable_orpo_trainer(ORPOTrainer))
