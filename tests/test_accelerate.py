"""Multi-process runs under `accelerate launch`.

Two CPU processes (gloo, conf/accelerate/cpu_2proc.yaml) with batch 2 each must train exactly like one process
with batch 2 and 2 accumulation steps: the same 4 examples per optimizer step, the same loss and gradient norm
at every step. That holds because the Trainer draws one seeded order and hands consecutive per-device batches to
consecutive ranks (rank r gets micro-batch r of each step), just as one process consumes them as accumulation
micro-batches; SFT normalises its loss by the token count gathered over all ranks and DPO averages per pair, and
the logged loss is the mean over ranks. Dropout is off so the two runs draw no random numbers that could differ.

Also: only rank 0 writes metrics.jsonl and final/, the shipped launch configs parse with accelerate's own loader
and launcher logic, and the launches forge cannot run correctly (FSDP, ZeRO-3, PPO) are refused with a message.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from forge_trl.commands.compose import compose
from forge_trl.models.run_info import read_run_info
from forge_trl.train import run
from forge_trl.trainers.callbacks import read_metrics

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "conf" / "accelerate"
STEPS = 4
# Both runs are fp32 on CPU; only the summation order differs (all-reduce vs accumulation), which moves the
# loss by ~1e-7 relative. A wrong data split or unsynchronised gradients moves it by ~1e-2 from the first step.
LOSS_RTOL = 1e-4
COMMON = [
    "overwrite=true",
    "plot=false",
    "precision=fp32",
    f"task.max_steps={STEPS}",
    "task.logging_steps=1",
    "task.per_device_train_batch_size=2",
    "injection.dropout=0",
    "task.learning_rate=1e-3",
    "task.lr_scheduler_type=constant",
    "task.warmup_steps=0",
]


def launch_two_cpu_processes(output_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "accelerate.commands.launch"]  # `accelerate launch` of this interpreter
    env = {
        **os.environ,
        "HYDRA_FULL_ERROR": "0",
        "OMP_NUM_THREADS": "1",  # two processes on a 2-core machine: one thread each
        "CUDA_VISIBLE_DEVICES": "",  # the gloo CPU path even where a GPU exists
    }
    env.pop("ACCELERATE_USE_CPU", None)  # forge must pick the CPU backend itself
    return subprocess.run(
        [
            *launcher,
            "--config_file",
            str(CONFIGS / "cpu_2proc.yaml"),
            "-m",
            "forge_trl",
            f"output_dir={output_dir}",
            *COMMON,
            *overrides,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def one_process(output_dir: Path, *overrides: str) -> list[dict]:
    # use_cpu keeps the baseline on CPU even where a GPU is visible, like the launched run.
    run(compose([f"output_dir={output_dir}", *COMMON, "+task.trl_args.use_cpu=true", *overrides]))
    return read_metrics(output_dir)


def per_step(records: list[dict], key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in records if key in r and "train_runtime" not in r}


def assert_close_curves(two: list[dict], one: list[dict], key: str, rtol: float) -> None:
    a, b = per_step(two, key), per_step(one, key)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1)), (key, sorted(a), sorted(b))
    worst = max(abs(a[s] - b[s]) / max(abs(b[s]), 1e-8) for s in a)
    assert worst <= rtol, f"{key}: 2 processes {a} vs 1 process {b} (worst relative difference {worst:.2e})"


@pytest.mark.parametrize("task", ["sft", "dpo"])
def test_two_cpu_processes_match_one_process_with_double_accumulation(tmp_path, task):
    two_dir = tmp_path / "two"
    proc = launch_two_cpu_processes(two_dir, f"task={task}")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]

    two = read_metrics(two_dir)
    one = one_process(tmp_path / "one", f"task={task}", "task.gradient_accumulation_steps=2")

    assert_close_curves(two, one, "loss", LOSS_RTOL)
    # The same gradient norm at every step: the ranks' gradients were averaged before each optimizer step.
    assert_close_curves(two, one, "grad_norm", 1e-3)
    # Both runs consumed 4 examples per step (an unsynchronised launch runs two 2-example runs side by side).
    assert per_step(two, "epoch") == pytest.approx(per_step(one, "epoch"))

    # Rank 0 alone wrote the run's files: one metrics line per step, one final/, one "wrote" log line.
    assert [r["step"] for r in two if "loss" in r] == list(range(1, STEPS + 1))
    info = read_run_info(two_dir / "final")
    assert info.step == STEPS and info.task == task
    assert output.count("wrote ") == 1, output[-4000:]
    assert not [p.name for p in two_dir.iterdir() if ".tmp-" in p.name or ".old-" in p.name]

    if task == "sft":
        # Control for LOSS_RTOL: one process without accumulation sees only rank 0's half of the first step's
        # examples, and its first loss differs by far more than the tolerance.
        control = per_step(one_process(tmp_path / "control", "task=sft", "task.max_steps=1"), "loss")[1]
        first = per_step(two, "loss")[1]
        assert abs(first - control) / abs(control) > 100 * LOSS_RTOL, (first, control)


# ------------------------------------------------------------------------------------------- launch configs
def _launch_args(config: Path):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(config), "-m", "forge_trl", "task=sft"])
    args, defaults, _ = _validate_launch_command(args)
    return parser, args, defaults


def _process_env(args, defaults) -> dict[str, str]:
    """The environment accelerate's launcher would give each training process for these arguments."""
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


EXPECTED = {
    "cpu_2proc": ("multi_gpu", True),
    "ddp": ("multi_gpu", False),
    "fsdp2": ("use_fsdp", False),
    "zero2": ("use_deepspeed", False),
    "zero3": ("use_deepspeed", False),
}


def test_every_shipped_config_is_listed():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_launch_config_parses_with_accelerate(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    path = CONFIGS / f"{name}.yaml"
    config = load_config_from_file(str(path))
    assert isinstance(config, ClusterConfig)
    # forge's `precision` key decides mixed precision; a second source in the launch config could contradict it.
    assert config.mixed_precision == "no"
    flag, use_cpu = EXPECTED[name]
    assert config.use_cpu is use_cpu

    parser, args, _ = _launch_args(path)
    assert getattr(args, flag) is True
    # accelerate copies unknown sub-keys onto its arguments without complaint: check each is a real launcher option.
    options = {action.dest for action in parser._actions}
    for key in config.fsdp_config:
        assert (key if key.startswith("fsdp_") else f"fsdp_{key}") in options, key
    for key in config.deepspeed_config:
        assert key in options, key


def test_fsdp2_config_means_fsdp2_per_layer_with_full_state_dict(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    _, args, defaults = _launch_args(CONFIGS / "fsdp2.yaml")
    for key, value in _process_env(args, defaults).items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.auto_wrap_policy is transformer_auto_wrap_policy
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"
    assert plugin.cpu_ram_efficient_loading is False


# ------------------------------------------------------------------------------------------- refused launches
@pytest.fixture
def launched(monkeypatch):
    """Pretend to be one of 2 launched processes, with or without a GPU, with no launcher variables inherited."""
    from forge_trl import distributed

    for key in list(os.environ):
        if key.startswith(("ACCELERATE_", "FSDP_")) or key in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("WORLD_SIZE", "2")

    def set_gpu(present: bool):
        monkeypatch.setattr(distributed, "_has_accelerator", lambda: present)

    set_gpu(False)
    return set_gpu


@pytest.mark.parametrize(
    "name,gpu,refusal",
    [
        ("cpu_2proc", False, None),
        ("ddp", True, None),
        ("zero2", True, None),
        ("fsdp2", True, "cannot write final/ from sharded weights"),
        ("zero3", True, "cannot write final/ from sharded weights"),
        ("fsdp2", False, "FSDP needs GPUs"),
        ("zero2", False, "DeepSpeed needs GPUs"),
    ],
)
def test_check_launch_with_each_configs_environment(launched, monkeypatch, name, gpu, refusal):
    from forge_trl import distributed
    from forge_trl.errors import ConfigError

    _, args, defaults = _launch_args(CONFIGS / f"{name}.yaml")
    env = _process_env(args, defaults)
    for key, value in env.items():
        if key.startswith(("ACCELERATE_", "FSDP_")):
            monkeypatch.setenv(key, value)
    launched(gpu)
    if refusal is None:
        distributed.check_launch()
    else:
        with pytest.raises(ConfigError, match=refusal):
            distributed.check_launch()


def test_cpu_backend_is_chosen_only_for_a_multi_process_launch_without_gpu(launched, monkeypatch):
    from forge_trl import distributed

    assert distributed.prefer_cpu_backend() is True
    assert os.environ["ACCELERATE_USE_CPU"] == "true"

    monkeypatch.delenv("ACCELERATE_USE_CPU")
    launched(True)
    assert distributed.prefer_cpu_backend() is False
    assert "ACCELERATE_USE_CPU" not in os.environ

    launched(False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.prefer_cpu_backend() is False
    assert "ACCELERATE_USE_CPU" not in os.environ


def test_ppo_refuses_more_than_one_process():
    from forge_trl.errors import ConfigError
    from forge_trl.trainers.ppo import PPOTrainer

    with pytest.raises(ConfigError, match="single process"):
        PPOTrainer(models=None, args=types.SimpleNamespace(world_size=2), train_dataset=None, processing_class=None)


def test_a_rank_whose_save_writes_no_model_never_poisons_the_tiny_cache(tmp_path, monkeypatch):
    """Inside a process group, transformers saves model files on rank 0 only. Another rank building the tiny model
    must wait for rank 0's build rather than rename its tokenizer-only directory into the cache."""
    import functools

    from transformers import PreTrainedModel

    from forge_trl.errors import ModelError
    from forge_trl.models import tiny

    monkeypatch.setenv("FORGE_TRL_CACHE", str(tmp_path))
    monkeypatch.setattr(PreTrainedModel, "should_save_on_this_rank", lambda self, is_main_process: False)
    monkeypatch.setattr(tiny, "_wait_for_build", functools.partial(tiny._wait_for_build, timeout_s=0.3))
    with pytest.raises(ModelError, match="rank 0"):
        tiny.ensure_tiny("forge-tiny")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("forge-tiny")]

    monkeypatch.undo()  # rank 0's build: complete, and then found by everyone
    monkeypatch.setenv("FORGE_TRL_CACHE", str(tmp_path))
    built = tiny.ensure_tiny("forge-tiny")
    assert (built / "config.json").is_file() and (built / "model.safetensors").is_file()
