"""Text task types: tokenizer.json with `tokenizers`, pooling, labels, and the length bucket."""

from __future__ import annotations

import numpy as np
import pytest

from bentos.tasks import Limits
from bentos.tasks.base import tensor
from bentos.tasks.text import MAX_TOKENS
from bentos.tasks.text_classification import LabelCodec, TextClassification
from bentos.tasks.text_embedding import EmbeddingCodec
from models.families.minilm import PREPROCESS, SIGNATURE, package_dir

LIMITS = Limits(max_rows=3, max_chars=20, max_body_bytes=10_000, max_image_pixels=1)


def test_embedding_codec_pads_to_longest_and_truncates() -> None:
    codec = EmbeddingCodec(SIGNATURE, PREPROCESS, package_dir())
    feed = codec.encode(["hi", "a somewhat longer sentence with more tokens"])
    assert set(feed) == {"input_ids", "attention_mask"}
    assert feed["input_ids"].shape[1] < 128  # not the shipped fixed padding
    assert feed["attention_mask"][0].sum() < feed["attention_mask"][1].sum()
    assert codec.encode(["word " * 1000])["input_ids"].shape == (1, MAX_TOKENS)
    assert codec.token_lengths(["hi", "hello there"]) == [3, 4]


def test_mean_and_cls_pooling_with_normalisation() -> None:
    sig = {"inputs": SIGNATURE["inputs"], "outputs": [tensor("last_hidden_state", "float32", ["batch", "seq", 2])]}
    states = np.array([[[1.0, 0.0], [3.0, 0.0], [100.0, 100.0]]], np.float32)
    feed = {"attention_mask": np.array([[1, 1, 0]])}
    mean = EmbeddingCodec(sig, {**PREPROCESS, "pooling": "mean", "normalize": False}, package_dir())
    np.testing.assert_allclose(mean.split(feed, [states])[0], [2.0, 0.0])  # the padded token is ignored
    cls = EmbeddingCodec(sig, {**PREPROCESS, "pooling": "cls", "normalize": True}, package_dir())
    np.testing.assert_allclose(cls.split(feed, [states])[0], [1.0, 0.0])


def test_classifier_softmax_and_multi_label_threshold() -> None:
    sig = {"inputs": [tensor("input_ids", "int64", ["batch", "sequence"])],
           "outputs": [tensor("logits", "float32", ["batch", 3])]}
    pre = {**PREPROCESS, "labels": ["neg", "neu", "pos"]}
    single = LabelCodec(sig, pre, package_dir())
    (row,) = single.split({}, [np.array([[0.0, 0.0, 5.0]], np.float32)])
    out = single.decode([row])[0]
    assert out["label"] == "pos" and abs(sum(out["scores"].values()) - 1) < 1e-6 and "labels" not in out
    multi = LabelCodec(sig, {**pre, "problem": "multi_label", "threshold": 0.5}, package_dir())
    (row,) = multi.split({}, [np.array([[2.0, -2.0, 3.0]], np.float32)])
    assert multi.decode([row])[0]["labels"] == ["neg", "pos"]
    assert set(single.encode(["hello"])) == {"input_ids"}  # only the inputs the graph takes


def test_text_request_limits_name_field_and_limit() -> None:
    model = TextClassification.request_model(LIMITS, None)
    with pytest.raises(ValueError, match="at most 20 characters"):
        model.model_validate({"texts": ["x" * 21]})
    with pytest.raises(ValueError, match="at most 3 items"):
        model.model_validate({"texts": ["a"] * 4})


def test_texts_are_bucketed_by_length_without_tokenizing() -> None:
    codec = EmbeddingCodec(SIGNATURE, PREPROCESS, package_dir())
    assert codec.bucket(["x" * 40]) == codec.bucket(["x" * 60]) != codec.bucket(["x" * 400])
    assert codec.bucket(["", "x" * 400]) == codec.bucket(["x" * 400])


def test_a_missing_tokenizer_is_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        EmbeddingCodec(SIGNATURE, PREPROCESS, tmp_path)
