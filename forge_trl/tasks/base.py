"""The task contract: resolved config + model + tokenizer + datasets -> a TRL trainer.

A task names its schema (hyperparameters, a `TaskConfig` subclass), the model head it trains, the data
layouts it accepts (the first is its default) and how its fields map onto its TRL config class. TRL is imported
only inside `build_trainer`, so composing and validating a config stays fast.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from forge_trl.config import ForgeConfig, TaskConfig
from forge_trl.errors import ConfigError
from forge_trl.injection.base import HEAD_CAUSAL_LM


@dataclass
class TaskContext:
    """Everything a task needs to build its trainer."""

    cfg: ForgeConfig
    model: Any
    tokenizer: Any
    train_dataset: Any
    eval_dataset: Any
    output_dir: Path
    precision: str  # bf16 | fp16 | fp32, already resolved for this machine
    callbacks: list


class Task(ABC):
    name: ClassVar[str]
    schema: ClassVar[type[TaskConfig]]
    head: ClassVar[str] = HEAD_CAUSAL_LM
    data_layouts: ClassVar[tuple[str, ...]]

    @abstractmethod
    def trl_classes(self) -> tuple[type, type]:
        """(TRL config class, TRL trainer class); TRL is imported here, not at module import."""

    def build_trainer(self, ctx: TaskContext):
        """Return a ready-to-train TRL trainer (a transformers.Trainer subclass)."""
        config_cls, trainer_cls = self.trl_classes()
        return trainer_cls(
            model=ctx.model,
            args=self.trl_config(config_cls, ctx),
            train_dataset=ctx.train_dataset,
            eval_dataset=ctx.eval_dataset,
            processing_class=ctx.tokenizer,
            callbacks=ctx.callbacks,
        )

    def task_args(self, ctx: TaskContext) -> dict:
        """Keyword arguments for the TRL config beyond the shared TrainingArguments."""
        return {}

    def trl_config(self, config_cls, ctx: TaskContext):
        """Build `config_cls` from the shared keys, this task's own keys and `task.trl_args`."""
        t = ctx.cfg.task
        args = dict(
            output_dir=str(ctx.output_dir),
            max_steps=t.max_steps,
            num_train_epochs=t.num_train_epochs,
            learning_rate=t.learning_rate,
            per_device_train_batch_size=t.per_device_train_batch_size,
            per_device_eval_batch_size=t.per_device_eval_batch_size,
            gradient_accumulation_steps=t.gradient_accumulation_steps,
            logging_steps=t.logging_steps,
            logging_first_step=True,
            save_strategy="steps" if t.save_steps > 0 else "no",
            save_steps=t.save_steps if t.save_steps > 0 else 500,
            save_total_limit=t.save_total_limit,
            eval_strategy="steps" if ctx.eval_dataset is not None else "no",
            eval_steps=t.eval_steps or t.logging_steps,
            lr_scheduler_type=t.lr_scheduler_type,
            warmup_steps=t.warmup_steps,
            weight_decay=t.weight_decay,
            max_grad_norm=t.max_grad_norm,
            gradient_checkpointing=t.gradient_checkpointing,
            bf16=ctx.precision == "bf16",
            fp16=ctx.precision == "fp16",
            seed=ctx.cfg.seed,
            data_seed=ctx.cfg.seed,
            report_to=ctx.cfg.report_to,
            dataloader_num_workers=0,
            dataloader_pin_memory=torch.cuda.is_available(),
        )
        args.update(self.task_args(ctx))
        args.update(dict(t.trl_args))
        known = {f.name for f in dataclasses.fields(config_cls)}
        unknown = sorted(set(t.trl_args) - known)
        if unknown:
            raise ConfigError(f"task.trl_args: {config_cls.__name__} has no field '{unknown[0]}'")
        try:
            return config_cls(**args)
        except ValueError as exc:
            raise ConfigError(f"task: {config_cls.__name__} rejected the settings: {str(exc).splitlines()[0]}") from None
