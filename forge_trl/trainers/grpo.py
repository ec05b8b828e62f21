"""`ForgeGRPOTrainer`: TRL's GRPOTrainer with forge's mixins."""

from __future__ import annotations

from trl import GRPOConfig, GRPOTrainer

from forge_trl.trainers.mixins import ForgeTrainerMixin

__all__ = ["ForgeGRPOTrainer", "GRPOConfig"]


class ForgeGRPOTrainer(ForgeTrainerMixin, GRPOTrainer):
    """Group-relative policy optimisation; the reward function is a forge reward model."""
