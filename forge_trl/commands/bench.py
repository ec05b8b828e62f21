"""`forge-trl bench [<checkpoint> ...] [bench.<key>=<value> ...]` (also `python -m forge_trl.bench`)

Evaluates each checkpoint (a forge `<run>/final`, a model directory, a hub id or `forge-tiny`) and each API target
(`bench.targets`: OpenAI-compatible endpoints) on held-out data and prints one markdown table; bench.json,
bench_results.jsonl, the plots and forge.log go to `bench.out` (default outputs/bench). Keys are those of
forge_trl/config/bench.py, with or without the `bench.` prefix, e.g.

    forge-trl bench outputs/sft/final outputs/dpo/final \\
        'bench.targets=[{base_url:http://localhost:11434/v1,model:llama3.2}]' \\
        bench.judge.baseline=outputs/sft/final bench.judge.url=http://localhost:8000/v1 bench.judge.pointwise=true

`bench.targets` takes a list of {base_url, model, api_key_env, name} mappings in Hydra's override syntax (as a
training run's `bench.targets=` does), a single mapping, or a YAML/JSON file holding such a list; repeated, the
lists add up.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forge_trl.commands.args import KeyValueParser, positional
from forge_trl.config.bench import ApiTarget, BenchConfig
from forge_trl.errors import ConfigError, did_you_mean

TARGETS_KEY = "bench.targets"


@dataclass
class BenchKeys:
    """The `bench.*` keys (forge_trl/config/bench.py)."""

    bench: BenchConfig = field(default_factory=BenchConfig)


@dataclass(kw_only=True)
class BenchArgs(BenchKeys):
    """Evaluate checkpoints and API models on held-out data (the demo suite's held-out split unless bench.prompts /
    bench.pairs name files): one markdown table on stdout; bench.json, bench_results.jsonl (every response) and the
    plots go to `bench.out` (default outputs/bench)."""

    # A forge checkpoint (<run>/final), a model directory, a hub id or forge-tiny (none: only bench.targets).
    checkpoints: list[str] = field(default_factory=list, metadata=positional("checkpoint"))


class BenchParser(KeyValueParser):
    """The key=value parser, plus `bench.targets=<list of mappings | mapping | file>` (a list of dataclasses, which
    the generic parser does not read)."""

    def parse(self, argv: list[str]):
        rest: list[str] = []
        targets: list[ApiTarget] = []
        for item in argv:
            name, sep, value = item.partition("=")
            if sep and name in (TARGETS_KEY, TARGETS_KEY.removeprefix("bench.")):
                targets += parse_targets(value, len(targets))
            else:
                rest.append(item)
        args = super().parse(rest)
        if targets:  # rebuilt, so that BenchConfig checks the targets (URLs, names) as it checks every key
            args.bench = dataclasses.replace(args.bench, targets=[*args.bench.targets, *targets])
        return args


def parse_targets(value: str, offset: int = 0) -> list[ApiTarget]:
    """`[{base_url:...,model:...}, ...]`, `{...}` (Hydra override syntax) or a .yaml/.yml/.json file of either."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    text = value.strip()
    if text.endswith((".yaml", ".yml", ".json")) and not text.startswith(("[", "{")):
        from omegaconf import OmegaConf

        if not Path(text).is_file():
            raise ConfigError(f"{TARGETS_KEY}: no such file '{text}'")
        try:
            loaded: Any = OmegaConf.to_container(OmegaConf.load(text))
        except Exception as exc:  # a YAML syntax error: name the file
            raise ConfigError(f"{TARGETS_KEY}: cannot read {text}: {' '.join(str(exc).split())}") from None
    else:
        try:
            loaded = OverridesParser.create().parse_override(f"{TARGETS_KEY}={text}").value()
        except HydraException as exc:
            raise ConfigError(f"{TARGETS_KEY}: cannot parse '{text}': {' '.join(str(exc).split())}") from None
    items = loaded if isinstance(loaded, list) else [loaded]
    names = [f.name for f in dataclasses.fields(ApiTarget)]
    example = "[{base_url:http://localhost:11434/v1,model:llama3.2}]"
    targets = []
    for i, item in enumerate(items):
        where = f"{TARGETS_KEY}[{offset + i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a mapping such as {example}, got {item!r}")
        for key in item:
            if key not in names:
                raise ConfigError(f"{where}: unknown key '{key}'{did_you_mean(str(key), names)}")
        if not item.get("base_url") or not item.get("model"):
            missing = "base_url" if not item.get("base_url") else "model"
            raise ConfigError(f"{where}.{missing}: required, e.g. {example}")
        fields: dict[str, Any] = {k: None if v is None else str(v) for k, v in item.items()}
        targets.append(ApiTarget(**fields))
    return targets


PARSER = BenchParser(
    BenchArgs,
    "bench",
    optional_prefix="bench.",
    example="forge-trl bench outputs/sft/final outputs/dpo/final "
    "'bench.targets=[{base_url:http://localhost:11434/v1,model:llama3.2}]' "
    "bench.judge.baseline=outputs/sft/final bench.judge.url=http://localhost:8000/v1",
)
KEYS = BenchParser(BenchKeys, "bench", optional_prefix="bench.", example=PARSER.example)
DEFAULT_OUT = "outputs/bench"


def bench_config(overrides: list[str]) -> BenchConfig:
    """A BenchConfig from `key=value` overrides (with or without the `bench.` prefix)."""
    return KEYS.parse(overrides).bench


def bench(args: BenchArgs) -> None:
    from forge_trl.bench.runner import run_bench
    from forge_trl.commands.console import LOG_FILE, log_to_file

    if not args.checkpoints and not args.bench.targets:
        raise ConfigError(f"no checkpoint given (and no bench.targets); usage: {PARSER.usage()}")
    out = args.bench.out or DEFAULT_OUT
    log_to_file(Path(out) / LOG_FILE)
    run_bench(args.checkpoints, args.bench, out)


def main(argv: list[str] | None = None) -> int:
    return PARSER.run(argv, bench, keeps_log=True)


if __name__ == "__main__":
    sys.exit(main())
