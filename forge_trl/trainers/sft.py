"""`ForgeSFTTrainer`: TRL's SFTTrainer with forge's mixins and packed rows without flash attention."""

from __future__ import annotations

from trl import SFTConfig, SFTTrainer

from forge_trl.trainers.mixins import ForgeTrainerMixin
from forge_trl.trainers.packing import PackedRowsMixin

__all__ = ["ForgeSFTTrainer", "SFTConfig"]


class ForgeSFTTrainer(ForgeTrainerMixin, PackedRowsMixin, SFTTrainer):
    """SFT and pretraining. `packed_rows=True` keeps packed batches two-dimensional where attention needs it."""
