"""`forge-trl bench <checkpoint> [<checkpoint> ...] [bench.<key>=<value> ...]` (also `python -m forge_trl.bench`)

Evaluates each checkpoint (a forge `<run>/final`, a model directory, a hub id or `forge-tiny`) on held-out
data and prints one markdown table; bench.json, the plots and forge.log go to `bench.out` (default outputs/bench).
Keys are those of forge_trl/config/bench.py, with or without the `bench.` prefix, e.g.

    forge-trl bench outputs/sft/final outputs/dpo/final \\
        bench.judge.baseline=outputs/sft/final bench.judge.url=http://localhost:8000/v1
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from forge_trl.commands.args import KeyValueParser, positional
from forge_trl.config.bench import BenchConfig


@dataclass
class BenchKeys:
    """The `bench.*` keys (forge_trl/config/bench.py)."""

    bench: BenchConfig = field(default_factory=BenchConfig)


@dataclass(kw_only=True)
class BenchArgs(BenchKeys):
    """Evaluate checkpoints on held-out data (the demo suite's held-out split unless bench.prompts / bench.pairs
    name files): one markdown table on stdout; bench.json and the plots go to `bench.out` (default outputs/bench)."""

    # A forge checkpoint (<run>/final), a model directory, a hub id or forge-tiny.
    checkpoints: list[str] = field(metadata=positional("checkpoint"))


PARSER = KeyValueParser(
    BenchArgs,
    "bench",
    optional_prefix="bench.",
    example="forge-trl bench outputs/sft/final outputs/dpo/final "
    "bench.judge.baseline=outputs/sft/final bench.judge.url=http://localhost:8000/v1",
)
KEYS = KeyValueParser(BenchKeys, "bench", optional_prefix="bench.", example=PARSER.example)
DEFAULT_OUT = "outputs/bench"


def bench_config(overrides: list[str]) -> BenchConfig:
    """A BenchConfig from `key=value` overrides (with or without the `bench.` prefix)."""
    return KEYS.parse(overrides).bench


def bench(args: BenchArgs) -> None:
    from forge_trl.bench.runner import run_bench
    from forge_trl.commands.console import LOG_FILE, log_to_file

    out = args.bench.out or DEFAULT_OUT
    log_to_file(Path(out) / LOG_FILE)
    run_bench(args.checkpoints, args.bench, out)


def main(argv: list[str] | None = None) -> int:
    return PARSER.run(argv, bench, keeps_log=True)


if __name__ == "__main__":
    sys.exit(main())
