"""`forge-trl <subcommand>`: one command for every entry point (`python -m forge_trl` is `forge-trl train`)."""

from __future__ import annotations

import importlib
import sys

# Subcommand -> module with `main(argv) -> int | None`. `train` is the default when the first word is not one.
SUBCOMMANDS = {
    "train": "forge_trl.commands.train",
    "pipeline": "forge_trl.commands.pipeline",
    "bench": "forge_trl.commands.bench",
    "export": "forge_trl.commands.export",
    "convert": "forge_trl.commands.convert",
    "preprocess": "forge_trl.commands.preprocess",
    "sweep-report": "forge_trl.commands.sweep_report",
    "demo": "forge_trl.commands.demo",
}


def run_subcommand(name: str, argv: list[str]) -> int:
    """Run one subcommand's `main` and turn its result into an exit status."""
    status = importlib.import_module(SUBCOMMANDS[name]).main(argv)
    return status if isinstance(status, int) else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return run_subcommand(argv[0], argv[1:])
    return run_subcommand("train", argv)


def entry_point() -> None:
    """The `forge-trl` console script."""
    sys.exit(main())
