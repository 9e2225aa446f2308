"""What the text task types share: a Hugging Face `tokenizer.json` run with `tokenizers`.

Text is tokenized once, in the batch thread; the batching bucket is a cheap length class
from characters, so the event loop never tokenizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, create_model
from tokenizers import Tokenizer

from bentos.errors import InvalidInput
from bentos.tasks.base import Codec, Feed, Limits, Task, length_bucket

MAX_TOKENS = 256
CHARS_PER_TOKEN = 4  # English averages about 4 characters a token; only the length class uses it


def load_tokenizer(tokenizer_file: Path, max_tokens: int = MAX_TOKENS, pad_id: int = 0,
                   pad_token: str = "[PAD]") -> Tokenizer:
    tok = Tokenizer.from_file(str(tokenizer_file))
    # Shipped files often pad every input to a fixed length; pad to the longest in the batch instead.
    tok.no_padding()
    tok.enable_padding(pad_id=pad_id, pad_token=pad_token)
    tok.enable_truncation(max_length=max_tokens)
    return tok


def tokenizer_file(preprocess: dict[str, Any], model_dir: Path | None) -> Path:
    """The version's `tokenizer.json`: `preprocess.tokenizer`, relative to its model directory."""
    path = Path(preprocess.get("tokenizer", "tokenizer.json"))
    found = path if path.is_absolute() or model_dir is None else model_dir / path
    if not found.is_file():
        raise FileNotFoundError(f"tokenizer file {found} is missing")
    return found


class TextCodec(Codec):
    """`preprocess`: tokenizer (file name in the model dir), max_tokens, pad_id, pad_token."""

    def __init__(self, signature: dict[str, Any], preprocess: dict[str, Any], model_dir: Path | None = None) -> None:
        super().__init__(signature, preprocess, model_dir)
        self.tokenizer_file = tokenizer_file(preprocess, model_dir)
        self.max_tokens = int(preprocess.get("max_tokens", MAX_TOKENS))
        self._tok = load_tokenizer(self.tokenizer_file, self.max_tokens, int(preprocess.get("pad_id", 0)),
                                   str(preprocess.get("pad_token", "[PAD]")))
        self._input_names = [i["name"] for i in signature["inputs"]]

    def preprocess_config(self) -> dict[str, Any]:
        return {**self.preprocess, "tokenizer": self.tokenizer_file.name, "max_tokens": self.max_tokens}

    def bucket(self, items: list[Any]) -> int:
        return length_bucket(max(len(t) for t in items) // CHARS_PER_TOKEN)

    def token_lengths(self, texts: list[str]) -> list[int]:
        return [sum(e.attention_mask) for e in self._tok.encode_batch(list(texts))]

    def drift_features(self, items: list[Any]) -> dict[str, np.ndarray]:
        """Text drifts in length and vocabulary: tokens per text, and the share of them the tokenizer
        does not know (another language, other symbols)."""
        unknown = self._tok.token_to_id(str(self.preprocess.get("unk_token", "[UNK]")))
        encodings = self._tok.encode_batch([str(t) for t in items])
        tokens = np.array([sum(e.attention_mask) for e in encodings], np.float64)
        unk = np.array([sum(1 for i in e.ids if i == unknown) for e in encodings], np.float64)
        return {"tokens": tokens, "unknown_share": unk / np.maximum(tokens, 1)}

    def check(self, items: list[Any], limits: Limits) -> None:
        """The per-text limits whatever the protocol: /v1 checks them in its schema too, OIP's BYTES only here."""
        for i, text in enumerate(items):
            if not isinstance(text, str) or not text:
                raise InvalidInput(f"texts.{i}", "must be a non-empty string")
            if len(text) > limits.max_chars:
                raise InvalidInput(f"texts.{i}", f"{len(text)} characters, over {limits.max_chars} "
                                   "(limits.max_chars)", {"max_chars": limits.max_chars})

    def encode(self, items: list[Any]) -> Feed:
        encodings = self._tok.encode_batch([str(t) for t in items])
        columns = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
                   "token_type_ids": [e.type_ids for e in encodings]}
        dtypes = {i["name"]: i["dtype"] for i in self.signature["inputs"]}
        return {name: np.array(columns[name], dtype=dtypes[name]) for name in self._input_names}

    def warmup_items(self) -> list[Any]:
        return ["A warm-up sentence of about the usual length, before any traffic arrives."]

    def oip_inputs(self) -> list[dict[str, Any]]:
        return [{"name": "text", "dtype": "object", "shape": ["batch"]}]

    def from_oip(self, tensors: dict[str, np.ndarray]) -> list[Any]:
        out = []
        for i, t in enumerate(tensors["text"].reshape(-1)):
            try:
                out.append(t.decode() if isinstance(t, bytes) else str(t))
            except UnicodeDecodeError:
                raise InvalidInput(f"text.{i}", "BYTES element is not UTF-8 text") from None
        return out


class TextTask(Task):
    """What both text task types share: `{"texts": [...]}` with the endpoint's limits."""

    items_field: ClassVar[str] = "texts"

    @classmethod
    def request_model(cls, limits: Limits, signature: dict[str, Any] | None) -> type[BaseModel]:
        return text_request(cls.summary, limits)


def text_request(description: str, limits: Limits) -> type[BaseModel]:
    """`{"texts": [...]}` with the endpoint's row and character limits."""
    text = Annotated[str, Field(min_length=1, max_length=limits.max_chars, strict=True)]
    fields: dict[str, Any] = {"texts": (list[text], Field(
        min_length=1, max_length=limits.max_rows,
        description=f"1 to {limits.max_rows} texts of at most {limits.max_chars} characters"))}
    model: type[BaseModel] = create_model("TextRequest", __config__=ConfigDict(extra="forbid"), __doc__=description,
                                          **fields)
    return model
