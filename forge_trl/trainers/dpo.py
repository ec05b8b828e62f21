"""`ForgeDPOTrainer`: TRL's DPOTrainer with forge's mixins, split pairs and pre-tokenized caches."""

from __future__ import annotations

from trl import DPOConfig, DPOTrainer

from forge_trl.trainers.mixins import ForgeTrainerMixin, PretokenizedPreferenceMixin
from forge_trl.trainers.split_pairs import SplitPairsMixin

__all__ = ["DPOConfig", "ForgeDPOTrainer"]


class ForgeDPOTrainer(ForgeTrainerMixin, SplitPairsMixin, PretokenizedPreferenceMixin, DPOTrainer):
    """DPO against the input checkpoint. `split_pairs=True` sends chosen and rejected through the policy one after
    the other."""
