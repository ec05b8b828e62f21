"""`task=dpo`: direct preference optimisation (TRL's DPOTrainer).

The reference is the input checkpoint: a PeftModel carrying a trained adapter gets TRL's frozen `ref` copy of
it, and a fresh adapter is disabled, which leaves exactly the base model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from forge_trl.config import TaskConfig, require
from forge_trl.tasks import TASKS
from forge_trl.tasks.base import Task, TaskContext
from forge_trl.tasks.pair_split import SplitPairsTask, with_split_pairs

log = logging.getLogger("forge_trl")


@dataclass
class DPOTaskConfig(TaskConfig):
    name: str = "dpo"
    learning_rate: float = 5e-6
    # KL strength: higher keeps the policy closer to the reference.
    beta: float = 0.1
    # TRL loss name: sigmoid (DPO), ipo, hinge, robust, ...
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    # Compute reference log-probs once before training instead of at every step.
    precompute_ref_log_probs: bool = False
    # Send chosen and rejected through the policy one after the other, the first half recomputed in backward:
    # peak activation memory of B sequences instead of 2·B, for one extra forward over B (tasks/pair_split.py).
    split_pairs: bool = False

    def __post_init__(self):
        super().__post_init__()
        require(self.beta > 0, "task.beta", f"must be positive, got {self.beta}")
        require(0.0 <= self.label_smoothing < 0.5, "task.label_smoothing", "must be in [0, 0.5)")


@TASKS.register("dpo")
class DPOTask(SplitPairsTask, Task):
    name = "dpo"
    schema = DPOTaskConfig
    data_layouts = ("prompted_preference", "preference")

    def task_args(self, ctx: TaskContext) -> dict:
        t = ctx.cfg.task
        precompute = t.precompute_ref_log_probs
        if ctx.reference_drifts and not precompute:
            log.info("phases train base weights, which the reference pass shares: precomputing reference log-probs")
            precompute = True
        return dict(
            beta=t.beta,
            loss_type=[t.loss_type],
            label_smoothing=t.label_smoothing,
            precompute_ref_log_probs=precompute,
            max_length=ctx.cfg.data.max_length,
        )

    def trl_classes(self):
        from trl import DPOConfig, DPOTrainer

        return DPOConfig, with_split_pairs(DPOTrainer)
