"""Reward and value heads on causal-LM families transformers has no `...ForSequenceClassification` class for.

forge declares transformers' own GenericForSequenceClassification on the family's PreTrainedModel
(forge_trl/models/score_head.py). Tiny random models of OLMoE, Gemma 4 text and Qwen3.5-MoE text, built from
transformers' config classes (no hub), with forge's tiny tokenizer.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from forge_trl.config import ModelConfig
from forge_trl.injection.base import HEAD_CAUSAL_LM, HEAD_SEQ_CLS
from forge_trl.models.loading import load_base_model, load_injected, load_tokenizer, resolve_source, seq_cls_class
from forge_trl.models.score_head import LOADER_FILE, STANDALONE_LOADER, is_forge_built, sequence_classification_class
from forge_trl.rl.reward import load_reward_model
from tests.injection_support import save_tiny_model, train_in_process

FP32 = ModelConfig(dtype="float32")
# Beyond save_tiny_model's shape (hidden 32, 2 layers, 4 heads, 2 kv heads): what each family needs to be tiny.
FAMILIES = {
    "olmoe": dict(head_dim=8, num_experts=4, num_experts_per_tok=2),
    "gemma4_text": dict(
        head_dim=8,
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=16,
        hidden_size_per_layer_input=8,
    ),
    "qwen3_5_moe_text": dict(
        head_dim=8,
        layer_types=["linear_attention", "full_attention"],
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=16,
        linear_key_head_dim=8,
        linear_value_head_dim=8,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
    ),
}
CLASS_NAMES = {
    "olmoe": "OlmoeForSequenceClassification",
    "gemma4_text": "Gemma4ForSequenceClassification",
    "qwen3_5_moe_text": "Qwen3_5MoeForSequenceClassification",
}
TEXTS = ["What is 3 plus 4? 7", "Hi", "Which word is the opposite of cold? hot, I would say, though I may be wrong."]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_source("forge-tiny").tokenizer_path)


def save_family(directory, model_type, tokenizer):
    extra = dict(FAMILIES[model_type], eos_token_id=tokenizer.eos_token_id)
    if model_type == "gemma4_text":
        extra["vocab_size_per_layer_input"] = len(tokenizer)
    torch.manual_seed(0)
    return save_tiny_model(directory, model_type, tokenizer, **extra)


def scores(model, tokenizer, texts, padding_side: str = "right") -> torch.Tensor:
    previous, tokenizer.padding_side = tokenizer.padding_side, padding_side
    try:
        batch = tokenizer(texts, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = previous
    with torch.no_grad():
        return model(**batch).logits[:, 0].float()


# --------------------------------------------------------------------------------------------- the class
@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_unmapped_family_gets_transformers_generic_head_scored_at_the_last_real_token(model_type, tokenizer, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_layers import GenericForSequenceClassification

    directory = save_family(tmp_path / model_type, model_type, tokenizer)
    config = AutoConfig.from_pretrained(directory)
    cls = sequence_classification_class(config)
    assert cls.__name__ == CLASS_NAMES[model_type] and is_forge_built(cls)
    assert issubclass(cls, GenericForSequenceClassification) and "forge_trl" in cls.__doc__
    assert sequence_classification_class(config) is cls  # one class per family
    assert seq_cls_class(str(directory)) is cls

    model = load_base_model(str(directory), HEAD_SEQ_CLS, FP32, "fp32", tokenizer).eval()
    assert type(model) is cls and model.config.pad_token_id == tokenizer.pad_token_id
    assert model.score.weight.shape == (1, 32)
    # The decoder stack is the causal LM's, weight for weight (only lm_head is left out, only score is new).
    causal_model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    causal = causal_model.state_dict()
    state = model.state_dict()
    # transformers treats it as its own class: same MoE experts kernel (grouped_mm, not eager) and attention.
    assert not cls.is_custom_code()
    assert model.config._experts_implementation == causal_model.config._experts_implementation
    assert model.config._attn_implementation == causal_model.config._attn_implementation
    assert set(state) - set(causal) == {"score.weight"}
    assert all(torch.equal(state[k], causal[k]) for k in state if k != "score.weight")

    # The score is read at the last real token: padding a row, on either side, does not change it.
    alone = torch.cat([scores(model, tokenizer, [text]) for text in TEXTS])
    for side in ("right", "left"):
        torch.testing.assert_close(scores(model, tokenizer, TEXTS, side), alone, atol=1e-5, rtol=0)

    # A full model saved with save_pretrained (what injection=full writes) names an architecture
    # AutoModelForSequenceClassification does not know; forge still reloads it, bit for bit.
    model.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["architectures"] == [CLASS_NAMES[model_type]]
    reloaded = load_base_model(str(tmp_path / "saved"), HEAD_SEQ_CLS, FP32, "fp32", tokenizer).eval()
    assert torch.equal(scores(reloaded, tokenizer, TEXTS), scores(model, tokenizer, TEXTS))
    # The loader an export carries declares the same class from transformers alone (forge-free: see the export test).
    (tmp_path / "saved" / LOADER_FILE).write_text(STANDALONE_LOADER)
    spec = importlib.util.spec_from_file_location(f"loader_{model_type}", tmp_path / "saved" / LOADER_FILE)
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    standalone = loader.load(tmp_path / "saved", dtype=torch.float32)
    assert type(standalone).__name__ == CLASS_NAMES[model_type] and type(standalone) is not cls
    assert standalone.config._experts_implementation == model.config._experts_implementation
    assert torch.equal(scores(standalone, tokenizer, TEXTS), scores(model, tokenizer, TEXTS))


def test_moe_router_outputs_do_not_break_the_generic_head(tokenizer, tmp_path):
    directory = save_family(tmp_path / "olmoe", "olmoe", tokenizer)
    model = load_base_model(str(directory), HEAD_SEQ_CLS, FP32, "fp32", tokenizer).eval()
    plain = scores(model, tokenizer, TEXTS)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        routed = model(**batch, output_router_logits=True).logits[:, 0]
    torch.testing.assert_close(routed, plain)


def test_mapped_family_keeps_transformers_own_class(tokenizer):
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.models.qwen3.modeling_qwen3 import Qwen3ForSequenceClassification

    base = resolve_source("forge-tiny").base
    assert sequence_classification_class(AutoConfig.from_pretrained(base)) is Qwen3ForSequenceClassification
    assert seq_cls_class(base) is AutoModelForSequenceClassification
    model = load_base_model(base, HEAD_SEQ_CLS, FP32, "fp32", tokenizer)
    assert type(model) is Qwen3ForSequenceClassification and not is_forge_built(type(model))


# ------------------------------------------------------------------------------------ an OLMoE reward model
def preference_texts(tokenizer, rows: int = 8) -> tuple[list[str], list[str]]:
    """Chosen and rejected conversations of the demo preference set, rendered with the chat template."""
    from forge_trl.data.demo_suite import ensure_demo_suite

    pairs = [json.loads(line) for line in ensure_demo_suite()["preference"].read_text().splitlines()[:rows]]

    def render(row, answer):
        messages = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": answer}]
        return tokenizer.apply_chat_template(messages, tokenize=False)

    return [render(r, r["chosen"]) for r in pairs], [render(r, r["rejected"]) for r in pairs]


def bradley_terry_loss(pair_scores: torch.Tensor, pairs: int) -> float:
    """Mean -log sigmoid(chosen - rejected) of scores laid out as [chosen..., rejected...]."""
    return float(-torch.nn.functional.logsigmoid(pair_scores[:pairs] - pair_scores[pairs:]).mean())


@pytest.fixture(scope="module")
def olmoe_rm(tmp_path_factory, tokenizer):
    """A tiny OLMoE base and a dense_lora reward model trained on it (8 steps), with the trainer's model."""
    root = tmp_path_factory.mktemp("olmoe-rm")
    base = save_family(root / "olmoe", "olmoe", tokenizer)
    final, watcher, metrics = train_in_process(
        root / "rm",
        "task=rm",
        "data=demo_preference",
        f"model.name_or_path={base}",
        "model.dtype=float32",
        "injection=dense_lora",
        "task.learning_rate=5e-3",
        "task.per_device_train_batch_size=4",
        steps=8,
    )
    return {"base": base, "final": final, "watcher": watcher, "metrics": metrics}


def untrained_scores(olmoe_rm, tokenizer, texts) -> torch.Tensor:
    """The RM's structure with the weights it started training from (base + fresh adapter + fresh head)."""
    source = resolve_source(str(olmoe_rm["final"]))
    model = load_injected(source, source.checkpoint_injection, HEAD_SEQ_CLS, FP32, "fp32", tokenizer).eval()
    start = olmoe_rm["watcher"].start
    params = dict(model.named_parameters())
    assert set(start) == set(params)
    with torch.no_grad():
        for name, value in start.items():
            params[name].copy_(value)
    return scores(model, tokenizer, texts)


def test_olmoe_rm_trains_and_reloads_through_forge_with_equal_scores(olmoe_rm, tokenizer):
    from safetensors.torch import load_file

    final = olmoe_rm["final"]
    assert any(k.endswith("score.weight") for k in load_file(str(final / "adapter_model.safetensors")))
    chosen, rejected = preference_texts(tokenizer)
    trained = olmoe_rm["watcher"].model.eval()
    assert type(trained.get_base_model()).__name__ == "OlmoeForSequenceClassification"

    # Training lowered the Bradley-Terry loss on a fixed batch of its pairs (the logged loss is per batch).
    source = resolve_source(str(final))
    reloaded = load_injected(source, source.checkpoint_injection, HEAD_SEQ_CLS, FP32, "fp32", tokenizer).eval()
    before = bradley_terry_loss(untrained_scores(olmoe_rm, tokenizer, chosen + rejected), len(chosen))
    after = bradley_terry_loss(scores(reloaded, tokenizer, chosen + rejected), len(chosen))
    assert after < before - 0.05, (before, after)

    # save -> load: the adapter + score head reloaded through forge score the batch bit for bit as trained.
    assert torch.equal(scores(reloaded, tokenizer, chosen), scores(trained, tokenizer, chosen))
    # The merged RM that GRPO/RLOO, PPO and the bench use scores the same (up to merge rounding).
    merged, _ = load_reward_model(str(final))
    assert type(merged).__name__ == "OlmoeForSequenceClassification"
    torch.testing.assert_close(scores(merged, tokenizer, chosen), scores(trained, tokenizer, chosen), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shared", [True, False], ids=["one-base", "second-base"])
def test_ppo_reward_head_reads_the_generic_score_head(olmoe_rm, tokenizer, shared):
    from forge_trl.injection.dense_lora import DenseLoraConfig, DenseLoraInjection
    from forge_trl.rl.ppo_models import build_ppo_models

    final = str(olmoe_rm["final"])
    policy_source = resolve_source(str(olmoe_rm["base"]))
    rm_injection = resolve_source(final).checkpoint_injection
    injection = rm_injection if shared else DenseLoraInjection(DenseLoraConfig(r=2))  # other settings: no sharing
    policy = load_injected(policy_source, injection, HEAD_CAUSAL_LM, FP32, "fp32", tokenizer)
    models = build_ppo_models(policy, policy_source, injection, final, FP32, "fp32", tokenizer)
    assert models.shared_base is shared
    rm, _ = load_reward_model(final)
    for text in TEXTS:
        ids = tokenizer([text], return_tensors="pt")["input_ids"]
        positions = torch.arange(ids.shape[1]).unsqueeze(0)
        with torch.no_grad():
            hidden = models.hidden_states(models.reward_adapter, ids, torch.ones_like(ids), positions)
            reward = models.reward_head(hidden[:, -1].float())[0, 0]
            value = models.value_head(hidden[:, -1].float())[0, 0]  # the value head starts as the score head
        expected = scores(rm, tokenizer, [text])[0]
        torch.testing.assert_close(reward, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(value, expected, atol=1e-5, rtol=0)


def test_olmoe_rm_chains_into_ppo_and_grpo(olmoe_rm, tmp_path, caplog):
    common = [f"model.name_or_path={olmoe_rm['base']}", "model.dtype=float32", "injection=dense_lora"]
    rm = f"task.reward_model.checkpoint_path={olmoe_rm['final']}"
    with caplog.at_level("INFO", logger="forge_trl"):
        _, _, ppo = train_in_process(
            tmp_path / "ppo",
            "task=ppo",
            rm,
            *common,
            "task.response_length=4",
            "task.per_device_train_batch_size=4",
            steps=2,
        )
    assert any("share one base model" in r.message for r in caplog.records)
    ppo_scores = [r["objective/scores"] for r in ppo if "objective/scores" in r]
    assert len(ppo_scores) == 2 and all(math.isfinite(x) for x in ppo_scores)

    _, _, grpo = train_in_process(
        tmp_path / "grpo",
        "task=grpo",
        rm,
        *common,
        "task.max_completion_length=6",
        "task.per_device_train_batch_size=4",
        steps=1,
    )
    rewards = [r["reward"] for r in grpo if "reward" in r]
    assert rewards and all(math.isfinite(x) for x in rewards)


# ------------------------------------------------------------------------------------------------- export
def scores_without_forge(export_dir, texts, tmp_path) -> torch.Tensor:
    """Scores from the export, loaded with its load_reward_model.py in a process that cannot import forge_trl."""
    script = f"""
import sys
sys.modules["forge_trl"] = None  # any forge_trl import now fails
sys.path.insert(0, {str(export_dir)!r})
import torch
from transformers import AutoTokenizer
from load_reward_model import load
model = load({str(export_dir)!r})
tokenizer = AutoTokenizer.from_pretrained({str(export_dir)!r})
batch = tokenizer({texts!r}, padding=True, return_tensors="pt")
with torch.no_grad():
    torch.save(model(**batch).logits[:, 0], {str(tmp_path / "scores.pt")!r})
print(type(model).__name__)
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(tmp_path / "scores.pt"), done.stdout.split()[-1]


def test_exported_olmoe_rm_loads_without_forge_with_equal_scores(olmoe_rm, tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from forge_trl.export import EXPORT_INFO, export_checkpoint

    out = export_checkpoint(str(olmoe_rm["final"]), str(tmp_path / "export"))
    assert (out / LOADER_FILE).is_file() and (out / "tokenizer.json").is_file()
    assert list(out.glob("*.safetensors")) and not (out / "adapter_model.safetensors").exists()
    info = json.loads((out / EXPORT_INFO).read_text())
    assert info["head"] == HEAD_SEQ_CLS and LOADER_FILE in info["method"] and info["method"].startswith("merged")
    with pytest.raises(ValueError):  # why the loader exists
        AutoModelForSequenceClassification.from_pretrained(out)

    chosen, rejected = preference_texts(tokenizer, rows=4)
    texts = chosen + rejected
    exported, class_name = scores_without_forge(out, texts, tmp_path)
    assert class_name == "OlmoeForSequenceClassification"
    rm, _ = load_reward_model(str(olmoe_rm["final"]))
    torch.testing.assert_close(exported, scores(rm, tokenizer, texts), atol=1e-5, rtol=0)
    # Training moved the adapter and the head: the export is not the untrained base + fresh head.
    assert (exported - untrained_scores(olmoe_rm, tokenizer, texts)).abs().max() > 1e-3


def test_mapped_family_rm_export_writes_no_loader(tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from forge_trl.export import EXPORT_INFO, export_checkpoint

    final, _, _ = train_in_process(tmp_path / "rm", "task=rm", "data=demo_preference", "model.dtype=float32", steps=1)
    out = export_checkpoint(str(final), str(tmp_path / "export"))
    assert not (out / LOADER_FILE).exists()
    assert json.loads((out / EXPORT_INFO).read_text())["method"] == "merged"
    assert type(AutoModelForSequenceClassification.from_pretrained(out)).__name__ == "Qwen3ForSequenceClassification"


def test_full_finetuned_olmoe_rm_reloads_and_exports(olmoe_rm, tokenizer, tmp_path):
    from forge_trl.export import export_checkpoint

    final, _, _ = train_in_process(
        tmp_path / "rm",
        "task=rm",
        "data=demo_preference",
        f"model.name_or_path={olmoe_rm['base']}",
        "model.dtype=float32",
        "injection=full",
        steps=1,
    )
    assert json.loads((final / "config.json").read_text())["architectures"] == ["OlmoeForSequenceClassification"]
    first, _ = load_reward_model(str(final))
    second, _ = load_reward_model(str(final))
    assert torch.equal(scores(first, tokenizer, TEXTS), scores(second, tokenizer, TEXTS))
    out = export_checkpoint(str(final), str(tmp_path / "export"))
    exported, _ = scores_without_forge(out, TEXTS, tmp_path)
    torch.testing.assert_close(exported, scores(first, tokenizer, TEXTS), atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_type", ["gemma4_text", "qwen3_5_moe_text"])
def test_rm_of_other_unmapped_families_trains_reloads_and_exports(model_type, tokenizer, tmp_path):
    from forge_trl.export import export_checkpoint

    base = save_family(tmp_path / model_type, model_type, tokenizer)
    final, _, metrics = train_in_process(
        tmp_path / "rm",
        "task=rm",
        "data=demo_preference",
        f"model.name_or_path={base}",
        "model.dtype=float32",
        "injection=dense_lora",
        steps=2,
    )
    assert all(math.isfinite(r["loss"]) for r in metrics if "loss" in r)
    rm, _ = load_reward_model(str(final))
    assert type(rm).__name__ == CLASS_NAMES[model_type]
    out = export_checkpoint(str(final), str(tmp_path / "export"))
    spec = importlib.util.spec_from_file_location(f"export_{model_type}", out / LOADER_FILE)
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    torch.testing.assert_close(
        scores(loader.load(out), tokenizer, TEXTS), scores(rm, tokenizer, TEXTS), atol=1e-5, rtol=0
    )
