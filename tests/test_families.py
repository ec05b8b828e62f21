"""Every model family x every injection that suits it: SFT -> DPO -> RM -> PPO with default injection settings,
then export with logits equal to forge's own, on tiny random configs of each family (tests/family_support.py).

A fast subset runs in `make test`; the full matrix is `slow` (`make test-all`).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from forge_trl.export import export_checkpoint
from forge_trl.models.loading import load_for_inference, load_tokenizer, resolve_source
from tests.family_support import FAMILIES, matrix, save_family_model
from tests.injection_support import train_in_process

# One combination per new code path: a plain Conv1D FFN as experts, a fused gate_up FFN as experts, dense LoRA on
# fused native experts (target_parameters), and a reward head on a family transformers has no class for.
FAST = {("gpt2", "moe_expert_lora"), ("phi3", "moe_expert_lora"), ("olmoe", "dense_lora")}
ROUTED = ("moe_expert_lora", "native_moe_expert_lora")
AUX_COEF = 0.01
RUN = ["data.max_rows=16", "data.max_length=64", "task.warmup_steps=0", "task.learning_rate=5e-3"]
IDS = torch.tensor([[5, 17, 42, 99, 7, 300, 12, 64]])
LOADERS = ("load_moe_expert_lora", "load_mixture_lora", "load_reward_model")


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    tokenizer = load_tokenizer(resolve_source("forge-tiny").tokenizer_path)
    root = tmp_path_factory.mktemp("families")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = save_family_model(root / name, name, tokenizer)
        return built[name]

    return get


def cases():
    return [
        pytest.param(family, injection, marks=() if (family, injection) in FAST else pytest.mark.slow)
        for family, injection in matrix()
    ]


def load_export(out: Path, head: str):
    """The exported directory as a user loads it: its bundled loader when it has one, else transformers."""
    for loader in LOADERS:
        script = out / f"{loader}.py"
        if script.is_file():
            spec = importlib.util.spec_from_file_location(f"{loader}_{abs(hash(str(out)))}", script)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module.load(out)
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if head == "seq_cls" else AutoModelForCausalLM
    return auto.from_pretrained(out).eval()


def outputs(model, head: str) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS, attention_mask=torch.ones_like(IDS)).logits


def forge_outputs(final: Path, head: str) -> torch.Tensor:
    model, _, _ = load_for_inference(str(final), head=head, precision="fp32")
    return outputs(model, head)


def exported_outputs(final: Path, out: Path, head: str) -> tuple[torch.Tensor, dict]:
    export_checkpoint(str(final), str(out))
    return outputs(load_export(out, head), head), json.loads((out / "forge_export.json").read_text())


@pytest.mark.parametrize("family, injection", cases())
def test_family_runs_the_whole_path_with_default_settings_and_exports_equal_logits(
    family, injection, family_dirs, tmp_path
):
    base = family_dirs(family)
    aux = [f"injection.aux_loss_coef={AUX_COEF}"] if injection in ROUTED else []
    common = [f"injection={injection}", *aux, *RUN]

    sft, _, metrics = train_in_process(
        tmp_path / "sft", "task=sft", "data=demo_sft", f"model.name_or_path={base}", *common, steps=3
    )
    assert all(math.isfinite(r["loss"]) for r in metrics if "loss" in r)

    dpo, _, metrics = train_in_process(
        tmp_path / "dpo", "task=dpo", "data=demo_preference", f"model.name_or_path={sft}", *common, steps=2
    )
    first = next(r for r in metrics if "loss" in r)
    # The reference is the SFT checkpoint: at step 0 both implicit rewards are 0 and the DPO loss is log 2, plus the
    # weighted balancing loss of the routed injections (forge's) or of a native MoE model (TRL's).
    balancing = AUX_COEF * first["moe/aux_loss"] if injection in ROUTED else 0.0
    if "aux_loss" in first:  # TRL's own MoE term, for a native MoE model that forge does not route (dense_lora)
        balancing += AutoConfig.from_pretrained(base).router_aux_loss_coef * first["aux_loss"]
    assert first["loss"] - balancing == pytest.approx(math.log(2), abs=1e-4)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-5)

    rm, _, metrics = train_in_process(
        tmp_path / "rm", "task=rm", "data=demo_preference", f"model.name_or_path={sft}", *common, steps=2
    )
    assert all(math.isfinite(r["loss"]) for r in metrics if "loss" in r)

    _, _, metrics = train_in_process(
        tmp_path / "ppo",
        "task=ppo",
        "data=demo_prompt_only",
        f"model.name_or_path={sft}",
        f"task.reward_model.checkpoint_path={rm}",
        "task.response_length=4",
        "task.per_device_train_batch_size=4",
        *common,
        steps=1,
    )
    scores = [r["objective/scores"] for r in metrics if "objective/scores" in r]
    assert scores and all(math.isfinite(s) for s in scores)

    # Exports: the DPO policy and the reward model, each equal to what forge computes, and training moved them.
    ours = forge_outputs(dpo, "causal_lm")
    theirs, info = exported_outputs(dpo, tmp_path / "export-dpo", "causal_lm")
    assert (theirs - ours).abs().max().item() < 1e-4, info
    untrained = outputs(load_export(base, "causal_lm"), "causal_lm")
    assert (ours - untrained).abs().max().item() > 1e-3, "training did not move the logits"
    if injection == "moe_expert_lora":
        assert info["method"].startswith("native MoE" if FAMILIES[family].moe_export == "native" else "base model")

    scores_ours = forge_outputs(rm, "seq_cls")
    scores_theirs, info = exported_outputs(rm, tmp_path / "export-rm", "seq_cls")
    assert scores_theirs.shape == (1, 1)
    assert (scores_theirs - scores_ours).abs().max().item() < 1e-4, info


# ------------------------------------------------------------------------------------------ target discovery
EXPECTED_TARGETS = {
    # family: (attention linears, FFN linears, fused experts), as paths inside a decoder layer
    "llama": ({"self_attn.q_proj", "self_attn.o_proj"}, {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}, set()),
    "gpt2": ({"attn.c_attn", "attn.c_proj"}, {"mlp.c_fc", "mlp.c_proj"}, set()),
    "phi3": ({"self_attn.qkv_proj", "self_attn.o_proj"}, {"mlp.gate_up_proj", "mlp.down_proj"}, set()),
    "qwen3_5": ({"linear_attn.in_proj_qkv", "linear_attn.out_proj", "self_attn.q_proj"}, {"mlp.down_proj"}, set()),
    "olmoe": ({"self_attn.q_proj"}, set(), {"mlp.experts.gate_up_proj", "mlp.experts.down_proj"}),
}


@pytest.mark.parametrize("family", sorted(EXPECTED_TARGETS))
def test_targets_are_discovered_from_the_model_and_routers_are_not_among_them(family, family_dirs):
    from transformers import AutoModelForCausalLM

    from forge_trl.injection.targets import discover

    found = discover(AutoModelForCausalLM.from_pretrained(family_dirs(family)))
    attention, ffn, experts = EXPECTED_TARGETS[family]
    assert attention <= set(found.attention) and ffn <= set(found.ffn) and experts == set(found.experts)
    assert not any(path.endswith((".gate", ".router", "shared_expert_gate")) for path in found.ffn)
    assert not set(found.attention) & set(found.ffn)


@pytest.mark.parametrize(
    "injection, model, suggestion",
    [
        ("native_moe_expert_lora", "tiny", "(?i)use injection=moe_expert_lora"),
        ("moe_expert_lora", "tiny_moe", "(?i)use injection=native_moe_expert_lora"),
    ],
)
def test_an_injection_that_cannot_serve_a_family_fails_before_weights_load_naming_the_one_that_can(
    injection, model, suggestion, tmp_path, monkeypatch
):
    from forge_trl.commands.compose import compose
    from forge_trl.errors import ConfigError
    from forge_trl.models import loading
    from forge_trl.train import run

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded before the injection was checked")

    monkeypatch.setattr(loading, "load_base_model", no_weights)
    cfg = compose(["task=sft", f"injection={injection}", f"model={model}", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=suggestion) as error:
        run(cfg)
    assert "\n" not in str(error.value)
