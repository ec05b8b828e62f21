"""moe_expert_lora -> the native MoE architecture of the model's family.

| dense family   | native MoE  | experts                                  | router            |
|----------------|-------------|------------------------------------------|-------------------|
| qwen3          | qwen3_moe   | mlp.experts.gate_up_proj (E, 2I, H),     | mlp.gate (E, H)   |
| llama, mistral | mixtral     | mlp.experts.down_proj (E, H, I)          |                   |

Both native blocks compute softmax(router) in fp32, take the top k and renormalise (Qwen3-MoE with
`norm_topk_prob=True`), then sum_k w_k down_e(act(gate_e x) * up_e x), which is what the forge layer computes.
Expert e's weights are materialised as W + s B_e A_e. Attention LoRA is merged into the attention weights.
Qwen3-MoE keeps unconverted layers dense through `mlp_only_layers`; Mixtral has no dense layers, so a partial
layer selection cannot be exported as Mixtral.
"""

from __future__ import annotations

import torch

from forge_trl.errors import ConfigError

# dense model_type -> (MoE config class name, MoE causal-LM class name, experts-count key)
FAMILIES = {
    "qwen3": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", "num_experts"),
    "llama": ("MixtralConfig", "MixtralForCausalLM", "num_local_experts"),
    "mistral": ("MixtralConfig", "MixtralForCausalLM", "num_local_experts"),
}
# Dense attention settings the native MoE attention must share; kept as extra config attributes when the MoE
# config does not declare them (Qwen3-MoE reads head_dim with a default that can differ from Qwen3's).
CARRIED_ATTRIBUTES = ("head_dim",)


def native_moe_model(peft_model, layer_cls, cfg) -> torch.nn.Module:
    """Build the native MoE model equal to `peft_model` (a moe_expert_lora PeftModel, causal-LM head)."""
    import transformers
    from peft.tuners.lora import Linear as LoraLinear

    hf = peft_model.get_base_model()
    dense_config = hf.config
    family = FAMILIES.get(dense_config.model_type)
    if family is None:
        raise ConfigError(
            f"export: moe_expert_lora on model_type '{dense_config.model_type}' has no native MoE counterpart "
            f"(supported: {', '.join(sorted(FAMILIES))}); the checkpoint itself remains usable with forge_trl"
        )
    if hf.__class__.__name__.endswith("ForSequenceClassification"):
        raise ConfigError("export: moe_expert_lora reward models cannot be exported as native MoE (causal LM only)")
    config_name, model_name, experts_key = family
    moe_layers = {
        int(name.split(".layers.", 1)[1].split(".", 1)[0]): module
        for name, module in peft_model.named_modules()
        if isinstance(module, layer_cls)
    }
    dense_layers = sorted(set(range(dense_config.num_hidden_layers)) - set(moe_layers))
    if dense_layers and config_name == "MixtralConfig":
        raise ConfigError(
            f"export: Mixtral has no dense layers, but layers {dense_layers} were not converted to experts; "
            "train moe_expert_lora on all layers (start_layer=0, num_layers=null) to export it"
        )
    if getattr(dense_config, "attention_bias", False) and config_name == "MixtralConfig":
        raise ConfigError("export: Mixtral attention has no bias, but this model's attention has one")

    # Attention (and any other plain) LoRA folds into its base weight in place.
    for module in peft_model.modules():
        if isinstance(module, LoraLinear) and not module.merged:
            module.merge(safe_merge=True, adapter_names=["default"])

    config_cls = getattr(transformers, config_name)
    known = set(config_cls().to_dict())
    dense = dense_config.to_dict()
    settings = {k: v for k, v in dense.items() if k in known and k not in ("model_type", "architectures")}
    first = next(iter(moe_layers.values()))
    experts, inter = first.num_experts["default"], first.get_base_layer().gate_proj.out_features
    settings.update(
        {
            experts_key: experts,
            "num_experts_per_tok": first.top_k["default"],
            "intermediate_size": inter,  # Mixtral's expert width; Qwen3-MoE's width of the layers left dense
            "router_aux_loss_coef": cfg.aux_loss_coef,
            "output_router_logits": False,
        }
    )
    if config_name == "Qwen3MoeConfig":
        settings.update(
            {
                "moe_intermediate_size": inter,
                "norm_topk_prob": True,
                "decoder_sparse_step": 1,
                "mlp_only_layers": dense_layers,
            }
        )
    moe_config = config_cls(**settings)
    for attribute in CARRIED_ATTRIBUTES:
        if attribute in dense and attribute not in known:
            setattr(moe_config, attribute, dense[attribute])
    moe_config.architectures = [model_name]

    state = {}
    for key, value in hf.state_dict().items():
        if "lora_" in key or ".ref." in key:
            continue
        state[key.replace(".base_layer", "")] = value.detach().float()
    for index, module in moe_layers.items():
        prefix = f"model.layers.{index}.mlp"
        for proj in ("gate_proj", "up_proj", "down_proj"):
            state.pop(f"{prefix}.{proj}.weight")
        weights = module.expert_weights("default")
        state[f"{prefix}.gate.weight"] = weights["router"]
        state[f"{prefix}.experts.gate_up_proj"] = torch.cat([weights["gate"], weights["up"]], dim=1)
        state[f"{prefix}.experts.down_proj"] = weights["down"]

    # Built on CPU rather than on the meta device: rotary inv_freq buffers are not in any state dict.
    native = getattr(transformers, model_name)(moe_config)
    native.load_state_dict(state, strict=True)
    return native.eval()
