"""`task=sft`: supervised fine-tuning with the loss on responses only (TRL's SFTTrainer, as `ForgeSFTTrainer`).

Prompt/response rows arrive as TRL prompt-completion columns, so `completion_only_loss` masks the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from forge_trl.config import TaskConfig
from forge_trl.tasks import TASKS
from forge_trl.tasks.base import Task, TaskContext


@dataclass
class SFTTaskConfig(TaskConfig):
    name: str = "sft"
    num_train_epochs: float = 3.0
    learning_rate: float = 2e-4
    per_device_train_batch_size: int = 8
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.03
    # Loss on response tokens only; false trains on the prompt too.
    completion_only_loss: bool = True
    # Concatenate rows into full-length sequences (TRL's best-fit-decreasing packing). Attention never crosses a
    # row boundary; without flash attention the packed rows stay two-dimensional (trainers/packing.py).
    packing: bool = False


@TASKS.register("sft")
class SFTTask(Task):
    name = "sft"
    # Declared with the base types: PretrainTask reuses this task with its own schema and layouts.
    schema: ClassVar[type[TaskConfig]] = SFTTaskConfig
    data_layouts: ClassVar[tuple[str, ...]] = ("sft", "text")

    def task_args(self, ctx: TaskContext) -> dict:
        t = ctx.cfg.task
        return dict(max_length=ctx.cfg.data.max_length, completion_only_loss=t.completion_only_loss, packing=t.packing)

    def trainer_kwargs(self, ctx: TaskContext) -> dict:
        return {**super().trainer_kwargs(ctx), "packed_rows": ctx.cfg.task.packing}

    def trl_classes(self):
        from forge_trl.trainers.sft import ForgeSFTTrainer, SFTConfig

        return SFTConfig, ForgeSFTTrainer
