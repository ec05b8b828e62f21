"""`task=rloo`: REINFORCE leave-one-out (TRL's RLOOTrainer, as `ForgeRLOOTrainer`) with a forge reward
model.

Each of a prompt's `num_generations` completions uses the mean RM score of the others as its baseline, and a
KL penalty (`beta`, 0.05 by default as in TRL) keeps the policy near the input checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

from forge_trl.tasks import TASKS
from forge_trl.tasks.online import OnlineRLTask, OnlineRLTaskConfig


@dataclass
class RLOOTaskConfig(OnlineRLTaskConfig):
    name: str = "rloo"
    beta: float = 0.05


@TASKS.register("rloo")
class RLOOTask(OnlineRLTask):
    name = "rloo"
    schema = RLOOTaskConfig

    def trl_classes(self):
        from forge_trl.trainers.rloo import ForgeRLOOTrainer, RLOOConfig

        return RLOOConfig, ForgeRLOOTrainer
