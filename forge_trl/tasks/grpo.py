"""`task=grpo`: group-relative policy optimisation (TRL's GRPOTrainer, as `ForgeGRPOTrainer`) with a forge
reward model.

Each prompt gets `num_generations` sampled completions; a completion's advantage is its RM score relative to
its group's. `task.reward_model.checkpoint_path` names the RM (a `task=rm` checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass

from forge_trl.tasks import TASKS
from forge_trl.tasks.online import OnlineRLTask, OnlineRLTaskConfig


@dataclass
class GRPOTaskConfig(OnlineRLTaskConfig):
    name: str = "grpo"


@TASKS.register("grpo")
class GRPOTask(OnlineRLTask):
    name = "grpo"
    schema = GRPOTaskConfig

    def trl_classes(self):
        from forge_trl.trainers.grpo import ForgeGRPOTrainer, GRPOConfig

        return GRPOConfig, ForgeGRPOTrainer
