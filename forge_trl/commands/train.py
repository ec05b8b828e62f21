"""`forge-trl train` / `python -m forge_trl`: a Hydra app over conf/ with the groups model, injection, task and data.

Composition errors (a misspelt key, a wrong type, an unknown task) are reported on one line with exit code 2
before Hydra starts the run, and so are ForgeErrors raised during the run; tracebacks are left for bugs.
`--help` prints forge's help (`training_help`: the groups, the composed config's keys); `--hydra-help` Hydra's.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from forge_trl.commands.console import LOG_FILE, log_to_file, setup_logging
from forge_trl.distributed import launched_world_size, peer_failure
from forge_trl.errors import EXIT_USER_ERROR, ConfigError, ForgeError
from forge_trl.files import check_run_lock


def _is_single_run(argv: list[str]) -> bool:
    return not any(
        a in ("-m", "--multirun")
        or a.startswith(("--cfg", "--help", "-h", "--info", "--hydra-help", "--shell-completion", "-c"))
        for a in argv
    )


# Failed jobs of this process's sweep: (job directory, one-line error). One failure never stops the others.
SWEEP_FAILURES: list[tuple[str, str]] = []
FAILED_MARKER = "forge_failed.json"
EXIT_PEER_FAILED = 1


def _hydra_app(cfg):
    """One Hydra job. In a sweep, each job trains in its own directory (the sweep's job subdir), is benched,
    and returns the bench objective to the sweeper; a job that fails is recorded and the sweep goes on."""
    from forge_trl.bench.runner import in_multirun, objective_value
    from forge_trl.train import run

    multirun = in_multirun()
    if multirun:
        from hydra.core.hydra_config import HydraConfig

        cfg.output_dir = HydraConfig.get().runtime.output_dir
    log_to_file(Path(cfg.output_dir) / LOG_FILE)
    try:
        run(cfg)
    except Exception as exc:
        if not multirun:
            lost_peer = peer_failure(exc)
            if lost_peer is not None:
                # Another process of the launch died: this one's traceback would only repeat the collective that
                # noticed it. The launcher names the process that failed first.
                logging.getLogger("forge_trl").debug("lost a peer process", exc_info=True)
                print(lost_peer, file=sys.stderr, flush=True)
                # Straight out: a normal interpreter exit would tear down the broken process group and can hang or
                # print more; the launcher's SIGTERM to this process must not add a second report either.
                os._exit(EXIT_PEER_FAILED)
            if not isinstance(exc, ForgeError):
                raise
            logging.getLogger("forge_trl").debug("user error", exc_info=True)
            print(exc.one_line(), file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        return _record_failure(cfg.output_dir, exc)
    if multirun:
        return objective_value(cfg.output_dir, cfg.bench.objective)
    return None


def _record_failure(job_dir: str, exc: Exception) -> float:
    """Write the job's error next to its outputs and go on with the sweep; NaN tells Optuna the trial failed."""
    import json
    import traceback

    from hydra.core.hydra_config import HydraConfig

    message = exc.one_line() if isinstance(exc, ForgeError) else f"forge_trl: bug: {type(exc).__name__}: {exc}"
    if isinstance(exc, ForgeError):
        print(message, file=sys.stderr)
    else:
        logging.getLogger("forge_trl").error("job failed:\n%s", traceback.format_exc())
    Path(job_dir).mkdir(parents=True, exist_ok=True)
    overrides = list(HydraConfig.get().overrides.task)
    (Path(job_dir) / FAILED_MARKER).write_text(json.dumps({"error": message, "overrides": overrides}, indent=2))
    SWEEP_FAILURES.append((job_dir, message))
    return float("nan")


HELP_FLAGS = ("-h", "--help")
EXAMPLE = "python -m forge_trl task=dpo model.name_or_path=outputs/sft/final output_dir=outputs/dpo task.beta=0.1"


def wants_forge_help(argv: list[str]) -> bool:
    return any(a in HELP_FLAGS for a in argv) and "--hydra-help" not in argv


def print_training_help(argv: list[str]) -> int:
    setup_logging()  # composing imports the task modules, and with them bitsandbytes and its notice
    try:
        print(training_help([a for a in argv if a not in HELP_FLAGS]))
    except ForgeError as exc:
        print(exc.one_line(), file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def _unknown_option(argv: list[str]) -> str | None:
    """The message for the first option that is none of Hydra's flags (`--hepl`), which Hydra would answer with
    its usage; None when all are known."""
    from hydra._internal.utils import get_args_parser

    from forge_trl.errors import did_you_mean

    flags = [s for action in get_args_parser()._actions for s in action.option_strings]
    for arg in argv:
        option = arg.split("=", 1)[0]
        if arg.startswith("-") and option not in flags:
            return f"unknown option '{option}'{did_you_mean(option, flags)} (see forge-trl train --help)"
    return None


def training_help(argv: list[str]) -> str:
    """forge's help for a training run: the config groups and their options, then every key of the config that
    `argv` composes (so `task=dpo --help` shows DPO's keys) with its value and the schema's comment on it."""
    from forge_trl.commands.args import format_rows
    from forge_trl.commands.compose import GROUPS, compose, group_options

    overrides = [a for a in argv if not a.startswith(("-", "hydra.", "hydra/", "+hydra", "~hydra"))]
    cfg = compose(overrides, with_hydra=True)
    chosen = {group: cfg.hydra.runtime.choices.get(group) for group in GROUPS}
    groups = [
        f"  {group:<10} " + ", ".join(f"{o}*" if o == chosen[group] else o for o in group_options(group))
        for group in GROUPS
    ]
    composed = " ".join(f"{group}={option}" for group, option in chosen.items())
    return "\n".join(
        [
            "usage: python -m forge_trl [<group>=<option> ...] [<key>=<value> ...] [-m]",
            "       forge-trl [train] ...  (the same)",
            "",
            "Train one run: the config groups compose into one TRL run; each run writes <output_dir>/final/, which the",
            "next stage takes as model.name_or_path. A misspelt key or option fails before any model loads.",
            "",
            "config groups (<group>=<option>; * = the option composed here):",
            *groups,
            "",
            f"keys of this config ({composed}), with their values:",
            *format_rows(_config_rows(cfg)),
            "",
            "example:",
            f"  {EXAMPLE}",
            "",
            "-m/--multirun sweeps comma-separated values (task.beta=0.05,0.1); --cfg job prints the composed config;",
            "--hydra-help shows Hydra's options. Other commands: forge-trl --help.",
        ]
    )


def _config_rows(node, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, value as typed, first sentence of the schema's comment) for every leaf key under `node`."""
    import dataclasses

    from omegaconf import DictConfig, OmegaConf

    from forge_trl.commands.args import field_comments, first_sentence, show_value

    schema = OmegaConf.get_type(node)
    comments = field_comments(schema) if isinstance(schema, type) and dataclasses.is_dataclass(schema) else {}
    rows = []
    for key in node.keys():
        if not prefix and key == "hydra":
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(child)):
            rows += _config_rows(child, f"{prefix}{key}.")
            continue
        value = OmegaConf.to_container(child, resolve=False) if OmegaConf.is_config(child) else child._value()
        rows.append((f"{prefix}{key}", show_value(value), first_sentence(comments.get(str(key), ""))))
    return rows


def main(argv: list[str] | None = None) -> int | None:
    import hydra

    from forge_trl.commands.compose import CONF_DIR, plugin_search_path, precheck, register_configs

    argv = list(sys.argv[1:] if argv is None else argv)
    if wants_forge_help(argv):
        return print_training_help(argv)
    unknown = _unknown_option(argv)
    if unknown is not None:
        print(ConfigError(unknown).one_line(), file=sys.stderr)
        return EXIT_USER_ERROR
    setup_logging(pending=True)  # before anything imports bitsandbytes; _hydra_app attaches <output_dir>/forge.log
    # Hydra would instantiate any class a `..._target_=` override names (e.g. +hydra.callbacks.x._target_=...);
    # no forge setting takes a class, so a command line never gets to import code that way.
    smuggled = next((a for a in argv if "_target_" in a.split("=", 1)[0]), None)
    if smuggled is not None:
        print(
            ConfigError(
                f"'{smuggled.split('=', 1)[0]}': forge_trl never instantiates classes named on the command line"
            ).one_line(),
            file=sys.stderr,
        )
        sys.exit(EXIT_USER_ERROR)
    if _is_single_run(argv):
        try:
            cfg = precheck(argv)
            if launched_world_size() <= 1:
                # Hydra writes .hydra/ (and forge its forge.log) into output_dir as it starts, so a run that a live
                # run's lock refuses must stop before that. The lock is taken in train.run; the ranks of a launch
                # skip this check, since their rank 0 may hold the lock already.
                check_run_lock(cfg.output_dir)
        except ForgeError as exc:
            print(exc.one_line(), file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
    register_configs()
    sys.argv = [sys.argv[0], *argv, *plugin_search_path()]
    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_hydra_app)()
    if SWEEP_FAILURES:
        print(f"forge_trl: {len(SWEEP_FAILURES)} sweep job(s) failed (the others finished):", file=sys.stderr)
        for job_dir, message in SWEEP_FAILURES:
            print(f"  {job_dir}: {message}", file=sys.stderr)
        sys.exit(1)
    return None
