"""Digits models trained and exported once per session, in a temporary work dir."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from models.export import export
from models.families import get_builder
from models.families.base import Builder
from models.settings import BuildSettings
from models.workdir import ModelDir


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digits-work")
    settings = BuildSettings(work_dir=root, threads=2)
    for key in ("digits-mlp", "digits-cnn"):
        builder = get_builder(key, settings)
        md = ModelDir(root, key)
        builder.train(md)
        export(builder, md)
    return root


@pytest.fixture
def digits_work(digits_root: Path, tmp_path: Path) -> Path:
    """A private copy of the trained and exported digits models, safe to modify."""
    dest = tmp_path / "work"
    shutil.copytree(digits_root, dest)
    return dest


def builder_for(key: str, work: Path) -> tuple[Builder, ModelDir]:
    builder = get_builder(key, BuildSettings(work_dir=work, threads=2))
    return builder, ModelDir(work, key)
