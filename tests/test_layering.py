"""The package's import layering (pyproject.toml [tool.importlinter]) holds, and the check really catches a breach."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_package_imports_follow_the_declared_layers_without_cycles():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_an_upward_import_breaks_the_layers_contract(tmp_path):
    """A copy of the package whose config layer imports the commands layer must fail the check, naming the import."""
    shutil.copytree(ROOT / "forge_trl", tmp_path / "forge_trl", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with (tmp_path / "forge_trl" / "config" / "__init__.py").open("a", encoding="utf-8") as handle:
        handle.write(
            "\n\ndef _upward():\n    from forge_trl.commands import main  # a function-local import counts too\n"
        )
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "forge_trl.config -> forge_trl.commands" in result.stdout
