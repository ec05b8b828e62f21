"""Recipes: per-stage training overrides kept as config (`conf/recipe/<name>.yaml`), for pipelines and the demo.

A recipe maps a stage's task (`pretrain`, `sft`, `dpo`, ...) to `key: value` overrides of that stage's run. It
holds only what differs from the task schemas' defaults; every override still goes through the schema check when
the stage composes, so a misspelt key in a recipe fails like one on the command line.
"""

from __future__ import annotations

from pathlib import Path

from forge_trl.commands.compose import CONF_DIR
from forge_trl.errors import ConfigError

RECIPE_DIR = CONF_DIR / "recipe"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str) -> dict[str, list[str]]:
    """Stage -> `key=value` overrides, from a recipe name under conf/recipe/ or a YAML file path."""
    from omegaconf import DictConfig, OmegaConf

    path = Path(name_or_path) if name_or_path.endswith((".yaml", ".yml")) else RECIPE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"recipe '{name_or_path}' not found; available: {', '.join(recipe_names())} (or a path to a .yaml file)"
        )
    loaded = OmegaConf.load(path)
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: a recipe maps stage names to key: value overrides")
    recipe: dict[str, list[str]] = {}
    for stage, settings in loaded.items():
        if not isinstance(settings, DictConfig):
            raise ConfigError(f"{path}: stage '{stage}' must map override keys to values")
        recipe[str(stage)] = [f"{key}={_override_value(value)}" for key, value in settings.items()]
    return recipe


def _override_value(value) -> str:
    # Hydra's override grammar reads these back as the same types (3.0e-3 stays a float, true a bool).
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)
