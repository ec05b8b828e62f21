"""`moe_expert_lora`: every targeted dense FFN becomes a sparse mixture of LoRA experts (MixLoRA-style).

Expert e is the frozen FFN with its own LoRA on every projection. For the gated FFN of Llama, Qwen3 or Gemma:

    expert_e(x) = (W_d + s B_d,e A_d,e) · [ act((W_g + s B_g,e A_g,e) x) * ((W_u + s B_u,e A_u,e) x) ]

Phi-3's fused gate_up projection (one LoRA on it, split into gate and up halves) and GPT-2's plain FFN
(act(c_fc x) into c_proj, Conv1D layers) become experts the same way (`FfnForm` below).

A router (softmax in fp32, top-k, renormalised, initialised normal(0, 0.02)) sends each token to k experts and
the layer returns sum_k w_k expert_k(x). The frozen projections are computed once per token, not once per expert:
the input projections of a token are shared by all its experts, and because the output projection is affine and
the weights sum to 1, sum_k w_k (W_d h_k + b) = W_d (sum_k w_k h_k) + b, so it also runs once on the mixed hidden
state. Only the rank-r LoRA products are per (token, expert).

Optionally, attention linears get plain LoRA (group `attn_lora`). The layer is a PEFT custom LoRA layer, so
`disable_adapter()` gives back the dense FFN exactly and TRL's `ref` adapter copy covers routers and experts.
With B = 0 at init every expert equals the FFN and the layer equals the dense model, so a fresh injection is
the base model. Export turns the result into the native MoE architecture of the family where transformers has
one (forge_trl/injection/moe_native.py), and otherwise into the base model plus the adapter and a standalone
loader (forge_trl/injection/moe_bundle.py).
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
from forge_trl.errors import ConfigError
from forge_trl.injection import INJECTIONS
from forge_trl.injection.peft_base import LoraShapeConfig, PeftInjection, resolve_targets, select_layers
from forge_trl.injection.routing import RoutingRecorder, attach_recorder
from forge_trl.injection.targets import FFN_BLOCKS, dense_weight, features, layer_parts


@dataclass(frozen=True)
class FfnForm:
    """How one dense FFN computes, so that each expert can carry a LoRA on every projection.

    `inputs` maps a LoRA role to the projection feeding the activation; `output` is the projection after it
    (its role is always `down`). `dropout` names a dropout the FFN applies to its output (GPT-2), or None."""

    kind: str
    inputs: tuple[tuple[str, str], ...]
    output: str
    activation: str
    dropout: Optional[str] = None

    def matches(self, ffn: torch.nn.Module) -> bool:
        names = [p for _, p in self.inputs] + [self.output, self.activation]
        return all(hasattr(ffn, name) for name in names)

    def hidden(self, ffn: torch.nn.Module, projected: list[torch.Tensor]) -> torch.Tensor:
        """The activation's output from the input projections' outputs (same order as `inputs`)."""
        act = getattr(ffn, self.activation)
        if self.kind == "gated":
            return act(projected[0]) * projected[1]
        if self.kind == "fused_gated":
            gate, up = projected[0].chunk(2, dim=-1)
            return act(gate) * up
        return act(projected[0])

    def finish(self, ffn: torch.nn.Module, out: torch.Tensor) -> torch.Tensor:
        return getattr(ffn, self.dropout)(out) if self.dropout else out


FFN_FORMS = (
    FfnForm("gated", (("gate", "gate_proj"), ("up", "up_proj")), "down_proj", "act_fn"),
    FfnForm("fused_gated", (("gate_up", "gate_up_proj"),), "down_proj", "activation_fn"),
    FfnForm("plain", (("fc", "c_fc"),), "c_proj", "act", dropout="dropout"),
)
ROLES = ("gate", "up", "gate_up", "fc", "down")


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
    # Attention linears that get plain LoRA (group attn_lora): last names or path suffixes. null: every attention
    # linear the model has; []: only the FFN experts.
    attn_target_keywords: Optional[List[str]] = None

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


def ffn_form(ffn: torch.nn.Module) -> FfnForm | None:
    return next((form for form in FFN_FORMS if form.matches(ffn)), None)


class MoeExpertLoraLayer(torch.nn.Module, LoraLayer):
    """A dense FFN (any `FfnForm`) turned into a top-k mixture of LoRA experts."""

    adapter_layer_names = ("lora_router", *(f"lora_{role}_{m}" for role in ROLES for m in ("A", "B")))
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
        form = ffn_form(base_layer)
        if form is None:  # the injection's preflight names the FFN forms it serves
            raise ConfigError(f"injection=moe_expert_lora: cannot turn {type(base_layer).__name__} into experts")
        self.form: FfnForm = form  # before LoraLayer's init, which asks for the layer's features
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
        hidden = features(getattr(module, self.form.output))[1]
        return hidden, hidden

    def projections(self) -> dict[str, str]:
        """LoRA role -> projection attribute of the FFN, output (`down`) last."""
        return {**dict(self.form.inputs), "down": self.form.output}

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, config, **kwargs) -> None:
        ffn = self.get_base_layer()
        experts = config.num_experts
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = lora_alpha / r
        self.num_experts[adapter_name] = experts
        self.top_k[adapter_name] = config.top_k
        dropout = torch.nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else torch.nn.Identity()
        self.lora_dropout[adapter_name] = dropout
        hidden = features(getattr(ffn, self.form.output))[1]
        router = torch.nn.Linear(hidden, experts, bias=False)
        torch.nn.init.normal_(router.weight, mean=0.0, std=config.router_init_std)
        self.lora_router[adapter_name] = router
        for role, projection in self.projections().items():
            in_f, out_f = features(getattr(ffn, projection))
            a, b = StackedWeight(experts, r, in_f), StackedWeight(experts, out_f, r)
            for e in range(experts):  # PEFT's LoRA init, per expert: A Kaiming-uniform, B zero
                torch.nn.init.kaiming_uniform_(a.weight[e], a=math.sqrt(5))
            torch.nn.init.zeros_(b.weight)
            getattr(self, f"lora_{role}_A")[adapter_name] = a
            getattr(self, f"lora_{role}_B")[adapter_name] = b
        self._move_adapter_to_device_of_base_layer(adapter_name, device=getattr(ffn, self.form.output).weight.device)
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
        roles = [role for role, _ in self.form.inputs]
        A = {p: getattr(self, f"lora_{p}_A")[adapter].weight for p in (*roles, "down")}
        B = {p: getattr(self, f"lora_{p}_B")[adapter].weight for p in (*roles, "down")}
        lora_dtype = A["down"].dtype
        base = {role: getattr(ffn, projection)(tokens) for role, projection in self.form.inputs}
        lora_in = dropout(tokens).to(lora_dtype)
        # (token, slot) pairs grouped by expert, so each expert's LoRA runs as one matmul over its tokens.
        num_tokens, k = indices.shape
        flat_expert = indices.reshape(-1)
        order = torch.argsort(flat_expert, stable=True)
        pair_token = torch.arange(num_tokens, device=tokens.device).repeat_interleave(k)[order]
        pair_weight = weights.reshape(-1)[order].unsqueeze(-1)
        counts = torch.bincount(flat_expert, minlength=self.num_experts[adapter]).tolist()
        mixed_hidden: torch.Tensor | None = None
        lora_down = tokens.new_zeros(tokens.shape)
        start = 0
        for e, count in enumerate(counts):
            if count == 0:
                continue
            tok, w = pair_token[start : start + count], pair_weight[start : start + count]
            start += count
            xe = lora_in[tok]
            projected = [
                base[role][tok] + (scale * ((xe @ A[role][e].T) @ B[role][e].T)).to(base[role].dtype) for role in roles
            ]
            hidden = self.form.hidden(ffn, projected)
            if mixed_hidden is None:
                mixed_hidden = hidden.new_zeros(num_tokens, hidden.shape[-1])
            mixed_hidden.index_add_(0, tok, hidden * w)
            down = (dropout(hidden).to(lora_dtype) @ A["down"][e].T) @ B["down"][e].T
            lora_down.index_add_(0, tok, (scale * down).to(tokens.dtype) * w)
        assert mixed_hidden is not None  # every token goes to k >= 1 experts
        return self.form.finish(ffn, getattr(ffn, self.form.output)(mixed_hidden) + lora_down)

    # --------------------------------------------------------------------------------------------- export
    def expert_weights(self, adapter: str = "default") -> dict[str, torch.Tensor]:
        """Materialised per-expert weights W + s B_e A_e as (N, out, in) per role (`gate`, `up`, `down` for a
        gated FFN), plus the router (N, H)."""
        ffn = self.get_base_layer()
        scale = self.scaling[adapter]
        out = {"router": self.lora_router[adapter].weight.detach().float()}
        for role, projection in self.projections().items():
            base = dense_weight(getattr(ffn, projection)).float()
            a = getattr(self, f"lora_{role}_A")[adapter].weight.detach().float()
            b = getattr(self, f"lora_{role}_B")[adapter].weight.detach().float()
            out[role] = base.unsqueeze(0) + scale * torch.bmm(b, a)
        return out


def dense_ffn(model: torch.nn.Module) -> tuple[str, type]:
    """(block name inside a decoder layer, FFN class) of the first decoder layer, checked to be an FFN that
    `FfnForm` can turn into experts."""
    ffn = next(
        (
            (parts[1], module)
            for name, module in model.named_modules()
            if (parts := layer_parts(name)) is not None and parts[1] in FFN_BLOCKS
        ),
        None,
    )
    if ffn is None:
        raise ConfigError(
            f"injection=moe_expert_lora: {type(model).__name__} has no FFN block ({', '.join(FFN_BLOCKS)}) in its "
            "decoder layers; use injection=dense_lora or injection=mixture_lora"
        )
    block, module = ffn
    if hasattr(module, "experts"):
        raise ConfigError(
            f"injection=moe_expert_lora: {type(model).__name__} already has MoE FFNs ({type(module).__name__}); "
            "use injection=native_moe_expert_lora for native MoE models"
        )
    if ffn_form(module) is None:
        forms = "; ".join(f"{f.kind}: {', '.join(p for _, p in f.inputs)} -> {f.output}" for f in FFN_FORMS)
        raise ConfigError(
            f"injection=moe_expert_lora: the FFN {type(module).__name__} matches none of the forms it turns into "
            f"experts ({forms}); use injection=dense_lora or injection=mixture_lora"
        )
    return block, type(module)


@INJECTIONS.register("moe_expert_lora")
class MoeExpertLoraInjection(PeftInjection[MoeExpertLoraConfig]):
    name = "moe_expert_lora"
    schema = MoeExpertLoraConfig
    standard_peft = False
    experts_share_base = True

    def attention_targets(self, model: torch.nn.Module) -> list[str]:
        keywords = self.cfg.attn_target_keywords
        if keywords is not None and len(keywords) == 0:
            return []
        modules, _ = resolve_targets(
            model,
            None if keywords is None else list(keywords),
            "injection.attn_target_keywords",
            blocks=("attention",),
            experts=False,
        )
        return modules

    def preflight(self, model: torch.nn.Module) -> None:
        select_layers(model, self.cfg.start_layer, self.cfg.num_layers)
        dense_ffn(model)
        self.attention_targets(model)

    def lora_config(self, model: torch.nn.Module, head: str):
        block, ffn_class = dense_ffn(model)
        config = MoeExpertLoraPeftConfig(
            **self.lora_kwargs(model, head),
            target_modules=[*self.attention_targets(model), block],
            num_experts=self.cfg.num_experts,
            top_k=self.cfg.top_k,
            router_init_std=self.cfg.router_init_std,
        )
        config._register_custom_module({ffn_class: MoeExpertLoraLayer})
        return config

    def after_apply(self, model) -> None:
        attach_recorder(model, MoeExpertLoraLayer, self.cfg.aux_loss_coef)

    def export(self, model, out_dir) -> str:
        """The family's native MoE where transformers has one (Qwen3 -> Qwen3-MoE, Llama/Mistral -> Mixtral),
        otherwise the base model + the expert adapter + a standalone loader."""
        from forge_trl.injection.moe_bundle import write_moe_bundle
        from forge_trl.injection.moe_native import native_moe_model, native_moe_refusal

        refusal = native_moe_refusal(model, MoeExpertLoraLayer)
        if refusal is None:
            native = native_moe_model(model, MoeExpertLoraLayer, self.cfg)
            native.save_pretrained(out_dir, safe_serialization=True)
            return f"native MoE ({native.config.model_type})"
        write_moe_bundle(model, MoeExpertLoraLayer, out_dir)
        return f"base model + moe_expert_lora adapter + load_moe_expert_lora.py ({refusal})"
