"""`python -m forge_trl.demo` is `forge-trl demo` (forge_trl/commands/demo.py)."""

import sys

from forge_trl.commands import run_subcommand

if __name__ == "__main__":
    sys.exit(run_subcommand("demo", sys.argv[1:]))
