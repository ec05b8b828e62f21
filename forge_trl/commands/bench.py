"""`python -m forge_trl.bench <checkpoint> [<checkpoint> ...] [bench.<key>=<value> ...]`

Evaluates each checkpoint (a forge `<run>/final`, a model directory, a hub id or `forge-tiny`) on held-out
data and prints one markdown table; bench.json and the plots go to `bench.out` (default outputs/bench).
Keys are those of forge_trl/bench/config.py, with or without the `bench.` prefix, e.g.

    python -m forge_trl.bench outputs/sft/final outputs/dpo/final \\
        bench.judge.baseline=outputs/sft/final bench.judge.url=http://localhost:8000/v1
"""

from __future__ import annotations

import logging
import sys

from forge_trl.errors import ConfigError, run_command

USAGE = "usage: python -m forge_trl.bench <checkpoint> [<checkpoint> ...] [bench.<key>=<value> ...]"


def bench_config(overrides: list[str]):
    """A BenchConfig from `key=value` overrides (with or without the `bench.` prefix)."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from forge_trl.config.bench import BenchConfig
    from forge_trl.config import describe_omegaconf_error

    parsed = []
    for override in overrides:
        try:
            parsed.append(OmegaConf.from_dotlist([override.removeprefix("bench.")]))
        except yaml.YAMLError as exc:  # OmegaConf reads values as YAML: an unquoted [ starts a list
            raise ConfigError(f"cannot read '{override}' ({' '.join(str(exc).split()[:8])}...); put the value in "
                              "single quotes, e.g. bench.format_regex='[0-9]+'") from None
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(BenchConfig), *parsed))
    except OmegaConfBaseException as exc:
        raise ConfigError(describe_omegaconf_error(exc)) from None


def parse_args(argv: list[str]):
    """(checkpoints, BenchConfig) from positional paths and `key=value` overrides."""
    checkpoints = [a for a in argv if "=" not in a]
    if not checkpoints:
        raise ConfigError(f"no checkpoint given; {USAGE}")
    return checkpoints, bench_config([a for a in argv if "=" in a])


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    from forge_trl.commands.console import quiet_third_party_logs

    quiet_third_party_logs()

    def work() -> None:
        checkpoints, cfg = parse_args(sys.argv[1:] if argv is None else argv)
        from forge_trl.bench.runner import run_bench

        run_bench(checkpoints, cfg, cfg.out or "outputs/bench")

    return run_command(work)


if __name__ == "__main__":
    sys.exit(main())
