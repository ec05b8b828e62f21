"""Real-model presets compose, and load a local directory of the same architecture (tiny config, no hub)."""

import pytest
import torch

from forge_trl.commands.compose import compose
from forge_trl.config import ModelConfig, to_typed
from forge_trl.injection.dense_lora import DenseLoraConfig, DenseLoraInjection
from forge_trl.models.loading import load_injected, load_tokenizer, resolve_source

TINY = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    vocab_size=1175,
    max_position_embeddings=128,
)
ARCHITECTURES = {
    "qwen3_0_6b": ("Qwen/Qwen3-0.6B", "qwen3", {}),
    "qwen3_5_0_8b": ("Qwen/Qwen3.5-0.8B", "qwen3_5_text", {"layer_types": ["linear_attention", "full_attention"]}),
    "llama3_2_1b": ("meta-llama/Llama-3.2-1B-Instruct", "llama", {}),
    "gemma3_1b": ("google/gemma-3-1b-it", "gemma3_text", {}),
}


@pytest.mark.parametrize("preset", sorted(ARCHITECTURES))
def test_preset_composes_and_loads_local_model_of_its_architecture(preset, tmp_path):
    hub_id, model_type, extra = ARCHITECTURES[preset]
    assert to_typed(compose([f"model={preset}"])).model.name_or_path == hub_id

    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = load_tokenizer(resolve_source("forge-tiny").tokenizer_path)
    config = AutoConfig.for_model(model_type, pad_token_id=tokenizer.pad_token_id, **TINY, **extra)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")

    cfg = to_typed(compose([f"model={preset}", f"model.name_or_path={tmp_path / 'model'}", "model.dtype=float32"]))
    source = resolve_source(cfg.model.name_or_path)
    injection = DenseLoraInjection(DenseLoraConfig(r=4))
    model = load_injected(source, injection, "causal_lm", cfg.model, "fp32", tokenizer)
    assert model.config.model_type == model_type
    assert set(injection.parameter_groups(model)) == {"lora", "attn_lora", "base_ffn"}
    batch = tokenizer(["What is 3 plus 4?"], return_tensors="pt")
    logits = model(**batch).logits
    assert logits.shape[-1] == TINY["vocab_size"] and torch.isfinite(logits).all()


def test_tiny_moe_builds_and_takes_dense_lora():
    source = resolve_source("forge-tiny-moe")
    tokenizer = load_tokenizer(source.tokenizer_path)
    injection = DenseLoraInjection(DenseLoraConfig(r=4, target_keywords=["q_proj", "v_proj"]))
    model = load_injected(source, injection, "causal_lm", ModelConfig(dtype="float32"), "fp32", tokenizer)
    assert model.config.model_type == "qwen3_moe" and model.config.num_experts == 8
    logits = model(**tokenizer(["What is 3 plus 4?"], return_tensors="pt")).logits
    assert torch.isfinite(logits).all()


def test_4bit_quantized_base_trains_lora_on_cpu():
    source = resolve_source("forge-tiny")
    tokenizer = load_tokenizer(source.tokenizer_path)
    injection = DenseLoraInjection(DenseLoraConfig(r=4))
    model = load_injected(
        source, injection, "causal_lm", ModelConfig(dtype="float32", quantization="4bit"), "fp32", tokenizer
    )
    assert getattr(model, "is_loaded_in_4bit", False)
    batch = tokenizer(["What is 3 plus 4? 7"], return_tensors="pt")
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    lora = [p for n, p in model.named_parameters() if "lora_B" in n]  # B starts at zero, so only B gets a gradient
    assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
