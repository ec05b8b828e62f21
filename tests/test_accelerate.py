"""Multi-process runs under `accelerate launch`.

Two CPU processes (gloo, conf/accelerate/cpu_2proc.yaml) with batch 2 each must train exactly like one process
with batch 2 and 2 accumulation steps: the same 4 examples per optimizer step, the same loss and gradient norm
at every step. That holds because the Trainer draws one seeded order and hands consecutive per-device batches to
consecutive ranks (rank r gets micro-batch r of each step), just as one process consumes them as accumulation
micro-batches; SFT normalises its loss by the token count gathered over all ranks and DPO averages per pair, and
the logged loss is the mean over ranks. Dropout is off so the two runs draw no random numbers that could differ.

Also: only rank 0 writes metrics.jsonl and final/, the shipped launch configs parse with accelerate's own loader
and launcher logic, none of them is refused, and a DeepSpeed launch is refused with the FSDP2 alternative. FSDP2
and multi-node runs are tested in tests/test_scale_out.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from forge_trl.models.run_info import read_run_info
from forge_trl.trainers.callbacks import read_metrics
from tests.launch_support import (
    CONFIGS,
    STEPS,
    assert_close_curves,
    failure_output,
    launch,
    one_process,
    per_step,
)

# Both runs are fp32 on CPU; only the summation order differs (all-reduce vs accumulation), which moves the
# loss by ~1e-7 relative. A wrong data split or unsynchronised gradients moves it by ~1e-2 from the first step.
LOSS_RTOL = 1e-4


# DPO under DDP is the slow case: tests/test_scale_out.py runs DPO under FSDP2 in the default suite.
@pytest.mark.parametrize("task", ["sft", pytest.param("dpo", marks=pytest.mark.slow)])
def test_two_cpu_processes_match_one_process_with_double_accumulation(tmp_path, task):
    two_dir = tmp_path / "two"
    proc = launch("cpu_2proc", two_dir, f"task={task}")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, failure_output(proc)

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
    assert info.launch == {"processes": 2, "sharded": False}
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
    "multinode": ("use_fsdp", False),
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


@pytest.mark.parametrize("name", ["fsdp2", "multinode"])
def test_fsdp2_configs_mean_fsdp2_per_layer_with_sharded_checkpoints(monkeypatch, name):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    _, args, defaults = _launch_args(CONFIGS / f"{name}.yaml")
    for key, value in _process_env(args, defaults).items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.auto_wrap_policy is transformer_auto_wrap_policy
    assert plugin.state_dict_type.name == "SHARDED_STATE_DICT"
    assert plugin.cpu_ram_efficient_loading is False


def test_multinode_config_is_two_machines_on_loopback():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / "multinode.yaml"))
    assert (config.num_machines, config.num_processes, config.main_process_ip) == (2, 2, "127.0.0.1")
    assert config.rdzv_backend == "static" and config.main_process_port > 0


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


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("gpu", [False, True])
def test_no_shipped_config_is_refused(launched, monkeypatch, name, gpu):
    from forge_trl import distributed

    _, args, defaults = _launch_args(CONFIGS / f"{name}.yaml")
    for key, value in _process_env(args, defaults).items():
        if key.startswith(("ACCELERATE_", "FSDP_")):
            monkeypatch.setenv(key, value)
    launched(gpu)
    distributed.check_launch()
    assert distributed.fsdp_requested() is (EXPECTED[name][0] == "use_fsdp")


def test_a_deepspeed_launch_is_refused_with_the_fsdp2_alternative(launched, monkeypatch):
    from forge_trl import distributed
    from forge_trl.errors import ConfigError

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="fsdp2.yaml"):
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
