"""Every injection strategy trains every task, honours TRL's reference, and follows phase/handoff schedules."""

import json
import math

import pytest

from forge_trl.config import HandoffConfig
from forge_trl.schedule.handoff import handoff_scale
from tests.injection_support import MODEL_FOR, STRATEGIES, groups_of, train_in_process

TRAINABLE = {"lora", "attn_lora", "router", "score"}
DATA_FOR = {"sft": "demo_sft", "dpo": "demo_preference", "orpo": "demo_preference", "rm": "demo_preference"}


def base_overrides(strategy: str, task: str) -> list[str]:
    return [
        f"task={task}",
        f"injection={strategy}",
        f"model={MODEL_FOR.get(strategy, 'tiny')}",
        f"data={DATA_FOR[task]}",
        "task.learning_rate=1e-3",
    ]


@pytest.mark.parametrize("task", ["sft", "dpo", "orpo", "rm"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_trains_task_and_leaves_frozen_weights_bit_identical(strategy, task, tmp_path):
    final, watcher, metrics = train_in_process(tmp_path, *base_overrides(strategy, task))
    losses = [r["loss"] for r in metrics if "loss" in r]
    assert losses and all(math.isfinite(x) for x in losses)

    groups = groups_of(final, watcher.model)
    trainable = {name for group in TRAINABLE & set(groups) for name in groups[group]}
    changed = watcher.changed_overall()
    assert changed, "nothing trained"
    assert changed <= trainable, f"frozen weights changed: {sorted(changed - trainable)[:3]}"
    for group in TRAINABLE & set(groups):
        assert changed & set(groups[group]), f"group {group} did not train"
    if task == "rm":
        assert "score" in groups
    if strategy != "dense_lora":
        assert "router" in groups and any("moe/aux_loss" in r for r in metrics)
        shares = [json.loads(line) for line in (tmp_path / "routing.jsonl").read_text().splitlines()]
        for layer_shares in shares[-1]["expert_share"].values():
            assert sum(layer_shares) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def sft_checkpoints(tmp_path_factory):
    """A briefly SFT-trained checkpoint per strategy (adapter weights far from zero)."""
    out = {}
    for strategy in STRATEGIES:
        path = tmp_path_factory.mktemp(f"sft-{strategy}")
        out[strategy], _, _ = train_in_process(
            path, *base_overrides(strategy, "sft"), "task.learning_rate=5e-3", steps=4
        )
    return out


def first_dpo_log(metrics: list[dict]) -> dict:
    return next(r for r in metrics if "loss" in r)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_dpo_step0_loss_is_log2_fresh_and_chained_with_reference_equal_to_input(strategy, sft_checkpoints, tmp_path):
    no_aux = [] if strategy == "dense_lora" else ["injection.aux_loss_coef=0"]
    overrides = [*base_overrides(strategy, "dpo"), *no_aux]
    _, _, fresh = train_in_process(tmp_path / "fresh", *overrides, steps=1)
    _, _, chained = train_in_process(
        tmp_path / "chained", *overrides, f"model.name_or_path={sft_checkpoints[strategy]}", steps=1
    )
    for metrics in (fresh, chained):
        first = first_dpo_log(metrics)
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
        assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    # The chained policy is the SFT checkpoint, not the base: its log-probs differ from the fresh run's, yet its
    # reference matched it exactly (loss log 2), so the reference is the input checkpoint.
    assert abs(first_dpo_log(chained)["logps/chosen"] - first_dpo_log(fresh)["logps/chosen"]) > 1e-3


def test_phases_switch_at_their_steps_even_when_trl_reenables_adapter_grads(sft_checkpoints, tmp_path):
    """Chained DPO: TRL's `ref` adapter pass calls set_adapter, which turns every default-adapter grad back on."""
    phases = "[{step:0,trainable:[router]},{step:2,trainable:[lora,attn_lora]},{step:4,trainable:[base_ffn]}]"
    final, watcher, _ = train_in_process(
        tmp_path,
        *base_overrides("moe_expert_lora", "dpo"),
        f"model.name_or_path={sft_checkpoints['moe_expert_lora']}",
        f"injection.phases={phases}",
        "task.warmup_steps=0",
        "task.lr_scheduler_type=constant",
        steps=6,
    )
    groups = groups_of(final, watcher.model)
    expected = [{"router"}, {"router"}, {"lora", "attn_lora"}, {"lora", "attn_lora"}, {"base_ffn"}, {"base_ffn"}]
    for step, (changed, want) in enumerate(zip(watcher.changed_per_step, expected)):
        allowed = {name for group in want for name in groups[group]}
        assert changed and changed <= allowed, f"update {step}: {sorted(changed - allowed)[:3]} outside {want}"
        for group in want:
            assert changed & set(groups[group]), f"update {step}: group {group} did not change"


def test_handoff_scales_follow_their_curves_and_fold_into_the_adapter(tmp_path):
    fades = {
        "lora": HandoffConfig(start_step=1, end_step=5, end_scale=0.0, curve="cosine"),
        "attn_lora": HandoffConfig(start_step=0, end_step=4, end_scale=0.5, curve="linear"),
    }
    final, watcher, metrics = train_in_process(
        tmp_path,
        *base_overrides("dense_lora", "sft"),
        "injection.handoff.lora={start_step:1,end_step:5,end_scale:0.0,curve:cosine}",
        "injection.handoff.attn_lora={start_step:0,end_step:4,end_scale:0.5,curve:linear}",
        "injection.phases=[{step:0,trainable:[lora,attn_lora,base_ffn]}]",
        steps=6,
    )
    base_scale = 32.0 / 16
    for step, scales in enumerate(watcher.scales_per_step):
        for name, scale in scales.items():
            group = "attn_lora" if "self_attn" in name else "lora"
            assert scale == pytest.approx(base_scale * handoff_scale(step, fades[group]), abs=1e-9), (step, name)
    assert [r["handoff/lora_scale"] for r in metrics if "loss" in r][-1] == pytest.approx(0.0, abs=1e-9)
    # After training the fade is folded into B: the FFN adapters now contribute nothing at the normal scale.
    for name, param in watcher.model.named_parameters():
        if "lora_B.default" in name and "mlp" in name:
            assert not param.any()


def test_base_ffn_trained_by_phases_survives_final_and_the_next_stage(tmp_path):
    import torch
    from safetensors.torch import load_file

    from forge_trl.injection.base import EXTRA_TRAINABLE_FILE
    from forge_trl.models.loading import load_for_inference

    final, watcher, _ = train_in_process(
        tmp_path / "a",
        *base_overrides("dense_lora", "sft"),
        "injection.phases=[{step:0,trainable:[lora,base_ffn]}]",
        steps=3,
    )
    saved = load_file(str(final / EXTRA_TRAINABLE_FILE))
    assert saved and all("mlp" in name and "lora_" not in name for name in saved)
    ids = torch.tensor([[5, 17, 42, 9, 3]])
    trained = watcher.model.eval()
    reloaded, _, _ = load_for_inference(str(final))
    with torch.no_grad():
        assert torch.allclose(trained(input_ids=ids).logits, reloaded(input_ids=ids).logits, atol=1e-5)
    # A chained stage that does not train the FFN still carries the trained FFN weights into its own final/.
    chained, _, _ = train_in_process(
        tmp_path / "b",
        *base_overrides("dense_lora", "sft"),
        f"model.name_or_path={final}",
        "injection.phases=[{step:0,trainable:[attn_lora]}]",
        steps=1,
    )
    carried = load_file(str(chained / EXTRA_TRAINABLE_FILE))
    assert carried.keys() == saved.keys() and all(torch.equal(carried[k], saved[k]) for k in saved)


def test_handoff_curve_matches_hand_values():
    linear = HandoffConfig(start_step=10, end_step=20, end_scale=0.2, curve="linear")
    cosine = HandoffConfig(start_step=0, end_step=4, end_scale=0.0, curve="cosine")
    assert [handoff_scale(s, linear) for s in (0, 10, 15, 20, 30)] == pytest.approx([1.0, 1.0, 0.6, 0.2, 0.2])
    assert [handoff_scale(s, cosine) for s in (0, 1, 2, 3, 4)] == pytest.approx(
        [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0]
    )


def test_router_only_phase_on_identical_experts_warns(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="forge_trl"):
        train_in_process(
            tmp_path,
            *base_overrides("mixture_lora", "sft"),
            "injection.phases=[{step:0,trainable:[router]},{step:1,trainable:[lora]}]",
            steps=1,
        )
    assert any("trains only the router while every expert is still identical" in r.message for r in caplog.records)
