"""LoRA handoff: fade a LoRA group's scale from 1.0 to `end_scale` over a step range.

It is meant for phases in which the base FFN trains: as the base weights learn, the adapter's contribution
fades (linearly or along a half cosine), separately for the FFN/expert LoRA (`lora`) and the attention LoRA
(`attn_lora`). At the end of training the final scale is folded into each adapter's B matrices, so the saved
adapter computes the faded function at PEFT's normal scale.
"""

from __future__ import annotations

import math

import torch
from transformers import TrainerCallback

from forge_trl.config import HandoffConfig
from forge_trl.injection.peft_base import ADAPTER_NAME, is_attention_param


def handoff_scale(step: int, fade: HandoffConfig) -> float:
    """The LoRA scale multiplier at optimizer step `step`."""
    if step <= fade.start_step:
        return 1.0
    if step >= fade.end_step:
        return fade.end_scale
    t = (step - fade.start_step) / (fade.end_step - fade.start_step)
    if fade.curve == "cosine":
        return fade.end_scale + (1.0 - fade.end_scale) * 0.5 * (1.0 + math.cos(math.pi * t))
    return 1.0 + (fade.end_scale - 1.0) * t


def lora_layers(model: torch.nn.Module, group: str) -> list[torch.nn.Module]:
    """PEFT LoRA layers (forge's routed layers included) of `group`: attention (`attn_lora`) or the rest."""
    from peft.tuners.lora import LoraLayer

    return [
        module
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer)
        and ADAPTER_NAME in module.scaling
        and is_attention_param(name) == (group == "attn_lora")
    ]


class HandoffCallback(TrainerCallback):
    def __init__(self, handoff: dict[str, HandoffConfig], model: torch.nn.Module):
        self.fades = {group: (fade, lora_layers(model, group)) for group, fade in handoff.items()}
        self.base_scaling = {id(m): m.scaling[ADAPTER_NAME] for _, layers in self.fades.values() for m in layers}
        self.factors: dict[str, float] = {group: 1.0 for group in handoff}

    def set_step(self, step: int) -> None:
        for group, (fade, layers) in self.fades.items():
            factor = handoff_scale(step, fade)
            self.factors[group] = factor
            for module in layers:
                module.scaling[ADAPTER_NAME] = self.base_scaling[id(module)] * factor

    def on_train_begin(self, args, state, control, **kwargs):
        self.set_step(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self.set_step(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and "loss" in logs:
            for group, factor in self.factors.items():
                logs[f"handoff/{group}_scale"] = factor

    def on_train_end(self, args, state, control, **kwargs):
        self.set_step(state.global_step)
        self.fold_into_weights()

    @torch.no_grad()
    def fold_into_weights(self) -> None:
        """Scale every B matrix by the current factor and restore the normal LoRA scale."""
        for group, (_fade, layers) in self.fades.items():
            factor = self.factors[group]
            for module in layers:
                for attr in module.adapter_layer_names:
                    if attr.endswith("B") and ADAPTER_NAME in getattr(module, attr):
                        item = getattr(module, attr)[ADAPTER_NAME]
                        getattr(item, "weight", item).mul_(factor)
                module.scaling[ADAPTER_NAME] = self.base_scaling[id(module)]
        self.factors = {group: 1.0 for group in self.factors}
