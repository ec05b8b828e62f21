"""`python -m forge_trl ...` is `forge-trl ...` (train by default)."""

from forge_trl.commands import entry_point

if __name__ == "__main__":
    entry_point()
