"""text-classification, build half: labeled JSONL or plain sentences, judged on top-1."""

from __future__ import annotations

from pathlib import Path

from bentos.tasks import Codec
from models.tasks.base import (
    Dataset,
    batch_axes,
    classification_data_gate,
    classification_evaluate,
    classification_headline,
)
from models.tasks.text import load_texts


def load(path: Path, codec: Codec, labels: list[str] | None, labeled: bool) -> Dataset:
    return load_texts(path, labels, labeled)


# Both classification task types are judged alike: accuracy drop with labels, top-1 agreement without.
evaluate, gate = classification_evaluate, classification_data_gate
headline, output_axes = classification_headline, batch_axes
