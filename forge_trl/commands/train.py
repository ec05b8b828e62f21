"""`forge-trl train` / `python -m forge_trl`: a Hydra app over conf/ with the groups model, injection, task and data.

Composition errors (a misspelt key, a wrong type, an unknown task) are reported on one line with exit code 2
before Hydra starts the run, and so are ForgeErrors raised during the run; tracebacks are left for bugs.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from forge_trl.commands.console import quiet_third_party_logs
from forge_trl.errors import EXIT_USER_ERROR, ConfigError, ForgeError


def _is_single_run(argv: list[str]) -> bool:
    return not any(a in ("-m", "--multirun") or a.startswith(("--cfg", "--help", "-h", "--info", "--hydra-help",
                                                                "--shell-completion", "-c")) for a in argv)


# Failed jobs of this process's sweep: (job directory, one-line error). One failure never stops the others.
SWEEP_FAILURES: list[tuple[str, str]] = []
FAILED_MARKER = "forge_failed.json"


def _hydra_app(cfg):
    """One Hydra job. In a sweep, each job trains in its own directory (the sweep's job subdir), is benched,
    and returns the bench objective to the sweeper; a job that fails is recorded and the sweep goes on."""
    from forge_trl.bench.runner import in_multirun, objective_value
    from forge_trl.train import run

    quiet_third_party_logs()
    multirun = in_multirun()
    if multirun:
        from hydra.core.hydra_config import HydraConfig

        cfg.output_dir = HydraConfig.get().runtime.output_dir
    try:
        run(cfg)
    except Exception as exc:
        if not multirun:
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


def main(argv: list[str] | None = None) -> None:
    import hydra

    from forge_trl.commands.compose import CONF_DIR, precheck, register_configs

    argv = list(sys.argv[1:] if argv is None else argv)
    # Hydra would instantiate any class a `..._target_=` override names (e.g. +hydra.callbacks.x._target_=...);
    # no forge setting takes a class, so a command line never gets to import code that way.
    smuggled = next((a for a in argv if "_target_" in a.split("=", 1)[0]), None)
    if smuggled is not None:
        print(ConfigError(f"'{smuggled.split('=', 1)[0]}': forge_trl never instantiates classes named on the "
                          "command line").one_line(), file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    if _is_single_run(argv):
        try:
            precheck(argv)
        except ForgeError as exc:
            print(exc.one_line(), file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
    register_configs()
    sys.argv = [sys.argv[0], *argv]
    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_hydra_app)()
    if SWEEP_FAILURES:
        print(f"forge_trl: {len(SWEEP_FAILURES)} sweep job(s) failed (the others finished):", file=sys.stderr)
        for job_dir, message in SWEEP_FAILURES:
            print(f"  {job_dir}: {message}", file=sys.stderr)
        sys.exit(1)
