"""`ForgeCPOTrainer`: TRL's experimental CPOTrainer (forge uses it for SimPO) with forge's mixins."""

from __future__ import annotations

import os

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from trl.experimental.cpo import CPOConfig, CPOTrainer  # noqa: E402

from forge_trl.trainers.mixins import ForgeTrainerMixin  # noqa: E402

__all__ = ["CPOConfig", "ForgeCPOTrainer"]


class ForgeCPOTrainer(ForgeTrainerMixin, CPOTrainer):
    """CPO / SimPO: reference-free preference losses on length-normalised log-probs."""
