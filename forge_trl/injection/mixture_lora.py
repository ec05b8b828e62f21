"""`mixture_lora`: every targeted linear layer gets `num_experts` LoRA experts mixed by a token-level router.

    y = W x + s * sum_e g_e(x) B_e A_e x,    g(x) = softmax(R x)   (optionally top-k, renormalised)

The router reads the layer's own input. B starts at zero, so a fresh injection is the base model. An optional
Switch balancing loss (`aux_loss_coef`) keeps the experts in use. All experts' A products are computed densely
(one (T, N*r) matmul): with small ranks that is cheaper than gathering per expert, and top-k only sparsifies
the gates.

The layer is a PEFT custom LoRA layer: `disable_adapter()` and TRL's `ref` adapter copy work as for dense LoRA.
Token-routed experts cannot fold into one static weight, so export writes the base model plus the adapter and
a small standalone loader (see forge_trl/export).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F
from peft import LoraConfig
from peft.tuners.lora import LoraLayer

from forge_trl.config import require
from forge_trl.injection import INJECTIONS
from forge_trl.injection.moe_expert_lora import StackedWeight
from forge_trl.injection.peft_base import LoraShapeConfig, PeftInjection, resolve_targets, select_layers
from forge_trl.injection.routing import RoutingRecorder, attach_recorder
from forge_trl.injection.targets import linear_types


@dataclass
class MixtureLoraConfig(LoraShapeConfig):
    name: str = "mixture_lora"
    num_experts: int = 4
    # null: every expert contributes (softmax gates); k: only the top k, renormalised.
    top_k: Optional[int] = None
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    router_init_std: float = 0.02
    # Weight of the Switch balancing loss; 0 disables it (routing metrics are still logged).
    aux_loss_coef: float = 0.0
    # Linear layers that get a mixture: last names or path suffixes (`attn.c_proj`). null: every attention and FFN
    # linear the model has (fused expert tensors are not linear layers: on a native MoE model that is attention and
    # any shared expert).
    target_keywords: Optional[List[str]] = None

    def __post_init__(self):
        super().__post_init__()
        require(self.num_experts >= 2, "injection.num_experts", f"must be >= 2, got {self.num_experts}")
        require(
            self.top_k is None or 1 <= self.top_k <= self.num_experts,
            "injection.top_k",
            f"must be null or between 1 and num_experts={self.num_experts}, got {self.top_k}",
        )
        require(self.router_init_std > 0, "injection.router_init_std", "must be positive")
        require(self.aux_loss_coef >= 0, "injection.aux_loss_coef", f"must be >= 0, got {self.aux_loss_coef}")
        require(
            self.target_keywords is None or len(self.target_keywords) > 0,
            "injection.target_keywords",
            "must name at least one layer, or be null for every attention and FFN layer",
        )


@dataclass
class MixtureLoraPeftConfig(LoraConfig):
    """PEFT LoraConfig plus the mixture settings the custom layer reads in `update_layer`."""

    num_experts: int = 4
    top_k: Optional[int] = None
    router_init_std: float = 0.02


class MixtureLoraLinear(torch.nn.Module, LoraLayer):
    """nn.Linear + a router-weighted sum of LoRA experts."""

    adapter_layer_names = ("lora_router", "lora_A", "lora_B")
    other_param_names = ("r", "lora_alpha", "scaling", "lora_dropout", "num_experts", "top_k")

    def __init__(
        self,
        base_layer: torch.nn.Module,
        adapter_name: str,
        config: MixtureLoraPeftConfig,
        r: int,
        lora_alpha: float,
        **kwargs,
    ):
        torch.nn.Module.__init__(self)
        LoraLayer.__init__(self, base_layer)
        self.lora_router = torch.nn.ModuleDict()
        self.num_experts: dict[str, int] = {}
        self.top_k: dict[str, Optional[int]] = {}
        self.routing: RoutingRecorder | None = None
        self.layer_name = kwargs.get("target_name", "")
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config)

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, config, **kwargs) -> None:
        experts = config.num_experts
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = lora_alpha / r
        self.num_experts[adapter_name] = experts
        self.top_k[adapter_name] = config.top_k
        dropout = torch.nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else torch.nn.Identity()
        self.lora_dropout[adapter_name] = dropout
        router = torch.nn.Linear(self.in_features, experts, bias=False)
        torch.nn.init.normal_(router.weight, mean=0.0, std=config.router_init_std)
        self.lora_router[adapter_name] = router
        a = StackedWeight(experts, r, self.in_features)
        b = StackedWeight(experts, self.out_features, r)
        for e in range(experts):
            torch.nn.init.kaiming_uniform_(a.weight[e], a=math.sqrt(5))
        torch.nn.init.zeros_(b.weight)
        self.lora_A[adapter_name] = a
        self.lora_B[adapter_name] = b
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def gates(self, x: torch.Tensor, adapter: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router logits (T, N) in fp32, mixing gates (T, N) and the experts each token uses (T, k; None when
        every expert takes part)."""
        logits = F.linear(x.float(), self.lora_router[adapter].weight.float())
        probs = logits.softmax(-1)
        k = self.top_k[adapter]
        if k is None:
            return logits, probs, None
        top_w, top_i = probs.topk(k, dim=-1)
        gates = torch.zeros_like(probs).scatter(-1, top_i, top_w / top_w.sum(-1, keepdim=True))
        return logits, gates, top_i

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters or not self.active_adapters:
            return result
        if len(self.active_adapters) != 1:
            raise RuntimeError("mixture_lora runs one adapter at a time")
        adapter = self.active_adapters[0]
        tokens = x.reshape(-1, x.shape[-1])
        logits, gates, chosen = self.gates(tokens, adapter)
        if self.routing is not None:
            self.routing.record(self.layer_name, logits, chosen)
        a, b = self.lora_A[adapter].weight, self.lora_B[adapter].weight  # (N, r, in), (N, out, r)
        h = torch.einsum("ti,eri->ter", self.lora_dropout[adapter](tokens).to(a.dtype), a)
        delta = torch.einsum("ter,eor->to", h * gates.to(a.dtype).unsqueeze(-1), b)
        return result + (self.scaling[adapter] * delta).to(result.dtype).reshape(*x.shape[:-1], -1)


@INJECTIONS.register("mixture_lora")
class MixtureLoraInjection(PeftInjection[MixtureLoraConfig]):
    name = "mixture_lora"
    schema = MixtureLoraConfig
    standard_peft = False
    experts_share_base = True

    def targets(self, model: torch.nn.Module) -> list[str]:
        keywords = None if self.cfg.target_keywords is None else list(self.cfg.target_keywords)
        modules, _ = resolve_targets(model, keywords, "injection.target_keywords", experts=False)
        return modules

    def preflight(self, model: torch.nn.Module) -> None:
        select_layers(model, self.cfg.start_layer, self.cfg.num_layers)
        self.targets(model)

    def lora_config(self, model: torch.nn.Module, head: str):
        config = MixtureLoraPeftConfig(
            **self.lora_kwargs(model, head),
            target_modules=self.targets(model),
            num_experts=self.cfg.num_experts,
            top_k=self.cfg.top_k,
            router_init_std=self.cfg.router_init_std,
        )
        config._register_custom_module({layer_type: MixtureLoraLinear for layer_type in linear_types()})
        return config

    def after_apply(self, model) -> None:
        attach_recorder(model, MixtureLoraLinear, self.cfg.aux_loss_coef)

    def export(self, model, out_dir) -> str:
        from forge_trl.injection.mixture_bundle import write_mixture_bundle

        write_mixture_bundle(model, MixtureLoraLinear, out_dir)
        return "base model + mixture_lora adapter + load_mixture_lora.py"
