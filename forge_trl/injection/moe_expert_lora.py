"""`moe_expert_lora`: every targeted dense FFN becomes a sparse mixture of LoRA experts (MixLoRA-style).

Expert e is the frozen FFN plus its own LoRA on gate, up and down:

    expert_e(x) = (W_d + s B_d,e A_d,e) · [ act((W_g + s B_g,e A_g,e) x) * ((W_u + s B_u,e A_u,e) x) ]

A router (softmax in fp32, top-k, renormalised, initialised normal(0, 0.02)) sends each token to k experts and
the layer returns sum_k w_k expert_k(x). The frozen projections are computed once per token, not once per expert:
W_g x and W_u x are shared by all experts of a token, and because W_d is linear,
sum_k w_k W_d h_k = W_d (sum_k w_k h_k), so the frozen down projection also runs once on the mixed hidden state.
Only the rank-r LoRA products are per (token, expert).

Optionally, attention linears get plain LoRA (group `attn_lora`). The layer is a PEFT custom LoRA layer, so
`disable_adapter()` gives back the dense FFN exactly and TRL's `ref` adapter copy covers routers and experts.
With B = 0 at init every expert equals the FFN and the layer equals the dense model, so a fresh injection is
the base model. Export turns the result into the native MoE architecture of the family (see forge_trl/export).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F
from peft import LoraConfig
from peft.tuners.lora import LoraLayer

from forge_trl.config import require
from forge_trl.errors import ConfigError
from forge_trl.injection import INJECTIONS
from forge_trl.injection.peft_base import LoraShapeConfig, PeftInjection, check_target_keywords, select_layers
from forge_trl.injection.routing import RoutingRecorder, attach_recorder

FFN_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


@dataclass
class MoeExpertLoraConfig(LoraShapeConfig):
    name: str = "moe_expert_lora"
    num_experts: int = 8
    top_k: int = 2
    # Rank and scaling numerator of every expert LoRA (and of the attention LoRA).
    r: int = 8
    alpha: float = 16.0
    router_init_std: float = 0.02
    # Weight of the Switch balancing loss N * sum_e f_e P_e (1.0 at perfect balance), added for every task.
    aux_loss_coef: float = 0.01
    # Attention linears that get plain LoRA (group attn_lora); [] adapts only the FFN experts.
    attn_target_keywords: List[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def __post_init__(self):
        super().__post_init__()
        require(self.num_experts >= 2, "injection.num_experts", f"must be >= 2, got {self.num_experts}")
        require(
            1 <= self.top_k <= self.num_experts,
            "injection.top_k",
            f"must be between 1 and num_experts={self.num_experts}, got {self.top_k}",
        )
        require(self.router_init_std > 0, "injection.router_init_std", "must be positive")
        require(self.aux_loss_coef >= 0, "injection.aux_loss_coef", f"must be >= 0, got {self.aux_loss_coef}")


@dataclass
class MoeExpertLoraPeftConfig(LoraConfig):
    """PEFT LoraConfig plus the expert settings the custom layer reads in `update_layer`."""

    num_experts: int = 8
    top_k: int = 2
    router_init_std: float = 0.02


class StackedWeight(torch.nn.Module):
    """One adapter's per-expert matrices, stacked: `weight` has shape (num_experts, out, in)."""

    def __init__(self, num_experts: int, out_features: int, in_features: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(num_experts, out_features, in_features))


class MoeExpertLoraLayer(torch.nn.Module, LoraLayer):
    """A dense gated FFN (gate_proj, up_proj, down_proj, act_fn) turned into a top-k mixture of LoRA experts."""

    adapter_layer_names = (
        "lora_router",
        "lora_gate_A",
        "lora_gate_B",
        "lora_up_A",
        "lora_up_B",
        "lora_down_A",
        "lora_down_B",
    )
    other_param_names = ("r", "lora_alpha", "scaling", "lora_dropout", "num_experts", "top_k")

    def __init__(
        self,
        base_layer: torch.nn.Module,
        adapter_name: str,
        config: MoeExpertLoraPeftConfig,
        r: int,
        lora_alpha: float,
        **kwargs,
    ):
        torch.nn.Module.__init__(self)
        LoraLayer.__init__(self, base_layer)
        for name in self.adapter_layer_names:
            setattr(self, name, torch.nn.ModuleDict())
        self.num_experts: dict[str, int] = {}
        self.top_k: dict[str, int] = {}
        self.routing: RoutingRecorder | None = None  # set by the injection after wrapping
        self.layer_name = kwargs.get("target_name", "")
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config)

    def _get_in_out_features(self, module):
        return module.gate_proj.in_features, module.gate_proj.in_features

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, config, **kwargs) -> None:
        ffn = self.get_base_layer()
        hidden, inter = ffn.gate_proj.in_features, ffn.gate_proj.out_features
        experts = config.num_experts
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = lora_alpha / r
        self.num_experts[adapter_name] = experts
        self.top_k[adapter_name] = config.top_k
        dropout = torch.nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else torch.nn.Identity()
        self.lora_dropout[adapter_name] = dropout
        router = torch.nn.Linear(hidden, experts, bias=False)
        torch.nn.init.normal_(router.weight, mean=0.0, std=config.router_init_std)
        self.lora_router[adapter_name] = router
        shapes = {"gate": (inter, hidden), "up": (inter, hidden), "down": (hidden, inter)}
        for proj, (out_f, in_f) in shapes.items():
            a, b = StackedWeight(experts, r, in_f), StackedWeight(experts, out_f, r)
            for e in range(experts):  # PEFT's LoRA init, per expert: A Kaiming-uniform, B zero
                torch.nn.init.kaiming_uniform_(a.weight[e], a=math.sqrt(5))
            torch.nn.init.zeros_(b.weight)
            getattr(self, f"lora_{proj}_A")[adapter_name] = a
            getattr(self, f"lora_{proj}_B")[adapter_name] = b
        self._move_adapter_to_device_of_base_layer(adapter_name, device=ffn.gate_proj.weight.device)
        self.set_adapter(self.active_adapters)

    # ------------------------------------------------------------------------------------------------ forward
    def route(self, x: torch.Tensor, adapter: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router logits (T, N) in fp32, renormalised top-k weights (T, k) and expert indices (T, k)."""
        router = self.lora_router[adapter]
        logits = F.linear(x.float(), router.weight.float())
        weights, indices = logits.softmax(-1).topk(self.top_k[adapter], dim=-1)
        return logits, weights / weights.sum(-1, keepdim=True), indices

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        ffn = self.get_base_layer()
        if self.disable_adapters or not self.active_adapters:
            return ffn(x, *args, **kwargs)
        if len(self.active_adapters) != 1:
            raise RuntimeError("moe_expert_lora runs one adapter at a time")
        adapter = self.active_adapters[0]
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        logits, weights, indices = self.route(tokens, adapter)
        if self.routing is not None:
            self.routing.record(self.layer_name, logits, indices)
        out = self.mix_experts(ffn, tokens, weights.to(tokens.dtype), indices, adapter)
        return out.reshape(shape)

    def mix_experts(self, ffn, tokens, weights, indices, adapter: str) -> torch.Tensor:
        """sum_k w_k expert_k(x) with the frozen projections computed once per token."""
        scale = self.scaling[adapter]
        dropout = self.lora_dropout[adapter]
        A = {p: getattr(self, f"lora_{p}_A")[adapter].weight for p in ("gate", "up", "down")}
        B = {p: getattr(self, f"lora_{p}_B")[adapter].weight for p in ("gate", "up", "down")}
        lora_dtype = A["gate"].dtype
        gate_base, up_base = ffn.gate_proj(tokens), ffn.up_proj(tokens)
        lora_in = dropout(tokens).to(lora_dtype)
        # (token, slot) pairs grouped by expert, so each expert's LoRA runs as one matmul over its tokens.
        num_tokens, k = indices.shape
        flat_expert = indices.reshape(-1)
        order = torch.argsort(flat_expert, stable=True)
        pair_token = torch.arange(num_tokens, device=tokens.device).repeat_interleave(k)[order]
        pair_weight = weights.reshape(-1)[order].unsqueeze(-1)
        counts = torch.bincount(flat_expert, minlength=self.num_experts[adapter]).tolist()
        mixed_hidden = gate_base.new_zeros(gate_base.shape)
        lora_down = tokens.new_zeros(tokens.shape)
        start = 0
        for e, count in enumerate(counts):
            if count == 0:
                continue
            tok, w = pair_token[start : start + count], pair_weight[start : start + count]
            start += count
            xe = lora_in[tok]
            gate = gate_base[tok] + (scale * ((xe @ A["gate"][e].T) @ B["gate"][e].T)).to(gate_base.dtype)
            up = up_base[tok] + (scale * ((xe @ A["up"][e].T) @ B["up"][e].T)).to(up_base.dtype)
            hidden = ffn.act_fn(gate) * up
            mixed_hidden.index_add_(0, tok, hidden * w)
            down = (dropout(hidden).to(lora_dtype) @ A["down"][e].T) @ B["down"][e].T
            lora_down.index_add_(0, tok, (scale * down).to(tokens.dtype) * w)
        return ffn.down_proj(mixed_hidden) + lora_down

    # --------------------------------------------------------------------------------------------- export
    def expert_weights(self, adapter: str = "default") -> dict[str, torch.Tensor]:
        """Materialised per-expert FFN weights: gate/up (N, I, H) and down (N, H, I), plus the router (N, H)."""
        ffn = self.get_base_layer()
        scale = self.scaling[adapter]
        out = {"router": self.lora_router[adapter].weight.detach().float()}
        for proj in ("gate", "up", "down"):
            base = getattr(ffn, f"{proj}_proj").weight.detach().float()
            a = getattr(self, f"lora_{proj}_A")[adapter].weight.detach().float()
            b = getattr(self, f"lora_{proj}_B")[adapter].weight.detach().float()
            out[proj] = base.unsqueeze(0) + scale * torch.bmm(b, a)
        return out


def dense_ffn_class(model: torch.nn.Module) -> type:
    """The FFN class of the first decoder layer, checked to be a dense gated FFN."""
    decoder_layers = [m for n, m in model.named_modules() if n.endswith(".layers.0")]
    ffn = getattr(decoder_layers[0], "mlp", None) if decoder_layers else None
    if ffn is None:
        raise ConfigError("injection=moe_expert_lora: cannot find the decoder layers' `mlp` FFN of this model")
    missing = [p for p in (*FFN_PROJECTIONS, "act_fn") if not hasattr(ffn, p)]
    if missing:
        if hasattr(ffn, "experts"):
            raise ConfigError(
                f"injection=moe_expert_lora: {type(model).__name__} already has MoE FFNs "
                f"({type(ffn).__name__}); use injection=native_moe_expert_lora for native MoE models"
            )
        raise ConfigError(
            f"injection=moe_expert_lora: the FFN {type(ffn).__name__} is not a gated FFN "
            f"(missing {', '.join(missing)}); expected gate_proj, up_proj, down_proj and act_fn"
        )
    return type(ffn)


@INJECTIONS.register("moe_expert_lora")
class MoeExpertLoraInjection(PeftInjection[MoeExpertLoraConfig]):
    name = "moe_expert_lora"
    schema = MoeExpertLoraConfig
    standard_peft = False
    experts_share_base = True

    def preflight(self, model: torch.nn.Module) -> None:
        select_layers(model, self.cfg.start_layer, self.cfg.num_layers)
        dense_ffn_class(model)
        check_target_keywords(model, self.cfg.attn_target_keywords, "injection.attn_target_keywords")

    def lora_config(self, model: torch.nn.Module, head: str):
        config = MoeExpertLoraPeftConfig(
            **self.lora_kwargs(model, head),
            target_modules=[*self.cfg.attn_target_keywords, "mlp"],
            num_experts=self.cfg.num_experts,
            top_k=self.cfg.top_k,
            router_init_std=self.cfg.router_init_std,
        )
        config._register_custom_module({dense_ffn_class(model): MoeExpertLoraLayer})
        return config

    def after_apply(self, model) -> None:
        attach_recorder(model, MoeExpertLoraLayer, self.cfg.aux_loss_coef)

    def export(self, model, out_dir) -> str:
        from forge_trl.injection.moe_native import native_moe_model

        native = native_moe_model(model, MoeExpertLoraLayer, self.cfg)
        native.save_pretrained(out_dir, safe_serialization=True)
        return f"native MoE ({native.config.model_type})"
