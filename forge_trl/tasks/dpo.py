"""`task=dpo`: direct preference optimisation (TRL's DPOTrainer, as `ForgeDPOTrainer`).

The reference is the input checkpoint (handled by the base task for every `ReferenceTaskConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass

from forge_trl.config import ReferenceTaskConfig, require
from forge_trl.tasks import TASKS
from forge_trl.tasks.base import Task, TaskContext


@dataclass
class DPOTaskConfig(ReferenceTaskConfig):
    name: str = "dpo"
    learning_rate: float = 5e-6
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.1
    # KL strength: higher keeps the policy closer to the reference.
    beta: float = 0.1
    # TRL loss name: sigmoid (DPO), ipo, hinge, robust, ...
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    # Send chosen and rejected through the policy one after the other, the first half recomputed in backward:
    # peak activation memory of B sequences instead of 2·B, for one extra forward over B (trainers/split_pairs.py).
    split_pairs: bool = False

    def __post_init__(self):
        super().__post_init__()
        require(self.beta > 0, "task.beta", f"must be positive, got {self.beta}")
        require(0.0 <= self.label_smoothing < 0.5, "task.label_smoothing", "must be in [0, 0.5)")


@TASKS.register("dpo")
class DPOTask(Task):
    name = "dpo"
    schema = DPOTaskConfig
    data_layouts = ("prompted_preference", "preference")

    def task_args(self, ctx: TaskContext) -> dict:
        t = ctx.cfg.task
        return dict(
            beta=t.beta, loss_type=[t.loss_type], label_smoothing=t.label_smoothing, max_length=ctx.cfg.data.max_length
        )

    def trainer_kwargs(self, ctx: TaskContext) -> dict:
        return {**super().trainer_kwargs(ctx), "split_pairs": ctx.cfg.task.split_pairs}

    def trl_classes(self):
        from forge_trl.trainers.dpo import DPOConfig, ForgeDPOTrainer

        return DPOConfig, ForgeDPOTrainer
