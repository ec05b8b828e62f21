"""Phased trainable-parameter schedules: `injection.phases = [{step, trainable: [groups]}, ...]`.

Every parameter that any phase trains is made trainable before the trainer builds its optimizer, so it is in
the optimizer from the start; the callback then only toggles `requires_grad` at phase boundaries. Frozen
groups also have their gradients dropped right before each optimizer step, because some trainers flip
`requires_grad` back on mid-step (TRL's reference pass calls PEFT's `set_adapter`, which re-enables every
parameter of the active adapter). With no gradient, AdamW leaves a parameter bit-identical.
"""

from __future__ import annotations

import logging

import torch
from transformers import TrainerCallback

from forge_trl.config import PhaseConfig
from forge_trl.errors import ConfigError

log = logging.getLogger("forge_trl")


def phase_index(phases: list[PhaseConfig], step: int) -> int:
    """Index of the phase in force for the optimizer update that starts at `global_step == step`."""
    current = 0
    for i, phase in enumerate(phases):
        if phase.step <= step:
            current = i
    return current


def check_phase_groups(phases: list[PhaseConfig], groups: dict[str, list[str]], injection_name: str) -> None:
    """Preflight: every group a phase names must hold at least one parameter of this model."""
    for i, phase in enumerate(phases):
        for group in phase.trainable:
            if not groups.get(group):
                available = ", ".join(sorted(g for g, names in groups.items() if names)) or "none"
                raise ConfigError(
                    f"injection.phases[{i}].trainable: group '{group}' has no parameters with "
                    f"injection={injection_name} on this model; available groups: {available}"
                )


def warn_router_only_phases(phases: list[PhaseConfig], model: torch.nn.Module, groups: dict[str, list[str]]) -> None:
    """Warn when a phase trains the router but no LoRA while every expert is still identical (all B = 0).

    Identical experts make the mixture independent of the routing weights, so the task loss gives the router
    no gradient (and DPO's implicit reward is exactly 0) until some phase trains the experts."""
    params = dict(model.named_parameters())
    lora_names = groups.get("lora", []) + groups.get("attn_lora", [])
    experts_identical = all(not params[name].any() for name in lora_names if name.rsplit(".", 3)[-3].endswith("B"))
    if not experts_identical:
        return
    for i, phase in enumerate(phases):
        if "router" in phase.trainable and not {"lora", "attn_lora"} & set(phase.trainable):
            log.warning(
                "injection.phases[%d] trains only the router while every expert is still identical (LoRA B = 0): "
                "the task loss gives the router no gradient until a phase trains lora",
                i,
            )
            return
        if {"lora", "attn_lora"} & set(phase.trainable):
            return


class PhaseSchedule:
    """The phases resolved against one model's parameter names.

    Parameters are looked up by name at every switch rather than held: FSDP2 replaces each parameter of the model
    with its sharded version (same name) when the trainer prepares it, after this schedule was built."""

    def __init__(self, phases: list[PhaseConfig], groups: dict[str, list[str]], model: torch.nn.Module):
        self.phases = phases
        self.members = [{name for group in phase.trainable for name in groups[group]} for phase in phases]
        self.union = set().union(*self.members)
        self.model = model
        self.current: int | None = None

    def make_all_trainable(self) -> None:
        """Before the optimizer is built: exactly the parameters of some phase require grad."""
        for name, param in self.model.named_parameters():
            param.requires_grad_(name in self.union)

    def enter(self, step: int) -> bool:
        """Switch to the phase for `step`; True when the phase changed."""
        index = phase_index(self.phases, step)
        if index == self.current:
            return False
        self.current = index
        active = self.members[index]
        count = 0
        for name, param in self.model.named_parameters():
            if name in self.union:
                param.requires_grad_(name in active)
                count += param.numel() if name in active else 0
        log.info(
            "phase %d/%d from step %d: training %s (%s parameters)",
            index + 1,
            len(self.phases),
            step,
            ", ".join(self.phases[index].trainable),
            f"{count:,}",
        )
        return True

    def drop_frozen_grads(self) -> None:
        active = self.members[self.current or 0]
        for name, param in self.model.named_parameters():
            if name in self.union and name not in active:
                param.grad = None


class PhaseCallback(TrainerCallback):
    def __init__(self, schedule: PhaseSchedule):
        self.schedule = schedule
        self.history: list[tuple[int, int]] = []  # (step, phase index) at each switch

    def _enter(self, step: int) -> None:
        if self.schedule.enter(step) and self.schedule.current is not None:  # enter() has just set `current`
            self.history.append((step, self.schedule.current))

    def on_train_begin(self, args, state, control, **kwargs):
        self.schedule.current = None
        self._enter(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self._enter(state.global_step)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.schedule.drop_frozen_grads()
