"""Real-model presets compose, and load a local directory of the same architecture (tiny config, no hub)."""

from pathlib import Path

import pytest
import torch

from forge_trl.commands.compose import compose
from forge_trl.config import ModelConfig, to_typed
from forge_trl.injection.dense_lora import DenseLoraConfig, DenseLoraInjection
from forge_trl.models.loading import load_injected, load_tokenizer, resolve_source
from tests.family_support import FAMILIES, save_family_model

# preset -> (hub id it names, family in tests/family_support.py, model_type of that family's text model)
PRESETS = {
    "qwen3_0_6b": ("Qwen/Qwen3-0.6B", "qwen3"),
    "qwen3_5_0_8b": ("Qwen/Qwen3.5-0.8B", "qwen3_5"),
    "qwen3_30b_a3b": ("Qwen/Qwen3-30B-A3B", "qwen3_moe"),
    "llama3_2_1b": ("meta-llama/Llama-3.2-1B-Instruct", "llama"),
    "mistral_7b": ("mistralai/Mistral-7B-Instruct-v0.3", "mistral"),
    "mixtral_8x7b": ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral"),
    "gemma3_1b": ("google/gemma-3-1b-it", "gemma3"),
    "olmoe_1b_7b": ("allenai/OLMoE-1B-7B-0125-Instruct", "olmoe"),
    "phi3_mini": ("microsoft/Phi-3-mini-4k-instruct", "phi3"),
    "gpt2": ("openai-community/gpt2", "gpt2"),
}


def test_every_model_preset_is_tested():
    shipped = {p.stem for p in (Path(__file__).parents[1] / "conf" / "model").glob("*.yaml")}
    assert shipped - {"tiny", "tiny_moe"} == set(PRESETS)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_composes_and_loads_local_model_of_its_architecture(preset, tmp_path):
    hub_id, family = PRESETS[preset]
    assert to_typed(compose([f"model={preset}"])).model.name_or_path == hub_id

    tokenizer = load_tokenizer(resolve_source("forge-tiny").tokenizer_path)
    save_family_model(tmp_path / "model", family, tokenizer)

    cfg = to_typed(compose([f"model={preset}", f"model.name_or_path={tmp_path / 'model'}", "model.dtype=float32"]))
    source = resolve_source(cfg.model.name_or_path)
    injection = DenseLoraInjection(DenseLoraConfig(r=4))  # default targets, discovered from the model
    model = load_injected(source, injection, "causal_lm", cfg.model, "fp32", tokenizer)
    assert model.config.model_type == FAMILIES[family].model_type
    assert set(injection.parameter_groups(model)) == {"lora", "attn_lora", "base_ffn"}
    batch = tokenizer(["What is 3 plus 4?"], return_tensors="pt")
    logits = model(**batch).logits
    assert logits.shape[-1] == len(tokenizer) and torch.isfinite(logits).all()


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
