"""image-classification: images or pixel arrays in, labels with probabilities out.

Inputs come as `{"inputs": [pixel arrays]}` (fed as they are, reshaped to the model's row
shape), as `{"images": [base64 PNG or JPEG]}`, or as a multipart upload of `image` files.
Images are decoded and preprocessed from the version's stored config (resize, centre
crop, scale, mean/std, channel order) in the batch thread, not on the event loop.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bentos.errors import InvalidInput
from bentos.tasks.base import Codec, Feed, Limits, Task, check_rows, row_shape

if TYPE_CHECKING:
    from bentos.tasks.playground_kit import Kit

# The digits model's row: scikit-learn's 8x8 images, 0..16 (kept for its existing body).
INK_MAX = 16.0


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def ink_box(image: np.ndarray, side: int = 8, top: float = INK_MAX) -> np.ndarray:
    """A drawn or scanned glyph (any size, RGB(A) or grey) as `side`x`side` ink values in 0..top.

    Ink is what differs from the background; the glyph is cropped to its bounding box,
    centred on a square with a margin and block-averaged, as scikit-learn's digits were made.
    Raises ValueError for an empty image.
    """
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 3:
        alpha = arr[..., 3] / 255.0 if arr.shape[-1] == 4 else np.ones(arr.shape[:2], np.float32)
        grey = arr[..., :3].mean(axis=-1)
        background = np.median(grey[alpha > 0.5]) if (alpha > 0.5).any() else 255.0
        ink = np.abs(grey - background) * alpha
        if not (alpha > 0.5).all():  # a transparent canvas: strokes are the opaque part
            ink = np.maximum(ink, (255.0 - grey) * alpha)
    else:
        ink = np.abs(arr - np.median(arr))
    mask = ink > ink.max() * 0.2 if ink.max() > 0 else np.zeros_like(ink, dtype=bool)
    if mask.sum() < 3:
        raise ValueError("the image is empty: draw or upload a digit first")
    rows, cols = np.where(mask)
    crop = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    size = int(max(crop.shape) * 1.25) + 1
    square = np.zeros((size, size), np.float32)
    y, x = (size - crop.shape[0]) // 2, (size - crop.shape[1]) // 2
    square[y:y + crop.shape[0], x:x + crop.shape[1]] = crop
    edges = np.linspace(0, size, side + 1).astype(int)
    small = np.array([[square[edges[i]:edges[i + 1], edges[j]:edges[j + 1]].mean() for j in range(side)]
                      for i in range(side)], np.float32)
    small = small / small.max() * top if small.max() > 0 else small
    return np.round(small)


def image_to_pixels(image: np.ndarray) -> list[float]:
    """The digits model's 64 pixels for a drawn or uploaded digit."""
    return [float(v) for v in ink_box(image).reshape(-1)]


def open_image(data: bytes, field: str, max_pixels: int) -> Any:
    """Check a PNG or JPEG header and its size without decoding the pixels (cheap, on the loop)."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError):
        raise InvalidInput(field, "not a PNG or JPEG image") from None
    if image.format not in ("PNG", "JPEG"):
        raise InvalidInput(field, f"{image.format} images are not accepted; send PNG or JPEG")
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidInput(field, f"{width}x{height} is over {max_pixels} pixels (limits.max_image_pixels)",
                           {"max_image_pixels": max_pixels})
    return image


class ImageCodec(Codec):
    """`preprocess`: labels, output ("probabilities" or "logits"), pixel_range, and `image`:
    mode ("RGB" or "L"), size [h, w], resize (shorter side), mean, std, scale, layout
    ("CHW", "HWC" or "flat"), fit ("resize", or "ink" for glyphs like the digits)."""

    oip_output: ClassVar[str | None] = "probabilities"

    @property
    def input(self) -> dict[str, Any]:
        return self.inputs[0]

    @property
    def row(self) -> tuple[int, ...]:
        return tuple(int(d) for d in row_shape(self.input))

    @property
    def labels(self) -> list[str] | None:
        labels = self.preprocess.get("labels")
        return list(labels) if labels else None

    def check(self, items: list[Any], limits: Limits) -> None:
        """Every image's header, and the pixels of all of them together, before anything decodes them."""
        total = 0
        for i, item in enumerate(items):
            if isinstance(item, bytes):
                width, height = open_image(item, f"images.{i}", limits.max_image_pixels).size
                total += width * height
        if total > limits.max_request_pixels:
            raise InvalidInput("images", f"{total} pixels in all, over {limits.max_request_pixels} "
                               "(limits.max_request_pixels)", {"max_request_pixels": limits.max_request_pixels})
        arrays = [i for i in items if not isinstance(i, bytes)]
        low, high = self.preprocess.get("pixel_range") or (None, None)
        check_rows(arrays, "inputs", math.prod(self.row), low, high, self.allow_non_finite)

    def encode(self, items: list[Any]) -> Feed:
        dtype = self.input["dtype"]
        if not any(isinstance(i, bytes) for i in items):  # pixel arrays: one conversion for the batch
            return {self.input["name"]: np.asarray(items, dtype).reshape(len(items), *self.row)}
        rows = [self.from_image(i) if isinstance(i, bytes) else np.asarray(i, np.float32).reshape(self.row)
                for i in items]
        return {self.input["name"]: np.stack(rows).astype(dtype, copy=False)}

    def from_image(self, data: bytes) -> np.ndarray:
        """One image as the model's row; an image that passed the header check but does not decode, or (for
        glyphs) is blank, is the caller's error (422), never the version's."""
        from PIL import Image

        try:
            return self._from_image(data)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise InvalidInput("images", f"could not be read as an image: {str(exc)[:200]}") from None

    def _from_image(self, data: bytes) -> np.ndarray:
        from PIL import Image

        conf = self.preprocess.get("image") or {}
        image: Any = Image.open(io.BytesIO(data))
        if conf.get("fit") == "ink":
            side = math.isqrt(math.prod(self.row))
            return ink_box(np.asarray(image.convert("RGBA")), side, float(conf.get("scale", INK_MAX))).reshape(
                self.row)
        height, width = conf.get("size") or self._spatial()
        image = image.convert(conf.get("mode", "RGB"))
        shorter = int(conf.get("resize") or min(height, width))
        ratio = shorter / min(image.size)
        image = image.resize((max(width, round(image.width * ratio)), max(height, round(image.height * ratio))),
                             Image.Resampling.BILINEAR)
        left, top = (image.width - width) // 2, (image.height - height) // 2
        pixels = np.asarray(image.crop((left, top, left + width, top + height)), np.float32)
        scaled = pixels.reshape(height, width, -1) * np.float32(conf.get("scale", 1 / 255))
        mean, std = np.asarray(conf.get("mean", 0.0), np.float32), np.asarray(conf.get("std", 1.0), np.float32)
        arr: np.ndarray = (scaled - mean) / std
        layout = conf.get("layout", "CHW")
        if layout == "CHW":
            arr = arr.transpose(2, 0, 1)
        return arr.reshape(self.row)

    def _spatial(self) -> tuple[int, int]:
        row = self.row
        return (row[1], row[2]) if len(row) == 3 and row[0] in (1, 3) else (row[0], row[1])

    def split(self, feed: Feed, outputs: list[np.ndarray]) -> list[Any]:
        out = outputs[0]
        return list(_softmax(out) if self.preprocess.get("output") == "logits" else out)

    def predicted_classes(self, rows: list[Any]) -> tuple[np.ndarray, int] | None:
        probabilities = np.asarray(rows)
        return probabilities.argmax(axis=1), probabilities.shape[1]

    def decode(self, rows: list[Any], **options: Any) -> list[dict[str, Any]]:
        labels, top_k = self.labels, options.get("top_k")
        out = []
        for row in rows:
            best = int(row.argmax())
            item: dict[str, Any] = {"label": labels[best] if labels else best, "confidence": float(row[best]),
                                    "probabilities": row.tolist()}
            if top_k:
                order = np.argsort(-row)[:top_k]
                item["top_k"] = [{"label": labels[i] if labels else int(i), "probability": float(row[i])}
                                 for i in order]
            out.append(item)
        return out

    def agreement(self, a: Any, b: Any) -> float:
        return float(int(np.argmax(a)) == int(np.argmax(b)))

    def warmup_items(self) -> list[Any]:
        low, high = self.preprocess.get("pixel_range") or (0.0, 1.0)
        return [np.full(self.row, (low + high) / 2, np.float32)]



def _b64(value: str, field: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{field} is not valid base64") from None


class ImageClassification(Task):
    name: ClassVar[str] = "image-classification"
    verb: ClassVar[str] = "predict"
    items_field: ClassVar[str] = "inputs"
    result_field: ClassVar[str] = "predictions"
    summary: ClassVar[str] = "Classify images (PNG/JPEG, base64 or multipart) or pixel arrays"
    codec_class: ClassVar[type[Codec]] = ImageCodec

    @classmethod
    def request_model(cls, limits: Limits, signature: dict[str, Any] | None) -> type[BaseModel]:
        row: Any = Any
        if signature:  # a declared signature checks pixel counts and ranges in the schema itself
            spec = signature["inputs"][0]
            count = math.prod(int(d) for d in row_shape(spec))
            low, high = spec.get("range") or (None, None)
            pixel = Annotated[float, Field(ge=low, le=high, allow_inf_nan=False, strict=True)]
            row = Annotated[list[pixel], Field(min_length=count, max_length=count)]
        max_rows, max_b64 = limits.max_rows, limits.max_body_bytes

        class PredictRequest(BaseModel):
            model_config = ConfigDict(extra="forbid")
            inputs: list[row] | None = Field(
                None, min_length=1, max_length=max_rows, description=f"1 to {max_rows} pixel arrays")
            images: list[Annotated[str, Field(min_length=1, max_length=max_b64)]] | None = Field(
                None, min_length=1, max_length=max_rows, description=f"1 to {max_rows} base64 PNG or JPEG images")
            top_k: int | None = Field(None, ge=1, le=1000, description="Also return the k most likely labels")

            @model_validator(mode="after")
            def _one_kind(self) -> PredictRequest:
                if (self.inputs is None) == (self.images is None):
                    raise ValueError("send exactly one of 'inputs' (pixel arrays) or 'images' (base64)")
                return self

        return PredictRequest

    @classmethod
    def items(cls, body: BaseModel) -> list[Any]:
        images = getattr(body, "images", None)
        if images is not None:
            out = []
            for i, value in enumerate(images):
                try:
                    out.append(_b64(value, f"images.{i}"))
                except ValueError as exc:
                    raise InvalidInput(f"images.{i}", str(exc).split(": ")[-1]) from None
            return out
        return list(getattr(body, "inputs", None) or [])  # converted once per batch, in encode

    @classmethod
    def options(cls, body: BaseModel) -> dict[str, Any]:
        return {"top_k": getattr(body, "top_k", None)}

    @classmethod
    def result_schema(cls) -> dict[str, Any]:
        return {"type": "object", "properties": {
            "label": {"anyOf": [{"type": "integer"}, {"type": "string"}]}, "confidence": {"type": "number"},
            "probabilities": {"type": "array", "items": {"type": "number"}},
            "top_k": {"type": "array", "items": {"type": "object"}}}, "required": ["label", "confidence"]}

    @classmethod
    def check_signature(cls, signature: dict[str, Any]) -> list[str]:
        problems = super().check_signature(signature)
        if len(signature.get("inputs") or []) != 1:
            problems.append("image-classification models take exactly one input tensor")
        return problems

    @classmethod
    def playground(cls, kit: Kit) -> None:
        gr = kit.gr
        with gr.Row():
            with gr.Column():
                source = gr.Radio(["example", "sketch", "upload"], value="example" if kit.examples else "upload",
                                  label="Input", interactive=True)
                names = [name for name, _, _ in kit.examples]
                example = gr.Dropdown(names, value=names[0] if names else None, label="Example",
                                      visible=bool(names), interactive=True)
                sketch = gr.Sketchpad(type="numpy", image_mode="RGBA", canvas_size=(280, 280), label="Draw",
                                      elem_classes=[kit.SKETCHPAD_CLASS])  # opened with its brush (playground.py)
                # A path, not pixels: Gradio would decode the upload before our limits could look at it.
                upload = gr.Image(type="filepath", image_mode=None, label="Upload an image")
            with gr.Column():
                label = gr.Label(num_top_classes=10, label="Confidence")

        def to_items(src: str, drawn: Any, uploaded: Any, chosen: str | None) -> list[Any]:
            if src == "example":
                match = [item for name, item, _ in kit.examples if name == chosen]
                if not match:
                    raise ValueError("pick an example from the list")
                return [match[0]]
            if src == "upload":
                if not uploaded:
                    raise ValueError("no image uploaded")
                return [kit.image_file(uploaded)]
            picture = drawn.get("composite") if drawn is not None else None
            if picture is None:
                raise ValueError("the sketchpad is empty: draw something first")
            return [kit.png(picture)]

        def render(items: list[Any], results: list[dict[str, Any]]) -> tuple[Any, ...]:
            top = results[0]
            names = kit.labels()
            return ({str(names[i] if names else i): p for i, p in enumerate(top["probabilities"])},)

        kit.panel([source, sketch, upload, example], to_items, [label], render)
