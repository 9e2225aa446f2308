"""Shared fixtures: temporary stores and work dirs, and the CLI run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CLI = Callable[..., subprocess.CompletedProcess[str]]


def pytest_configure(config: pytest.Config) -> None:
    # In-process registration uses this session's own store, never the user's.
    os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="switchyard-test-bentoml-")
    os.environ["BENTOML_DO_NOT_TRACK"] = "True"
    os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture
def store_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a subprocess with its own empty BentoML store."""
    return {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True",
            "HF_HUB_OFFLINE": "1", "SWITCHYARD_THREADS": "2"}


@pytest.fixture
def cli(store_env: dict[str, str]) -> CLI:
    """Run `python -m models ...` in a subprocess; returns the completed process."""

    def run(*args: str, env: dict[str, str] | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "models", *args], cwd=ROOT, env=env or store_env,
                              capture_output=True, text=True, timeout=900)
        if check and proc.returncode != 0:
            raise AssertionError(f"models {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        return proc

    return run
