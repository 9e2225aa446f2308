"""image-classification: pixel arrays, PNG/JPEG images through the stored preprocessing, labels."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from bentos.errors import InvalidInput
from bentos.tasks import Limits
from bentos.tasks.base import tensor
from bentos.tasks.image_classification import ImageClassification, ImageCodec, image_to_pixels
from models.families.digits import PREPROCESS, SIGNATURE

LIMITS = Limits(max_rows=4, max_chars=10, max_body_bytes=100_000, max_image_pixels=10_000)
RGB = {"inputs": [tensor("image", "float32", ["batch", 3, 4, 4])],
       "outputs": [tensor("logits", "float32", ["batch", 3])]}
RGB_PRE = {"labels": ["cat", "dog", "eel"], "output": "logits",
           "image": {"mode": "RGB", "size": [4, 4], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}


def png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format=fmt)
    return out.getvalue()


def test_digits_pixels_round_trip_keeps_the_old_response() -> None:
    codec = ImageCodec(SIGNATURE, PREPROCESS)
    feed = codec.encode([np.zeros(64), np.full(64, 16.0)])
    assert feed["pixels"].shape == (2, 64) and feed["pixels"].dtype == np.float32
    probs = [np.array([0.0] * 3 + [1.0] + [0.0] * 6, np.float32)]
    assert codec.decode(probs) == [{"label": 3, "confidence": 1.0, "probabilities": probs[0].tolist()}]
    with pytest.raises(InvalidInput, match=r"inputs.0: expected 64 values, got 63"):
        codec.check([np.ones(63)], LIMITS)
    with pytest.raises(InvalidInput, match="less than or equal to 16"):
        codec.check([np.full(64, 17.0)], LIMITS)


def test_images_are_resized_cropped_normalised_and_laid_out_chw() -> None:
    codec = ImageCodec(RGB, RGB_PRE)
    picture = np.zeros((8, 12, 3), np.uint8)
    picture[..., 0] = 255  # pure red
    (row,) = codec.encode([png(picture)])["image"]
    assert row.shape == (3, 4, 4)
    np.testing.assert_allclose(row[0], 2.0)  # (1 - 0.5) / 0.25
    np.testing.assert_allclose(row[1:], -2.0)
    out = codec.decode(codec.split({}, [np.array([[0.0, 3.0, 1.0]], np.float32)]), top_k=2)[0]
    assert out["label"] == "dog" and abs(sum(out["probabilities"]) - 1) < 1e-6
    assert [t["label"] for t in out["top_k"]] == ["dog", "eel"]


def test_a_digit_drawn_as_an_image_becomes_the_dataset_scale() -> None:
    canvas = np.zeros((280, 280, 4), np.uint8)
    canvas[60:220, 130:150] = (0, 0, 0, 255)  # a black vertical stroke on a transparent canvas: a "1"
    pixels = np.array(image_to_pixels(canvas)).reshape(8, 8)
    assert pixels.max() == 16 and pixels.min() == 0
    assert pixels[:, 3:5].sum() > pixels[:, :2].sum() + pixels[:, 6:].sum()
    via_png = ImageCodec(SIGNATURE, PREPROCESS).encode([png(canvas)])["pixels"][0]
    np.testing.assert_array_equal(via_png, pixels.reshape(-1))
    with pytest.raises(ValueError, match="empty"):
        image_to_pixels(np.zeros((50, 50, 4), np.uint8))


def test_bad_images_are_named_before_anything_is_queued() -> None:
    codec = ImageCodec(RGB, RGB_PRE)
    with pytest.raises(InvalidInput, match=r"images\.0: not a PNG or JPEG"):
        codec.check([b"not an image"], LIMITS)
    with pytest.raises(InvalidInput, match=r"200x100 is over 10000 pixels \(limits.max_image_pixels\)"):
        codec.check([png(np.zeros((100, 200, 3), np.uint8))], LIMITS)
    jpeg = png(np.zeros((4, 4, 3), np.uint8), "JPEG")
    codec.check([jpeg], LIMITS)


def test_request_model_takes_pixels_or_base64_images_not_both() -> None:
    model = ImageClassification.request_model(LIMITS, SIGNATURE)
    assert len(ImageClassification.items(model.model_validate({"inputs": [[1.0] * 64]}))) == 1
    data = base64.b64encode(png(np.zeros((4, 4, 3), np.uint8))).decode()
    assert ImageClassification.items(model.model_validate({"images": [data]}))[0].startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="exactly one of"):
        model.model_validate({"inputs": [[1.0] * 64], "images": [data]})
    with pytest.raises(ValueError, match="at most 4 items"):
        model.model_validate({"inputs": [[1.0] * 64] * 5})
    with pytest.raises(InvalidInput, match=r"images\.0: .*base64"):
        ImageClassification.items(model.model_validate({"images": ["@@@"]}))
