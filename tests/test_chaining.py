"""Checkpoint chaining: the reference of a chained DPO is the SFT model, an RM starts from the SFT weights,
and a checkpoint round-trips with equal logits."""

import math

import pytest
import torch
from safetensors.torch import load_file

from forge_trl.commands.compose import compose
from forge_trl.config import ModelConfig
from forge_trl.injection.dense_lora import DenseLoraConfig, DenseLoraInjection
from forge_trl.models.checkpoint import write_final
from forge_trl.models.loading import load_for_inference, load_injected, load_tokenizer, resolve_source
from forge_trl.models.run_info import RunInfo, read_run_info
from forge_trl.train import run
from forge_trl.trainers.callbacks import read_metrics

FAST = ["task.logging_steps=1", "task.warmup_steps=0", "data.max_rows=32", "data.max_length=64", "plot=false"]


@pytest.fixture(scope="module")
def sft_final(tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    # A large learning rate so that the SFT adapter moves far from zero in a few steps.
    return run(compose(["task=sft", f"output_dir={out}", "task.max_steps=8", "task.learning_rate=1e-2", *FAST]))


def test_chained_dpo_uses_sft_model_as_reference(sft_final, tmp_path):
    adapter = load_file(str(sft_final / "adapter_model.safetensors"))
    assert max(t.abs().max().item() for k, t in adapter.items() if "lora_B" in k) > 1e-3, "SFT adapter is trivial"

    out = tmp_path / "dpo"
    final = run(
        compose(["task=dpo", f"model.name_or_path={sft_final}", f"output_dir={out}", "task.max_steps=2", *FAST])
    )
    first = read_metrics(out)[0]
    # At step 0 the policy equals the reference (the SFT model), so both implicit rewards are 0 and the loss
    # is -log sigmoid(0) = log 2. A raw-base reference would give non-zero rewards here.
    assert abs(first["loss"] - math.log(2)) < 1e-4
    assert abs(first["rewards/chosen"]) < 1e-5 and abs(first["rewards/rejected"]) < 1e-5
    info = read_run_info(final)
    assert info.base_model == "forge-tiny"
    assert info.parent == str(sft_final.resolve())


def test_rm_chained_from_sft_starts_from_sft_weights(sft_final):
    source = resolve_source(str(sft_final))
    tokenizer = load_tokenizer(source.tokenizer_path)
    injection = source.checkpoint_injection
    model = load_injected(source, injection, "seq_cls", ModelConfig(), "fp32", tokenizer)
    saved = load_file(str(sft_final / "adapter_model.safetensors"))
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(saved)
    for key, tensor in saved.items():
        assert torch.equal(loaded[key.replace(".weight", ".default.weight")], tensor), key
    groups = injection.parameter_groups(model)
    params = dict(model.named_parameters())
    assert groups["score"] and all(params[name].requires_grad for name in groups["score"])
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id


@pytest.mark.parametrize("head", ["causal_lm", "seq_cls"])
def test_checkpoint_round_trip_gives_equal_logits(head, tmp_path):
    source = resolve_source("forge-tiny")
    tokenizer = load_tokenizer(source.tokenizer_path)
    injection = DenseLoraInjection(DenseLoraConfig(r=4, target_keywords=["q_proj", "down_proj"], start_layer=1))
    model = load_injected(source, injection, head, ModelConfig(), "fp32", tokenizer)
    torch.manual_seed(0)
    with torch.no_grad():
        for name in injection.parameter_groups(model)["lora"] + injection.parameter_groups(model).get("score", []):
            model.get_parameter(name).normal_(0, 0.1)
    model.eval()
    batch = tokenizer(["What is 3 plus 4?", "the sky is blue."], return_tensors="pt", padding=True)
    expected = model(**batch).logits

    final = write_final(
        tmp_path,
        save_weights=lambda d: injection.save(model, d),
        tokenizer=tokenizer,
        resolved_config_yaml="",
        run_info=RunInfo(task="test", head=head, base_model="forge-tiny", injection=injection.settings()),
        overwrite=False,
    )
    again = resolve_source(str(final))
    reloaded = load_injected(again, again.checkpoint_injection, head, ModelConfig(), "fp32", tokenizer).eval()
    assert torch.equal(reloaded(**batch).logits, expected)
    if head == "causal_lm":
        merged, _, _ = load_for_inference(str(final))
        torch.testing.assert_close(merged(**batch).logits, expected, atol=1e-5, rtol=1e-5)
