"""What every family's serving half provides."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

Feed = dict[str, np.ndarray]


class Codec(ABC):
    """Turns request items into the ONNX feed, and the ONNX output into response items."""

    family: ClassVar[str]
    output_name: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_config(cls, model_dir: Path, preprocess: dict[str, Any]) -> Codec: ...

    @classmethod
    @abstractmethod
    def schema(cls) -> dict[str, Any]:
        """Input and output names, dtypes and shapes, as stored with the model."""

    @abstractmethod
    def preprocess_config(self) -> dict[str, Any]:
        """What `from_config` needs to rebuild this codec from a stored model."""

    @classmethod
    @abstractmethod
    def warmup_items(cls) -> list[Any]:
        """A representative input, run before a version takes traffic."""

    @abstractmethod
    def encode(self, items: list[Any]) -> Feed: ...

    @abstractmethod
    def agreement(self, a: np.ndarray, b: np.ndarray) -> float:
        """How far two versions agree on one output row, in [0, 1] (shadow comparison)."""

    @abstractmethod
    def decode(self, output: np.ndarray) -> list[Any]: ...
