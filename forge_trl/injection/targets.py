"""What an injection can adapt in a model, discovered from the model itself rather than assumed from one family.

Every decoder-only family in transformers keeps its decoder layers in one ModuleList (`model.layers`,
`transformer.h`, ...). Inside a layer, forge tells the blocks apart by the attribute path:

- attention: any path through a block named like attention (`self_attn`, `attn`, `linear_attn`, `attention`);
- FFN: any path through `mlp`, `feed_forward`, `ffn` or `block_sparse_moe`;
- routers (`mlp.gate` of a native MoE block, and the scalar `shared_expert_gate`) belong to no dense target;
- fused experts are 3-D parameters under `experts` (`mlp.experts.gate_up_proj` (E, 2I, H), `.down_proj`).

Targets are named by their path inside a decoder layer (`self_attn.q_proj`, `mlp.c_proj`), not by the last name
alone: GPT-2 has a `c_proj` in both attention and FFN. PEFT matches such suffixes at a module-path boundary.

The FFN itself comes in three shapes that `moe_expert_lora` turns into experts:

| shape        | families                          | projections into the activation | out      |
|--------------|-----------------------------------|---------------------------------|----------|
| gated        | Llama, Mistral, Qwen3, Gemma 3    | gate_proj, up_proj              | down_proj|
| fused_gated  | Phi-3                             | gate_up_proj (gate, up halves)  | down_proj|
| plain        | GPT-2                             | c_fc                            | c_proj   |
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from forge_trl.errors import ConfigError

ATTENTION_BLOCKS = ("attn", "attention")
FFN_BLOCKS = ("mlp", "feed_forward", "ffn", "block_sparse_moe")
# Router-like linears inside an FFN: a native MoE block's router and the scalar gate of a shared expert.
ROUTER_NAMES = ("gate", "router", "shared_expert_gate")
LAYER_PATH = re.compile(r"^(?P<stack>.*?)\.(?P<index>\d+)\.(?P<inside>.+)$")


def linear_types() -> tuple[type, ...]:
    """Module types that hold one weight matrix PEFT's LoRA adapts: nn.Linear (bitsandbytes' 4/8-bit layers
    subclass it) and GPT-2's Conv1D (weight stored transposed)."""
    from transformers.pytorch_utils import Conv1D

    return (torch.nn.Linear, Conv1D)


def features(module: torch.nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a Linear or Conv1D."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, Conv1D):
        return int(module.weight.shape[0]), int(module.nf)
    return int(module.in_features), int(module.out_features)


def dense_weight(module: torch.nn.Module) -> torch.Tensor:
    """The weight as (out, in), whatever the layer stores (Conv1D keeps it as (in, out))."""
    from transformers.pytorch_utils import Conv1D

    weight = module.weight.detach()
    return weight.T if isinstance(module, Conv1D) else weight


def num_decoder_layers(model: torch.nn.Module) -> int:
    config = model.config.get_text_config()
    count = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    if count is None:
        raise ConfigError(f"{type(model).__name__}: its config names no layer count (num_hidden_layers)")
    return int(count)


def layer_parts(name: str) -> tuple[int, str] | None:
    """'base_model.model.model.layers.2.mlp.gate_proj' -> (2, 'mlp.gate_proj'); None outside a decoder layer.

    The layer index is the first number on the path: decoder-only models number nothing above their decoder
    stack (and transformers 5 holds experts as fused parameters, not numbered modules)."""
    match = LAYER_PATH.match(name)
    if match is None:
        return None
    return int(match["index"]), match["inside"]


def _block(inside: str) -> str | None:
    """'attention' or 'ffn' for the block a layer-relative path runs through (None: a norm or a per-layer gate)."""
    segments = inside.split(".")[:-1]
    if any(any(marker in segment for marker in ATTENTION_BLOCKS) for segment in segments):
        return "attention"
    if any(segment in FFN_BLOCKS for segment in segments):
        return "ffn"
    return None


@dataclass(frozen=True)
class ModelTargets:
    """What one model offers to adapt, every name relative to its decoder layer (`self_attn.q_proj`)."""

    attention: tuple[str, ...]  # linear layers of attention blocks (softmax or linear attention)
    ffn: tuple[str, ...]  # linear layers of dense FFNs, shared experts included, routers excluded
    experts: tuple[str, ...]  # fused 3-D expert parameters, e.g. 'mlp.experts.gate_up_proj'
    num_layers: int

    @property
    def is_moe(self) -> bool:
        return bool(self.experts)


def discover(model: torch.nn.Module) -> ModelTargets:
    """The adaptable linears and expert parameters of `model`'s decoder layers."""
    linear = linear_types()
    attention: dict[str, None] = {}
    ffn: dict[str, None] = {}
    for name, module in model.named_modules():
        if not isinstance(module, linear) or ".ref." in name or "lora_" in name:
            continue
        parts = layer_parts(name)
        if parts is None:
            continue
        inside = parts[1].replace(".base_layer", "")
        block = _block(inside)
        if block == "attention":
            attention[inside] = None
        elif block == "ffn" and inside.rsplit(".", 1)[-1] not in ROUTER_NAMES:
            ffn[inside] = None
    experts: dict[str, None] = {}
    for name, param in model.named_parameters():
        parts = layer_parts(name)
        if parts is not None and param.dim() == 3 and ".experts." in f".{parts[1]}":
            experts[parts[1]] = None
    return ModelTargets(tuple(attention), tuple(ffn), tuple(experts), num_decoder_layers(model))


def leaf(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def matching(paths: tuple[str, ...], keywords: list[str]) -> list[str]:
    """The layer-relative paths that a user's keywords name: a keyword is a last name (`q_proj`) or a path suffix
    (`attn.c_proj`)."""
    return [p for p in paths if any(p == k or p.endswith(f".{k}") for k in keywords)]


# On a native MoE model, the dense names users write for FFN projections map onto the fused expert parameters.
FUSED_EXPERT_FOR = {"gate_proj": "gate_up_proj", "up_proj": "gate_up_proj", "down_proj": "down_proj"}


def expert_targets_for(targets: ModelTargets, keywords: list[str]) -> list[str]:
    """Fused expert parameters that `keywords` name, directly (`gate_up_proj`) or by their dense names."""
    wanted = {FUSED_EXPERT_FOR.get(k, k) for k in keywords}
    return [p for p in targets.experts if leaf(p) in wanted]


def parameter_paths(model: torch.nn.Module, relative: list[str], layers: list[int] | None) -> list[str]:
    """PEFT `target_parameters` for layer-relative parameter paths: the relative path itself for every layer, or,
    with a layer selection (PEFT applies `layers_to_transform` to modules only), each selected layer's own
    'layers.2.mlp.experts.down_proj'."""
    if layers is None:
        return sorted(relative)
    chosen = set(layers)
    out = []
    for name, _ in model.named_parameters():
        parts = layer_parts(name)
        if parts is not None and parts[0] in chosen and parts[1] in relative:
            stack = name[: -len(parts[1]) - 1]  # '...model.layers.2'
            out.append(f"{stack.rsplit('.', 2)[-2]}.{parts[0]}.{parts[1]}")
    return sorted(out)


def describe(targets: ModelTargets) -> str:
    """One line for logs and errors: what this model offers."""
    parts = [f"attention: {', '.join(targets.attention) or 'none'}", f"FFN: {', '.join(targets.ffn) or 'none'}"]
    if targets.experts:
        parts.append(f"fused experts: {', '.join(targets.experts)}")
    return "; ".join(parts)
