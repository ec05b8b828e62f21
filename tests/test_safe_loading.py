"""Safe loading: weights only from safetensors, a model's own code only with model.trust_remote_code=true, and
no config value that makes forge_trl import or instantiate anything but its registered tasks and injections."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from forge_trl.commands.compose import compose
from forge_trl.config import ModelConfig
from forge_trl.errors import ConfigError, ModelError
from forge_trl.models.loading import load_base_model, load_tokenizer, resolve_source
from forge_trl.train import resolve_resume, run


@pytest.fixture
def tiny_dir(tmp_path) -> Path:
    """A copy of the built-in tiny model as a plain HF directory (config, safetensors, tokenizer)."""
    return Path(shutil.copytree(resolve_source("forge-tiny").base, tmp_path / "tiny"))


def as_pickle(directory: Path, safetensors_name: str, pickle_name: str) -> None:
    """Replace a safetensors weight file by the same tensors written with torch.save."""
    from safetensors.torch import load_file

    torch.save(load_file(str(directory / safetensors_name)), directory / pickle_name)
    (directory / safetensors_name).unlink()


# ------------------------------------------------------------------------------------------------ pickle weights
def test_model_dir_with_only_pickle_weights_is_refused_naming_the_file(tiny_dir):
    as_pickle(tiny_dir, "model.safetensors", "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"pytorch_model\.bin' is a pickle weight file .* convert it to safetensors"):
        resolve_source(str(tiny_dir))


def test_refusal_is_one_line_with_exit_2_before_anything_trains(tiny_dir, tmp_path):
    as_pickle(tiny_dir, "model.safetensors", "weights.pt")
    result = run_cli(f"output_dir={tmp_path / 'run'}", "task=sft", "task.max_steps=1", f"model.name_or_path={tiny_dir}")
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("forge_trl:")]
    assert len(errors) == 1 and "weights.pt' is a pickle weight file" in errors[0], result.stderr[-2000:]
    assert not (tmp_path / "run" / "final").exists()


def test_forge_checkpoint_with_a_pickle_adapter_is_refused(tmp_path):
    checkpoint = tmp_path / "final"
    checkpoint.mkdir()
    (checkpoint / "forge_run.json").write_text(
        json.dumps(
            {
                "format_version": 1,
                "injection": {"name": "dense_lora"},
                "base_model": "forge-tiny",
                "task": "sft",
                "head": "causal_lm",
            }
        )
    )
    torch.save({"lora_A": torch.zeros(2, 2)}, checkpoint / "adapter_model.bin")
    with pytest.raises(ModelError, match=r"forge checkpoint '.*adapter_model\.bin' is a pickle weight file"):
        resolve_source(str(checkpoint))


def trainer_checkpoint(directory: Path, weights: str) -> Path:
    """The files transformers' Trainer writes into checkpoint-N, with the adapter weights in `weights`."""
    directory.mkdir(parents=True)
    torch.save({"w": torch.zeros(1)}, directory / weights)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
        torch.save({}, directory / name)
    (directory / "trainer_state.json").write_text("{}")
    return directory


def test_resume_checkpoint_with_pickle_weights_is_refused_but_trainer_state_is_not(tmp_path):
    pickled = trainer_checkpoint(tmp_path / "a" / "checkpoint-4", "adapter_model.bin")
    with pytest.raises(ModelError, match=r"resume checkpoint '.*adapter_model\.bin' is a pickle weight file"):
        resolve_resume("true", pickled.parent)
    # Optimizer, scheduler and RNG state are torch.save files in every transformers checkpoint; transformers
    # reads them with weights_only=True. They do not make a checkpoint unsafe.
    safe = trainer_checkpoint(tmp_path / "b" / "checkpoint-4", "adapter_model.safetensors")
    assert resolve_resume("true", safe.parent) == str(safe)
    assert resolve_resume(str(safe), tmp_path / "elsewhere") == str(safe)


def test_load_base_model_asks_transformers_for_safetensors_only(tiny_dir, monkeypatch):
    """Even past forge's own check (a hub id is not inspected locally), transformers is told to refuse pickles."""
    from transformers import AutoModelForCausalLM

    seen = {}
    original = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    tokenizer = load_tokenizer(str(tiny_dir))
    load_base_model(str(tiny_dir), "causal_lm", ModelConfig(), "fp32", tokenizer)
    assert seen["use_safetensors"] is True and seen["trust_remote_code"] is False


# ------------------------------------------------------------------------------------------------ remote code
def with_custom_code(directory: Path, marker: Path, model_type: str) -> Path:
    """Give a model directory an auto_map to Python files that, if ever imported, create `marker`."""
    config = json.loads((directory / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {
        "AutoConfig": "configuration_custom.CustomConfig",
        "AutoModelForCausalLM": "modeling_custom.CustomModel",
    }
    (directory / "config.json").write_text(json.dumps(config))
    side_effect = f"open({str(marker)!r}, 'w').write('imported')\n"
    (directory / "configuration_custom.py").write_text(
        side_effect + "from transformers import Qwen3Config\n\n"
        f"class CustomConfig(Qwen3Config):\n    model_type = {model_type!r}\n"
    )
    (directory / "modeling_custom.py").write_text(
        side_effect + "from transformers import Qwen3ForCausalLM\nfrom .configuration_custom import CustomConfig\n\n"
        "class CustomModel(Qwen3ForCausalLM):\n    config_class = CustomConfig\n"
    )
    return directory


def test_model_that_needs_its_own_code_is_refused_without_trust_remote_code(tiny_dir, tmp_path):
    marker = tmp_path / "custom_code_ran"
    with_custom_code(tiny_dir, marker, "forge_custom_arch")
    result = run_cli(f"output_dir={tmp_path / 'run'}", "task=sft", "task.max_steps=1", f"model.name_or_path={tiny_dir}")
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("forge_trl:")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert "needs its own Python code" in errors[0] and "model.trust_remote_code=true" in errors[0]
    assert "Traceback" not in result.stderr
    assert not marker.exists(), "the model's code ran without trust_remote_code"
    # The same refusal, in process, for the model itself (hub ids reach transformers without a local check).
    with pytest.raises(ModelError, match="needs its own Python code"):
        load_base_model(
            str(tiny_dir), "causal_lm", ModelConfig(), "fp32", load_tokenizer(str(resolve_source("forge-tiny").base))
        )
    assert not marker.exists()


def test_custom_code_next_to_a_known_architecture_is_ignored_not_run(tiny_dir, tmp_path):
    """A directory of a built-in architecture that also ships code loads with transformers' own class."""
    marker = tmp_path / "custom_code_ran"
    with_custom_code(tiny_dir, marker, "qwen3")
    tokenizer = load_tokenizer(str(tiny_dir))
    model = load_base_model(str(tiny_dir), "causal_lm", ModelConfig(), "fp32", tokenizer)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert not marker.exists()


def test_trust_remote_code_true_is_what_lets_the_code_run(tiny_dir, tmp_path):
    marker = tmp_path / "custom_code_ran"
    with_custom_code(tiny_dir, marker, "forge_custom_arch_trusted")
    tokenizer = load_tokenizer(str(tiny_dir))
    with pytest.raises(ModelError, match="needs its own Python code"):
        load_base_model(str(tiny_dir), "causal_lm", ModelConfig(), "fp32", tokenizer)
    assert not marker.exists()
    model = load_base_model(str(tiny_dir), "causal_lm", ModelConfig(trust_remote_code=True), "fp32", tokenizer)
    assert marker.exists() and type(model).__name__ == "CustomModel"


# ------------------------------------------------------------------------------------------------ config values
@pytest.fixture
def probe_module(tmp_path, monkeypatch):
    """An importable module that records being imported: any config value that reached importlib would show."""
    marker = tmp_path / "probe_imported"
    (tmp_path / "forge_probe_module.py").write_text(
        f"open({str(marker)!r}, 'w').write('x')\ndef run(*a, **k):\n    pass\nclass Task:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield marker
    sys.modules.pop("forge_probe_module", None)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["task=forge_probe_module.Task"], "unknown task 'forge_probe_module.Task'"),
        (["task=os.system"], "unknown task 'os.system'"),
        (["injection=forge_probe_module.Task"], "unknown injection 'forge_probe_module.Task'"),
        (["task.name=forge_probe_module.Task"], "unknown task 'forge_probe_module.Task'"),
        (["injection.name=forge_trl.injection.dense_lora.DenseLoraInjection"], "unknown injection"),
        (["+task._target_=forge_probe_module.run"], "unknown config key 'task._target_'; forge_trl never instantiates"),
        (["+_target_=forge_probe_module.run"], "unknown config key '_target_'"),
        (["+model._target_=forge_probe_module.run", "+model._args_=[1]"], "unknown config key 'model._target_'"),
        (["+data.loader=forge_probe_module.run"], "unknown config key 'data.loader'"),
        (["injection.phases=[{step:0,trainable:[lora],_target_:forge_probe_module.run}]"], "_target_"),
    ],
)
def test_config_values_never_import_code(overrides, message, probe_module, tmp_path):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        run(compose([f"output_dir={tmp_path / 'run'}", *overrides]))
    assert not probe_module.exists()
    assert "forge_probe_module" not in sys.modules


def test_trl_args_cannot_smuggle_a_target_either(probe_module, tmp_path):
    """task.trl_args is an open dict (options forge does not name), passed to the TRL config class as keywords;
    an unknown one is refused by name, and nothing is imported for it."""
    with pytest.raises(ConfigError, match="SFTConfig has no field '_target_'"):
        run(
            compose(
                [
                    f"output_dir={tmp_path / 'run'}",
                    "task.max_steps=1",
                    "data.max_rows=8",
                    "+task.trl_args._target_=forge_probe_module.run",
                ]
            )
        )
    assert not probe_module.exists()


@pytest.mark.parametrize("mode", [[], ["-m"]], ids=["run", "multirun"])
def test_command_line_cannot_make_hydra_instantiate_a_callback(mode, probe_module, tmp_path, monkeypatch):
    """Hydra itself instantiates `hydra.callbacks.*._target_`; forge refuses such overrides before Hydra starts."""
    monkeypatch.setenv("PYTHONPATH", str(probe_module.parent))
    result = run_cli(*mode, f"output_dir={tmp_path / 'run'}", "+hydra.callbacks.probe._target_=forge_probe_module.Task")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "'+hydra.callbacks.probe._target_': forge_trl never instantiates classes" in result.stderr
    assert not probe_module.exists()
