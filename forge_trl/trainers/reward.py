"""`ForgeRewardTrainer`: TRL's RewardTrainer (Bradley-Terry) with forge's mixins."""

from __future__ import annotations

from trl import RewardConfig, RewardTrainer

from forge_trl.trainers.mixins import ForgeTrainerMixin

__all__ = ["ForgeRewardTrainer", "RewardConfig"]


class ForgeRewardTrainer(ForgeTrainerMixin, RewardTrainer):
    """A 1-label sequence-classification head trained on preference pairs."""
