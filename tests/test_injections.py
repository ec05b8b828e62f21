"""Injection strategies as modules: math against hand values, equivalence, reference, round trip, export."""

import json
import os
import subprocess
import sys

import pytest
import torch

from forge_trl.config import ModelConfig
from forge_trl.injection import get_injection
from forge_trl.injection.moe_expert_lora import MoeExpertLoraLayer
from forge_trl.injection.routing import RoutingRecorder, find_recorder, switch_balance_loss
from forge_trl.models.checkpoint import write_final
from forge_trl.models.loading import load_base_model, load_injected, load_tokenizer, resolve_source
from forge_trl.models.run_info import RunInfo
from tests.injection_support import STRATEGIES, save_tiny_model

MODEL_NAME = {"native_moe_expert_lora": "forge-tiny-moe"}
IDS = torch.tensor([[5, 17, 230, 41, 9, 77, 301, 12], [88, 3, 19, 640, 2, 51, 7, 400]])


def injected(strategy: str, head: str = "causal_lm", **settings):
    source = resolve_source(MODEL_NAME.get(strategy, "forge-tiny"))
    tokenizer = load_tokenizer(source.tokenizer_path)
    injection = get_injection(strategy).from_settings({"name": strategy, **settings})
    model = load_injected(source, injection, head, ModelConfig(), "fp32", tokenizer)
    return source, tokenizer, injection, model


def perturb_adapters(model, seed: int = 0) -> None:
    """Give every adapter weight (LoRA A/B, routers, heads) random values, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


# --------------------------------------------------------------------------------------------- routing math
def test_switch_balance_loss_matches_hand_values():
    probs = torch.tensor([[0.7, 0.3], [0.4, 0.6]])
    # one token per expert: f = (0.5, 0.5), P = (0.55, 0.45) -> 2 * (0.275 + 0.225) = 1.0
    assert switch_balance_loss(probs, torch.tensor([[0], [1]]), None).item() == pytest.approx(1.0)
    # both on expert 0: f = (1, 0) -> 2 * 0.55 = 1.1
    assert switch_balance_loss(probs, torch.tensor([[0], [0]]), None).item() == pytest.approx(1.1)
    # the second token is padding: only the first counts -> 2 * 0.7 = 1.4
    mask = torch.tensor([True, False])
    assert switch_balance_loss(probs, torch.tensor([[0], [0]]), mask).item() == pytest.approx(1.4)
    # dense gating uses the probability mass as load: 2 * (0.55^2 + 0.45^2) = 1.01
    assert switch_balance_loss(probs, None, None).item() == pytest.approx(1.01)


def test_recorder_reports_shares_and_warns_on_collapse(caplog):
    recorder = RoutingRecorder(coef=0.1)
    logits = torch.tensor([[5.0, 0.0, 0.0, 0.0]] * 19 + [[0.0, 5.0, 0.0, 0.0]])
    with recorder.collect(), torch.enable_grad():
        recorder.record("layers.0.mlp", logits, logits.topk(1, dim=-1).indices)
    assert recorder.expert_shares()["layers.0.mlp"] == pytest.approx([0.95, 0.05, 0.0, 0.0])
    assert recorder.pop_loss().item() > 1.5  # far from the balanced 1.0
    with caplog.at_level("WARNING", logger="forge_trl"):
        metrics = recorder.pop_metrics()
    assert metrics["moe/max_expert_share"] == pytest.approx(0.95)
    assert metrics["moe/dead_expert_fraction"] == pytest.approx(0.5)
    assert any("router collapse in layers.0.mlp" in r.message for r in caplog.records)
    # Outside collection (reference passes, evaluation) nothing is recorded.
    recorder.record("layers.0.mlp", logits, logits.topk(1, dim=-1).indices)
    assert recorder.pop_loss() is None and recorder.pop_metrics() == {}


# ------------------------------------------------------------------------------------- layers and reference
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_fresh_injection_is_the_base_and_disabled_adapter_is_the_base_after_training(strategy):
    source, tokenizer, injection, model = injected(strategy)
    base = load_base_model(source.base, "causal_lm", ModelConfig(), "fp32", tokenizer).eval()
    model.eval()
    with torch.no_grad():
        base_logits = base(IDS).logits
        assert torch.allclose(model(IDS).logits, base_logits, atol=1e-5)
        perturb_adapters(model)
        assert not torch.allclose(model(IDS).logits, base_logits, atol=1e-3)
        with model.disable_adapter():
            assert torch.equal(model(IDS).logits, base_logits)


@pytest.mark.parametrize("strategy", ["mixture_lora", "moe_expert_lora"])
def test_trl_ref_adapter_copy_reproduces_the_trained_adapter(strategy):
    from trl.trainer.utils import use_adapter

    _, _, _, model = injected(strategy)
    perturb_adapters(model)
    model.add_adapter("ref", model.peft_config["default"])  # what TRL's DPOTrainer does for a trained adapter
    for name, param in model.named_parameters():
        if ".default." in name:
            model.get_parameter(name.replace(".default.", ".ref.")).data.copy_(param.data)
    model.eval()
    with torch.no_grad():
        trained = model(IDS).logits
        with use_adapter(model, "ref"):
            assert torch.equal(model(IDS).logits, trained)


def test_moe_expert_mixture_equals_naive_per_expert_ffn():
    """Base projections once per token == running each selected expert's full FFN separately."""
    _, _, _, model = injected("moe_expert_lora")
    perturb_adapters(model)
    layer = next(m for m in model.modules() if isinstance(m, MoeExpertLoraLayer))
    x = torch.randn(10, layer.get_base_layer().gate_proj.in_features)
    with torch.no_grad():
        fast = layer(x)
        _, weights, indices = layer.route(x, "default")
        w = layer.expert_weights("default")
        ffn = layer.get_base_layer()
        naive = torch.zeros_like(x)
        for t in range(x.shape[0]):
            for slot in range(indices.shape[1]):
                e = indices[t, slot]
                h = ffn.act_fn(w["gate"][e] @ x[t]) * (w["up"][e] @ x[t])
                naive[t] += weights[t, slot] * (w["down"][e] @ h)
    assert torch.allclose(fast, naive, atol=1e-5)


@pytest.mark.parametrize("strategy", ["mixture_lora", "moe_expert_lora"])
def test_router_gradient_is_zero_for_identical_experts_and_nonzero_once_they_differ(strategy):
    _, _, injection, model = injected(strategy)
    model.train()
    routers = [p for n, p in model.named_parameters() if n in set(injection.parameter_groups(model)["router"])]

    def router_grad_norm() -> float:
        model.zero_grad()
        model(IDS, labels=IDS).loss.backward()  # task loss only: the recorder is not collecting
        return sum(float(p.grad.abs().sum()) for p in routers if p.grad is not None)

    identical = router_grad_norm()  # zero up to float rounding: the mixture does not depend on the weights
    perturb_adapters(model)
    differing = router_grad_norm()
    assert identical < 1e-5 and differing > 1e-2, (identical, differing)


def test_balancing_loss_masks_padding_through_the_attention_mask():
    _, _, _, model = injected("moe_expert_lora")
    recorder = find_recorder(model)
    model.train()
    mask = torch.ones_like(IDS)
    mask[1, 4:] = 0
    with recorder.collect():
        model(IDS, attention_mask=mask)
    assert torch.equal(recorder.attention_mask, mask)  # captured from the model call, whatever the trainer
    masked = recorder.pop_loss()
    assert masked is not None and masked.item() > 0
    with recorder.collect():
        model(IDS)
    unmasked = recorder.pop_loss()
    assert not torch.isclose(masked, unmasked)


# --------------------------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("head", ["causal_lm", "seq_cls"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_checkpoint_round_trip_gives_equal_logits(strategy, head, tmp_path):
    source, tokenizer, injection, model = injected(strategy, head)
    perturb_adapters(model)
    model.eval()
    write_final(
        tmp_path,
        save_weights=lambda d: injection.save(model, d),
        tokenizer=tokenizer,
        resolved_config_yaml="",
        run_info=RunInfo(task="test", head=head, base_model=source.base_id, injection=injection.settings()),
        overwrite=False,
    )
    again = resolve_source(str(tmp_path / "final"))
    assert again.checkpoint_injection.settings() == injection.settings()
    reloaded = load_injected(again, again.checkpoint_injection, head, ModelConfig(), "fp32", tokenizer).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(IDS).logits, model(IDS).logits)


# ------------------------------------------------------------------------------------------------ export
def hf_logits_in_fresh_process(directory, tmp_path, loader: str = "") -> torch.Tensor:
    """Load `directory` with transformers alone (forge_trl is never imported) and return logits for IDS."""
    script = f"""
import sys, torch
sys.path.insert(0, {str(directory)!r})
from transformers import AutoModelForCausalLM
{loader or "model = AutoModelForCausalLM.from_pretrained(" + repr(str(directory)) + ").eval()"}
ids = torch.tensor({IDS.tolist()})
with torch.no_grad():
    torch.save(model(ids).logits, {str(tmp_path / "logits.pt")!r})
assert not any(m.startswith("forge_trl") for m in sys.modules), "forge_trl was imported"
print(type(model).__name__, model.config.model_type)
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return torch.load(tmp_path / "logits.pt"), done.stdout.split()


def save_checkpoint(tmp_path, source, tokenizer, injection, model):
    return write_final(
        tmp_path / "run",
        save_weights=lambda d: injection.save(model, d),
        tokenizer=tokenizer,
        resolved_config_yaml="",
        overwrite=False,
        run_info=RunInfo(task="sft", head="causal_lm", base_model=source.base_id, injection=injection.settings()),
    )


def train_then_export(tmp_path, source, tokenizer, injection, model, loader: str = ""):
    """Give the adapters trained-like weights, export the checkpoint, and reload it without forge_trl.

    Returns (logits of the trained model, logits of the export, export dir, (class name, model_type))."""
    from forge_trl.export import export_checkpoint

    perturb_adapters(model)
    model.eval()
    with torch.no_grad():
        trained = model(IDS).logits
    out = export_checkpoint(str(save_checkpoint(tmp_path, source, tokenizer, injection, model)), str(tmp_path / "x"))
    logits, meta = hf_logits_in_fresh_process(out, tmp_path, loader=loader.format(out=str(out)))
    return trained, logits, out, meta


def test_moe_expert_lora_exports_qwen3_as_qwen3_moe_with_matching_logits(tmp_path):
    source, tokenizer, injection, model = injected("moe_expert_lora", start_layer=1)  # layer 0 stays dense
    trained, logits, out, (cls_name, model_type) = train_then_export(tmp_path, source, tokenizer, injection, model)
    assert (cls_name, model_type) == ("Qwen3MoeForCausalLM", "qwen3_moe")
    assert (logits - trained).abs().max().item() < 1e-4
    config = json.loads((out / "config.json").read_text())
    assert config.get("num_experts", config.get("num_local_experts")) == 8
    assert config["num_experts_per_tok"] == 2 and config["mlp_only_layers"] == [0]


def test_moe_expert_lora_exports_llama_as_mixtral_with_matching_logits(tmp_path):
    tokenizer = load_tokenizer(resolve_source("forge-tiny").tokenizer_path)
    source = resolve_source(str(save_tiny_model(tmp_path / "llama", "llama", tokenizer)))
    injection = get_injection("moe_expert_lora").from_settings({"name": "moe_expert_lora", "num_experts": 4})
    model = load_injected(source, injection, "causal_lm", ModelConfig(), "fp32", tokenizer)
    trained, logits, _, (cls_name, _) = train_then_export(tmp_path, source, tokenizer, injection, model)
    assert cls_name == "MixtralForCausalLM"
    assert (logits - trained).abs().max().item() < 1e-4


@pytest.mark.parametrize("strategy", ["dense_lora", "native_moe_expert_lora"])
def test_mergeable_strategies_export_merged_weights(strategy, tmp_path):
    trained, logits, _, _ = train_then_export(tmp_path, *injected(strategy))
    assert (logits - trained).abs().max().item() < 1e-4


def test_mixture_lora_exports_base_plus_adapter_with_a_standalone_loader(tmp_path):
    source, tokenizer, injection, model = injected("mixture_lora", top_k=2)
    loader = "import load_mixture_lora\nmodel = load_mixture_lora.load({out!r})"
    trained, logits, out, _ = train_then_export(tmp_path, source, tokenizer, injection, model, loader=loader)
    assert (logits - trained).abs().max().item() < 1e-5
    plain, _ = hf_logits_in_fresh_process(out, tmp_path)  # without the loader it is the untouched base model
    with torch.no_grad():
        with model.disable_adapter():
            assert (plain - model(IDS).logits).abs().max().item() < 1e-5


# --------------------------------------------------------------------------------------------- preflight
@pytest.mark.parametrize(
    "strategy, model_name, message",
    [
        ("native_moe_expert_lora", "forge-tiny", "needs a native MoE model"),
        ("moe_expert_lora", "forge-tiny-moe", "already has MoE FFNs"),
    ],
)
def test_strategy_that_does_not_suit_the_architecture_fails_preflight(strategy, model_name, message):
    from forge_trl.errors import ConfigError

    source = resolve_source(model_name)
    tokenizer = load_tokenizer(source.tokenizer_path)
    injection = get_injection(strategy).from_settings({"name": strategy})
    with pytest.raises(ConfigError, match=message):
        load_injected(source, injection, "causal_lm", ModelConfig(), "fp32", tokenizer)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["checkpoint=./no/such/run/final", "out=x"], "'./no/such/run/final' does not exist"),
        (["checkpoint=outputs/x"], "missing out=..."),
        (["model=x", "out=y"], "unknown key 'model'"),
    ],
)
def test_export_cli_bad_input_gives_one_line_and_exit_2(args, fragment, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "forge_trl.export", *args], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 2, done.stderr[-1000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("forge_trl:")]
    assert len(lines) == 1 and fragment in lines[0], done.stderr[-1000:]
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "model_type, extra",
    [
        ("mixtral", {"num_local_experts": 4, "num_experts_per_tok": 2}),
        ("olmoe", {"num_experts": 4, "num_experts_per_tok": 2}),
    ],
)
def test_native_moe_expert_lora_on_other_moe_families(model_type, extra, tmp_path):
    tokenizer = load_tokenizer(resolve_source("forge-tiny").tokenizer_path)
    source = resolve_source(
        str(save_tiny_model(tmp_path / model_type, model_type, tokenizer, intermediate_size=48, **extra))
    )
    injection = get_injection("native_moe_expert_lora").from_settings({"name": "native_moe_expert_lora"})
    model = load_injected(source, injection, "causal_lm", ModelConfig(), "fp32", tokenizer)
    groups = injection.parameter_groups(model)
    assert {"lora", "attn_lora", "router"} <= set(groups) and len(groups["router"]) == 2
    base_logits = load_base_model(source.base, "causal_lm", ModelConfig(), "fp32", tokenizer).eval()(IDS).logits
    model.train()
    recorder = find_recorder(model)
    with recorder.collect():
        loss = model(IDS, labels=IDS).loss
    aux = recorder.pop_loss()  # the model's own balancing loss, from the hooked routers
    assert aux is not None and torch.isfinite(aux)
    (loss + aux).backward()
    assert all(model.get_parameter(n).grad is not None for n in groups["router"])
    perturb_adapters(model)
    model.eval()
    with torch.no_grad(), model.disable_adapter():
        assert torch.allclose(model(IDS).logits, base_logits, atol=1e-6)
