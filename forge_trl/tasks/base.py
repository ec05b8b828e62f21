"""The task contract: resolved config + model + tokenizer + datasets -> a TRL trainer.

A task names its schema (hyperparameters, a `TaskConfig` subclass), the model head it trains, the data
layouts it accepts (the first is its default) and how its fields map onto its TRL config class. TRL is imported
only inside `build_trainer`, so composing and validating a config stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from forge_trl.config import ForgeConfig, TaskConfig
from forge_trl.errors import ConfigError
from forge_trl.injection.base import HEAD_CAUSAL_LM
from forge_trl.injection.routing import RoutingRecorder
from forge_trl.models.checkpoint import CHECKPOINT_PREFIX, EXTRA_TRAINABLE_FILE, restore_named_parameters, staging_dir

ROUTING_FILE = "routing.jsonl"


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
    # The routed injection's recorder: its balancing loss is added to every task's loss (None: no routing).
    routing: RoutingRecorder | None = None
    # True when this run trains weights that the adapter-disabled reference pass also uses (base_ffn phases):
    # reference log-probs must then be computed before training starts.
    reference_drifts: bool = False
    # Where the model came from and how it was injected (PPO builds its extra adapters from them).
    source: Any = None
    injection: Any = None


class ForgeTrainerMixin:
    """Mixed into every TRL trainer forge builds: adds the routed injections' balancing loss to the task loss
    and their routing metrics to the training logs, whatever the trainer's own MoE support; and makes its
    intermediate checkpoints atomic and complete (see `_save_checkpoint`)."""

    forge_routing: RoutingRecorder | None = None
    _forge_staging: Path | None = None  # set only while a checkpoint is being staged

    def _prepare_dataset(self, dataset, *args, **kwargs):
        # A `forge_trl.preprocess` preference cache is already tokenized exactly as DPOTrainer would do it.
        from forge_trl.data.preprocess import is_pretokenized_preference

        if is_pretokenized_preference(dataset):
            return dataset
        return super()._prepare_dataset(dataset, *args, **kwargs)

    def compute_loss(self, model, inputs, *args, **kwargs):
        recorder = self.forge_routing
        if recorder is None or not model.training:
            return super().compute_loss(model, inputs, *args, **kwargs)
        with recorder.collect():
            out = super().compute_loss(model, inputs, *args, **kwargs)
        aux = recorder.pop_loss()
        if aux is None:
            return out
        self._forge_aux_values = getattr(self, "_forge_aux_values", [])
        self._forge_aux_values.append(aux.detach())  # averaged when logged: no device sync per step
        if recorder.coef == 0:
            return out
        weighted = recorder.coef * aux
        # Trainer divides the loss by the accumulation steps unless the loss was already normalised over the
        # whole accumulated batch (num_items_in_batch); the per-micro-batch aux loss then needs the division here.
        num_items = kwargs.get("num_items_in_batch")
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:
            scaled = (getattr(self, "model_accepts_loss_kwargs", False) and num_items is not None) or (
                getattr(self, "compute_loss_func", None) is not None
            )
        if scaled:
            weighted = weighted / max(getattr(self, "current_gradient_accumulation_steps", 1), 1)
        if isinstance(out, tuple):
            return (out[0] + weighted, *out[1:])
        return out + weighted

    def log(self, logs, *args, **kwargs):
        if self.forge_routing is not None and "loss" in logs:
            values = getattr(self, "_forge_aux_values", [])
            if values:
                logs["moe/aux_loss"] = float(torch.stack(values).float().mean())
                values.clear()
            shares = self.forge_routing.expert_shares()
            logs.update(self.forge_routing.pop_metrics())
            if shares and self.is_world_process_zero():
                # Per-layer, per-expert token shares are too many for the log line; they go to routing.jsonl.
                record = {"step": self.state.global_step, "expert_share": shares}
                with (Path(self.args.output_dir) / ROUTING_FILE).open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
        return super().log(logs, *args, **kwargs)

    # ---------------------------------------------------------------------------------------- checkpoints
    def _get_output_dir(self, trial):
        if self._forge_staging is not None:
            return str(self._forge_staging)
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        """Write `checkpoint-N` as transformers does, but into a hidden staging directory, and rename it into
        place only once every file is there.

        transformers 5.23 writes straight into `checkpoint-N` (weights, then optimizer, RNG, trainer_state.json),
        so a process killed mid-save leaves a directory that looks like the newest checkpoint but lacks some of
        its state. Staged, a killed save leaves only the staging directory, which `resume=true` never considers
        and the next run discards. Rotation runs after the rename, so the previous checkpoint is deleted only
        once its successor is complete."""
        from transformers.trainer_utils import rotate_checkpoints

        run_dir = Path(super()._get_output_dir(trial))
        staging = staging_dir(run_dir)
        name = f"{CHECKPOINT_PREFIX}{self.state.global_step}"
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self._forge_staging = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._forge_staging = None
        staged, target = staging / name, run_dir / name
        if self.args.should_save:
            self._forge_save_extra_trainable(staged)
            self._forge_point_best_checkpoint_at(run_dir, staged)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            if target.exists():  # the same step saved again: swap, so a checkpoint-N exists at every moment
                old = run_dir / f".{name}.old"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(target, old)
                os.replace(staged, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staged, target)
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(output_dir=str(run_dir), save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def _forge_point_best_checkpoint_at(self, run_dir: Path, staged: Path) -> None:
        """transformers looked for the best checkpoint in the staging directory; record its final place."""
        best_step = self.state.best_global_step
        if not best_step:
            return
        best = run_dir / f"{CHECKPOINT_PREFIX}{best_step}"
        if best_step == self.state.global_step or best.is_dir():
            self.state.best_model_checkpoint = str(best)
            self.state.save_to_json(str(staged / "trainer_state.json"))

    def _forge_extra_trainable(self, model) -> dict[str, torch.nn.Parameter]:
        """Parameters the optimizer updates that a PEFT adapter checkpoint leaves out: base weights trained by
        `base_ffn` phases. Without them a resumed run would restart those weights from the base model. (Anything
        not named `lora_` is taken, so a `modules_to_save` head is stored twice; it is small.)"""
        from peft import PeftModel

        if not isinstance(model, PeftModel) or self.optimizer is None:
            return {}
        optimized = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        return {name: p for name, p in model.named_parameters() if id(p) in optimized and "lora_" not in name}

    def _forge_save_extra_trainable(self, checkpoint: Path) -> None:
        from safetensors.torch import save_file

        extra = self._forge_extra_trainable(self.accelerator.unwrap_model(self.model))
        if extra:
            tensors = {n: p.detach().contiguous().cpu() for n, p in extra.items()}
            save_file(tensors, str(checkpoint / EXTRA_TRAINABLE_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = Path(resume_from_checkpoint) / EXTRA_TRAINABLE_FILE
        if path.is_file():
            restore_named_parameters(model if model is not None else self.model, path)


def forge_trainer_class(trainer_cls: type) -> type:
    return type(f"Forge{trainer_cls.__name__}", (ForgeTrainerMixin, trainer_cls), {})


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
        trainer = forge_trainer_class(trainer_cls)(
            model=ctx.model,
            args=self.trl_config(config_cls, ctx),
            train_dataset=ctx.train_dataset,
            eval_dataset=ctx.eval_dataset,
            processing_class=ctx.tokenizer,
            callbacks=ctx.callbacks,
            **self.trainer_kwargs(ctx),
        )
        trainer.forge_routing = ctx.routing
        if ctx.routing is not None:
            (ctx.output_dir / ROUTING_FILE).write_text("", encoding="utf-8")  # a rerun starts a fresh file
        return trainer

    def task_args(self, ctx: TaskContext) -> dict:
        """Keyword arguments for the TRL config beyond the shared TrainingArguments."""
        return {}

    def trainer_kwargs(self, ctx: TaskContext) -> dict:
        """Extra keyword arguments for the TRL trainer itself (reward functions, ...)."""
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
        known = {f.name for f in dataclasses.fields(config_cls)}
        if ctx.routing is not None and "router_aux_loss_coef" in known:
            args["router_aux_loss_coef"] = 0.0  # forge adds the balancing loss itself, for every task
        args.update(dict(t.trl_args))
        unknown = sorted(set(t.trl_args) - known)
        if unknown:
            raise ConfigError(f"task.trl_args: {config_cls.__name__} has no field '{unknown[0]}'")
        try:
            return config_cls(**args)
        except ValueError as exc:
            raise ConfigError(f"task: {config_cls.__name__} rejected the settings: {str(exc).splitlines()[0]}") from None
