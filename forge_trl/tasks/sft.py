"""`task=sft`: supervised fine-tuning with the loss on responses only (TRL's SFTTrainer).

Prompt/response rows arrive as TRL prompt-completion columns, so `completion_only_loss` masks the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from forge_trl.config import TaskConfig
from forge_trl.tasks import TASKS
from forge_trl.tasks.base import Task, TaskContext
from forge_trl.tasks.packing import use_packed_rows, with_packed_rows


@dataclass
class SFTTaskConfig(TaskConfig):
    name: str = "sft"
    learning_rate: float = 2e-4
    # Loss on response tokens only; false trains on the prompt too.
    completion_only_loss: bool = True
    # Concatenate rows into full-length sequences (TRL's best-fit-decreasing packing). Attention never crosses a
    # row boundary; without flash attention the packed rows stay two-dimensional (tasks/packing.py).
    packing: bool = False


@TASKS.register("sft")
class SFTTask(Task):
    name = "sft"
    schema = SFTTaskConfig
    data_layouts = ("sft", "text")

    def task_args(self, ctx: TaskContext) -> dict:
        t = ctx.cfg.task
        return dict(
            max_length=ctx.cfg.data.max_length,
            completion_only_loss=t.completion_only_loss,
            packing=t.packing,
        )

    def build_trainer(self, ctx: TaskContext):
        trainer = super().build_trainer(ctx)
        if ctx.cfg.task.packing:
            use_packed_rows(trainer, ctx.tokenizer)
        return trainer

    def trl_classes(self):
        from trl import SFTConfig, SFTTrainer

        return SFTConfig, with_packed_rows(SFTTrainer)
