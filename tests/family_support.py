"""Tiny random models of the families users bring, built from transformers' config classes (no hub files).

Each family is a few lines of config: two decoder layers, hidden size 32, the forge-tiny tokenizer. The shape
that matters (gated, fused-gated or plain FFN; Linear or Conv1D; native MoE experts and routers; linear
attention; tied embeddings) is the family's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SHAPE = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=256,
)
MOE = dict(num_experts=4, num_experts_per_tok=2)
DENSE_INJECTIONS = ("dense_lora", "mixture_lora", "moe_expert_lora")
MOE_INJECTIONS = ("dense_lora", "mixture_lora", "native_moe_expert_lora")


@dataclass(frozen=True)
class Family:
    model_type: str
    config: dict = field(default_factory=dict)
    injections: tuple[str, ...] = DENSE_INJECTIONS
    # How the moe_expert_lora export comes out for this family: "native" or "bundle".
    moe_export: str = "bundle"


FAMILIES = {
    "qwen3": Family("qwen3", moe_export="native"),
    "qwen3_5": Family("qwen3_5_text", {"layer_types": ["linear_attention", "full_attention"]}),
    "qwen3_moe": Family("qwen3_moe", {**MOE, "moe_intermediate_size": 32}, MOE_INJECTIONS),
    "llama": Family("llama", moe_export="native"),
    "mistral": Family("mistral", moe_export="native"),
    "mixtral": Family("mixtral", {"num_local_experts": 4, "num_experts_per_tok": 2}, MOE_INJECTIONS),
    "gemma3": Family("gemma3_text", {"sliding_window": 16}),
    "olmoe": Family("olmoe", MOE, MOE_INJECTIONS),
    "gpt2": Family("gpt2"),
    "phi3": Family("phi3"),
}


def family_config(family: Family, tokenizer):
    from transformers import AutoConfig

    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    if family.model_type == "gpt2":  # GPT-2 names its shape its own way; dropout off so that runs are exact
        shape = dict(n_embd=32, n_layer=2, n_head=4, n_positions=256, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        ids["bos_token_id"] = tokenizer.eos_token_id
    else:
        shape = SHAPE
    return AutoConfig.for_model(family.model_type, vocab_size=len(tokenizer), **ids, **shape, **family.config)


def save_family_model(directory: Path, name: str, tokenizer, seed: int = 0) -> Path:
    """A random-init model of family `name` with `tokenizer`, saved as a local HF directory."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(family_config(FAMILIES[name], tokenizer))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def matrix() -> list[tuple[str, str]]:
    return [(name, injection) for name, family in FAMILIES.items() for injection in family.injections]
