"""`ForgeORPOTrainer`: TRL's experimental ORPOTrainer with forge's mixins, split pairs and a stable odds ratio.

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

import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from trl.experimental.orpo import ORPOConfig, ORPOTrainer  # noqa: E402

from forge_trl.trainers.mixins import ForgeTrainerMixin  # noqa: E402
from forge_trl.trainers.split_pairs import SplitPairsMixin  # noqa: E402

__all__ = ["ForgeORPOTrainer", "ORPOConfig", "log1mexp", "odds_ratio_terms"]

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


class ForgeORPOTrainer(ForgeTrainerMixin, SplitPairsMixin, ORPOTrainer):
    """ORPO (NLL on chosen + lambda * odds-ratio loss, no reference) with the odds ratio of `odds_ratio_terms`."""

    def odds_ratio_loss(self, policy_chosen_logps, policy_rejected_logps):
        # Same outputs as TRL's: losses, chosen/rejected rewards, mean log-sigmoid ratio, mean log odds.
        ratio, log_odds = odds_ratio_terms(policy_chosen_logps, policy_rejected_logps)
        device = self.accelerator.device
        chosen_rewards = self.beta * policy_chosen_logps.float().to(device).detach()
        rejected_rewards = self.beta * policy_rejected_logps.float().to(device).detach()
        return self.beta * ratio, chosen_rewards, rejected_rewards, torch.mean(ratio), torch.mean(log_odds)
