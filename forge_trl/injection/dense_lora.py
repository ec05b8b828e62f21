"""Dense LoRA through PEFT, with layer selection and separate attention/FFN groups.

Parameter groups: `attn_lora` (adapters inside attention blocks), `lora` (all other adapters, i.e. the
FFN), `base_ffn` (the frozen FFN weights, for phases that train them) and `score` for a sequence-classification
head. Chained stages rebuild the same LoraConfig from the checkpoint and load its adapter weights; TRL's DPO
then adds the frozen `ref` copy itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch

from forge_trl.config import InjectionConfig, require
from forge_trl.errors import ConfigError
from forge_trl.injection import INJECTIONS
from forge_trl.injection.peft_base import PeftInjection, num_decoder_layers, select_layers


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
        super().__post_init__()
        require(self.r > 0, "injection.r", f"must be positive, got {self.r}")
        require(self.alpha > 0, "injection.alpha", f"must be positive, got {self.alpha}")
        require(0.0 <= self.dropout < 1.0, "injection.dropout", f"must be in [0, 1), got {self.dropout}")
        require(len(self.target_keywords) > 0, "injection.target_keywords", "must name at least one layer")
        require(self.start_layer >= 0, "injection.start_layer", "must be >= 0")
        require(self.num_layers is None or self.num_layers > 0, "injection.num_layers", "must be positive or null")


def check_target_keywords(model: torch.nn.Module, keywords: list[str]) -> None:
    """Every keyword must name a linear layer (or a parameter) of `model`."""
    module_names = [name for name, _ in model.named_modules()]
    param_names = [name for name, _ in model.named_parameters()]
    for keyword in keywords:
        if not any(n.split(".")[-1] == keyword for n in module_names) and not any(
            n.endswith(f".{keyword}") for n in param_names
        ):
            linear = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
            raise ConfigError(
                f"injection.target_keywords: '{keyword}' matches no layer of this model; "
                f"linear layers are: {', '.join(linear)}"
            )


@INJECTIONS.register("dense_lora")
class DenseLoraInjection(PeftInjection):
    name = "dense_lora"
    schema = DenseLoraConfig

    def preflight(self, model: torch.nn.Module) -> None:
        select_layers(model, self.cfg.start_layer, self.cfg.num_layers)
        check_target_keywords(model, self.cfg.target_keywords)

    def lora_config(self, model: torch.nn.Module, head: str):
        from peft import LoraConfig

        layers = select_layers(model, self.cfg.start_layer, self.cfg.num_layers)
        return LoraConfig(
            r=self.cfg.r,
            lora_alpha=self.cfg.alpha,
            lora_dropout=self.cfg.dropout,
            target_modules=list(self.cfg.target_keywords),
            layers_to_transform=None if len(layers) == num_decoder_layers(model) else layers,
            task_type=self.task_type(head),
            bias="none",
        )
