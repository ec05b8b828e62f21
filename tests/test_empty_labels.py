"""Rows whose response is truncated to zero tokens are dropped and counted, and the loss stays finite."""

import json
import logging
import math

import pytest
from conftest import train_losses

from forge_trl.commands.compose import compose
from forge_trl.models.run_info import read_run_info
from forge_trl.train import run

LONG_PROMPT = "the sky is blue and the grass is green " * 12  # ~100 tokens, longer than data.max_length below


@pytest.mark.parametrize(
    "task, row",
    [
        ("sft", lambda i: {"prompt": f"What is {i} plus 1?", "response": str(i + 1)}),
        ("orpo", lambda i: {"prompt": f"What is {i} plus 1?", "chosen": str(i + 1), "rejected": str(i + 2)}),
    ],
)
def test_truncated_rows_are_dropped_and_counted(task, row, tmp_path, caplog):
    rows = [row(i) for i in range(12)]
    for i in (3, 7, 9):  # these prompts alone fill data.max_length, so their responses vanish
        rows[i]["prompt"] = LONG_PROMPT + rows[i]["prompt"]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    out = tmp_path / task
    with caplog.at_level(logging.WARNING):
        final = run(
            compose(
                [
                    f"task={task}",
                    f"output_dir={out}",
                    f"data.path={path}",
                    "data.max_length=40",
                    "task.max_steps=6",
                    "task.logging_steps=1",
                    "task.learning_rate=1e-3",
                    "task.per_device_train_batch_size=4",
                    "plot=false",
                ]
            )
        )
    assert "filtered 3 rows with empty labels" in caplog.text
    assert f"{path}:4" in caplog.text  # the first dropped row is named
    stats = read_run_info(final).data
    assert stats["filtered_empty"] == 3 and stats["train_rows"] == 9
    losses = train_losses(out)
    assert losses and all(math.isfinite(x) for x in losses)
