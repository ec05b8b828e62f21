"""KTO and SimPO on the demo preference data, and GRPO/RLOO with a forge reward model as the reward."""

import json
import math

import pytest

from forge_trl.errors import ConfigError, DataError
from forge_trl.models.run_info import read_run_info
from tests.injection_support import groups_of, train_in_process


def assert_trained(final, watcher, metrics):
    losses = [r["loss"] for r in metrics if "loss" in r]
    assert losses and all(math.isfinite(x) for x in losses)
    groups = groups_of(final, watcher.model)
    trainable = {n for g in ("lora", "attn_lora") for n in groups.get(g, [])}
    changed = watcher.changed_overall()
    assert changed and changed <= trainable
    assert read_run_info(final).task in ("kto", "simpo", "grpo", "rloo")


@pytest.mark.parametrize("task", ["kto", "simpo"])
def test_offline_preference_task_trains_on_demo_pairs(task, tmp_path):
    assert_trained(*train_in_process(tmp_path, f"task={task}", "data=demo_preference", "task.learning_rate=1e-3"))


def test_kto_trains_on_unpaired_rows(tmp_path):
    rows = [
        {"prompt": f"What is {a} plus {b}?", "completion": text, "label": good}
        for a, b in [(1, 2), (2, 3), (3, 4), (4, 5)]
        for text, good in [(str(a + b), True), (f"I think it is {a + b + 1}, probably", False)]
    ]
    path = tmp_path / "unpaired.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert_trained(
        *train_in_process(
            tmp_path / "run",
            "task=kto",
            "data.layout=unpaired_preference",
            f"data.path={path}",
            "task.learning_rate=1e-3",
            steps=2,
        )
    )


def test_unpaired_label_must_be_a_boolean(tmp_path):
    path = tmp_path / "unpaired.jsonl"
    path.write_text(json.dumps({"prompt": "x", "completion": "y", "label": "yes"}) + "\n")
    with pytest.raises(DataError, match="unpaired.jsonl:1 field 'label': expected true or false, got str"):
        train_in_process(tmp_path / "run", "task=kto", "data.layout=unpaired_preference", f"data.path={path}")


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    final, _, _ = train_in_process(tmp_path_factory.mktemp("rm"), "task=rm", "data=demo_preference", steps=3)
    return final


@pytest.mark.parametrize("task", ["grpo", "rloo"])
def test_online_task_uses_the_forge_reward_model(task, reward_model, tmp_path):
    final, watcher, metrics = train_in_process(
        tmp_path,
        f"task={task}",
        f"task.reward_model.checkpoint_path={reward_model}",
        "task.learning_rate=1e-3",
        "task.max_completion_length=8",
        "task.per_device_train_batch_size=4",
        steps=2,
    )
    rewards = [r["reward"] for r in metrics if "reward" in r]
    assert rewards and all(math.isfinite(x) for x in rewards)
    assert_trained(final, watcher, metrics)
    assert read_run_info(final).reward_model == str(reward_model.resolve())


def test_online_task_refuses_a_checkpoint_that_is_not_a_reward_model(tmp_path):
    sft, _, _ = train_in_process(tmp_path / "sft", "task=sft", "data=demo_sft", steps=1)
    with pytest.raises(ConfigError, match="is not a reward model"):
        train_in_process(
            tmp_path / "grpo",
            "task=grpo",
            f"task.reward_model.checkpoint_path={sft}",
            "task.per_device_train_batch_size=4",
            steps=1,
        )
    assert not (tmp_path / "grpo" / "final").exists()
