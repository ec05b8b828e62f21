"""`forge-trl <subcommand>`: one command for every entry point (`python -m forge_trl` is `forge-trl train`)."""

from __future__ import annotations

import importlib
import sys
from typing import NamedTuple

HELP_FLAGS = ("-h", "--help")


class Subcommand(NamedTuple):
    module: str  # has `main(argv) -> int | None`
    summary: str  # one line for `forge-trl --help`


# `train` is the default when the first word is not a subcommand (`forge-trl task=dpo` trains).
SUBCOMMANDS = {
    "train": Subcommand(
        "forge_trl.commands.train",
        "train one run composed from the config groups model, injection, task, data (the default)",
    ),
    "pipeline": Subcommand(
        "forge_trl.commands.pipeline",
        "train pipeline paths a-e (SFT -> DPO/ORPO -> RM -> PPO) stage by stage, then bench them",
    ),
    "bench": Subcommand(
        "forge_trl.commands.bench",
        "evaluate checkpoints on held-out data (accuracy, format, preference, RM score, win rate)",
    ),
    "export": Subcommand("forge_trl.commands.export", "export a checkpoint as a standard Hugging Face model directory"),
    "serve": Subcommand(
        "forge_trl.commands.serve",
        "serve a checkpoint behind an OpenAI-compatible chat API (transformers serve or vLLM)",
    ),
    "convert": Subcommand(
        "forge_trl.commands.convert", "rename the fields of foreign JSONL or dataset rows into a forge data layout"
    ),
    "preprocess": Subcommand(
        "forge_trl.commands.preprocess", "tokenize a run's data once into a cache that the run trains from"
    ),
    "sweep-report": Subcommand(
        "forge_trl.commands.sweep_report", "one table of a sweep's hyperparameters against its metrics"
    ),
    "report": Subcommand("forge_trl.commands.report", "one self-contained HTML page of a run, pipeline or sweep"),
    "demo": Subcommand(
        "forge_trl.commands.demo", "pretrain -> SFT -> ORPO on the tiny model and demo suite, with a held-out table"
    ),
}


def usage() -> str:
    """`forge-trl --help`: the subcommands, one line each."""
    width = max(map(len, SUBCOMMANDS))
    return "\n".join(
        [
            "usage: forge-trl [<subcommand>] [arguments ...]",
            "",
            "subcommands (without one, forge-trl trains: `forge-trl task=dpo` is `forge-trl train task=dpo`,",
            "as is `python -m forge_trl task=dpo`):",
            *(f"  {name:<{width}}  {sub.summary}" for name, sub in SUBCOMMANDS.items()),
            "",
            "`forge-trl <subcommand> --help` lists its arguments and their defaults.",
        ]
    )


def run_subcommand(name: str, argv: list[str]) -> int:
    """Run one subcommand's `main` and turn its result into an exit status."""
    status = importlib.import_module(SUBCOMMANDS[name].module).main(argv)
    return status if isinstance(status, int) else 0


def main(argv: list[str] | None = None, *, bare_help: str = "subcommands") -> int:
    """Dispatch on the first word. `bare_help`: what a lone `--help` shows, the subcommands (`forge-trl --help`)
    or the training help (`python -m forge_trl --help`, the training command's headline form)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return run_subcommand(argv[0], argv[1:])
    if len(argv) == 1 and argv[0] in HELP_FLAGS and bare_help == "subcommands":
        print(usage())
        return 0
    if argv and "=" not in argv[0] and not argv[0].startswith(("-", "~", "+")):
        from forge_trl.errors import EXIT_USER_ERROR, ConfigError, did_you_mean

        # Not a Hydra override either (those have `=`, or start with ~ or +): a misspelt subcommand.
        message = f"unknown subcommand '{argv[0]}'{did_you_mean(argv[0], SUBCOMMANDS)} (see forge-trl --help)"
        print(ConfigError(message).one_line(), file=sys.stderr)
        return EXIT_USER_ERROR
    return run_subcommand("train", argv)


def entry_point(*, bare_help: str = "subcommands") -> None:
    """The `forge-trl` console script (and `python -m forge_trl` with `bare_help="train"`)."""
    sys.exit(main(bare_help=bare_help))
