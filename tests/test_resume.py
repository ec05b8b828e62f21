"""Resume after SIGKILL: a run killed mid-training (or mid-save) and resumed with `resume=true` ends with the same
weights as a run that was never interrupted.

Every run here is a real `python -m forge_trl` process on the tiny model. The interrupted runs go through a small
driver that only slows each step (so that the kill lands mid-run, not after the last step) or kills the process
from inside a checkpoint save; neither touches the numbers. Weights are compared exactly: CPU, one thread, the same
seed, and transformers restores the data order (it skips the batches already seen) and the RNG states
(dropout) from the checkpoint. The tolerance below is only there to report a difference by its size.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file

from forge_trl.models.checkpoint import list_checkpoints, staging_dir
from forge_trl.trainers.callbacks import read_metrics

WEIGHT_TOLERANCE = 1e-6  # max |difference| allowed between resumed and uninterrupted final weights (expected: 0)
ADAPTER = "adapter_model.safetensors"

# Runs in the child process before forge's CLI. It never changes what is computed: it sleeps after each step, or
# SIGKILLs the process between writing a checkpoint's optimizer state and its trainer state.
DRIVER = r"""
import os, signal, sys, time
import transformers
from transformers.trainer_callback import CallbackHandler

pause = float(os.environ.get("FORGE_TEST_STEP_PAUSE", "0"))
if pause:
    step_end = CallbackHandler.on_step_end
    def slow_step_end(self, *args, **kwargs):
        time.sleep(pause)
        return step_end(self, *args, **kwargs)
    CallbackHandler.on_step_end = slow_step_end

kill_at = int(os.environ.get("FORGE_TEST_KILL_IN_SAVE_AT", "0"))
if kill_at:
    save_rng = transformers.Trainer._save_rng_state
    def save_rng_then_die(self, output_dir):
        if self.state.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return save_rng(self, output_dir)
    transformers.Trainer._save_rng_state = save_rng_then_die

from forge_trl.commands.train import main
main(sys.argv[1:])
"""

# The SFT runs also carry a training schedule that is mid-way at every checkpoint: from step 2 a phase that trains
# the base FFN too (weights a LoRA checkpoint does not hold; forge saves them beside it), and a LoRA handoff that
# fades between steps 1 and 8. A resumed run must re-enter that phase and that scale at the checkpoint's step.
SCHEDULE = [
    "injection.phases=[{step:0,trainable:[attn_lora]},{step:2,trainable:[lora,attn_lora,base_ffn]}]",
    "injection.handoff.lora={start_step:1,end_step:8,end_scale:0.3}",
]
SFT = ["task=sft", "data=demo_sft", "task.max_steps=10", "task.save_steps=3", "task.learning_rate=1e-3", *SCHEDULE]
DPO = ["task=dpo", "data=demo_preference", "task.max_steps=8", "task.save_steps=3", "task.learning_rate=1e-3"]
COMMON = ["task.per_device_train_batch_size=2", "task.logging_steps=1", "plot=false", "seed=7", "data.max_rows=64"]


def child_env(**extra: str) -> dict:
    # One thread: the same arithmetic in every process, and no fight over the machine's two cores.
    return {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


def forge(out: Path, *overrides: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "forge_trl", f"output_dir={out}", *COMMON, *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=child_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def driven(out: Path, *overrides: str, **env: str) -> subprocess.Popen:
    driver = out.parent / "driver.py"
    driver.write_text(DRIVER, encoding="utf-8")
    return subprocess.Popen(
        [sys.executable, str(driver), f"output_dir={out}", *COMMON, *overrides],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(**env),
    )


def kill_after_first_checkpoint(out: Path, *overrides: str) -> Path:
    """Start a slowed run, SIGKILL it as soon as a complete checkpoint exists; return that checkpoint."""
    proc = driven(out, *overrides, FORGE_TEST_STEP_PAUSE="0.3")
    deadline = time.monotonic() + 240
    try:
        while not list_checkpoints(out):
            assert proc.poll() is None, f"the run ended before its first checkpoint: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "final").exists(), "the kill came after the end of training"
    return list_checkpoints(out)[-1]


def max_difference(a: Path, b: Path, name: str = ADAPTER) -> float:
    left, right = load_file(str(a / name)), load_file(str(b / name))
    assert left.keys() == right.keys()
    return max(float((left[k].double() - right[k].double()).abs().max()) for k in left)


def losses_by_step(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(out) if "loss" in r}


def assert_same_run(resumed: Path, reference: Path, resumed_from: Path) -> None:
    assert max_difference(resumed / "final", reference / "final") <= WEIGHT_TOLERANCE
    # The run did train after resuming: its final weights moved away from the checkpoint's.
    assert max_difference(resumed / "final", resumed_from) > 1e-4
    # Each step after the checkpoint saw the same batch with the same dropout: identical losses, and
    # metrics.jsonl covers the whole run once.
    ours, theirs = losses_by_step(resumed), losses_by_step(reference)
    assert sorted(ours) == sorted(theirs)
    assert ours == pytest.approx(theirs, abs=1e-6)


@pytest.fixture(scope="module")
def sft_reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sft-reference") / "run"
    forge(out, *SFT)
    return out


def handoff_scales(out: Path) -> dict[int, float]:
    return {r["step"]: r["handoff/lora_scale"] for r in read_metrics(out) if "loss" in r}


def test_sft_killed_mid_run_resumes_to_the_same_weights_phase_and_handoff(sft_reference, tmp_path):
    out = tmp_path / "run"
    checkpoint = kill_after_first_checkpoint(out, *SFT)
    resumed_from = shutil.copytree(checkpoint, tmp_path / "resumed-from")  # rotation may delete it later
    assert (resumed_from / "forge_trainable.safetensors").is_file()
    result = forge(out, *SFT, "resume=true")
    assert f"resuming from {checkpoint}" in result.stdout + result.stderr
    assert_same_run(out, sft_reference, resumed_from)
    assert handoff_scales(out) == pytest.approx(handoff_scales(sft_reference), abs=1e-12)


# Slow: the SFT and PPO kill-and-resume tests (and the FSDP2 one in test_scale_out.py) cover the same path.
@pytest.mark.slow
def test_dpo_killed_mid_run_resumes_to_the_same_weights(tmp_path):
    reference = tmp_path / "reference"
    forge(reference, *DPO)
    out = tmp_path / "run"
    checkpoint = kill_after_first_checkpoint(out, *DPO)
    resumed_from = shutil.copytree(checkpoint, tmp_path / "resumed-from")
    forge(out, *DPO, "resume=true")
    assert_same_run(out, reference, resumed_from)


def test_kill_during_a_checkpoint_save_keeps_the_previous_checkpoint(sft_reference, tmp_path):
    out = tmp_path / "run"
    proc = driven(out, *SFT, FORGE_TEST_KILL_IN_SAVE_AT="6")
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, stderr[-3000:]
    # The save of step 6 had written weights and optimizer state when the process died; none of it is visible
    # as a checkpoint, and checkpoint-3 is untouched (rotation runs only after a save completes).
    assert [p.name for p in list_checkpoints(out, complete_only=False)] == ["checkpoint-3"]
    staged = staging_dir(out) / "checkpoint-6"
    assert (staged / ADAPTER).is_file() and not (staged / "trainer_state.json").exists()
    assert not (out / "final").exists()

    # The previous checkpoint still loads on its own: safetensors weights, trainer state at step 3.
    previous = out / "checkpoint-3"
    assert all(torch.isfinite(t).all() for t in load_file(str(previous / ADAPTER)).values())
    assert '"global_step": 3' in (previous / "trainer_state.json").read_text()
    resumed_from = shutil.copytree(previous, tmp_path / "resumed-from")

    result = forge(out, *SFT, "resume=true")
    assert f"resuming from {out / 'checkpoint-3'}" in result.stdout + result.stderr
    assert "whose writing was interrupted" in result.stdout + result.stderr
    assert not staging_dir(out).exists()
    assert_same_run(out, sft_reference, resumed_from)


@pytest.fixture(scope="module")
def ppo_chain(tmp_path_factory):
    """A short SFT -> RM chain for the policy and the reward model (in this process: cheap once TRL is loaded)."""
    from tests.injection_support import train_in_process

    root = tmp_path_factory.mktemp("ppo-resume-chain")
    sft, _, _ = train_in_process(root / "sft", "task=sft", "data=demo_sft", "task.learning_rate=1e-3", steps=2)
    rm, _, _ = train_in_process(root / "rm", "task=rm", "data=demo_preference", f"model.name_or_path={sft}", steps=1)
    return sft, rm


@pytest.mark.slow  # PPO resume itself is in make test: tests/test_ppo.py::test_ppo_resume_from_a_checkpoint_...
def test_ppo_killed_mid_run_resumes_to_the_same_weights(ppo_chain, tmp_path):
    sft, rm = ppo_chain
    ppo = [
        "task=ppo",
        f"model.name_or_path={sft}",
        f"task.reward_model.checkpoint_path={rm}",
        "task.max_steps=6",
        "task.save_steps=2",
        "task.response_length=4",
        "task.per_device_train_batch_size=4",
        "task.learning_rate=1e-3",
    ]
    reference = tmp_path / "reference"
    forge(reference, *ppo)
    out = tmp_path / "run"
    checkpoint = kill_after_first_checkpoint(out, *ppo)
    result = forge(out, *ppo, "resume=true")
    assert f"resuming from {checkpoint}" in result.stdout + result.stderr
    assert max_difference(out / "final", reference / "final") <= WEIGHT_TOLERANCE
    # Rollouts after the resume sampled the same responses (RNG restored): same scores, step by step; the steps
    # after the checkpoint were logged by the resumed process (the killed one's later lines are dropped).
    scores = {r["step"]: r["objective/scores"] for r in read_metrics(out) if "objective/scores" in r}
    expected = {r["step"]: r["objective/scores"] for r in read_metrics(reference) if "objective/scores" in r}
    assert scores == pytest.approx(expected, abs=1e-6)
    assert max(scores) == 6
