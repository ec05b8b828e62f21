"""The task contract: resolved config + model + tokenizer + datasets -> a forge trainer.

A task names its schema (hyperparameters, a `TaskConfig` subclass, the only place their defaults live), the model
head it trains, the data layouts it accepts (the first is its default), its trainer class (from
`forge_trl.trainers`) and how its fields map onto the trainer's TRL config class. TRL is imported only inside
`trl_classes`, so composing and validating a config stays fast.

Reference handling lives here, for every task whose schema is a `ReferenceTaskConfig` (DPO, KTO, any later loss
with a reference model): the reference is the input checkpoint (TRL's frozen `ref` adapter, or the adapters
disabled), and when the run trains weights that reference pass shares (`base_ffn` phases) its log-probs are
computed once before training.
"""

from __future__ import annotations

import dataclasses
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from forge_trl.config import ForgeConfig, ReferenceTaskConfig, TaskConfig
from forge_trl.errors import ConfigError
from forge_trl.injection.base import HEAD_CAUSAL_LM, Injection
from forge_trl.injection.routing import RoutingRecorder

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

    from forge_trl.models.loading import ModelSource

log = logging.getLogger("forge_trl")


@dataclass
class TaskContext:
    """Everything a task needs to build its trainer."""

    cfg: ForgeConfig
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    train_dataset: Dataset
    eval_dataset: Dataset | None
    output_dir: Path
    precision: str  # bf16 | fp16 | fp32, already resolved for this machine
    callbacks: list[TrainerCallback]
    # Where the model came from and how it was injected (PPO builds its extra adapters from them).
    source: ModelSource
    injection: Injection
    # The routed injection's recorder: its balancing loss is added to every task's loss (None: no routing).
    routing: RoutingRecorder | None = None


class Task(ABC):
    name: ClassVar[str]
    schema: ClassVar[type[TaskConfig]]
    head: ClassVar[str] = HEAD_CAUSAL_LM
    data_layouts: ClassVar[tuple[str, ...]]
    # True for tasks that build extra roles as adapters on the policy's base (forge's PPO): they cannot train
    # every weight (injection=full, task.full_parameter).
    requires_adapter: ClassVar[bool] = False

    def preflight(self, injection: Injection) -> None:
        """Raise ConfigError, before any weights load, when this task cannot train with `injection`."""
        if self.requires_adapter and not injection.is_adapter:
            raise ConfigError(
                f"task={self.name} trains an adapter policy; injection={injection.name} "
                "(task.full_parameter) is not supported: pick an adapter injection such as dense_lora"
            )

    @abstractmethod
    def trl_classes(self) -> tuple[type, type]:
        """(TRL config class, forge trainer class from `forge_trl.trainers`), imported here, not at module import."""

    def build_trainer(self, ctx: TaskContext):
        """Return a ready-to-train forge trainer (a transformers.Trainer subclass). Every task, PPO included, is
        built here; a task adds its own inputs through `trainer_kwargs`."""
        config_cls, trainer_cls = self.trl_classes()
        return trainer_cls(
            args=self.trl_config(config_cls, ctx),
            processing_class=ctx.tokenizer,
            callbacks=ctx.callbacks,
            routing=ctx.routing,
            max_nonfinite_steps=ctx.cfg.max_nonfinite_steps,
            **self.trainer_kwargs(ctx),
        )

    def trainer_kwargs(self, ctx: TaskContext) -> dict[str, Any]:
        """The trainer's model and data, plus anything task-specific (reward functions, split_pairs, ...)."""
        return dict(model=ctx.model, train_dataset=ctx.train_dataset, eval_dataset=ctx.eval_dataset)

    def task_args(self, ctx: TaskContext) -> dict[str, Any]:
        """Keyword arguments for the TRL config beyond the shared TrainingArguments."""
        return {}

    def reference_args(self, ctx: TaskContext) -> dict[str, Any]:
        """TRL config keys of the reference pass, for tasks whose schema is a `ReferenceTaskConfig`.

        The reference is the input checkpoint: TRL gives a PeftModel carrying a trained adapter a frozen `ref` copy,
        and disables a fresh adapter, which leaves exactly the base model. Phases that train base weights
        (`Injection.trains_base_weights`) change what that pass computes as training goes on, so its log-probs are
        then taken once, before the first step."""
        t = ctx.cfg.task
        if not isinstance(t, ReferenceTaskConfig):
            return {}
        precompute = t.precompute_ref_log_probs
        if ctx.injection.trains_base_weights and not precompute:
            log.info("phases train base weights, which the reference pass shares: precomputing reference log-probs")
            precompute = True
        return dict(precompute_ref_log_probs=precompute)

    def eval_args(self, ctx: TaskContext) -> dict[str, Any]:
        """TrainingArguments keys of evaluation during training: every `task.eval_steps` on the held-out split.

        With save_best or early stopping, `metric_for_best_model` and `greater_is_better` name the metric followed:
        transformers then keeps `state.best_metric`, which EarlyStoppingCallback compares with. Weights are never
        moved by transformers (`load_best_model_at_end` stays off); forge's BestCheckpointCallback writes best/."""
        t = ctx.cfg.task
        if t.eval_steps is None or ctx.eval_dataset is None:
            return dict(eval_strategy="no")
        args: dict[str, Any] = dict(eval_strategy="steps", eval_steps=t.eval_steps)
        if t.follows_best:
            args.update(metric_for_best_model=t.metric_for_best, greater_is_better=t.metric_greater_is_better)
        return args

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
            **self.eval_args(ctx),
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
        args.update(self.reference_args(ctx))
        args.update(self.task_args(ctx))
        known = {f.name for f in dataclasses.fields(config_cls)}
        if ctx.routing is not None and "router_aux_loss_coef" in known:
            args["router_aux_loss_coef"] = 0.0  # forge adds the balancing loss itself, for every task
        if ctx.cfg.data.chat_template_kwargs and "chat_template_kwargs" in known:
            # GRPO and RLOO render prompts with this config field; the other trainers read the rows' column of the
            # same dict (forge_trl/data/prompts.py `trl_rows`).
            args["chat_template_kwargs"] = dict(ctx.cfg.data.chat_template_kwargs)
        args.update(dict(t.trl_args))
        unknown = sorted(set(t.trl_args) - known)
        if unknown:
            raise ConfigError(f"task.trl_args: {config_cls.__name__} has no field '{unknown[0]}'")
        try:
            return config_cls(**args)
        except ValueError as exc:
            raise ConfigError(
                f"task: {config_cls.__name__} rejected the settings: {str(exc).splitlines()[0]}"
            ) from None
