"""`python -m forge_trl ...` is `forge-trl ...` (train by default; a lone --help shows the training help)."""

from forge_trl.commands import entry_point

if __name__ == "__main__":
    entry_point(bare_help="train")
