"""`python -m forge_trl.preprocess` is `forge-trl preprocess` (forge_trl/commands/preprocess.py)."""

import sys

from forge_trl.commands import run_subcommand

if __name__ == "__main__":
    sys.exit(run_subcommand("preprocess", sys.argv[1:]))
