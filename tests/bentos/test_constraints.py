"""Structured output's compiler and masks, on the tiny GPT-2's own tokenizer: what compiles, what is refused
(naming the field), and a mask that allows exactly the tokens that can continue the format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bentos.dataplane.decode.constraints import Grammars, Masks, regex_of_choices
from bentos.errors import InvalidInput
from bentos.tasks.text_generation import OutputFormat
from tests.bentos.test_decode_runner import codec_of


@pytest.fixture(scope="module")
def grammars(tiny_lm_graphs: dict[str, Path]) -> Grammars:
    codec = codec_of(tiny_lm_graphs["gpt2"])
    return Grammars(codec.tokenizer_file.read_text(), codec.spec.eos_id, codec.spec.vocab)


@pytest.mark.parametrize(("fmt", "problem"), [
    (OutputFormat("json_schema", json.dumps({"type": "frobnicate"}), "json_schema"), "frobnicate"),
    (OutputFormat("regex", "(unclosed", "regex"), "regex"),
    (OutputFormat("json_schema", "[1, 2]", "response_format"), ""),
])
def test_a_format_that_does_not_compile_is_422_naming_its_field(grammars: Grammars, fmt: OutputFormat,
                                                                 problem: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        grammars.matcher(fmt)
    assert refused.value.field == fmt.field and "cannot be compiled" in refused.value.message
    assert problem in refused.value.message


def test_choices_are_matched_literally() -> None:
    assert regex_of_choices(["a.b", "(x)", "y|z"]) == r"(a\.b|\(x\)|y\|z)"


def test_the_mask_allows_the_tokens_that_continue_the_format_and_end_of_text_only_at_its_end(
        grammars: Grammars, tiny_lm_graphs: dict[str, Path]) -> None:
    codec = codec_of(tiny_lm_graphs["gpt2"])
    vocab, eos = codec.spec.vocab, codec.spec.eos_id
    matcher = grammars.matcher(OutputFormat("choice", json.dumps(["yes", "no"]), "choice"))
    logits = np.zeros((2, vocab), np.float32)
    Masks().apply(logits, [(1, matcher)])
    assert np.isfinite(logits[0]).all()  # an unconstrained row is untouched
    allowed = {int(t) for t in np.flatnonzero(np.isfinite(logits[1]))}
    assert allowed and eos not in allowed
    assert all(("yes".startswith(codec.detokenize([t])) or "no".startswith(codec.detokenize([t]))) for t in allowed)
    for t in codec.tokenize("yes"):
        assert matcher.consume_token(t)
    logits = np.zeros((1, vocab), np.float32)
    Masks().apply(logits, [(0, matcher)])
    assert {int(t) for t in np.flatnonzero(np.isfinite(logits[0]))} == {eos}  # complete: only the end
