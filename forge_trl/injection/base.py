"""The injection contract.

An injection takes a loaded base model and returns a model that TRL can train, plus named parameter groups
(`lora`, `attn_lora`, `router`, `base_ffn`, `score`, ...) that phase schedules and tests refer to. It also
knows how to save its trainable delta as safetensors, how to restore it into a freshly injected model (for
chained stages), and how to produce a plain HF model for evaluation and export.

Reference passes (DPO, PPO) run the input checkpoint without the delta trained in this stage. PEFT-based
strategies get this from TRL: a PeftModel with a trained adapter is given a frozen copy named `ref`, and a
fresh adapter is disabled. Custom modules must honour the same mechanism.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Generic, TypeVar, cast

import torch

from forge_trl.config import InjectionConfig

HEAD_CAUSAL_LM = "causal_lm"
HEAD_SEQ_CLS = "seq_cls"
# Training-schedule keys: taken from the current config, never from a checkpoint (they describe how a stage
# trains, not what the model is).
SCHEDULE_KEYS = ("phases", "handoff", "aux_loss_coef")
# Trained weights that a PEFT adapter checkpoint does not hold (the base FFN in `base_ffn` phases).
EXTRA_TRAINABLE_FILE = "forge_trainable.safetensors"

# The schema dataclass of one strategy: `self.cfg` of a `DenseLoraInjection` is a `DenseLoraConfig`.
ConfigT = TypeVar("ConfigT", bound=InjectionConfig)


class Injection(ABC, Generic[ConfigT]):
    """One injection strategy, configured by its schema dataclass (`ConfigT`, also held in `schema`)."""

    name: ClassVar[str]
    # Always `type[ConfigT]`; a ClassVar cannot name a type variable, so the checker sees the bound.
    schema: ClassVar[type[InjectionConfig]]
    # False for strategies that leave a complete HF model in `final/` (full fine-tuning).
    is_adapter: ClassVar[bool] = True
    # True for routed strategies whose experts are all the same function until their LoRAs differ
    # (mixture_lora, moe_expert_lora); a router-only phase then learns nothing.
    experts_share_base: ClassVar[bool] = False
    # True for strategies that adapt a model's own experts and so need a native MoE model (Qwen3-MoE, Mixtral, ...).
    requires_native_moe: ClassVar[bool] = False

    def __init__(self, cfg: ConfigT):
        self.cfg: ConfigT = cfg

    @property
    def trains_base_weights(self) -> bool:
        """True when a phase trains the frozen FFN weights (`base_ffn`): the checkpoint then carries them, and a
        reference pass that disables the adapter no longer sees the input checkpoint."""
        return any("base_ffn" in phase.trainable for phase in self.cfg.phases)

    @classmethod
    def from_settings(cls, settings: dict) -> "Injection[ConfigT]":
        """Rebuild from the `injection` block of a checkpoint's forge_run.json."""
        known = {f.name for f in dataclasses.fields(cls.schema)} - set(SCHEDULE_KEYS)
        # `schema` is this class's ConfigT (see its declaration).
        return cls(cast(ConfigT, cls.schema(**{k: v for k, v in settings.items() if k in known})))

    def settings(self) -> dict:
        """The structural settings a checkpoint records: what a later stage needs to rebuild the same model."""
        return {k: v for k, v in dataclasses.asdict(self.cfg).items() if k not in SCHEDULE_KEYS}

    def with_schedule_of(self, cfg: InjectionConfig) -> "Injection[ConfigT]":
        """This structure, trained with the schedule (phases, handoff, aux-loss weight) that `cfg` asks for."""
        schedule = {k: getattr(cfg, k) for k in SCHEDULE_KEYS if hasattr(cfg, k) and hasattr(self.cfg, k)}
        return type(self)(dataclasses.replace(self.cfg, **schedule))

    def preflight(self, model: torch.nn.Module) -> None:
        """Raise ConfigError when this strategy cannot apply to `model` (before any training). An optional hook:
        by default every model is accepted."""
        return None

    @abstractmethod
    def apply(self, model: torch.nn.Module, head: str) -> torch.nn.Module:
        """Inject fresh trainable parameters and freeze what this strategy keeps frozen."""

    @abstractmethod
    def parameter_groups(self, model: torch.nn.Module) -> dict[str, list[str]]:
        """Group name -> names of the parameters in it (trainable or not)."""

    @abstractmethod
    def save(self, model: torch.nn.Module, out_dir: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Write the weights this strategy owns into `out_dir` (safetensors only).

        `state_dict`, when given, is the model's whole state dict (names as in `model.state_dict()`) and is the
        source of the values instead of the live parameters: a sharded (FSDP2) model's live parameters are only
        this process's shards, so the run gathers them first (`forge_trl.distributed.full_state_dict`)."""

    def saved_parameter_names(self, model: torch.nn.Module) -> set[str] | None:
        """The parameters `save` reads, or None for the whole state dict. A sharded run gathers only these onto
        the main process for final/, rather than the frozen base it does not write."""
        return None

    @abstractmethod
    def load_weights(self, model: torch.nn.Module, ckpt_dir: Path) -> None:
        """Restore weights saved by `save` into a model that `apply` produced."""

    @abstractmethod
    def merged(self, model: torch.nn.Module) -> torch.nn.Module:
        """A model computing the same function for evaluation: plain transformers where the strategy folds."""

    def export(self, model: torch.nn.Module, out_dir: Path) -> str:
        """Write a directory that `from_pretrained` loads without forge_trl; returns how (for forge_export.json)."""
        self.merged(model).save_pretrained(out_dir, safe_serialization=True)
        return "merged"


def restore_named_parameters(model, path: Path) -> None:
    """Copy the tensors of a safetensors file into `model`'s parameters of the same names (in place)."""
    import torch
    from safetensors.torch import load_file

    from forge_trl.errors import ModelError

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in load_file(str(path)).items():
            if name not in params or params[name].shape != value.shape:
                raise ModelError(
                    f"{path}: '{name}' does not fit the model; was it trained with another base model "
                    "or other injection settings?"
                )
            params[name].copy_(value)
