"""Dense LoRA through PEFT, with layer selection and separate attention/FFN groups.

Parameter groups: `attn_lora` (adapters inside attention blocks), `lora` (all other adapters, i.e. the
FFN), `base_ffn` (the frozen FFN weights, for phases that train them) and `score` for a sequence-classification
head. Chained stages rebuild the same LoraConfig from the checkpoint and load its adapter weights; TRL's DPO
then adds the frozen `ref` copy itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch

from forge_trl.config import require
from forge_trl.injection import INJECTIONS
from forge_trl.injection.peft_base import LoraShapeConfig, PeftInjection, check_target_keywords, select_layers


@dataclass
class DenseLoraConfig(LoraShapeConfig):
    name: str = "dense_lora"
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    # Linear-layer name suffixes that get an adapter.
    target_keywords: List[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    def __post_init__(self):
        super().__post_init__()
        require(len(self.target_keywords) > 0, "injection.target_keywords", "must name at least one layer")


@INJECTIONS.register("dense_lora")
class DenseLoraInjection(PeftInjection[DenseLoraConfig]):
    name = "dense_lora"
    schema = DenseLoraConfig

    def preflight(self, model: torch.nn.Module) -> None:
        select_layers(model, self.cfg.start_layer, self.cfg.num_layers)
        check_target_keywords(model, self.cfg.target_keywords)

    def lora_config(self, model: torch.nn.Module, head: str):
        from peft import LoraConfig

        return LoraConfig(**self.lora_kwargs(model, head), target_modules=list(self.cfg.target_keywords))
