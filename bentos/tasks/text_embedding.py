"""text-embedding: texts in, one vector per text out.

Pooling ("mean" over the attention mask, "cls", or "graph" when the graph pools itself)
and L2 normalisation come from the version's stored config. Agreement is cosine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from bentos.tasks.base import Codec, Feed
from bentos.tasks.text import TextCodec, TextTask

if TYPE_CHECKING:
    from bentos.tasks.playground_kit import Kit

MIN_SENTENCES, MAX_SENTENCES = 2, 10
DEFAULT_SENTENCES = ("A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell.")


PROJECTIONS, PROJECTION_SEED = 4, 20_261_124


class EmbeddingCodec(TextCodec):
    agreement_name: ClassVar[str] = "cosine"
    agreement_key: ClassVar[str] = "min_cosine"

    oip_output: ClassVar[str | None] = "embeddings"

    def split(self, feed: Feed, outputs: list[np.ndarray]) -> list[Any]:
        out = outputs[0].astype(np.float32, copy=False)
        pooling = self.preprocess.get("pooling", "graph")
        if out.ndim == 3:  # token states: pool them here
            if pooling == "cls":
                out = out[:, 0]
            else:
                mask = feed["attention_mask"][..., None].astype(np.float32)
                out = (out * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        if self.preprocess.get("normalize", False):
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return list(out)

    def output_features(self, rows: list[Any]) -> dict[str, np.ndarray]:
        """An embedding drifts in length (unless normalized) and direction: its norm, and its projections
        on four fixed random directions (the same seed at registration and at serving)."""
        vectors = np.asarray(rows, np.float64)
        directions = np.random.default_rng(PROJECTION_SEED).normal(size=(vectors.shape[1], PROJECTIONS))
        projected = vectors @ (directions / np.linalg.norm(directions, axis=0))
        return {"output.norm": np.linalg.norm(vectors, axis=1),
                **{f"output.projection[{i}]": projected[:, i] for i in range(PROJECTIONS)}}

    def decode(self, rows: list[Any], **options: Any) -> list[list[float]]:
        return [row.tolist() for row in rows]

    def agreement(self, a: Any, b: Any) -> float:
        return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))



class TextEmbedding(TextTask):
    name: ClassVar[str] = "text-embedding"
    verb: ClassVar[str] = "embed"
    result_field: ClassVar[str] = "embeddings"
    summary: ClassVar[str] = "Embed texts as vectors"
    codec_class: ClassVar[type[Codec]] = EmbeddingCodec

    @classmethod
    def result_schema(cls) -> dict[str, Any]:
        return {"type": "array", "items": {"type": "number"}}

    @classmethod
    def playground(cls, kit: Kit) -> None:
        gr = kit.gr
        text = gr.Textbox(lines=6, label=f"{MIN_SENTENCES} to {MAX_SENTENCES} sentences, one per line",
                          value="\n".join(DEFAULT_SENTENCES))
        plot = gr.Plot(label="Cosine similarity")

        def to_items(value: str) -> list[Any]:
            return kit.lines(value, MIN_SENTENCES, MAX_SENTENCES)

        def render(items: list[Any], results: list[list[float]]) -> tuple[Any, ...]:
            emb = np.asarray(results, np.float32)
            emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            return (kit.heatmap(emb @ emb.T, items),)

        kit.panel([text], to_items, [plot], render)
