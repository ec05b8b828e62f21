"""FSDP2 scale-out on 2 CPU processes (gloo): `accelerate launch --config_file conf/accelerate/fsdp2.yaml`.

What each test proves:
- FSDP2 trains exactly like one process with twice the gradient accumulation (SFT, DPO, full-parameter pretrain):
  the same loss and gradient norm at every step and the same final/ weights, within a tolerance shown to catch a
  one-process run that sees only half the examples. Rank r's micro-batch is micro-batch r of the one-process
  step; FSDP2 reduce-scatters the mean gradient, so only the summation order differs.
- final/ is written from the gathered (unsharded) weights in the one-process format: it reloads in one process,
  and its logits equal the one-process run's (routed injections too).
- Checkpoints are sharded DCP directories; resuming one continues the run exactly (bit-equal final/), a killed
  job resumes to the uninterrupted result, and a launch with another process count is refused in one line.
- A rank that dies stops the other within seconds with one line; a 2-node loopback launch trains like 1 node.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from forge_trl.commands.compose import compose
from forge_trl.errors import ConfigError
from forge_trl.models.checkpoint import list_checkpoints
from forge_trl.models.run_info import read_run_info
from forge_trl.tasks import TASKS, get_task
from forge_trl.train import run
from forge_trl.trainers.callbacks import read_metrics
from tests.launch_support import (
    REPO,
    STEPS,
    accelerate_command,
    assert_close_curves,
    failure_output,
    free_port,
    kill_job,
    launch,
    launch_env,
    one_process,
    per_step,
    weight_difference,
    weights,
)

# fp32 on CPU; only the order of summation differs between the runs: the loss agrees to ~1e-7 relative, the
# final weights to ~5e-5 per tensor (Adam's normalisation magnifies rounding in near-zero gradients). A wrong data
# split or unsynchronised gradients moves the first loss by ~1e-2 and the weights by ~0.7 (the controls below).
LOSS_RTOL = 1e-4
WEIGHT_RTOL = 1e-3
# The SFT runs carry a schedule that changes mid-run: a phase that trains only the attention LoRA, then from step 2
# the FFN LoRA too, and a LoRA handoff fading from step 1. Under FSDP2 the parameters are replaced by their shards
# after the schedule is built. (Phases that train base_ffn train and write final/ correctly under FSDP2, but a
# sharded checkpoint does not hold those weights yet; resuming one is refused, see train.py.)
SFT = (
    "task=sft",
    "injection.phases=[{step:0,trainable:[attn_lora]},{step:2,trainable:[lora,attn_lora]}]",
    "injection.handoff.lora={start_step:1,end_step:8,end_scale:0.3}",
)


@pytest.fixture(scope="module")
def fsdp2_sft(tmp_path_factory):
    """One 2-process FSDP2 SFT run with a sharded checkpoint at step 2, shared by the tests below."""
    out = tmp_path_factory.mktemp("fsdp2_sft") / "run"
    proc = launch("fsdp2", out, *SFT, "task.save_steps=2")
    assert proc.returncode == 0, failure_output(proc)
    return out, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def one_process_sft(tmp_path_factory):
    out = tmp_path_factory.mktemp("one_sft") / "run"
    return out, one_process(out, *SFT, "task.gradient_accumulation_steps=2")


def test_fsdp2_sft_equals_one_process_with_double_accumulation(fsdp2_sft, one_process_sft, tmp_path):
    two_dir, output = fsdp2_sft
    one_dir, one = one_process_sft
    two = read_metrics(two_dir)

    assert_close_curves(two, one, "loss", LOSS_RTOL)
    assert_close_curves(two, one, "grad_norm", 1e-3)
    assert per_step(two, "epoch") == pytest.approx(per_step(one, "epoch"))
    assert per_step(two, "handoff/lora_scale") == per_step(one, "handoff/lora_scale")
    difference = weight_difference(weights(two_dir / "final"), weights(one_dir / "final"))
    assert difference <= WEIGHT_RTOL, difference

    # It really was sharded: the weights were gathered for final/, which says how it was launched.
    assert "FSDP2: gathered the weights of 2 processes" in output, output[-3000:]
    assert read_run_info(two_dir / "final").launch == {"processes": 2, "sharded": True}
    assert output.count("wrote ") == 1  # rank 0 alone wrote final/
    # The intermediate checkpoint is a DCP directory, one shard file per process.
    shards = sorted(p.name for p in (two_dir / "checkpoint-2" / "pytorch_model_fsdp_0").glob("*.distcp"))
    assert len(shards) == 2, shards

    # Control for both tolerances: one process without accumulation sees half of each step's examples.
    control_dir = tmp_path / "control"
    control = per_step(one_process(control_dir, *SFT), "loss")
    assert abs(per_step(two, "loss")[1] - control[1]) / abs(control[1]) > 100 * LOSS_RTOL
    assert weight_difference(weights(control_dir / "final"), weights(one_dir / "final")) > 10 * WEIGHT_RTOL


def test_fsdp2_dpo_equals_one_process_with_double_accumulation(tmp_path):
    """DPO's reference is the disabled adapter of the same sharded model."""
    proc = launch("fsdp2", tmp_path / "two", "task=dpo")
    assert proc.returncode == 0, failure_output(proc)
    one = one_process(tmp_path / "one", "task=dpo", "task.gradient_accumulation_steps=2")
    two = read_metrics(tmp_path / "two")
    assert_close_curves(two, one, "loss", LOSS_RTOL)
    # The reference stays right while sharded: the first step's implicit rewards are exactly zero in both runs.
    assert per_step(two, "rewards/chosen")[1] == pytest.approx(0.0, abs=1e-6)
    assert_close_curves(two, one, "rewards/margins", 1e-2)
    assert weight_difference(weights(tmp_path / "two" / "final"), weights(tmp_path / "one" / "final")) <= WEIGHT_RTOL


def test_fsdp2_resume_from_a_sharded_checkpoint_continues_exactly(fsdp2_sft, tmp_path):
    uninterrupted, _ = fsdp2_sft
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(uninterrupted / "checkpoint-2", resumed / "checkpoint-2")
    shutil.copy(uninterrupted / "metrics.jsonl", resumed / "metrics.jsonl")
    proc = launch("fsdp2", resumed, *SFT, "task.save_steps=2", "resume=true")
    assert proc.returncode == 0, failure_output(proc)
    assert "Model loaded from" in proc.stdout + proc.stderr  # the DCP shards were read back
    a, b = weights(resumed / "final"), weights(uninterrupted / "final")
    assert all(torch.equal(a[k], b[k]) for k in b), weight_difference(a, b)


def test_resuming_a_sharded_checkpoint_with_another_process_count_is_refused(fsdp2_sft, tmp_path):
    checkpoint = fsdp2_sft[0] / "checkpoint-2"
    with pytest.raises(ConfigError, match="written by 2 process"):
        run(compose([f"output_dir={tmp_path}", *SFT, f"resume={checkpoint}", "precision=fp32"]))


@pytest.mark.slow
def test_fsdp2_full_parameter_pretrain_equals_one_process(tmp_path):
    overrides = ("task=pretrain", "task.full_parameter=true", "task.learning_rate=1e-4")
    proc = launch("fsdp2", tmp_path / "two", *overrides)
    assert proc.returncode == 0, failure_output(proc)
    one = one_process(tmp_path / "one", *overrides, "task.gradient_accumulation_steps=2")
    assert_close_curves(read_metrics(tmp_path / "two"), one, "loss", LOSS_RTOL)
    a, b = weights(tmp_path / "two" / "final"), weights(tmp_path / "one" / "final")
    assert len(b) > 10  # the whole model, not an adapter
    assert weight_difference(a, b) <= WEIGHT_RTOL


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rm") / "run"
    one_process(out, "task=rm", "task.max_steps=2")
    return out / "final"


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS.names())
def test_every_task_trains_under_fsdp2_and_writes_a_loadable_final(tmp_path, task, request):
    """Generated from the task registry: a new task is covered with no edit here."""
    overrides = [f"task={task}", "task.max_steps=2"]
    if "reward_model" in {f.name for f in dataclasses.fields(get_task(task).schema)}:
        overrides.append(f"task.reward_model.checkpoint_path={request.getfixturevalue('reward_model')}")
    proc = launch("fsdp2", tmp_path / "run", *overrides)
    assert proc.returncode == 0, failure_output(proc)
    info = read_run_info(tmp_path / "run" / "final")
    assert info.launch == {"processes": 2, "sharded": True} and info.step == 2
    head = get_task(task)().head
    _logits(tmp_path / "run" / "final", head=head)  # reloads in one process


def _logits(final: Path, head: str = "causal_lm") -> torch.Tensor:
    from forge_trl.models.loading import load_for_inference

    model, tokenizer, _ = load_for_inference(str(final), head=head, precision="fp32")
    ids = tokenizer("The tiny model reads a sentence.", return_tensors="pt").input_ids
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize(
    "injection,model",
    [
        pytest.param("moe_expert_lora", "tiny", marks=pytest.mark.slow),
        pytest.param("native_moe_expert_lora", "tiny_moe", marks=pytest.mark.slow),
    ],
)
def test_fsdp2_routed_injection_trains_and_reloads_with_equal_logits(tmp_path, injection, model):
    overrides = ("task=sft", f"injection={injection}", f"model={model}")
    proc = launch("fsdp2", tmp_path / "two", *overrides)
    assert proc.returncode == 0, failure_output(proc)
    one = one_process(tmp_path / "one", *overrides, "task.gradient_accumulation_steps=2")
    two = read_metrics(tmp_path / "two")
    assert_close_curves(two, one, "loss", LOSS_RTOL)
    # Routing statistics are summed over the processes: the logged values describe the global batch.
    for key in ("moe/router_entropy", "moe/max_expert_share"):
        assert_close_curves(two, one, key, 1e-4)
    reloaded, reference = _logits(tmp_path / "two" / "final"), _logits(tmp_path / "one" / "final")
    assert torch.allclose(reloaded, reference, rtol=1e-4, atol=1e-5), float((reloaded - reference).abs().max())


# ------------------------------------------------------------------------------------------- failures
def _rank_process(launcher: subprocess.Popen, rank: int):
    import psutil

    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "forge_trl" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


def _start(config: str, output_dir: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        accelerate_command(config, output_dir, *overrides),
        cwd=REPO,
        env=launch_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the whole job can be killed at once
    )


def _wait_for(condition, launcher: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert launcher.poll() is None, launcher.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.1)


def _logged_steps(output_dir: Path) -> int:
    metrics = output_dir / "metrics.jsonl"
    return metrics.read_text().count("\n") if metrics.exists() else 0


def _signal_rank_one(out: Path, sig: signal.Signals, timeout_s: int) -> tuple[subprocess.Popen, str, float]:
    """Start a long 2-process run, send `sig` to rank 1 once training is under way, and wait for the launch to
    end. Returns the launcher, rank 0's one-line report, and the seconds from the signal to the launch's end."""
    launcher = _start("cpu_2proc", out, "task=sft", "task.max_steps=2000", f"distributed_timeout_s={timeout_s}")
    try:
        _wait_for(lambda: _logged_steps(out) >= 2, launcher)
        victim = _rank_process(launcher, 1)
        assert victim is not None
        sent_at = time.monotonic()
        victim.send_signal(sig)
        output, _ = launcher.communicate(timeout=120)
        waited = time.monotonic() - sent_at
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode != 0
    # One line from the survivor (after the progress bar's carriage return), and no traceback from it: the only
    # traceback is the launcher's own report naming the failed rank.
    survivor = re.findall(r"forge_trl: rank 0: [^\r\n]*", output)
    assert len(survivor) == 1, output[-3000:]
    assert "resume=true" in survivor[0]
    assert output.count("Traceback") <= 1 and "[rank0]: Traceback" not in output, output[-3000:]
    return launcher, survivor[0], waited


def test_a_killed_rank_stops_the_other_with_one_line_within_seconds(tmp_path):
    _, _, waited = _signal_rank_one(tmp_path / "run", signal.SIGKILL, timeout_s=60)
    assert waited < 30, waited  # noticed by the closed connection, long before the collective timeout
    assert not (tmp_path / "run" / "final").exists()


@pytest.mark.slow
def test_a_hung_rank_stops_the_other_after_the_collective_timeout(tmp_path):
    """A peer that stops answering (SIGSTOP) is not noticed by a closed socket; distributed_timeout_s bounds it.
    The launcher then stops the hung process too (SIGTERM, and SIGKILL after its 30 s grace period)."""
    _, report, _ = _signal_rank_one(tmp_path / "run", signal.SIGSTOP, timeout_s=10)
    assert "Timed out" in report


@pytest.mark.slow
def test_killing_the_whole_job_mid_run_then_resuming_equals_an_uninterrupted_run(tmp_path):
    steps = (*SFT, "task.max_steps=40", "task.save_steps=4", "task.save_total_limit=2")
    uninterrupted = tmp_path / "uninterrupted"
    proc = launch("fsdp2", uninterrupted, *steps)
    assert proc.returncode == 0, failure_output(proc)

    out = tmp_path / "killed"
    launcher = _start("fsdp2", out, *steps)
    try:
        # The first complete checkpoint (step 4), with most of the run still to go.
        _wait_for(lambda: bool(list_checkpoints(out)), launcher)
    finally:
        kill_job(launcher)  # every process of the job at once, wherever it is
    assert not (out / "final").exists(), "the job finished before it could be killed"

    proc = launch("fsdp2", out, *steps, "resume=true")
    assert proc.returncode == 0, failure_output(proc)
    a, b = weights(out / "final"), weights(uninterrupted / "final")
    assert all(torch.equal(a[k], b[k]) for k in b), weight_difference(a, b)
    assert per_step(read_metrics(out), "loss") == per_step(read_metrics(uninterrupted), "loss")


# ------------------------------------------------------------------------------------------- multi-node
@pytest.mark.slow  # the one-node FSDP2 equality tests above run in make test
def test_two_node_loopback_launch_trains_like_one_process(tmp_path, one_process_sft):
    """2 machines x 1 process on 127.0.0.1 (conf/accelerate/multinode.yaml): the same launch command a cluster
    would run on each node, with --machine_rank 0 and 1."""
    out = tmp_path / "two_nodes"
    port = str(free_port())
    nodes = [
        subprocess.Popen(
            accelerate_command(
                "multinode",
                out,
                *SFT,
                launch_args=(
                    "--num_machines=2",
                    "--num_processes=2",
                    f"--machine_rank={rank}",
                    "--main_process_ip=127.0.0.1",
                    f"--main_process_port={port}",
                ),
            ),
            cwd=REPO,
            env=launch_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    for node, output in zip(nodes, outputs):
        assert node.returncode == 0, output[-3000:]
    one_dir, one = one_process_sft
    assert_close_curves(read_metrics(out), one, "loss", LOSS_RTOL, steps=STEPS)
    assert weight_difference(weights(out / "final"), weights(one_dir / "final")) <= WEIGHT_RTOL
    assert read_run_info(out / "final").launch == {"processes": 2, "sharded": True}
