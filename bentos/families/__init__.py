"""Serving halves of the model families: schema, pre- and post-processing, no torch.

A family's build half lives in `models/families/`. Adding a model means one module
in each; the server finds the serving half here by the `family` label in the store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bentos.families.base import Codec
from bentos.families.digits import DigitsCodec
from bentos.families.minilm import TextCodec

_CODECS: dict[str, type[Codec]] = {"digits": DigitsCodec, "minilm": TextCodec}

FAMILIES: tuple[str, ...] = tuple(_CODECS)


def codec_for(family: str, model_dir: Path, preprocess: dict[str, Any]) -> Codec:
    try:
        cls = _CODECS[family]
    except KeyError:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}") from None
    return cls.from_config(model_dir, preprocess)


__all__ = ["FAMILIES", "Codec", "codec_for"]
