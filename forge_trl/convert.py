"""`python -m forge_trl.convert` is `forge-trl convert` (forge_trl/commands/convert.py)."""

import sys

from forge_trl.commands import run_subcommand

if __name__ == "__main__":
    sys.exit(run_subcommand("convert", sys.argv[1:]))
