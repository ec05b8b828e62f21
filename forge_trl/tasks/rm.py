"""`task=rm`: a reward model, i.e. a 1-label sequence-classification head trained on preference pairs
(TRL's RewardTrainer, Bradley-Terry loss, as `ForgeRewardTrainer`). Chained from SFT it starts from the SFT
weights plus a new head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from forge_trl.config import TaskConfig
from forge_trl.injection.base import HEAD_SEQ_CLS
from forge_trl.tasks import TASKS
from forge_trl.tasks.base import Task, TaskContext


@dataclass
class RMTaskConfig(TaskConfig):
    name: str = "rm"
    learning_rate: float = 1e-5
    warmup_steps: float = 0.05
    # Pulls mean reward towards zero (Eisenstein et al., 2023); null disables it.
    center_rewards_coefficient: Optional[float] = None
    # RewardTrainer's eval metrics: eval_loss and eval_accuracy (chosen scored above rejected).
    metric_for_best: str = "eval_accuracy"


@TASKS.register("rm")
class RMTask(Task):
    name = "rm"
    schema = RMTaskConfig
    head = HEAD_SEQ_CLS
    data_layouts = ("prompted_preference", "preference")

    def task_args(self, ctx: TaskContext) -> dict:
        return dict(
            max_length=ctx.cfg.data.max_length, center_rewards_coefficient=ctx.cfg.task.center_rewards_coefficient
        )

    def trl_classes(self):
        from forge_trl.trainers.reward import ForgeRewardTrainer, RewardConfig

        return RewardConfig, ForgeRewardTrainer
