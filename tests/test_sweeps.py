"""Hydra multirun sweeps: one directory per job, a bench per job, a failed job that loses nothing, sweep_report,
and Optuna search returning the bench objective."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import run_cli

from forge_trl.commands.sweep_report import report

# A few optimizer steps per job on a few rows, and a small bench, so that a sweep costs seconds per job.
QUICK = [
    "data=demo_preference",
    "data.max_rows=8",
    "task.max_steps=2",
    "task.per_device_train_batch_size=2",
    "bench.max_rows=4",
    "bench.max_new_tokens=4",
    "plot=false",
]


def test_beta_sweep_runs_each_job_in_its_own_dir_and_one_bad_job_loses_nothing(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("-m", "task=dpo", "task.beta=0.05,0.1,-1,0.3", *QUICK, f"hydra.sweep.dir={sweep}", timeout=600)
    # The bad value fails its own job (exit 1 at the end, with the reason); the three others finish.
    assert result.returncode == 1, result.stderr[-3000:]
    assert "1 sweep job(s) failed" in result.stderr and "task.beta: must be positive" in result.stderr
    finished = sorted(p.parent.parent.name for p in sweep.glob("*/final/forge_run.json"))
    assert finished == ["0", "1", "3"]
    betas = {
        yaml.safe_load((sweep / j / "final" / "resolved_config.yaml").read_text())["task"]["beta"] for j in finished
    }
    assert betas == {0.05, 0.1, 0.3}
    for job in finished:  # each job was benched on held-out data
        row = json.loads((sweep / job / "bench.json").read_text())["checkpoints"][0]
        assert 0.0 <= row["preference_accuracy"] <= 1.0

    summary = report(sweep)
    assert summary["swept"] == ["task.beta"]
    rows = {row["params"]["task.beta"]: row for row in summary["jobs"]}
    assert set(rows) == {"0.05", "0.1", "-1", "0.3"}
    assert rows["-1"]["status"] == "failed" and "must be positive" in rows["-1"]["error"]
    for beta in ("0.05", "0.1", "0.3"):
        assert rows[beta]["status"] == "ok" and rows[beta]["preference_accuracy"] is not None
    table = (sweep / "sweep_report.md").read_text()
    assert table.count("| ok |") == 3 and "failed: forge_trl: config error" in table
    assert (sweep / "sweep_report.png").read_bytes()[:4] == b"\x89PNG"


def test_sweep_report_cli_refuses_a_directory_that_is_not_a_sweep(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    result = subprocess.run(
        [sys.executable, "-m", "forge_trl.sweep_report", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "no job directories" in result.stderr


# Slow: the grid sweep test above runs the same job machinery; this one adds the Optuna sweeper.
@pytest.mark.slow
def test_optuna_sweep_returns_the_bench_objective_of_each_trial(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "optuna"
    result = run_cli(
        "-m",
        "task=dpo",
        "hydra/sweeper=dpo_optuna",
        "hydra.sweeper.n_trials=2",
        "bench.objective=preference_accuracy",
        *QUICK,
        f"hydra.sweep.dir={sweep}",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = {}
    for job in ("0", "1"):
        cfg = yaml.safe_load((sweep / job / "final" / "resolved_config.yaml").read_text())
        value = json.loads((sweep / job / "bench.json").read_text())["checkpoints"][0]["preference_accuracy"]
        trials[(cfg["task"]["beta"], cfg["task"]["learning_rate"])] = value
        assert 0.01 <= cfg["task"]["beta"] <= 1.0 and 1e-5 <= cfg["task"]["learning_rate"] <= 1e-3
    assert best["best_value"] == max(trials.values())
    assert trials[(best["best_params"]["task.beta"], best["best_params"]["task.learning_rate"])] == best["best_value"]
    assert report(sweep)["optuna"]["best_value"] == best["best_value"]
