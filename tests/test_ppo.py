"""forge's PPO: the score rises and the value loss falls, one base model in memory, resume continues the run."""

import pytest
import torch

from forge_trl.config import ModelConfig
from forge_trl.models.loading import load_base_model, load_injected, load_tokenizer, resolve_source
from forge_trl.rl.ppo_models import build_ppo_models
from tests.injection_support import save_tiny_model, train_in_process
from tests.ppo_support import synthetic_reward_model

# The policy also adapts lm_head: the random-init tiny model's logits cannot move far through the decoder
# layers alone within a few steps, and this test is about PPO, not about the tiny model's capacity.
POLICY_TARGETS = "injection.target_keywords=[q_proj,v_proj,lm_head]"


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """SFT -> RM (chained, so the RM shares the SFT base and injection) plus a synthetic RM."""
    root = tmp_path_factory.mktemp("ppo-chain")
    sft, _, _ = train_in_process(root / "sft", "task=sft", "data=demo_sft", "task.learning_rate=1e-3", steps=4)
    rm, _, _ = train_in_process(root / "rm", "task=rm", "data=demo_preference", f"model.name_or_path={sft}", steps=2)
    return {"sft": sft, "rm": rm, "synthetic_rm": synthetic_reward_model(rm, root / "synthetic_rm")}


def ppo_metrics(metrics, key):
    return [r[key] for r in metrics if key in r]


def test_ppo_raises_the_score_and_lowers_the_value_loss(chain, tmp_path):
    _, _, metrics = train_in_process(
        tmp_path,
        "task=ppo",
        f"task.reward_model.checkpoint_path={chain['synthetic_rm']}",
        POLICY_TARGETS,
        "task.response_length=2",
        "task.per_device_train_batch_size=16",
        "task.learning_rate=1e-2",
        "task.kl_coef=0",
        steps=24,
    )
    scores, value_losses = ppo_metrics(metrics, "objective/scores"), ppo_metrics(metrics, "loss/value_avg")
    assert len(scores) == 24
    first, last = sum(scores[:6]) / 6, sum(scores[-6:]) / 6
    assert last > first + 0.5, scores
    assert sum(value_losses[-3:]) < sum(value_losses[:3]) / 5, value_losses
    for key in (
        "objective/kl",
        "objective/entropy",
        "policy/clipfrac_avg",
        "policy/approxkl_avg",
        "val/response_length",
        "val/no_eos_share",
        "loss/policy_avg",
    ):
        assert len(ppo_metrics(metrics, key)) == 24, key


def test_chained_ppo_keeps_one_base_model_for_policy_reference_reward_and_value(chain):
    source = resolve_source(str(chain["sft"]))
    tokenizer = load_tokenizer(source.tokenizer_path)
    injection = source.checkpoint_injection
    policy = load_injected(source, injection, "causal_lm", ModelConfig(), "fp32", tokenizer)
    models = build_ppo_models(policy, source, injection, str(chain["rm"]), ModelConfig(), "fp32", tokenizer)
    assert models.shared_base and models.critic is models.policy and models.has_reference_adapter

    base = load_base_model(source.base, "causal_lm", ModelConfig(), "fp32", tokenizer)
    base_shapes = sorted(tuple(p.shape) for p in base.parameters())
    held = {}
    for module in (models.policy, models.critic, models.reward_head, models.value_head):
        for name, param in module.named_parameters():
            held[param.data_ptr()] = (name, param)
    adapter_markers = ("lora_", "modules_to_save", "original_module")
    frozen_base = [
        p for name, p in held.values() if not any(m in name for m in adapter_markers) and not name.startswith("weight")
    ]
    # Exactly the base model's tensors, once each (the heads are (1, H) and counted apart).
    assert sorted(tuple(p.shape) for p in frozen_base) == base_shapes
    # Four adapters on that one base: policy, its frozen reference, the reward and the value.
    assert set(models.policy.peft_config) == {"default", "ref", "reward", "value"}


def test_ppo_resume_from_a_checkpoint_continues_the_same_run(chain, tmp_path):
    common = [
        "task=ppo",
        f"model.name_or_path={chain['sft']}",
        f"task.reward_model.checkpoint_path={chain['rm']}",
        "task.response_length=4",
        "task.per_device_train_batch_size=4",
        "task.learning_rate=1e-3",
        "task.save_steps=2",
    ]
    full_dir = tmp_path / "full"
    _, _, full = train_in_process(full_dir, *common, steps=4)
    assert (full_dir / "checkpoint-2" / "ppo_state.json").is_file()
    _, _, resumed = train_in_process(tmp_path / "resumed", *common, f"resume={full_dir / 'checkpoint-2'}", steps=4)
    assert [r["step"] for r in resumed if "objective/scores" in r] == [3, 4]
    for key in ("objective/scores", "loss/value_avg", "loss/policy_avg", "objective/kl"):
        assert ppo_metrics(resumed, key) == pytest.approx(ppo_metrics(full, key)[2:], rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("strategy", ["mixture_lora", "moe_expert_lora", "native_moe_expert_lora"])
def test_ppo_runs_on_one_base_with_every_routed_strategy(strategy, tmp_path, caplog):
    model = "tiny_moe" if strategy.startswith("native") else "tiny"
    sft, _, _ = train_in_process(
        tmp_path / "sft",
        "task=sft",
        "data=demo_sft",
        f"injection={strategy}",
        f"model={model}",
        "task.learning_rate=1e-3",
        steps=2,
    )
    rm, _, _ = train_in_process(
        tmp_path / "rm", "task=rm", "data=demo_preference", f"model.name_or_path={sft}", steps=1
    )
    with caplog.at_level("INFO", logger="forge_trl"):
        final, _, metrics = train_in_process(
            tmp_path / "ppo",
            "task=ppo",
            f"model.name_or_path={sft}",
            f"task.reward_model.checkpoint_path={rm}",
            "task.response_length=4",
            "task.per_device_train_batch_size=4",
            "task.learning_rate=1e-3",
            steps=2,
        )
    assert any("share one base model" in r.message for r in caplog.records)
    scores = ppo_metrics(metrics, "objective/scores")
    assert len(scores) == 2 and all(torch.isfinite(torch.tensor(scores)))
    assert ppo_metrics(metrics, "moe/aux_loss"), "the routed policy's balancing loss is part of PPO's loss"
    assert (final / "adapter_model.safetensors").is_file()


def test_ppo_refuses_a_reward_model_with_another_tokenizer(chain, tmp_path):
    from transformers import AutoTokenizer

    from forge_trl.errors import ConfigError

    # A different base: its own (larger) vocabulary, so its token ids mean other things.
    tokenizer = load_tokenizer(resolve_source("forge-tiny").tokenizer_path)
    small = AutoTokenizer.from_pretrained(str(resolve_source("forge-tiny").tokenizer_path))
    small.add_tokens(["<|extra_token|>"])
    other = save_tiny_model(tmp_path / "other-base", "qwen3", small, head_dim=8)
    rm, _, _ = train_in_process(
        tmp_path / "rm", "task=rm", "data=demo_preference", f"model.name_or_path={other}", steps=1
    )
    with pytest.raises(ConfigError, match="tokenizer differs from the policy's"):
        train_in_process(
            tmp_path / "ppo",
            "task=ppo",
            f"model.name_or_path={chain['sft']}",
            f"task.reward_model.checkpoint_path={rm}",
            steps=1,
        )
    assert not (tmp_path / "ppo" / "final").exists()
    assert len(tokenizer) != len(small)
