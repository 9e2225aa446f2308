"""Build settings, read from SWITCHYARD_* environment variables when the CLI starts."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class BuildSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_")

    work_dir: Path = Field(Path("build"), description="Where stages keep intermediate artifacts.")
    threads: int = Field(2, ge=1, le=256, description="ONNX Runtime and torch intra-op threads.")
    seed: int = Field(0, description="Seed for data splits, training and sampling.")
