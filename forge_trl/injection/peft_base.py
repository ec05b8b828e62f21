"""What every PEFT-backed strategy shares: wrapping, parameter groups, save/load and the reference mechanism.

All four adapter strategies build a PEFT `LoraConfig` and let `get_peft_model` inject it. The routed strategies
(mixture_lora, moe_expert_lora) plug their own layers in through PEFT's custom-module dispatch, and their layers
keep PEFT's per-adapter conventions. That is what makes them honour TRL's reference mechanism for free:

- `model.disable_adapter()` (TRL's reference for a fresh adapter) leaves exactly the base model;
- `model.add_adapter("ref", config)` plus a copy of every `.default.` parameter (TRL's reference for a
  re-trained adapter) gives a frozen copy of the input checkpoint, routers included.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, TypeVar

import torch

from forge_trl.config import InjectionConfig, require
from forge_trl.errors import ConfigError, ModelError
from forge_trl.injection.base import HEAD_SEQ_CLS, Injection
from forge_trl.injection.targets import describe, discover, expert_targets_for, linear_types, num_decoder_layers

ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_NAME = "default"
ATTENTION_MARKERS = ("self_attn", "attention", "attn")
FFN_MARKERS = (".mlp.", ".feed_forward.", ".ffn.", ".block_sparse_moe.")
ROUTER_MARKERS = ("lora_router", ".gate.modules_to_save.", ".router.modules_to_save.")
# Frozen copies that belong to no group: TRL's reference adapter and PEFT's original of a modules_to_save layer.
FROZEN_COPY_MARKERS = (".ref.", "original_module")


@dataclass
class LoraShapeConfig(InjectionConfig):
    """Keys every LoRA-based strategy shares: rank, scaling numerator (scale = alpha / r), dropout, and the
    decoder layers [start_layer, start_layer + num_layers) to adapt (num_layers null: through the last)."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    start_layer: int = 0
    num_layers: Optional[int] = None

    def __post_init__(self):
        super().__post_init__()
        require(self.r > 0, "injection.r", f"must be positive, got {self.r}")
        require(self.alpha > 0, "injection.alpha", f"must be positive, got {self.alpha}")
        require(0.0 <= self.dropout < 1.0, "injection.dropout", f"must be in [0, 1), got {self.dropout}")
        require(self.start_layer >= 0, "injection.start_layer", "must be >= 0")
        require(self.num_layers is None or self.num_layers > 0, "injection.num_layers", "must be positive or null")


LoraConfigT = TypeVar("LoraConfigT", bound=LoraShapeConfig)


def check_target_keywords(model: torch.nn.Module, keywords: list[str], key: str = "injection.target_keywords") -> None:
    """Every keyword must name a linear layer (last name or path suffix) or a parameter of `model`; on a native MoE
    model the dense FFN names (gate_proj, up_proj, down_proj) also name its fused experts."""
    targets = discover(model)
    module_names = [name for name, _ in model.named_modules()]
    param_names = [name for name, _ in model.named_parameters()]
    for keyword in keywords:
        if expert_targets_for(targets, [keyword]):
            continue
        if not any(n == keyword or n.endswith(f".{keyword}") for n in module_names) and not any(
            n.endswith(f".{keyword}") for n in param_names
        ):
            raise ConfigError(f"{key}: '{keyword}' matches no layer of this model; it offers {describe(targets)}")


def resolve_targets(
    model: torch.nn.Module,
    keywords: list[str] | None,
    key: str,
    *,
    blocks: tuple[str, ...] = ("attention", "ffn"),
    experts: bool = True,
) -> tuple[list[str], list[str]]:
    """(PEFT target_modules, layer-relative fused expert parameters) for `keywords`, or, when they are null, for
    every linear layer of `blocks` and (`experts`) every fused expert parameter the model has."""
    targets = discover(model)
    if keywords is None:
        modules = [*(targets.attention if "attention" in blocks else ()), *(targets.ffn if "ffn" in blocks else ())]
        params = list(targets.experts) if experts else []
    else:
        check_target_keywords(model, keywords, key)
        names = [name for name, _ in model.named_modules()]
        modules = [k for k in keywords if any(n == k or n.endswith(f".{k}") for n in names)]
        params = expert_targets_for(targets, keywords) if experts else []
    if not modules and not params:
        raise ConfigError(f"{key}: nothing to adapt in this model; it offers {describe(targets)}")
    return modules, params


def is_attention_param(name: str) -> bool:
    return any(marker in name for marker in ATTENTION_MARKERS)


def select_layers(model: torch.nn.Module, start_layer: int, num_layers: int | None) -> list[int]:
    """Decoder layer indices [start_layer, start_layer + num_layers), checked against the model."""
    total = num_decoder_layers(model)
    end = total if num_layers is None else start_layer + num_layers
    if start_layer >= total or end > total:
        raise ConfigError(
            f"injection.start_layer={start_layer}, injection.num_layers={num_layers}: the model has only "
            f"{total} decoder layers (expected start_layer + num_layers <= {total})"
        )
    return list(range(start_layer, end))


def is_quantized(model: torch.nn.Module) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


class PeftInjection(Injection[LoraConfigT]):
    """An injection realised as one PEFT LoRA adapter named `default`, configured by a LoRA-shaped schema."""

    # A plain PEFT LoRA: saved in PEFT's own format (adapter_config.json too) and folded by merge_and_unload.
    # The routed strategies set False: their adapters need forge's layers and cannot fold into static weights.
    standard_peft = True

    @abstractmethod
    def lora_config(self, model: torch.nn.Module, head: str):
        """The PEFT config to inject (task_type already matching `head`)."""

    def lora_kwargs(self, model: torch.nn.Module, head: str) -> dict:
        """The LoraConfig arguments every strategy shares: rank, scaling, dropout, layers and task type."""
        from peft import TaskType

        layers = select_layers(model, self.cfg.start_layer, self.cfg.num_layers)
        return dict(
            r=self.cfg.r,
            lora_alpha=self.cfg.alpha,
            lora_dropout=self.cfg.dropout,
            layers_to_transform=None if len(layers) == num_decoder_layers(model) else layers,
            task_type=TaskType.SEQ_CLS if head == HEAD_SEQ_CLS else TaskType.CAUSAL_LM,
            bias="none",
            # GPT-2-style Conv1D layers store their weight as (in, out); PEFT needs to know (it warns and guesses).
            fan_in_fan_out=any(isinstance(m, linear_types()[1]) for m in model.modules()),
        )

    def after_apply(self, model) -> None:
        """Hook for strategies that attach extra state (a routing recorder) to the wrapped model."""

    def apply(self, model, head):
        from peft import get_peft_model, prepare_model_for_kbit_training

        if is_quantized(model):
            if self.trains_base_weights:
                raise ConfigError("injection.phases: base_ffn cannot train on a quantized base model")
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model = get_peft_model(model, self.lora_config(model, head))
        self.after_apply(model)
        return model

    # -------------------------------------------------------------------------------------------- groups
    def classify(self, name: str) -> str | None:
        """The group of one parameter of the wrapped model, or None when it belongs to no group."""
        if any(marker in name for marker in FROZEN_COPY_MARKERS):
            return None
        if any(marker in name for marker in ROUTER_MARKERS):
            return "router"
        if "lora_" in name:
            return "attn_lora" if is_attention_param(name) else "lora"
        if "modules_to_save" in name or ".score." in name:
            return "score"
        if any(marker in f".{name}" for marker in FFN_MARKERS) and not name.endswith("norm.weight"):
            return "base_ffn"
        return None

    def parameter_groups(self, model: torch.nn.Module) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for name, _ in model.named_parameters():
            group = self.classify(name)
            if group is not None:
                groups.setdefault(group, []).append(name)
        return groups

    # -------------------------------------------------------------------------------------------- weights
    # Base weights trained by `base_ffn` phases live outside the adapter; a checkpoint carries them beside it.
    carries_base_ffn = False

    def saved_parameter_names(self, model) -> set[str]:
        """Every classified group's parameters (adapters, routers, a score head), and the base FFN weights only when
        this checkpoint carries them (`_save_base_ffn`)."""
        groups = self.parameter_groups(model)
        keep_base_ffn = self.carries_base_ffn or self.trains_base_weights
        return {name for group, names in groups.items() if group != "base_ffn" or keep_base_ffn for name in names}

    def save(self, model, out_dir: Path, state_dict=None) -> None:
        self._save_base_ffn(model, Path(out_dir), state_dict)
        if self.standard_peft:
            model.save_pretrained(
                out_dir, selected_adapters=[ADAPTER_NAME], safe_serialization=True, state_dict=state_dict
            )
            return
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        state = get_peft_model_state_dict(model, state_dict=state_dict, adapter_name=ADAPTER_NAME)
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(Path(out_dir) / ADAPTER_FILE))

    def _save_base_ffn(self, model, out_dir: Path, state_dict=None) -> None:
        """The FFN base weights, when this run trained them (or inherited trained ones from its checkpoint)."""
        from safetensors.torch import save_file

        from forge_trl.injection.base import EXTRA_TRAINABLE_FILE

        if not (self.carries_base_ffn or self.trains_base_weights):
            return
        params = state_dict if state_dict is not None else dict(model.named_parameters())
        names = self.parameter_groups(model).get("base_ffn", [])
        save_file({n: params[n].detach().contiguous().cpu() for n in names}, str(out_dir / EXTRA_TRAINABLE_FILE))

    def _load_base_ffn(self, model, ckpt_dir: Path) -> None:
        from forge_trl.injection.base import EXTRA_TRAINABLE_FILE, restore_named_parameters

        path = Path(ckpt_dir) / EXTRA_TRAINABLE_FILE
        if not path.is_file():
            return
        restore_named_parameters(model, path)
        self.carries_base_ffn = True

    def load_weights(self, model, ckpt_dir: Path) -> None:
        from peft import get_peft_model_state_dict, set_peft_model_state_dict
        from safetensors.torch import load_file

        path = Path(ckpt_dir) / ADAPTER_FILE
        if not path.is_file():
            raise ModelError(f"{ckpt_dir}: no {ADAPTER_FILE}; expected the {self.name} adapter of a forge checkpoint")
        saved = load_file(str(path))
        # Parts the checkpoint does not have (an RM's new score head after causal-LM SFT) keep their fresh init.
        current = get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME)
        unexpected = sorted(set(saved) - set(current))
        if unexpected:
            raise ModelError(
                f"{path}: adapter does not fit the model (unexpected weights such as '{unexpected[0]}'); "
                "was it trained on a different base model or with other injection settings?"
            )
        mismatched = sorted(k for k in saved if saved[k].shape != current[k].shape)
        if mismatched:
            k = mismatched[0]
            raise ModelError(
                f"{path}: '{k}' has shape {tuple(saved[k].shape)} but the model expects {tuple(current[k].shape)}; "
                "was it trained on a different base model?"
            )
        result = set_peft_model_state_dict(model, {**current, **saved}, adapter_name=ADAPTER_NAME)
        if result.unexpected_keys:
            raise ModelError(f"{path}: weights '{result.unexpected_keys[0]}' do not fit the model")
        self._load_base_ffn(model, ckpt_dir)

    def merged(self, model):
        if self.standard_peft:
            return model.merge_and_unload()
        return model  # token-routed adapters cannot fold into static weights; inference runs the adapter model
