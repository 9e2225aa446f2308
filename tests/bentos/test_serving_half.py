"""The serving half: codecs, artifact hashes, and no torch on the serving path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bentos.artifacts import find_mismatches, hash_tree
from bentos.families import codec_for
from bentos.families.digits import DigitsCodec
from bentos.families.minilm import MAX_TOKENS, TextCodec
from models.families.minilm import package_dir
from tests.conftest import ROOT


def test_serving_modules_do_not_import_torch_or_transformers() -> None:
    code = ("import sys, bentos.families, bentos.runtime, bentos.artifacts; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "assert not bad, bad; print('clean')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "clean" in out.stdout, out.stderr


def test_digits_codec_round_trip() -> None:
    codec = DigitsCodec()
    feed = codec.encode([[0.0] * 64, [16.0] * 64])
    assert feed["pixels"].shape == (2, 64) and feed["pixels"].dtype == np.float32
    probs = np.array([[0.1] * 9 + [0.1], [0.0] * 3 + [1.0] + [0.0] * 6], dtype=np.float32)
    out = codec.decode(probs)
    assert out[1] == {"label": 3, "confidence": 1.0, "probabilities": probs[1].tolist()}
    with pytest.raises(ValueError, match="rows of 64 pixels"):
        codec.encode([[1.0] * 63])


def test_text_codec_pads_to_longest_and_truncates() -> None:
    codec = TextCodec(package_dir() / "tokenizer.json")
    feed = codec.encode(["hi", "a somewhat longer sentence with more tokens"])
    assert feed["input_ids"].shape[1] < 128  # not the shipped fixed padding
    assert feed["attention_mask"][0].sum() < feed["attention_mask"][1].sum()
    long = codec.encode(["word " * 1000])
    assert long["input_ids"].shape == (1, MAX_TOKENS)
    assert codec.token_lengths(["hi", "hello there"]) == [3, 4]


def test_unknown_family_is_named() -> None:
    with pytest.raises(ValueError, match="unknown family 'audio'"):
        codec_for("audio", Path("."), {})


def test_find_mismatches_reports_tampered_and_missing(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"abc")
    (tmp_path / "b.bin").write_bytes(b"def")
    hashes = hash_tree(tmp_path)
    assert find_mismatches(tmp_path, hashes) == []
    (tmp_path / "a.bin").write_bytes(b"abd")
    (tmp_path / "b.bin").unlink()
    problems = find_mismatches(tmp_path, hashes)
    assert problems[0].startswith("a.bin: sha256") and problems[1] == "b.bin: missing"
