"""`python -m forge_trl.sweep_report` is `forge-trl sweep-report` (forge_trl/commands/sweep_report.py)."""

import sys

from forge_trl.commands import run_subcommand

if __name__ == "__main__":
    sys.exit(run_subcommand("sweep-report", sys.argv[1:]))
