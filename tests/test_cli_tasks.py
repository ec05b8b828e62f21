"""Each task runs from the command line on the tiny model: the loss is finite and falls, final/ is complete."""

import math

import pytest
from conftest import run_cli, train_losses

from forge_trl.models.run_info import read_run_info

# A short, aggressive schedule on a small slice of the demo data, so a dozen steps show the loss falling.
SHORT = [
    "task.max_steps=12",
    "task.logging_steps=1",
    "task.warmup_steps=0",
    "task.lr_scheduler_type=constant",
    "data.max_rows=16",
    "data.max_length=64",
    "plot=false",
]

CASES = {
    "pretrain": ["task.learning_rate=3e-3"],
    "sft": ["task.learning_rate=3e-3"],
    "dpo": ["task.learning_rate=1e-3"],
    "orpo": ["task.learning_rate=3e-3", "task.orpo_lambda=0.5"],
    "rm": ["task.learning_rate=3e-3"],
}


# SFT and DPO run in `make test`; the others train in-process in tests/test_contracts.py and here only in
# `make test-all` (each fresh process costs ~10 s of imports).
FAST = ("sft", "dpo")


@pytest.mark.parametrize("task", [pytest.param(t, marks=() if t in FAST else pytest.mark.slow) for t in sorted(CASES)])
def test_task_runs_from_cli_and_loss_falls(task, tmp_path):
    out = tmp_path / task
    result = run_cli(f"task={task}", f"output_dir={out}", *SHORT, *CASES[task], "task.per_device_train_batch_size=4")
    assert result.returncode == 0, result.stderr[-3000:]
    losses = train_losses(out)
    assert len(losses) == 12
    assert all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first, f"{task} loss did not fall: {losses}"

    final = out / "final"
    info = read_run_info(final)
    assert info.task == task and info.step == 12
    assert info.injection_name == ("full" if task == "pretrain" else "dense_lora")
    assert (final / "resolved_config.yaml").is_file() and (final / "tokenizer.json").is_file()
    weights = {p.name for p in final.glob("*.safetensors")}
    assert weights == ({"model.safetensors"} if task == "pretrain" else {"adapter_model.safetensors"})
    assert not list(final.glob("*.bin")) and not list(final.glob("*.pt"))
