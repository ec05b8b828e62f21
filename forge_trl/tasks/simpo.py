"""`task=simpo`: SimPO, a reference-free preference loss on length-normalised log-probs
(TRL's experimental CPOTrainer with `loss_type="simpo"`, as `ForgeCPOTrainer`).

    loss = -log sigmoid(beta * (avg logp(chosen) - avg logp(rejected)) - simpo_gamma)

`simpo_gamma` is the target reward margin. `cpo_alpha` adds CPO's NLL term on the chosen response (0: pure
SimPO).
"""

from __future__ import annotations

from dataclasses import dataclass

from forge_trl.config import TaskConfig, require
from forge_trl.tasks import TASKS
from forge_trl.tasks.base import Task, TaskContext


@dataclass
class SimPOTaskConfig(TaskConfig):
    name: str = "simpo"
    learning_rate: float = 1e-6
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.1
    # Scale of the length-normalised reward difference (the SimPO paper uses 2.0-2.5).
    beta: float = 2.0
    # Target reward margin.
    simpo_gamma: float = 0.5
    # Weight of an NLL term on the chosen response (CPO-SimPO); 0 is plain SimPO.
    cpo_alpha: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        require(self.beta > 0, "task.beta", f"must be positive, got {self.beta}")
        require(self.simpo_gamma >= 0, "task.simpo_gamma", f"must be >= 0, got {self.simpo_gamma}")
        require(self.cpo_alpha >= 0, "task.cpo_alpha", f"must be >= 0, got {self.cpo_alpha}")


@TASKS.register("simpo")
class SimPOTask(Task):
    name = "simpo"
    schema = SimPOTaskConfig
    data_layouts = ("prompted_preference", "preference")

    def task_args(self, ctx: TaskContext) -> dict:
        t = ctx.cfg.task
        return dict(
            loss_type="simpo",
            beta=t.beta,
            simpo_gamma=t.simpo_gamma,
            cpo_alpha=t.cpo_alpha,
            max_length=ctx.cfg.data.max_length,
        )

    def trl_classes(self):
        from forge_trl.trainers.cpo import CPOConfig, ForgeCPOTrainer

        return CPOConfig, ForgeCPOTrainer
