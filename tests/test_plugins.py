"""README's promise: a new task is one module plus one YAML, found without editing forge_trl. A throwaway
preference loss lives in a temporary directory named by FORGE_TRL_PLUGINS; it trains, chains from an SFT
checkpoint (its reference is that checkpoint) and shows in --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from forge_trl.commands.compose import compose
from forge_trl.train import run
from tests.conftest import REPO

PLUGIN_MODULE = '''
"""DPO's hinge loss under its own task name: a preference loss with a reference model."""
from dataclasses import dataclass

from forge_trl.config import ReferenceTaskConfig
from forge_trl.tasks import TASKS
from forge_trl.tasks.base import Task


@dataclass
class ToyHingeConfig(ReferenceTaskConfig):
    name: str = "toy_hinge"
    learning_rate: float = 1e-3
    beta: float = 0.1


@TASKS.register("toy_hinge")
class ToyHingeTask(Task):
    name = "toy_hinge"
    schema = ToyHingeConfig
    data_layouts = ("prompted_preference", "preference")

    def task_args(self, ctx):
        return dict(beta=ctx.cfg.task.beta, loss_type=["hinge"], max_length=ctx.cfg.data.max_length)

    def trl_classes(self):
        from forge_trl.trainers.dpo import DPOConfig, ForgeDPOTrainer

        return DPOConfig, ForgeDPOTrainer
'''
# A preset of the plugin's task: the schema's defaults with a sharper beta.
PLUGIN_PRESET = "defaults:\n  - toy_hinge\n  - _self_\nbeta: 0.5\n"


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("plugin")
    (directory / "toy_hinge.py").write_text(PLUGIN_MODULE, encoding="utf-8")
    (directory / "conf" / "task").mkdir(parents=True)
    (directory / "conf" / "task" / "toy_hinge_sharp.yaml").write_text(PLUGIN_PRESET, encoding="utf-8")
    return directory


def forge(plugin_dir, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FORGE_TRL_PLUGINS": str(plugin_dir), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", "forge_trl", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow  # registration and presets of a plugin are in make test (the --help test)
def test_a_plugin_task_trains_chained_from_sft_with_that_checkpoint_as_reference(plugin_dir, tmp_path):
    sft = run(
        compose(
            [
                f"output_dir={tmp_path / 'sft'}",
                "task=sft",
                "task.max_steps=3",
                "plot=false",
                "task.learning_rate=5e-3",
                "task.per_device_train_batch_size=2",
            ]
        )
    )
    result = forge(
        plugin_dir,
        "task=toy_hinge_sharp",
        f"model.name_or_path={sft}",
        f"output_dir={tmp_path / 'toy'}",
        "task.max_steps=8",
        "task.logging_steps=1",
        "task.per_device_train_batch_size=4",
        "plot=false",
        "task.lr_scheduler_type=constant",
        "task.warmup_steps=0",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((tmp_path / "toy" / "final" / "forge_run.json").read_text())
    assert info["task"] == "toy_hinge"
    assert "beta: 0.5" in (tmp_path / "toy" / "final" / "resolved_config.yaml").read_text()
    records = [json.loads(line) for line in (tmp_path / "toy" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    # Hinge loss relu(1 - beta * margin): exactly 1 at step 0, when the reference is the SFT checkpoint itself.
    assert losses[0] == pytest.approx(1.0, abs=1e-5)
    assert sum(losses[-3:]) / 3 < 0.99  # and it learns the preference


def test_a_plugin_task_and_its_preset_appear_in_help(plugin_dir):
    result = forge(plugin_dir, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "toy_hinge" in result.stdout and "toy_hinge_sharp" in result.stdout


def test_a_missing_plugin_directory_is_one_line_and_exit_2(tmp_path):
    result = forge(tmp_path / "nowhere", "task=sft", f"output_dir={tmp_path / 'x'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("forge_trl: config error: FORGE_TRL_PLUGINS")
