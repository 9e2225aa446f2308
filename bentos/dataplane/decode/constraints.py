"""Structured output: a request's format (a JSON schema, any JSON object, a regular expression, one of a list of
choices) compiled into a grammar, and the token mask that keeps its text inside it.

The library is llguidance (Microsoft's, maintained, CPU wheels, no torch): it reads the version's own
`tokenizer.json`, compiles JSON schemas and regular expressions (derivative-based: linear time, no
backtracking) and computes a request's allowed-token mask in microseconds per token
(bench/structured.py measures it with the endpoint's tokenizer). The masks of a step's constrained rows are
computed together on the version's thread (in llguidance's own threads for a large vocabulary), never on the
event loop.

A grammar that does not compile is the caller's error: 422 naming the field that carried it. Once the
grammar is complete, the mask allows only the end-of-text token, so the request ends there.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np

from bentos.errors import InvalidInput
from bentos.tasks.text_generation import OutputFormat

# Masks are computed in llguidance's threads only for large vocabularies: with 2,000 tokens one mask takes about
# 3.5 us, and handing 8 of them to its threads cost 107 us against 29 us one after another (bench/structured.py's
# model, 2 cores).
PARALLEL_VOCAB = 32_000
# Compact JSON: a small model allowed free whitespace may write it forever.
JSON_OPTIONS: Any = {"whitespace_flexible": False}


def regex_of_choices(choices: list[str]) -> str:
    return "(" + "|".join(_escape(c) for c in choices) + ")"


def _escape(text: str) -> str:
    return "".join("\\" + ch if ch in r".^$*+?()[]{}|\/" else ch for ch in text)


class Grammars:
    """One version's compiler: its tokenizer read once (on first use), each format's grammar cached."""

    def __init__(self, tokenizer_json: str, eos_id: int | None, vocab: int) -> None:
        self._source, self._eos, self._vocab = tokenizer_json, eos_id, vocab

    @functools.cached_property
    def tokenizer(self) -> Any:
        import llguidance

        return llguidance.LLTokenizer(self._source, n_vocab=self._vocab, eos_token=self._eos)

    def matcher(self, fmt: OutputFormat) -> Any:
        """A new matcher for one request, or InvalidInput naming the field and what is wrong."""
        import llguidance

        grammar = self._grammar(fmt)
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise InvalidInput(fmt.field, f"cannot be compiled: {_short(matcher.get_error())}")
        return matcher

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one compiler per version, living as long as it
    def _grammar(self, fmt: OutputFormat) -> str:
        import llguidance

        try:
            if fmt.kind == "json_object":
                return str(llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, overrides=JSON_OPTIONS))
            if fmt.kind == "json_schema":
                return str(llguidance.LLMatcher.grammar_from_json_schema(fmt.value, overrides=JSON_OPTIONS))
            regex = regex_of_choices(json.loads(fmt.value)) if fmt.kind == "choice" else fmt.value
            return str(llguidance.LLMatcher.grammar_from_regex(regex))
        except ValueError as exc:
            raise InvalidInput(fmt.field, f"cannot be compiled: {_short(str(exc))}") from None


def _short(message: str) -> str:
    return message.strip().splitlines()[0][:300] if message.strip() else "no reason given"


class Masks:
    """The allowed-token masks of a step's constrained rows, computed together, applied to their logits."""

    def __init__(self) -> None:
        self._executor: Any = None

    def apply(self, logits: np.ndarray, rows: list[tuple[int, Any]]) -> None:
        """Set to -inf, in place, every logit of row b that `rows`' matcher for b does not allow."""
        import llguidance
        import llguidance.numpy as lln

        vocab = logits.shape[-1]
        bits = lln.allocate_token_bitmask(len(rows), vocab)
        if len(rows) > 1 and vocab >= PARALLEL_VOCAB:
            if self._executor is None:
                self._executor = llguidance.LLExecutor()
            lln.fill_next_token_bitmask_par(self._executor, [(m, i) for i, (_, m) in enumerate(rows)], bits)
        else:
            for i, (_, matcher) in enumerate(rows):
                lln.fill_next_token_bitmask(matcher, bits, i)
        allowed = np.unpackbits(bits.view(np.uint8), axis=1, count=vocab, bitorder="little").view(bool)
        for i, (b, _) in enumerate(rows):
            logits[b][~allowed[i]] = -np.inf
