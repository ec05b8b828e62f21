"""`task=pretrain`: causal language modelling on raw text, every weight trained (`ForgeSFTTrainer` on `text`)."""

from __future__ import annotations

from dataclasses import dataclass

from forge_trl.config import TaskConfig
from forge_trl.tasks import TASKS
from forge_trl.tasks.base import TaskContext
from forge_trl.tasks.sft import SFTTask


@dataclass
class PretrainTaskConfig(TaskConfig):
    name: str = "pretrain"
    learning_rate: float = 1e-3
    per_device_train_batch_size: int = 16
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.05
    full_parameter: bool = True
    # Concatenate short documents into full-length rows (TRL's best-fit-decreasing packing).
    packing: bool = False


@TASKS.register("pretrain")
class PretrainTask(SFTTask):
    name = "pretrain"
    schema = PretrainTaskConfig
    data_layouts = ("text",)

    def task_args(self, ctx: TaskContext) -> dict:
        return dict(
            max_length=ctx.cfg.data.max_length,
            packing=ctx.cfg.task.packing,
            dataset_text_field="text",
            completion_only_loss=False,
        )
