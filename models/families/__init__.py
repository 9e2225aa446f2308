"""Build halves of the model families, by model key."""

from __future__ import annotations

from models.errors import BuildError
from models.families.base import ALL_VARIANTS, Builder
from models.families.digits import DigitsCNN, DigitsMLP
from models.families.minilm import MiniLMBuilder
from models.settings import BuildSettings

BUILDERS: dict[str, type[Builder]] = {b.key: b for b in (DigitsMLP, DigitsCNN, MiniLMBuilder)}

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
    try:
        return BUILDERS[key](settings)
    except KeyError:
        raise BuildError(f"unknown model {key!r}: choose one of {', '.join(BUILDERS)}") from None


def check_variant(builder: Builder, variant: str) -> None:
    if variant not in builder.variants:
        known = ", ".join(builder.variants)
        where = "" if variant in ALL_VARIANTS else f" (known variants: {', '.join(ALL_VARIANTS)})"
        raise BuildError(f"unknown variant {variant!r} for {builder.key}: choose one of {known}{where}")
