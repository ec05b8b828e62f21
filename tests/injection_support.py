"""Helpers for the injection tests: in-process training runs and a callback that watches parameters."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import TrainerCallback

from forge_trl.commands.compose import compose
from forge_trl.injection import get_injection
from forge_trl.models.run_info import read_run_info
from forge_trl.train import run
from forge_trl.trainers.callbacks import read_metrics

STRATEGIES = ("dense_lora", "mixture_lora", "moe_expert_lora", "native_moe_expert_lora")
MODEL_FOR = {"native_moe_expert_lora": "tiny_moe"}


class ParamWatcher(TrainerCallback):
    """Snapshots every parameter at train start and after each optimizer step; records LoRA scales too."""

    def __init__(self):
        self.model = None
        self.start: dict[str, torch.Tensor] = {}
        self.changed_per_step: list[set[str]] = []
        self.scales_per_step: list[dict[str, float]] = []

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters()}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.model = model
        self.start = self._snapshot()
        self._previous = self.start

    def on_step_begin(self, args, state, control, **kwargs):
        from peft.tuners.lora import LoraLayer

        self.scales_per_step.append(
            {
                n: m.scaling["default"]
                for n, m in self.model.named_modules()
                if isinstance(m, LoraLayer) and "default" in m.scaling
            }
        )

    def on_step_end(self, args, state, control, **kwargs):
        now = self._snapshot()
        self.changed_per_step.append({n for n, p in now.items() if not torch.equal(p, self._previous[n])})
        self._previous = now

    def changed_overall(self) -> set[str]:
        return {n for n, p in self.model.named_parameters() if not torch.equal(p.detach(), self.start[n])}


def train_in_process(
    output_dir: Path, *overrides: str, steps: int = 3, callbacks: tuple = ()
) -> tuple[Path, ParamWatcher, list[dict]]:
    """One forge run in this process (TRL is imported once per test session). A ParamWatcher among
    `callbacks` is the one returned; otherwise one is added."""
    watcher = next((c for c in callbacks if isinstance(c, ParamWatcher)), None)
    if watcher is None:
        watcher = ParamWatcher()
        callbacks = (*callbacks, watcher)
    cfg = compose(
        [
            f"output_dir={output_dir}",
            "overwrite=true",
            "plot=false",
            f"task.max_steps={steps}",
            "task.logging_steps=1",
            "task.per_device_train_batch_size=2",
            *overrides,
        ]
    )
    final = run(cfg, extra_callbacks=callbacks)
    return final, watcher, read_metrics(output_dir)


def groups_of(final: Path, model) -> dict[str, list[str]]:
    info = read_run_info(final)
    return get_injection(info.injection_name).from_settings(info.injection).parameter_groups(model)


def save_tiny_model(directory: Path, model_type: str, tokenizer, **config) -> Path:
    """A random-init model of `model_type` (2 layers, hidden 32) with `tokenizer`, saved as a local HF dir."""
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )
    AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **{**shape, **config})).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
