"""Build halves of the model families, by model key."""

from __future__ import annotations

import importlib

from models.errors import BuildError
from models.families.base import ALL_VARIANTS, Builder
from models.settings import BuildSettings

# Imported when asked for: the families import torch (3 s), which importing a user's ONNX file or listing the
# store never needs, and models.families.base is imported by every command through this package.
BUILDERS: dict[str, str] = {"digits-mlp": "models.families.digits:DigitsMLP",
                            "digits-cnn": "models.families.digits:DigitsCNN",
                            "minilm": "models.families.minilm:MiniLMBuilder"}

# What `build --all` and `make serve` produce.
DEFAULT_SET: tuple[tuple[str, str], ...] = (
    ("digits-mlp", "int8-dynamic"),
    ("digits-cnn", "fp32"),
    ("digits-cnn", "int8-static"),
    ("minilm", "fp32"),
    ("minilm", "int8-dynamic"),
    ("minilm", "int8-static"),
)


def get_builder(key: str, settings: BuildSettings) -> Builder:
    if key not in BUILDERS:
        raise BuildError(f"unknown model {key!r}: choose one of {', '.join(BUILDERS)}")
    module, name = BUILDERS[key].split(":")
    builder: type[Builder] = getattr(importlib.import_module(module), name)
    return builder(settings)


def check_variant(builder: Builder, variant: str) -> None:
    if variant not in builder.variants:
        known = ", ".join(builder.variants)
        where = "" if variant in ALL_VARIANTS else f" (known variants: {', '.join(ALL_VARIANTS)})"
        raise BuildError(f"unknown variant {variant!r} for {builder.key}: choose one of {known}{where}")
