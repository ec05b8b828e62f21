"""`python -m forge_trl.export` is `forge-trl export` (forge_trl/commands/export.py)."""

import sys

from forge_trl.commands import run_subcommand

if __name__ == "__main__":
    sys.exit(run_subcommand("export", sys.argv[1:]))
