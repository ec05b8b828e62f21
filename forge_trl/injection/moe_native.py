"""moe_expert_lora -> the native MoE architecture of the model's family.

| dense family   | native MoE  | experts                                  | router            |
|----------------|-------------|------------------------------------------|-------------------|
| qwen3          | qwen3_moe   | mlp.experts.gate_up_proj (E, 2I, H),     | mlp.gate (E, H)   |
| llama, mistral | mixtral     | mlp.experts.down_proj (E, H, I)          |                   |

Both native blocks compute softmax(router) in fp32, take the top k and renormalise (Qwen3-MoE with
`norm_topk_prob=True`), then sum_k w_k down_e(act(gate_e x) * up_e x), which is what the forge layer computes.
Expert e's weights are materialised as W + s B_e A_e. Attention LoRA is merged into the attention weights.
Qwen3-MoE keeps unconverted layers dense through `mlp_only_layers`. A reward model becomes the MoE family's
sequence-classification class with the same score head. Where no native form exists (another family, a non-gated
FFN, Mixtral with layers left dense), `native_moe_refusal` says why and the export is a bundle instead
(forge_trl/injection/moe_bundle.py).
"""

from __future__ import annotations

import torch

from forge_trl.errors import ConfigError
from forge_trl.injection.bundle import merge_plain_lora, plain_state_dict

# dense model_type -> (MoE config class name, MoE causal-LM class name, experts-count key)
FAMILIES = {
    "qwen3": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", "num_experts"),
    "llama": ("MixtralConfig", "MixtralForCausalLM", "num_local_experts"),
    "mistral": ("MixtralConfig", "MixtralForCausalLM", "num_local_experts"),
}
# Dense attention settings the native MoE attention must share; kept as extra config attributes when the MoE
# config does not declare them (Qwen3-MoE reads head_dim with a default that can differ from Qwen3's).
CARRIED_ATTRIBUTES = ("head_dim",)


def moe_layers(peft_model, layer_cls) -> dict[int, torch.nn.Module]:
    """Decoder-layer index -> the forge MoE layer in it."""
    return {
        int(name.split(".layers.", 1)[1].split(".", 1)[0]): module
        for name, module in peft_model.named_modules()
        if isinstance(module, layer_cls)
    }


def is_reward_model(hf_model) -> bool:
    return type(hf_model).__name__.endswith("ForSequenceClassification")


def native_moe_refusal(peft_model, layer_cls) -> str | None:
    """Why `peft_model` (moe_expert_lora) has no native MoE equivalent in transformers, or None when it has one."""
    import transformers

    hf = peft_model.get_base_model()
    dense_config = hf.config
    family = FAMILIES.get(dense_config.model_type)
    if family is None:
        return f"transformers has no MoE counterpart of '{dense_config.model_type}' (it has: {', '.join(FAMILIES)})"
    layers = moe_layers(peft_model, layer_cls)
    if any(layer.form.kind != "gated" for layer in layers.values()):
        return "the native MoE experts are gated FFNs"
    config_name, model_name, _ = family
    reward_class = model_name.replace("ForCausalLM", "ForSequenceClassification")
    if is_reward_model(hf) and not hasattr(transformers, reward_class):
        return f"{model_name} has no sequence-classification class"
    dense_layers = sorted(set(range(dense_config.num_hidden_layers)) - set(layers))
    if dense_layers and config_name == "MixtralConfig":
        return f"Mixtral has no dense layers, but layers {dense_layers} kept their dense FFN"
    if getattr(dense_config, "attention_bias", False) and config_name == "MixtralConfig":
        return "Mixtral attention has no bias, but this model's attention has one"
    return None


def native_moe_model(peft_model, layer_cls, cfg) -> torch.nn.Module:
    """Build the native MoE model equal to `peft_model` (a moe_expert_lora PeftModel, causal-LM or reward head)."""
    import transformers

    refusal = native_moe_refusal(peft_model, layer_cls)
    if refusal is not None:
        raise ConfigError(f"export: moe_expert_lora has no native MoE form here: {refusal}")
    hf = peft_model.get_base_model()
    dense_config = hf.config
    config_name, model_name, experts_key = FAMILIES[dense_config.model_type]
    if is_reward_model(hf):
        model_name = model_name.replace("ForCausalLM", "ForSequenceClassification")
    moe_layers_by_index = moe_layers(peft_model, layer_cls)
    dense_layers = sorted(set(range(dense_config.num_hidden_layers)) - set(moe_layers_by_index))

    merge_plain_lora(peft_model)  # attention (and any other plain) LoRA folds into its base weight in place

    config_cls = getattr(transformers, config_name)
    known = set(config_cls().to_dict())
    dense = dense_config.to_dict()
    settings = {k: v for k, v in dense.items() if k in known and k not in ("model_type", "architectures")}
    first = next(iter(moe_layers_by_index.values()))
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

    state = plain_state_dict(hf)
    for index, module in moe_layers_by_index.items():
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
