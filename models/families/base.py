"""What every family's build half provides to the pipeline stages."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from bentos.tasks import Codec
from models.errors import BuildError
from models.settings import BuildSettings
from models.workdir import ModelDir

if TYPE_CHECKING:
    import onnx
    import onnxruntime as ort
    import torch

ALL_VARIANTS = ("fp32", "int8-dynamic", "int8-static", "fp16", "pruned", "distilled")


def run_batched(session: ort.InferenceSession, codec: Codec, items: list[Any], batch: int = 64) -> np.ndarray:
    outs = [session.run(None, codec.encode(items[i:i + batch]))[0] for i in range(0, len(items), batch)]
    return np.concatenate(outs)


class Builder(ABC):
    """The build half of one model: how it trains or loads, exports and is evaluated."""

    key: ClassVar[str]
    family: ClassVar[str]
    task: ClassVar[str]
    variants: ClassVar[tuple[str, ...]]
    parity_tolerance: ClassVar[float]
    input_names: ClassVar[tuple[str, ...]]
    output_name: ClassVar[str]

    def __init__(self, settings: BuildSettings) -> None:
        self.settings = settings

    # --- serving half -------------------------------------------------------------
    @abstractmethod
    def codec(self) -> Codec: ...

    def extra_artifacts(self) -> dict[str, Path]:
        """Files stored next to the model besides the graph (tokenizer files, say)."""
        return {}

    # --- torch side ---------------------------------------------------------------
    def train(self, md: ModelDir) -> dict[str, Any]:
        raise BuildError(f"{self.key} is pretrained and has no train stage; run `python -m models export {self.key}`")

    @abstractmethod
    def load_torch(self, md: ModelDir) -> torch.nn.Module: ...

    @abstractmethod
    def dynamic_shapes(self) -> dict[str, dict[int, Any]]: ...

    def legacy_dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes = {name: {0: "batch"} for name in (*self.input_names, self.output_name)}
        return axes

    def prune(self, module: torch.nn.Module) -> tuple[torch.nn.Module, dict[str, Any]]:
        raise BuildError(f"variant 'pruned' is not available for {self.key}")

    def distill(self, md: ModelDir) -> tuple[torch.nn.Module, dict[str, Any]]:
        raise BuildError(f"variant 'distilled' is not available for {self.key}; it exists for digits-cnn")

    # --- data ---------------------------------------------------------------------
    @abstractmethod
    def eval_items(self) -> list[Any]: ...

    @abstractmethod
    def calibration_items(self) -> list[Any]: ...

    def bench_items(self, batch: int) -> list[Any]:
        items = self.eval_items()
        return [items[i % len(items)] for i in range(batch)]

    def example_items(self) -> list[Any]:
        return self.eval_items()[:2]

    # --- optimization knobs -------------------------------------------------------
    def static_quant_nodes(self, model: onnx.ModelProto) -> list[str] | None:
        """Nodes that static int8 may quantize; None means every supported node."""
        return None

    def static_quant_exclude(self, model: onnx.ModelProto) -> list[str]:
        """Nodes that static int8 must leave in float."""
        return []

    def transformer_fusion(self) -> dict[str, Any] | None:
        """Arguments for ORT's transformer optimizer, for families it applies to."""
        return None

    def fp32_candidates(self, md: ModelDir) -> dict[str, Path]:
        return {"dynamo": md.require_export()}

    # --- quality ------------------------------------------------------------------
    @abstractmethod
    def evaluate(self, candidate: ort.InferenceSession, baseline: ort.InferenceSession) -> dict[str, Any]:
        """Quality metrics of `candidate` against the fp32 `baseline`."""

    @abstractmethod
    def gate(self, metrics: dict[str, Any], max_drop: float) -> list[str]:
        """The reasons `metrics` fail the accuracy-retention gate; empty when it passes."""

    @abstractmethod
    def headline(self, metrics: dict[str, Any]) -> str:
        """The one quality figure `list` shows."""

    def gate_context(self) -> dict[str, Any]:
        """What the gate measured on (data and its sha256) and its thresholds, for the version's metadata."""
        return {}

    def lineage(self) -> dict[str, Any]:
        """Where the model came from, beyond the pipeline's own lineage (imports: source and its sha256)."""
        return {}
