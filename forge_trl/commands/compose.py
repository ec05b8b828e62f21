"""Composing a run's config: Hydra over conf/ plus the schemas that the task and injection registries declare.

Every schema is registered in Hydra's ConfigStore as the group option of its name (`task/dpo` is `DPOTaskConfig`),
so its dataclass defaults are the only defaults; YAML files under conf/ hold presets that differ from them.
"""

from __future__ import annotations

import os
from pathlib import Path

from forge_trl.errors import ConfigError, did_you_mean
from forge_trl.registry import plugin_conf_dirs

CONF_DIR = Path(os.environ.get("FORGE_TRL_CONF", Path(__file__).resolve().parents[2] / "conf"))
GROUPS = ("model", "injection", "task", "data")


def compose(overrides: list[str] | None = None, *, with_hydra: bool = False):
    """Compose the config as the CLI would (for the demo, tests and scripts); errors become ConfigError.
    `with_hydra` keeps the `hydra` node (`hydra.runtime.choices` names the option each group composed)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(
                "config", overrides=[*(overrides or []), *plugin_search_path()], return_hydra_config=with_hydra
            )
    except Exception as exc:  # Hydra and OmegaConf raise many types; all of them mean "bad config" here
        raise ConfigError(describe_compose_error(exc)) from None


def describe_compose_error(exc: BaseException) -> str:
    from forge_trl.config import describe_omegaconf_error

    text = str(exc)
    for group in GROUPS:
        marker = f"Could not find '{group}/"
        if marker in text:
            name = text.split(marker, 1)[1].split("'", 1)[0]
            options = group_options(group)
            return f"unknown {group} '{name}'; available: {', '.join(options)}{did_you_mean(name, options)}"
    if "Could not override" in text or "Error merging" in text or exc.__cause__ is not None:
        return describe_omegaconf_error(exc)
    return " ".join(text.split())


def group_options(group: str) -> list[str]:
    """What `<group>=...` may name: registered schemas (task, injection) and the YAML presets under conf/."""
    from forge_trl.injection import INJECTIONS
    from forge_trl.tasks import TASKS

    registered = {"task": TASKS.names(), "injection": INJECTIONS.names()}.get(group, [])
    presets = [p.stem for conf in (CONF_DIR, *plugin_conf_dirs()) for p in (conf / group).glob("*.yaml")]
    return sorted({*registered, *presets})


def plugin_search_path() -> list[str]:
    """The Hydra override that adds the plugins' conf/ directories (FORGE_TRL_PLUGINS) to the search path."""
    dirs = plugin_conf_dirs()
    if not dirs:
        return []
    return ["hydra.searchpath=[" + ",".join(f"file://{d.resolve()}" for d in dirs) + "]"]


def register_configs() -> None:
    """Register the top-level schema and every task/injection schema (as the group option of its name)."""
    from hydra.core.config_store import ConfigStore

    from forge_trl.config import ForgeConfig
    from forge_trl.injection import INJECTIONS
    from forge_trl.tasks import TASKS

    cs = ConfigStore.instance()
    cs.store(name="forge_schema", node=ForgeConfig)
    for name, task in TASKS.items():
        cs.store(group="task", name=name, node=task.schema)
    for name, strategy in INJECTIONS.items():
        cs.store(group="injection", name=name, node=strategy.schema)


def precheck(argv: list[str]):
    """Compose once with the run's overrides and validate the schema ranges, before Hydra takes over; returns the
    typed config."""
    from forge_trl.config import to_typed

    overrides = [a for a in argv if not a.startswith(("hydra.", "hydra/", "+hydra", "-"))]
    return to_typed(compose(overrides))
