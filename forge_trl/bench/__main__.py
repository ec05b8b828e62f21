"""`python -m forge_trl.bench` is `forge-trl bench` (forge_trl/commands/bench.py)."""

import sys

from forge_trl.commands import run_subcommand

if __name__ == "__main__":
    sys.exit(run_subcommand("bench", sys.argv[1:]))
