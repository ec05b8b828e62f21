"""`python -m forge_trl.pipeline` is `forge-trl pipeline` (forge_trl/commands/pipeline.py)."""

import sys

from forge_trl.commands import run_subcommand

if __name__ == "__main__":
    sys.exit(run_subcommand("pipeline", sys.argv[1:]))
