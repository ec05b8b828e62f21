"""`ForgeRLOOTrainer`: TRL's RLOOTrainer with forge's mixins."""

from __future__ import annotations

from trl import RLOOConfig, RLOOTrainer

from forge_trl.trainers.mixins import ForgeTrainerMixin

__all__ = ["ForgeRLOOTrainer", "RLOOConfig"]


class ForgeRLOOTrainer(ForgeTrainerMixin, RLOOTrainer):
    """REINFORCE leave-one-out; the reward function is a forge reward model."""
