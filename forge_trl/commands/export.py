"""`forge-trl export checkpoint=<run>/final out=<dir> [overwrite=true]` (also `python -m forge_trl.export`)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from forge_trl.commands.args import KeyValueParser


@dataclass
class ExportArgs:
    """Export a forge checkpoint as a standard Hugging Face model directory, loadable without forge_trl (LoRA merged;
    moe_expert_lora as a native MoE model; mixture_lora as base model + adapter + loader script)."""

    # The checkpoint: a forge run's final/ directory (or any model forge can load).
    checkpoint: str
    # The export directory.
    out: str
    # Replace a non-empty `out`.
    overwrite: bool = False


PARSER = KeyValueParser(
    ExportArgs, "export", example="forge-trl export checkpoint=outputs/moe_dpo/final out=exports/moe_dpo"
)


def export(args: ExportArgs) -> None:
    from forge_trl.export import export_checkpoint

    export_checkpoint(args.checkpoint, args.out, overwrite=args.overwrite)


def main(argv: list[str] | None = None) -> int:
    return PARSER.run(argv, export)  # no log file: the export directory holds only the model


if __name__ == "__main__":
    sys.exit(main())
