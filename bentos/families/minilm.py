"""MiniLM sentence embeddings: text in, a unit-length 384-float vector out.

Tokenization uses the `tokenizers` library on the tokenizer files stored with the
model; mean pooling and L2 normalisation are inside the ONNX graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from tokenizers import Tokenizer

from bentos.families.base import Codec, Feed

EMBEDDING_DIM = 384
MAX_TOKENS = 256
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
INPUT_NAMES = ("input_ids", "attention_mask")


def load_tokenizer(tokenizer_file: Path, max_tokens: int = MAX_TOKENS) -> Tokenizer:
    tok = Tokenizer.from_file(str(tokenizer_file))
    # The shipped file pads every input to 128; pad to the longest in the batch instead.
    tok.no_padding()
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    tok.enable_truncation(max_length=max_tokens)
    return tok


class TextCodec(Codec):
    family: ClassVar[str] = "minilm"
    output_name: ClassVar[str] = "embeddings"

    def __init__(self, tokenizer_file: Path, max_tokens: int = MAX_TOKENS) -> None:
        self.tokenizer_file = tokenizer_file
        self.max_tokens = max_tokens
        self._tok = load_tokenizer(tokenizer_file, max_tokens)
        self._unpadded = load_tokenizer(tokenizer_file, max_tokens)
        self._unpadded.no_padding()

    @classmethod
    def from_config(cls, model_dir: Path, preprocess: dict[str, Any]) -> TextCodec:
        return cls(model_dir / preprocess.get("tokenizer", "tokenizer.json"),
                   int(preprocess.get("max_tokens", MAX_TOKENS)))

    @classmethod
    def schema(cls) -> dict[str, Any]:
        return {
            "inputs": [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]} for n in INPUT_NAMES],
            "outputs": [{"name": cls.output_name, "dtype": "float32", "shape": ["batch", EMBEDDING_DIM]}],
        }

    def preprocess_config(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer_file.name, "max_tokens": self.max_tokens,
                "padding": "longest", "truncation": "longest_first", "lowercase": True}

    @classmethod
    def warmup_items(cls) -> list[Any]:
        return ["A warm-up sentence of about the usual length, before any traffic arrives."]

    def token_lengths(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self._unpadded.encode_batch(texts)]

    def encode(self, items: list[Any]) -> Feed:
        encodings = self._tok.encode_batch(list(items))
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }

    def agreement(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))

    def decode(self, output: np.ndarray) -> list[list[float]]:
        return [row.tolist() for row in output]
