"""`ForgeKTOTrainer`: TRL's KTOTrainer with forge's mixins."""

from __future__ import annotations

from trl import KTOConfig, KTOTrainer

from forge_trl.trainers.mixins import ForgeTrainerMixin

__all__ = ["ForgeKTOTrainer", "KTOConfig"]


class ForgeKTOTrainer(ForgeTrainerMixin, KTOTrainer):
    """KTO on desirable/undesirable completions against the input checkpoint."""
