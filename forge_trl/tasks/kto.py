"""`task=kto`: Kahneman-Tversky optimisation (TRL's KTOTrainer, as `ForgeKTOTrainer`).

KTO learns from single completions labelled desirable or undesirable, against the input checkpoint as
reference (handled by the base task, as for DPO). Paired preference rows work too: TRL splits each pair into a
desirable (chosen) and an undesirable (rejected) example. Unpaired rows are `{prompt, completion, label}`
with `data.layout=unpaired_preference`.
"""

from __future__ import annotations

from dataclasses import dataclass

from forge_trl.config import ReferenceTaskConfig, require
from forge_trl.tasks import TASKS
from forge_trl.tasks.base import Task, TaskContext


@dataclass
class KTOTaskConfig(ReferenceTaskConfig):
    name: str = "kto"
    learning_rate: float = 5e-6
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.1
    # KL strength against the reference, as in DPO.
    beta: float = 0.1
    # Loss weights of desirable and undesirable examples; raise one to balance an uneven dataset.
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        require(self.beta > 0, "task.beta", f"must be positive, got {self.beta}")
        require(self.desirable_weight > 0, "task.desirable_weight", "must be positive")
        require(self.undesirable_weight > 0, "task.undesirable_weight", "must be positive")
        # KTO's reference-point KL is estimated from mismatched pairs inside a batch.
        require(
            self.per_device_train_batch_size > 1,
            "task.per_device_train_batch_size",
            "KTO needs at least 2 examples per batch to estimate its KL term",
        )


@TASKS.register("kto")
class KTOTask(Task):
    name = "kto"
    schema = KTOTaskConfig
    data_layouts = ("preference", "prompted_preference", "unpaired_preference")

    def task_args(self, ctx: TaskContext) -> dict:
        t = ctx.cfg.task
        return dict(
            beta=t.beta,
            desirable_weight=t.desirable_weight,
            undesirable_weight=t.undesirable_weight,
            max_length=ctx.cfg.data.max_length,
        )

    def trl_classes(self):
        from forge_trl.trainers.kto import ForgeKTOTrainer, KTOConfig

        return KTOConfig, ForgeKTOTrainer
