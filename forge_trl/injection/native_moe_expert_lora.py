"""`native_moe_expert_lora`: LoRA on the fused experts of a native MoE model (Qwen3-MoE, Mixtral, OLMoE, ...).

transformers 5 holds each MoE block's experts as fused parameters (`mlp.experts.gate_up_proj` of shape
(E, 2I, H), `mlp.experts.down_proj` of shape (E, H, I)). PEFT's `target_parameters` gives every expert its own
rank-r slice of a LoRA on them; attention linears get plain LoRA (group `attn_lora`). The router (`mlp.gate`)
is either trained, as a PEFT `modules_to_save` copy so that disabling the adapter still restores the original
(group `router`), or left frozen.

The model's own load-balancing loss (its modeling module's `load_balancing_loss_func`) is computed from the
router logits of the training forward and added to the loss of every task, with padding masked; TRL's own
MoE handling is switched off so it is never counted twice. Everything here is plain PEFT, so the adapter
merges for evaluation and export.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import List, Optional

import torch

from forge_trl.config import require
from forge_trl.errors import ConfigError
from forge_trl.injection import INJECTIONS
from forge_trl.injection.peft_base import LoraShapeConfig, PeftInjection, check_target_keywords, select_layers
from forge_trl.injection.routing import NativeLoss, attach_recorder


@dataclass
class NativeMoeExpertLoraConfig(LoraShapeConfig):
    name: str = "native_moe_expert_lora"
    r: int = 8
    alpha: float = 16.0
    # PEFT's parameter-targeted LoRA has no dropout; only 0 is accepted.
    dropout: float = 0.0
    # Fused expert parameters (under each MoE block's `experts`) that get LoRA.
    expert_targets: List[str] = field(default_factory=lambda: ["gate_up_proj", "down_proj"])
    attn_target_keywords: List[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # Train the router (as a copy; the original stays for the reference pass) or keep it frozen.
    train_router: bool = True
    # Weight of the model's own balancing loss; null: the model config's router_aux_loss_coef.
    aux_loss_coef: Optional[float] = None

    def __post_init__(self):
        super().__post_init__()
        require(self.dropout == 0.0, "injection.dropout", "must be 0: PEFT's LoRA on fused experts has no dropout")
        require(len(self.expert_targets) > 0, "injection.expert_targets", "must name at least one parameter")
        require(self.aux_loss_coef is None or self.aux_loss_coef >= 0, "injection.aux_loss_coef", "must be >= 0")


def router_class(model: torch.nn.Module) -> type[torch.nn.Module] | None:
    """The router module class the model itself records router logits from (None for dense models)."""
    for module in model.modules():
        recorders = getattr(type(module), "_can_record_outputs", None) or {}
        recorder = recorders.get("router_logits")
        target = getattr(recorder, "target_class", None)
        if target is not None:
            return target
    return None


def native_balancing_loss(model: torch.nn.Module) -> NativeLoss | None:
    """(logits tuple, attention_mask) -> the model's own Switch loss, via its modeling module."""
    text_config = model.config.get_text_config()
    num_experts = getattr(text_config, "num_experts", None) or text_config.num_local_experts
    top_k = text_config.num_experts_per_tok
    loss_fn = getattr(sys.modules[type(model).__module__], "load_balancing_loss_func", None)
    if loss_fn is None:
        return None  # the recorder falls back to forge's own Switch loss

    def balancing_loss(router_logits: tuple, attention_mask):
        tokens = router_logits[0].shape[0]
        mask = attention_mask if attention_mask is not None and attention_mask.numel() == tokens else None
        return loss_fn(router_logits, num_experts, top_k, mask)

    return balancing_loss


def layer_index(name: str) -> int:
    return int(name.split(".layers.", 1)[1].split(".", 1)[0])


def from_layers(name: str) -> str:
    """'base.model.layers.2.mlp.gate' -> 'layers.2.mlp.gate'."""
    return "layers." + name.split(".layers.", 1)[1]


def within_layer(name: str) -> str:
    """'base.model.layers.2.mlp.gate' -> 'mlp.gate'."""
    return from_layers(name).split(".", 2)[2]


@INJECTIONS.register("native_moe_expert_lora")
class NativeMoeExpertLoraInjection(PeftInjection[NativeMoeExpertLoraConfig]):
    name = "native_moe_expert_lora"
    schema = NativeMoeExpertLoraConfig
    requires_native_moe = True

    def routers(self, model: torch.nn.Module) -> list[str]:
        cls = router_class(model)
        return [name for name, module in model.named_modules() if cls is not None and isinstance(module, cls)]

    def expert_parameters(self, model: torch.nn.Module) -> dict[str, list[str]]:
        return {
            target: [n for n, _ in model.named_parameters() if n.endswith(f"experts.{target}")]
            for target in self.cfg.expert_targets
        }

    def preflight(self, model: torch.nn.Module) -> None:
        select_layers(model, self.cfg.start_layer, self.cfg.num_layers)
        routers = self.routers(model)
        experts = self.expert_parameters(model)
        if not routers or not any(experts.values()):
            raise ConfigError(
                f"injection=native_moe_expert_lora needs a native MoE model (routers and fused experts); "
                f"{type(model).__name__} has dense FFNs. Use injection=moe_expert_lora to turn its FFNs into experts"
            )
        missing = [t for t, names in experts.items() if not names]
        if missing:
            found = sorted({n.rsplit(".", 1)[-1] for n, _ in model.named_parameters() if ".experts." in n})
            raise ConfigError(
                f"injection.expert_targets: '{missing[0]}' is not a fused expert parameter of this model; "
                f"its experts hold: {', '.join(found)}"
            )
        check_target_keywords(model, self.cfg.attn_target_keywords, "injection.attn_target_keywords")

    def lora_config(self, model: torch.nn.Module, head: str):
        from peft import LoraConfig

        kwargs = self.lora_kwargs(model, head)
        layers = kwargs["layers_to_transform"]
        # PEFT applies layers_to_transform to modules only, so with a layer selection the parameters (and the
        # routers, as modules_to_save has no layer filter either) are named one by one: "layers.2.mlp.gate".
        # With all layers the layer-relative suffix ("mlp.experts.gate_up_proj") is enough.
        expert_params = [n for names in self.expert_parameters(model).values() for n in names]
        routers = self.routers(model)
        if layers is None:
            target_parameters = sorted({within_layer(n) for n in expert_params})
            router_targets = sorted({within_layer(n) for n in routers})
        else:
            target_parameters = sorted(from_layers(n) for n in expert_params if layer_index(n) in layers)
            router_targets = sorted(from_layers(n) for n in routers if layer_index(n) in layers)
        return LoraConfig(
            **kwargs,
            target_modules=list(self.cfg.attn_target_keywords) or None,
            target_parameters=target_parameters,
            modules_to_save=router_targets if self.cfg.train_router else None,
        )

    def classify(self, name: str) -> str | None:
        if name.endswith(".gate.weight") and ".experts." not in name:
            return None  # the frozen router of a run with train_router=false belongs to no group
        return super().classify(name)

    def after_apply(self, model) -> None:
        hf_model = model.get_base_model()
        text_config = hf_model.config.get_text_config()
        coef = self.cfg.aux_loss_coef
        if coef is None:
            coef = float(getattr(text_config, "router_aux_loss_coef", 0.0) or 0.0)
        recorder = attach_recorder(model, None, coef, native_loss=native_balancing_loss(hf_model))
        top_k = text_config.num_experts_per_tok
        cls = router_class(hf_model)
        if cls is None:  # preflight has checked that the model has routers
            raise ConfigError(f"injection=native_moe_expert_lora: {type(hf_model).__name__} has no MoE routers")

        def record_router(module, _args, output):
            logits = output[0] if isinstance(output, tuple) else output
            recorder.record(module.forge_layer_name, logits, logits.topk(top_k, dim=-1).indices)

        for name, module in model.named_modules():
            if isinstance(module, cls) and not hasattr(module, "forge_layer_name"):
                module.forge_layer_name = name.split("model.", 1)[-1].replace(".modules_to_save.default", "")
                module.register_forward_hook(record_router)
