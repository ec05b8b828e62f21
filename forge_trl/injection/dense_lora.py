"""Dense LoRA through PEFT, with layer selection and separate attention/FFN groups.

Parameter groups: `attn_lora` (adapters inside attention blocks), `lora` (all other adapters, i.e. the
FFN), and `score` for a sequence-classification head. Chained stages rebuild the same LoraConfig from the
checkpoint and load its adapter weights; TRL's DPO then adds the frozen `ref` copy itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import torch

from forge_trl.config import InjectionConfig, require
from forge_trl.errors import ConfigError, ModelError
from forge_trl.injection import INJECTIONS
from forge_trl.injection.base import HEAD_SEQ_CLS, Injection

ADAPTER_FILE = "adapter_model.safetensors"
ATTENTION_MARKERS = ("self_attn", "attention", "attn")


@dataclass
class DenseLoraConfig(InjectionConfig):
    name: str = "dense_lora"
    # LoRA rank and scaling numerator (scale = alpha / r).
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    # Linear-layer name suffixes that get an adapter.
    target_keywords: List[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    # Adapt decoder layers [start_layer, start_layer + num_layers); num_layers null: through the last layer.
    start_layer: int = 0
    num_layers: Optional[int] = None

    def __post_init__(self):
        require(self.r > 0, "injection.r", f"must be positive, got {self.r}")
        require(self.alpha > 0, "injection.alpha", f"must be positive, got {self.alpha}")
        require(0.0 <= self.dropout < 1.0, "injection.dropout", f"must be in [0, 1), got {self.dropout}")
        require(len(self.target_keywords) > 0, "injection.target_keywords", "must name at least one layer")
        require(self.start_layer >= 0, "injection.start_layer", "must be >= 0")
        require(self.num_layers is None or self.num_layers > 0, "injection.num_layers", "must be positive or null")


def num_decoder_layers(model: torch.nn.Module) -> int:
    return int(model.config.get_text_config().num_hidden_layers)


def is_attention_param(name: str) -> bool:
    return any(marker in name for marker in ATTENTION_MARKERS)


@INJECTIONS.register("dense_lora")
class DenseLoraInjection(Injection):
    name = "dense_lora"
    schema = DenseLoraConfig

    def layer_indices(self, model: torch.nn.Module) -> list[int]:
        total = num_decoder_layers(model)
        start = self.cfg.start_layer
        end = total if self.cfg.num_layers is None else start + self.cfg.num_layers
        if start >= total or end > total:
            raise ConfigError(
                f"injection.start_layer={start}, injection.num_layers={self.cfg.num_layers}: the model has only "
                f"{total} decoder layers (expected start_layer + num_layers <= {total})"
            )
        return list(range(start, end))

    def preflight(self, model: torch.nn.Module) -> None:
        self.layer_indices(model)
        module_names = [name for name, _ in model.named_modules()]
        param_names = [name for name, _ in model.named_parameters()]
        for keyword in self.cfg.target_keywords:
            if not any(n.split(".")[-1] == keyword for n in module_names) and not any(
                n.endswith(f".{keyword}") for n in param_names
            ):
                linear = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
                raise ConfigError(
                    f"injection.target_keywords: '{keyword}' matches no layer of this model; "
                    f"linear layers are: {', '.join(linear)}"
                )

    def lora_config(self, model: torch.nn.Module, head: str):
        from peft import LoraConfig, TaskType

        layers = self.layer_indices(model)
        all_layers = len(layers) == num_decoder_layers(model)
        return LoraConfig(
            r=self.cfg.r,
            lora_alpha=self.cfg.alpha,
            lora_dropout=self.cfg.dropout,
            target_modules=list(self.cfg.target_keywords),
            layers_to_transform=None if all_layers else layers,
            task_type=TaskType.SEQ_CLS if head == HEAD_SEQ_CLS else TaskType.CAUSAL_LM,
            bias="none",
        )

    def apply(self, model, head):
        from peft import get_peft_model, prepare_model_for_kbit_training

        if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return get_peft_model(model, self.lora_config(model, head))

    def parameter_groups(self, model):
        groups: dict[str, list[str]] = {"lora": [], "attn_lora": [], "score": []}
        for name, _ in model.named_parameters():
            if ".ref." in name or "original_module" in name:  # frozen copies (TRL's reference, PEFT's original head)
                continue
            if "lora_" in name:
                groups["attn_lora" if is_attention_param(name) else "lora"].append(name)
            elif "modules_to_save" in name or ".score." in name:
                groups["score"].append(name)
        return {k: v for k, v in groups.items() if v}

    def save(self, model, out_dir: Path) -> None:
        model.save_pretrained(out_dir, selected_adapters=["default"], safe_serialization=True)

    def load_weights(self, model, ckpt_dir: Path) -> None:
        from peft import get_peft_model_state_dict, set_peft_model_state_dict
        from safetensors.torch import load_file

        path = Path(ckpt_dir) / ADAPTER_FILE
        if not path.is_file():
            raise ModelError(f"{ckpt_dir}: no {ADAPTER_FILE}; expected the dense_lora adapter of a forge checkpoint")
        saved = load_file(str(path))
        # Parts the checkpoint does not have (an RM's new score head after causal-LM SFT) keep their fresh init.
        current = get_peft_model_state_dict(model, adapter_name="default")
        unexpected = sorted(set(saved) - set(current))
        if unexpected:
            raise ModelError(
                f"{path}: adapter does not fit the model (unexpected weights such as '{unexpected[0]}'); "
                "was it trained on a different base model or with other target_keywords?"
            )
        result = set_peft_model_state_dict(model, {**current, **saved}, adapter_name="default")
        if result.unexpected_keys:
            raise ModelError(f"{path}: weights '{result.unexpected_keys[0]}' do not fit the model")

    def merged(self, model):
        return model.merge_and_unload()
