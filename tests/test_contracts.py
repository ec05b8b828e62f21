"""Contracts every registered task and injection honours, generated from the registries: a task or injection added
later (one module plus its schema) is covered here without editing this file.

- composing `task=<name>` / `injection=<name>` gives exactly the schema dataclass's defaults (each default once);
- every task trains with every injection: compose, build, two steps, final/ saved, reloaded with equal logits;
- a task with a reference model (schema `ReferenceTaskConfig`) starts chained with reference == input checkpoint
  (zero implicit reward at step 0), and precomputes reference log-probs when phases train base weights.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from omegaconf import OmegaConf
from transformers import TrainerCallback

from forge_trl.commands.compose import compose
from forge_trl.config import ReferenceTaskConfig, to_typed
from forge_trl.injection import INJECTIONS
from forge_trl.injection.base import HEAD_SEQ_CLS
from forge_trl.tasks import TASKS
from forge_trl.train import run
from forge_trl.trainers.callbacks import read_metrics

TASK_NAMES = TASKS.names()
INJECTION_NAMES = INJECTIONS.names()
REFERENCE_TASKS = [n for n in TASK_NAMES if issubclass(TASKS.get(n).schema, ReferenceTaskConfig)]
ADAPTER_INJECTIONS = [n for n in INJECTION_NAMES if INJECTIONS.get(n).is_adapter]


def needs_reward_model(task: str) -> bool:
    return any(f.name == "reward_model" for f in dataclasses.fields(TASKS.get(task).schema))


def model_for(injection: str) -> str:
    return "tiny_moe" if INJECTIONS.get(injection).requires_native_moe else "tiny"


# ------------------------------------------------------------------------------------------------ defaults once
def schema_defaults(schema) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(schema), resolve=False)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_composing_a_task_gives_its_schema_defaults(task):
    composed = OmegaConf.to_container(compose([f"task={task}"]).task, resolve=False)
    assert composed == schema_defaults(TASKS.get(task).schema)


@pytest.mark.parametrize("injection", INJECTION_NAMES)
def test_composing_an_injection_gives_its_schema_defaults(injection):
    composed = OmegaConf.to_container(compose([f"injection={injection}"]).injection, resolve=False)
    assert composed == schema_defaults(INJECTIONS.get(injection).schema)


# ------------------------------------------------------------------------------------------------ train, save, reload
class KeepTrainer(TrainerCallback):
    """Holds on to the trained model and the trainer's arguments."""

    model = None
    args = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.args = args

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.model = model


@pytest.fixture(scope="session")
def reward_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("contract-rm")
    return run(
        compose(
            [f"output_dir={out}", "task=rm", "task.max_steps=2", "plot=false", "task.per_device_train_batch_size=2"]
        )
    )


def train(tmp_path, task: str, injection: str, reward_checkpoint, *extra: str, steps: int = 2):
    keep = KeepTrainer()
    overrides = [
        f"output_dir={tmp_path}",
        f"task={task}",
        f"injection={injection}",
        f"model={model_for(injection)}",
        f"task.max_steps={steps}",
        "task.logging_steps=1",
        "plot=false",
        "task.learning_rate=1e-3",
        *extra,
    ]
    if needs_reward_model(task):
        overrides += [f"task.reward_model.checkpoint_path={reward_checkpoint}", "task.per_device_train_batch_size=4"]
    if task == "ppo":
        overrides += ["task.response_length=4", "task.num_ppo_epochs=1"]
    if task in ("grpo", "rloo"):
        overrides += ["task.max_completion_length=4", "task.num_generations=2"]
    final = run(compose(overrides), extra_callbacks=(keep,))
    return final, keep


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()


@pytest.mark.parametrize("injection", INJECTION_NAMES)
@pytest.mark.parametrize("task", TASK_NAMES)
def test_every_task_trains_with_every_injection_and_reloads_with_equal_logits(
    task, injection, reward_checkpoint, tmp_path
):
    from forge_trl.errors import ConfigError
    from forge_trl.models.loading import load_for_inference

    if TASKS.get(task).requires_adapter and not INJECTIONS.get(injection).is_adapter:
        with pytest.raises(ConfigError, match=f"task={task} trains an adapter policy; injection={injection}"):
            train(tmp_path / "run", task, injection, reward_checkpoint)
        assert not (tmp_path / "run" / "final").exists()
        return
    final, keep = train(tmp_path / "run", task, injection, reward_checkpoint)
    losses = [r["loss"] for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert losses and all(math.isfinite(x) for x in losses)
    assert (final / "forge_run.json").is_file()

    head = TASKS.get(task).head
    reloaded, tokenizer, _ = load_for_inference(str(final), head=head)
    ids = torch.tensor([tokenizer("the cat sat on the mat", add_special_tokens=False)["input_ids"]])
    trained = keep.model
    if head == HEAD_SEQ_CLS:
        assert trained.config.pad_token_id is not None
    torch.testing.assert_close(logits(reloaded, ids), logits(trained, ids), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------ reference
@pytest.fixture(scope="module")
def sft_checkpoints(tmp_path_factory):
    """A briefly SFT-trained checkpoint per adapter injection (adapter weights moved away from their init)."""
    out = {}
    for injection in ADAPTER_INJECTIONS:
        path = tmp_path_factory.mktemp(f"contract-sft-{injection}")
        out[injection] = run(
            compose(
                [
                    f"output_dir={path}",
                    "task=sft",
                    f"injection={injection}",
                    f"model={model_for(injection)}",
                    "task.max_steps=3",
                    "plot=false",
                    "task.learning_rate=5e-3",
                    "task.per_device_train_batch_size=2",
                ]
            )
        )
    return out


@pytest.mark.parametrize("injection", ADAPTER_INJECTIONS)
@pytest.mark.parametrize("task", REFERENCE_TASKS)
def test_a_chained_reference_task_starts_with_the_input_checkpoint_as_reference(
    task, injection, sft_checkpoints, tmp_path
):
    """At step 0 the policy is the input checkpoint; the reference equals it exactly when every implicit reward
    (policy log-prob minus reference log-prob, times beta) is 0."""
    train(tmp_path, task, injection, None, f"model.name_or_path={sft_checkpoints[injection]}", steps=1)
    first = next(r for r in read_metrics(tmp_path) if "loss" in r)
    rewards = {k: v for k, v in first.items() if k.startswith("rewards/") and "accurac" not in k and "margin" not in k}
    assert rewards, f"{task} logs no rewards/* metric: {sorted(first)}"
    for key, value in rewards.items():
        assert value == pytest.approx(0.0, abs=1e-5), (key, value)


@pytest.mark.parametrize(
    "task",
    [
        n
        for n in TASK_NAMES
        if TASKS.get(n)().trl_classes()[0] is not None
        and any(f.name == "precompute_ref_log_probs" for f in dataclasses.fields(TASKS.get(n)().trl_classes()[0]))
    ],
)
def test_every_task_with_a_reference_precomputes_it_when_phases_train_base_weights(task, tmp_path):
    """Any task whose TRL config can precompute reference log-probs must do so when base_ffn phases make the
    adapter-disabled reference drift. (Its schema must be a ReferenceTaskConfig for the base task to handle it.)"""
    assert issubclass(TASKS.get(task).schema, ReferenceTaskConfig)
    _, keep = train(
        tmp_path, task, "dense_lora", None, "injection.phases=[{step:0,trainable:[lora,base_ffn]}]", steps=1
    )
    assert keep.args.precompute_ref_log_probs is True


def test_phases_without_base_weights_keep_the_per_step_reference(tmp_path):
    _, keep = train(tmp_path, "dpo", "dense_lora", None, "injection.phases=[{step:0,trainable:[lora]}]", steps=1)
    assert keep.args.precompute_ref_log_probs is False
    assert to_typed(compose(["task=dpo"])).task.precompute_ref_log_probs is False
