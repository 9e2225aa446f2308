"""Guardrails on plain text with RE2 patterns: prompts refused naming the check and label, output released a
checked chunk at a time and cut before a failing chunk, a phrase split over two chunks still seen, flags that
let text through, and policies that do not compile refused at configuration."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from bentos.config import Guardrails
from bentos.dataplane.guardrails import ContentBlocked, Guard


def guard(policy: dict[str, object], counted: list[tuple[str, str, bool]] | None = None) -> Guard:
    async def classify(name: str, text: str) -> dict[str, float]:
        raise AssertionError("no classifier in these policies")

    seen = counted if counted is not None else []
    return Guard("writer", Guardrails.model_validate(policy), classify,
                 lambda e, v, stage, label, hit: seen.append((stage, label, hit)))


FOX = {"name": "no-foxes", "patterns": {"fox": r"(?i)\bfox\b"}}


def test_a_prompt_a_blocking_check_hits_is_refused_naming_the_check_and_label() -> None:
    counted: list[tuple[str, str, bool]] = []
    g = guard({"input": [FOX]}, counted)
    with pytest.raises(ContentBlocked) as refused:
        asyncio.run(g.admit("The Fox ran off", "", "messages"))
    assert refused.value.field == "messages" and "'no-foxes'" in refused.value.message
    assert "'fox'" in refused.value.message
    assert asyncio.run(g.admit("The cat sat", "", "prompt")) == []
    assert counted == [("input", "fox", True), ("input", "fox", False)]


def written(g: Guard, pieces: list[str]) -> tuple[list[str], object]:
    window = g.window("v1")

    async def run() -> list[str]:
        out = []
        for piece in pieces:
            out += await window.push(piece)
            if window.cut:
                return out
        return out + await window.flush()

    return asyncio.run(run()), window


def test_output_is_released_in_checked_chunks_and_cut_before_the_failing_one() -> None:
    g = guard({"output": [FOX], "chunk_chars": 8, "context_chars": 16})
    text = "the cat sat. the dog sat. a fox ran. the end."
    out, window = written(g, list(text))  # a character a token
    assert "".join(out) == text[:24] and all(len(c) == 8 for c in out)  # the chunk with "fox" never goes out
    assert window.cut is not None and window.cut.label == "fox"  # type: ignore[attr-defined]


def test_a_word_split_over_two_chunks_is_caught_by_the_context() -> None:
    g = guard({"output": [FOX], "chunk_chars": 8, "context_chars": 16})
    out, window = written(g, ["the cat f", "ox ran away"])  # "f" ends chunk 1, "ox" starts chunk 2
    assert "".join(out) == "the cat " and window.cut is not None  # type: ignore[attr-defined]


def test_allowed_text_passes_unchanged_and_a_flag_lets_text_through() -> None:
    text = "the cat sat on the mat. the dog ran to the river. 🦊 no fox here? yes a fox."
    clean = guard({"output": [{"name": "zebras", "patterns": {"zebra": "zebra"}}], "chunk_chars": 8})
    assert "".join(written(clean, [text[i:i + 3] for i in range(0, len(text), 3)])[0]) == text
    flag = guard({"output": [{**FOX, "action": "flag"}], "chunk_chars": 8})
    out, window = written(flag, [text])
    assert "".join(out) == text and window.cut is None and window.flagged  # type: ignore[attr-defined]


@pytest.mark.parametrize(("check", "problem"), [
    ({"name": "x", "patterns": {"bad": "(unclosed"}}, "patterns.bad: missing )"),
    ({"name": "x"}, "needs patterns, or a classifier with labels"),
    ({"name": "x", "labels": {"animals": 0.5}}, "needs patterns, or a classifier"),
    ({"name": "x", "classifier": "topics", "labels": {"animals": 1.5}}, "less than or equal to 1"),
])
def test_a_policy_that_cannot_work_is_refused_at_configuration(check: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Guardrails.model_validate({"output": [check]})
    assert problem in str(refused.value)
