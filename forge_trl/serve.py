"""`python -m forge_trl.serve` is `forge-trl serve` (forge_trl/commands/serve.py)."""

import sys

from forge_trl.commands import run_subcommand

if __name__ == "__main__":
    sys.exit(run_subcommand("serve", sys.argv[1:]))
