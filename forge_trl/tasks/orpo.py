"""`task=orpo`: odds-ratio preference optimisation (TRL's experimental ORPOTrainer).

Loss = NLL(chosen) + orpo_lambda * odds-ratio loss, with per-token average log-probs, and no reference model.
`orpo_lambda` is TRL's `ORPOConfig.beta`. forge's trainer computes the odds ratio stably (trainers/orpo.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from forge_trl.config import TaskConfig, require
from forge_trl.tasks import TASKS
from forge_trl.tasks.base import Task, TaskContext


@dataclass
class ORPOTaskConfig(TaskConfig):
    name: str = "orpo"
    learning_rate: float = 8e-6
    warmup_steps: float = 0.1
    # Weight of the odds-ratio term: 0.1-0.3 after SFT on small data, up to 1.0 for standalone ORPO.
    orpo_lambda: float = 0.1
    # Chosen and rejected through the policy one after the other: see DPOTaskConfig.split_pairs.
    split_pairs: bool = False

    def __post_init__(self):
        super().__post_init__()
        require(self.orpo_lambda > 0, "task.orpo_lambda", f"must be positive, got {self.orpo_lambda}")


@TASKS.register("orpo")
class ORPOTask(Task):
    name = "orpo"
    schema = ORPOTaskConfig
    data_layouts = ("prompted_preference", "preference")

    def task_args(self, ctx: TaskContext) -> dict:
        return dict(beta=ctx.cfg.task.orpo_lambda, max_length=ctx.cfg.data.max_length)

    def trainer_kwargs(self, ctx: TaskContext) -> dict:
        return {**super().trainer_kwargs(ctx), "split_pairs": ctx.cfg.task.split_pairs}

    def trl_classes(self):
        from forge_trl.trainers.orpo import ForgeORPOTrainer, ORPOConfig

        return ORPOConfig, ForgeORPOTrainer
