"""forge_run.json as RunInfo: round trip, reading the previous format, refusing a newer one, and the reward
model an RL stage records and the bench scores it with."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from injection_support import train_in_process

from forge_trl.config.bench import BenchConfig
from forge_trl.errors import ModelError
from forge_trl.models.loading import resolve_source
from forge_trl.models.run_info import FORMAT_VERSION, RUN_INFO_FILE, RunInfo, read_run_info, write_run_info


def full_run_info() -> RunInfo:
    """Every field set to something other than its default."""
    return RunInfo(
        format_version=FORMAT_VERSION,
        created="2024-05-06T07:08:09",
        task="ppo",
        head="causal_lm",
        base_model="forge-tiny",
        parent="/runs/sft/final",
        injection={"name": "dense_lora", "r": 4, "target_keywords": ["q_proj"]},
        model={"name_or_path": "/runs/sft/final", "dtype": "auto"},
        precision="fp32",
        step=12,
        trainable_parameters=4096,
        metrics={"train_loss": 1.5, "last_loss": 1.25},
        data={"train_path": "/data/prompts.jsonl", "train_rows": 32, "rows_read": 33, "filtered_empty": 1},
        reward_model="/runs/rm/final",
        versions={"forge_trl": "9.9.9", "torch": "2.0"},
    )


def version_1_file(directory: Path, task: str, **changes) -> Path:
    """forge_run.json as the previous release wrote it: format_version 1, no reward_model."""
    directory.mkdir(parents=True, exist_ok=True)
    info = {
        "format_version": 1,
        "created": "2024-01-02T03:04:05",
        "task": task,
        "head": "causal_lm",
        "base_model": "forge-tiny",
        "parent": None,
        "injection": {"name": "dense_lora", "r": 8},
        "model": {"name_or_path": "forge-tiny"},
        "precision": "fp32",
        "step": 3,
        "trainable_parameters": 1024,
        "metrics": {"train_loss": 2.0},
        "data": {"train_rows": 16},
        "versions": {"forge_trl": "0.0.9"},
        **changes,
    }
    (directory / RUN_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return directory


def test_write_then_read_round_trips_every_field(tmp_path):
    info = full_run_info()
    write_run_info(tmp_path, info)
    assert read_run_info(tmp_path) == info
    assert list(json.loads((tmp_path / RUN_INFO_FILE).read_text())) == [f.name for f in fields(RunInfo)]


def test_a_directory_without_forge_run_json_is_not_a_forge_checkpoint(tmp_path):
    assert read_run_info(tmp_path) is None


def test_a_version_1_ppo_checkpoint_reads_with_its_reward_model_from_the_resolved_config(tmp_path, monkeypatch):
    final = version_1_file(tmp_path / "ppo" / "final", "ppo")
    # The previous release recorded the path as given on the command line, here relative to where it ran.
    (final / "resolved_config.yaml").write_text(
        yaml.safe_dump({"task": {"name": "ppo", "reward_model": {"checkpoint_path": "runs/rm/final"}}})
    )
    monkeypatch.chdir(tmp_path)
    info = read_run_info(final)
    assert info.format_version == 1 and info.task == "ppo" and info.step == 3
    assert info.injection == {"name": "dense_lora", "r": 8} and info.versions == {"forge_trl": "0.0.9"}
    assert info.reward_model == str(tmp_path / "runs" / "rm" / "final")


def test_a_version_1_checkpoint_of_another_task_has_no_reward_model(tmp_path):
    final = version_1_file(tmp_path / "final", "sft")
    (final / "resolved_config.yaml").write_text(yaml.safe_dump({"task": {"name": "sft"}}))
    info = read_run_info(final)
    assert info.reward_model is None and asdict(info)["metrics"] == {"train_loss": 2.0}


def test_a_newer_format_version_is_refused_on_one_line(tmp_path):
    final = version_1_file(tmp_path / "final", "sft", format_version=FORMAT_VERSION + 1)
    with pytest.raises(ModelError) as refused:
        resolve_source(str(final))
    message = refused.value.one_line()
    assert "\n" not in message and str(final / RUN_INFO_FILE) in message
    assert f"format_version {FORMAT_VERSION + 1} is newer than this forge_trl reads" in message


@pytest.mark.parametrize(
    "text, expected",
    [
        ("{not json", "is not valid JSON"),
        ('["a list"]', "expected a JSON object, got list"),
        (
            json.dumps({"format_version": 2, "task": "sft", "head": "causal_lm", "injection": {"name": "full"}}),
            "key 'base_model' must be a string (missing)",
        ),
        (
            json.dumps(
                {
                    "format_version": "2",
                    "task": "sft",
                    "head": "causal_lm",
                    "base_model": "forge-tiny",
                    "injection": {"name": "full"},
                }
            ),
            "key 'format_version' must be an integer (got str)",
        ),
    ],
)
def test_a_broken_forge_run_json_is_a_model_error_naming_the_file(tmp_path, text, expected):
    (tmp_path / RUN_INFO_FILE).write_text(text)
    with pytest.raises(ModelError, match="forge_run.json") as refused:
        read_run_info(tmp_path)
    assert expected in str(refused.value)


# ----- a real RL stage ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def policy_and_reward_model(tmp_path_factory):
    """A briefly trained SFT policy and a reward model on top of it, as in test_bench.py."""
    root = tmp_path_factory.mktemp("run_info")
    sft, _, _ = train_in_process(root / "sft", "task=sft", "data=demo_sft", "data.max_rows=16", steps=2)
    rm, _, _ = train_in_process(
        root / "rm", "task=rm", "data=demo_preference", "data.max_rows=16", f"model.name_or_path={sft}", steps=2
    )
    return sft, rm


def test_an_rl_stage_records_its_reward_model_and_the_bench_scores_with_it(policy_and_reward_model, tmp_path):
    from forge_trl.bench.runner import run_bench

    sft, rm = policy_and_reward_model
    # Given relative to where the CLI runs; recorded as an absolute path.
    relative_rm = os.path.relpath(rm, tmp_path)
    result = run_cli(
        "task=grpo",
        f"model.name_or_path={sft}",
        f"task.reward_model.checkpoint_path={relative_rm}",
        "data.max_rows=8",
        "task.max_steps=1",
        "task.per_device_train_batch_size=4",
        "task.max_completion_length=8",
        f"output_dir={tmp_path / 'grpo'}",
        "plot=false",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    final = tmp_path / "grpo" / "final"
    info = read_run_info(final)
    assert info.format_version == FORMAT_VERSION and info.task == "grpo"
    assert info.reward_model == str(rm.resolve()) and info.parent == str(sft.resolve())

    # The bench takes the reward model from forge_run.json alone: a resolved config naming another is ignored.
    resolved = final / "resolved_config.yaml"
    text = resolved.read_text()
    assert f"checkpoint_path: {relative_rm}" in text
    resolved.write_text(text.replace(relative_rm, str(tmp_path / "no-such-rm")))
    cfg = BenchConfig(max_rows=2, max_new_tokens=4, plots=False)
    row = run_bench([str(final)], cfg, tmp_path / "bench")["checkpoints"][0]
    assert row["kind"] == "policy" and row["task"] == "grpo"
    assert len(row["scores"]["rm"]) == 2 and "rm_score_gain" in row  # scored next to its parent, the SFT policy
