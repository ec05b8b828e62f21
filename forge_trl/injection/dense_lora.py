"""Dense LoRA through PEFT, with layer selection and separate attention/FFN groups.

By default (`target_keywords: null`) the targets come from the model (forge_trl/injection/targets.py): every
linear layer of its attention and FFN blocks (Linear or GPT-2's Conv1D, fused ones such as Phi-3's qkv_proj and
gate_up_proj included) and, on a native MoE model, its fused expert parameters through PEFT's `target_parameters`
(each expert gets its own rank-r slice; routers stay frozen). PEFT's LoRA on fused experts has no dropout, so
dropout applies only where no expert is targeted.

Parameter groups: `attn_lora` (adapters inside attention blocks), `lora` (all other adapters, i.e. the
FFN), `base_ffn` (the frozen FFN weights, for phases that train them) and `score` for a sequence-classification
head. Chained stages rebuild the same LoraConfig from the checkpoint and load its adapter weights; TRL's DPO
then adds the frozen `ref` copy itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Optional

import torch

from forge_trl.config import require
from forge_trl.injection import INJECTIONS
from forge_trl.injection.peft_base import LoraShapeConfig, PeftInjection, resolve_targets, select_layers
from forge_trl.injection.targets import parameter_paths

log = logging.getLogger("forge_trl")


@dataclass
class DenseLoraConfig(LoraShapeConfig):
    name: str = "dense_lora"
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    # Layers that get an adapter: last names (`q_proj`) or path suffixes (`attn.c_proj`); on a native MoE model
    # gate_proj/up_proj/down_proj name its fused experts. null: every attention and FFN linear the model has.
    target_keywords: Optional[List[str]] = None

    def __post_init__(self):
        super().__post_init__()
        require(
            self.target_keywords is None or len(self.target_keywords) > 0,
            "injection.target_keywords",
            "must name at least one layer, or be null for every attention and FFN layer",
        )


@INJECTIONS.register("dense_lora")
class DenseLoraInjection(PeftInjection[DenseLoraConfig]):
    name = "dense_lora"
    schema = DenseLoraConfig

    def targets(self, model: torch.nn.Module) -> tuple[list[str], list[str]]:
        keywords = None if self.cfg.target_keywords is None else list(self.cfg.target_keywords)
        return resolve_targets(model, keywords, "injection.target_keywords")

    def preflight(self, model: torch.nn.Module) -> None:
        select_layers(model, self.cfg.start_layer, self.cfg.num_layers)
        self.targets(model)

    def lora_config(self, model: torch.nn.Module, head: str):
        from peft import LoraConfig

        modules, experts = self.targets(model)
        kwargs = self.lora_kwargs(model, head)
        if experts and kwargs["lora_dropout"]:
            log.info("dense_lora: no dropout (PEFT's LoRA on this model's fused experts has none)")
            kwargs["lora_dropout"] = 0.0
        return LoraConfig(
            **kwargs,
            target_modules=modules or None,
            target_parameters=parameter_paths(model, experts, kwargs["layers_to_transform"]) or None,
        )
