"""forge's PPO on 2 CPU processes (gloo): `accelerate launch` with conf/accelerate/fsdp2.yaml (FSDP2) and
cpu_2proc.yaml (DDP), against one process with the doubled per-device batch over the same prompts.

What each test proves:
- The two processes hold the same trainable weights: a whole tensor (every one under DDP, the value head under
  FSDP2) is bit-equal on both, and under FSDP2 the adapter weights really are shards that together make up the
  gathered weights.
- With one minibatch per PPO epoch, one PPO step on 2 processes is the one-process step over the union batch: the
  gradient the optimizer gets at the first update, every logged statistic at every step and the trained weights
  match one process with `per_device_train_batch_size` doubled. A one-process run over half the prompts (a wrong
  data split) misses the gradient and the weights by far more than the tolerances. (Here every response runs to
  `response_length`: the random tiny model practically never samples its stop token, so both processes count
  as many tokens. That the losses' global token count makes unequal counts average right is checked in
  tests/test_ppo_math.py.)
- final/ is written once, in the one-process format, and holds the same adapter as the one-process run.
- A job killed with SIGKILL after a checkpoint resumes (`resume=true`) to bit-equal trainable weights.

Why equality is not bitwise across process counts: the two runs sum the same terms in another order (each process
sums its tokens, then the processes' sums are added), which moves gradients by ~1e-7 relative. Adam's first
updates are lr * g / |g|, so a gradient element that is itself only rounding noise (terms that cancel) can
change sign and move its weight by up to 2 * lr; the weights are therefore compared relative to how far training
moved them, with a looser tolerance than the gradients. Gradients and logged statistics are compared tightly.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from forge_trl.models.loading import load_for_inference
from forge_trl.models.run_info import read_run_info
from forge_trl.trainers.callbacks import read_metrics
from tests.injection_support import train_in_process
from tests.launch_support import REPO, kill_job, launch_command, launch_env
from tests.ppo_probe import GRADIENTS, INITIAL, WHOLE, probe_run
from tests.ppo_support import launch_module, synthetic_reward_model

PER_PROCESS = 2
COMMON = (
    "task=ppo",
    "overwrite=true",
    "plot=false",
    "precision=fp32",
    "injection.dropout=0",
    "task.response_length=4",
    "task.num_ppo_epochs=2",
    "task.learning_rate=3e-3",
    "task.lr_scheduler_type=constant",
    "task.warmup_steps=0",
    "task.logging_steps=1",
)
# Measured worst differences (2 processes vs 1, fp32 on CPU, the same under FSDP2 and DDP) in brackets; the
# controls (one process over half the prompts) in braces.
GRADIENT_RTOL = 1e-5  # of the largest gradient element [2.8e-7] {0.24}
METRIC_RTOL = 3e-5  # per logged value and step [3.8e-6, loss/policy_avg]
WEIGHT_RTOL = 1e-2  # of the largest change training made to a weight [6.8e-4] {1.7}
LOGITS_RTOL = 1e-4  # of final/'s largest logit [1.0e-6]
LOGGED = (  # every number PPO logs per step
    "loss",
    "objective/scores",
    "objective/kl",
    "objective/entropy",
    "loss/policy_avg",
    "loss/value_avg",
    "policy/clipfrac_avg",
    "val/clipfrac_avg",
    "policy/approxkl_avg",
    "policy/kl_coef",
    "val/response_length",
    "val/no_eos_share",
    "grad_norm",
    "episode",
)


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    """A reward model on the policy's base and injection (so PPO keeps one base model), with a random score head
    so that the reward depends on the response."""
    root = tmp_path_factory.mktemp("ppo-dist-rm")
    rm, _, _ = train_in_process(root / "rm", "task=rm", "data=demo_preference", "injection.dropout=0", steps=1)
    return synthetic_reward_model(rm, root / "synthetic_rm")


def ppo_overrides(output_dir: Path, reward_model: Path, steps: int, batch: int, *extra: str) -> list[str]:
    return [
        *COMMON,
        f"output_dir={output_dir}",
        f"task.reward_model.checkpoint_path={reward_model}",
        f"task.max_steps={steps}",
        f"task.per_device_train_batch_size={batch}",
        *extra,
    ]


def launch_probe(config: str, probe_dir: Path, overrides: list[str], timeout: int = 400):
    proc = launch_module(config, "tests.ppo_probe", str(probe_dir), *overrides, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


def one_process(probe_dir: Path, overrides: list[str]) -> Path:
    """The baseline in this process, on CPU even where a GPU is visible, with one thread like each launched
    process (on a busy 2-core machine a 2-thread run of the tiny model is several times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return probe_run(probe_dir, [*overrides, "+task.trl_args.use_cpu=true"])
    finally:
        torch.set_num_threads(threads)


def relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], scale: float | None = None) -> float:
    """The largest elementwise difference between two tensor dicts, over `scale` (default: b's largest entry)."""
    assert sorted(a) == sorted(b), sorted(set(a) ^ set(b))[:5]
    if scale is None:
        scale = max(float(t.abs().max()) for t in b.values())
    return max(float((a[k] - b[k]).abs().max()) for k in a) / scale


def per_step(output_dir: Path, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in read_metrics(output_dir) if key in r}


def assert_ranks_agree(probe_dir: Path, sharded: bool) -> None:
    """Both processes hold the same weights: whole tensors bit-equal, shards adding up to the gathered state."""
    held = [load_file(str(probe_dir / f"rank{r}.safetensors")) for r in (0, 1)]
    info = [json.loads((probe_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    gathered = load_file(str(probe_dir / WHOLE))
    assert info[0]["world_size"] == info[1]["world_size"] == 2
    shards = set(info[0]["shards"])
    if sharded:
        adapters = {n for n in gathered if ".lora_" in n}
        assert adapters and shards == adapters, sorted(adapters ^ shards)[:5]
    else:
        assert not shards
    for name, full in gathered.items():
        if name in shards:
            # FSDP2 shards dim 0; each process holds its own part, and they make up the whole tensor.
            assert held[0][name].numel() < full.numel(), name
            assert torch.equal(torch.cat([held[0][name], held[1][name]]), full), name
        else:
            assert torch.equal(held[0][name], held[1][name]), name
            assert torch.equal(held[0][name], full), name


@pytest.mark.parametrize(
    "config",
    ["fsdp2", pytest.param("cpu_2proc", marks=pytest.mark.slow)],
)
def test_two_processes_train_like_one_with_the_doubled_batch(config, reward_model, tmp_path):
    steps = 3
    two_out, two_probe = tmp_path / "two", tmp_path / "two-probe"
    output = launch_probe(config, two_probe, ppo_overrides(two_out, reward_model, steps, PER_PROCESS))
    one_out, one_probe = tmp_path / "one", tmp_path / "one-probe"
    one_final = one_process(one_probe, ppo_overrides(one_out, reward_model, steps, 2 * PER_PROCESS))

    assert_ranks_agree(two_probe, sharded=config == "fsdp2")

    # The first update's gradient (averaged over the processes, clipped by the global norm) is the one-process
    # gradient over the union batch.
    two_grads, one_grads = (load_file(str(p / GRADIENTS)) for p in (two_probe, one_probe))
    gradient_difference = relative(two_grads, one_grads)
    assert gradient_difference <= GRADIENT_RTOL, gradient_difference

    # Control: one process over half the prompts (rank 0's rows only) gets another gradient, by far more than
    # the tolerance, so a wrong data split or unsynchronised gradients cannot pass.
    half_probe = tmp_path / "half-probe"
    one_process(half_probe, ppo_overrides(tmp_path / "half", reward_model, steps, PER_PROCESS))
    control = relative(load_file(str(half_probe / GRADIENTS)), one_grads)
    assert control > 100 * GRADIENT_RTOL, control

    # Every logged statistic is the global one, at every step.
    for key in LOGGED:
        two, one = per_step(two_out, key), per_step(one_out, key)
        assert sorted(two) == sorted(one) == list(range(1, steps + 1)), (key, two, one)
        worst = max(abs(two[s] - one[s]) / max(abs(one[s]), 1e-6) for s in one)
        assert worst <= METRIC_RTOL, (key, two, one)

    # The trained weights, relative to how far training moved them (see the module docstring).
    start = load_file(str(one_probe / INITIAL))
    assert relative(load_file(str(two_probe / INITIAL)), start) == 0
    two_weights, one_weights = (load_file(str(p / WHOLE)) for p in (two_probe, one_probe))
    moved = max(float((one_weights[k] - start[k]).abs().max()) for k in start)
    weight_difference = relative(two_weights, one_weights, scale=moved)
    assert weight_difference <= WEIGHT_RTOL, weight_difference
    weight_control = relative(load_file(str(half_probe / WHOLE)), one_weights, scale=moved)
    assert weight_control > 10 * WEIGHT_RTOL, weight_control

    # final/: written once, by process 0, from the gathered weights (bit-equal to the policy adapter the processes
    # trained), in the one-process format: the same files and names, and it loads and runs in one process.
    two_final = two_out / "final"
    assert output.count("wrote ") == 1, output[-3000:]
    assert read_run_info(two_final).step == steps
    assert sorted(p.name for p in two_final.iterdir()) == sorted(p.name for p in one_final.iterdir())
    adapter = load_file(str(two_final / "adapter_model.safetensors"))
    assert sorted(adapter) == sorted(load_file(str(one_final / "adapter_model.safetensors")))
    policy = {n.replace(".default.", "."): t for n, t in two_weights.items() if ".default." in n}
    assert sorted(adapter) == sorted(policy)
    for name, tensor in adapter.items():
        assert torch.equal(tensor, policy[name]), name
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11]])
    logits = [load_for_inference(str(final))[0](input_ids=ids).logits for final in (two_final, one_final)]
    logits_difference = float((logits[0] - logits[1]).abs().max() / logits[1].abs().max())
    assert logits_difference <= LOGITS_RTOL, logits_difference


@pytest.mark.slow
def test_killed_sharded_ppo_resumes_to_the_uninterrupted_weights(reward_model, tmp_path):
    steps, save_steps = 6, 2
    extra = (
        f"task.save_steps={save_steps}",
        # Two minibatches per PPO epoch: the resumed processes must also restore their RNG (minibatch shuffling).
        "task.num_mini_batches=2",
        # An injection setting the reward model was not trained with: reward and value then live on a second base
        # model, a second sharded model whose value adapter is trained and checkpointed too. (PPO turns dropout
        # off itself, so the value changes nothing else.)
        "injection.dropout=0.05",
    )

    whole_probe = tmp_path / "uninterrupted-probe"
    output = launch_probe(
        "fsdp2", whole_probe, ppo_overrides(tmp_path / "uninterrupted", reward_model, steps, 2, *extra)
    )
    assert "second copy of a base model" in output, output[-3000:]
    assert any(n.startswith("critic.") for n in json.loads((whole_probe / "rank0.json").read_text())["shards"])

    out = tmp_path / "killed"
    overrides = ppo_overrides(out, reward_model, steps, 2, *extra)
    job = subprocess.Popen(
        launch_command("fsdp2", "tests.ppo_probe", str(tmp_path / "killed-probe"), *overrides),
        cwd=REPO,
        env=launch_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # no terminal signal from the test run reaches it
    )
    deadline = time.monotonic() + 300
    while not (out / "checkpoint-2" / "ppo_state.json").is_file():
        assert job.poll() is None, "the job ended before writing checkpoint-2"
        assert time.monotonic() < deadline, "no checkpoint-2 within 300 s"
        time.sleep(0.05)
    kill_job(job)  # the launcher and both training processes, at once
    assert not (out / "final").exists(), "the job finished before it was killed"
    checkpoint = out / "checkpoint-2"
    assert json.loads((checkpoint / "forge_launch.json").read_text()) == {"processes": 2, "fsdp": True}
    assert (checkpoint / "rng_state_0.pt").is_file() and (checkpoint / "rng_state_1.pt").is_file()

    resumed_probe = tmp_path / "resumed-probe"
    output = launch_probe("fsdp2", resumed_probe, [*overrides, "resume=true"])
    assert "resumed from" in output, output[-3000:]
    resumed, uninterrupted = (load_file(str(p / WHOLE)) for p in (resumed_probe, whole_probe))
    assert sorted(resumed) == sorted(uninterrupted)
    for name in uninterrupted:
        assert torch.equal(resumed[name], uninterrupted[name]), name
    for key in LOGGED:
        assert per_step(out, key) == per_step(tmp_path / "uninterrupted", key), key
