"""Helpers for the build-pipeline tests; the session fixtures live in tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

from models.families import get_builder
from models.families.base import Builder
from models.settings import BuildSettings
from models.workdir import ModelDir


def builder_for(key: str, work: Path) -> tuple[Builder, ModelDir]:
    builder = get_builder(key, BuildSettings(work_dir=work, threads=2))
    return builder, ModelDir(work, key)
