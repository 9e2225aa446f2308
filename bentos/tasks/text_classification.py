"""text-classification: texts in, labels out, from a `tokenizer.json` and the model's `id2label`.

Single-label (softmax; the top label) or multi-label (sigmoid; every label over the
threshold), from the version's stored config. Agreement is top-1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from bentos.tasks.base import Codec, Feed
from bentos.tasks.image_classification import _softmax
from bentos.tasks.text import TextCodec, TextTask

if TYPE_CHECKING:
    from bentos.tasks.playground_kit import Kit


class LabelCodec(TextCodec):
    """`preprocess` adds: labels (id2label order), problem ("single_label" or "multi_label"), threshold."""

    oip_output: ClassVar[str | None] = "probabilities"

    @property
    def multi_label(self) -> bool:
        return self.preprocess.get("problem") == "multi_label"

    def labels(self) -> list[str]:
        return [str(label) for label in self.preprocess.get("labels") or []]

    def split(self, feed: Feed, outputs: list[np.ndarray]) -> list[Any]:
        logits = outputs[0].astype(np.float32, copy=False)
        return list(1 / (1 + np.exp(-logits)) if self.multi_label else _softmax(logits))

    def predicted_classes(self, rows: list[Any]) -> tuple[np.ndarray, int] | None:
        probabilities = np.asarray(rows)
        return probabilities.argmax(axis=1), probabilities.shape[1]

    def decode(self, rows: list[Any], **options: Any) -> list[dict[str, Any]]:
        labels = self.labels() or [str(i) for i in range(len(rows[0]))]
        threshold = float(self.preprocess.get("threshold", 0.5))
        out = []
        for row in rows:
            best = int(row.argmax())
            item: dict[str, Any] = {"label": labels[best], "score": float(row[best]),
                                    "scores": {label: float(p) for label, p in zip(labels, row, strict=False)}}
            if self.multi_label:
                item["labels"] = [label for label, p in zip(labels, row, strict=False) if p >= threshold]
            out.append(item)
        return out

    def agreement(self, a: Any, b: Any) -> float:
        return float(int(np.argmax(a)) == int(np.argmax(b)))



class TextClassification(TextTask):
    name: ClassVar[str] = "text-classification"
    verb: ClassVar[str] = "predict"
    result_field: ClassVar[str] = "predictions"
    summary: ClassVar[str] = "Classify texts"
    codec_class: ClassVar[type[Codec]] = LabelCodec

    @classmethod
    def result_schema(cls) -> dict[str, Any]:
        return {"type": "object", "properties": {
            "label": {"type": "string"}, "score": {"type": "number"},
            "scores": {"type": "object", "additionalProperties": {"type": "number"}},
            "labels": {"type": "array", "items": {"type": "string"}}}, "required": ["label", "score", "scores"]}

    @classmethod
    def playground(cls, kit: Kit) -> None:
        gr = kit.gr
        text = gr.Textbox(lines=4, label="Texts, one per line", value="What a wonderful day.\nThis is terrible.")
        table = gr.Dataframe(headers=["text", "label", "score"], label="Predictions")

        def to_items(value: str) -> list[Any]:
            return kit.lines(value, 1, kit.limits().max_rows)

        def render(items: list[Any], results: list[dict[str, Any]]) -> tuple[Any, ...]:
            return ([[t, r["label"], round(r["score"], 4)] for t, r in zip(items, results, strict=True)],)

        kit.panel([text], to_items, [table], render)

