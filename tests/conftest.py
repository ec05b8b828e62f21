"""Shared fixtures: one cache of the built tiny model per test session, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from forge_trl.trainers.callbacks import read_metrics

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def forge_cache(tmp_path_factory):
    """Build the tiny models and demo data once per session, away from the user's cache."""
    cache = tmp_path_factory.mktemp("forge_cache")
    previous = os.environ.get("FORGE_TRL_CACHE")
    os.environ["FORGE_TRL_CACHE"] = str(cache)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    yield cache
    if previous is None:
        os.environ.pop("FORGE_TRL_CACHE", None)
    else:
        os.environ["FORGE_TRL_CACHE"] = previous


def run_cli(*overrides: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m forge_trl <overrides>` in a fresh process, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "forge_trl", *overrides],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
    )


def train_losses(output_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(output_dir) if "loss" in r]


@pytest.fixture
def cli():
    return run_cli
