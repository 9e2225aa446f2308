"""Guardrails: an endpoint's policy on the prompts it takes and the text it streams.

A policy (`EndpointConfig.guardrails`) has checks on input and on output. A check is a classifier and/or
blocked patterns: the classifier is any text-classification endpoint this server serves, called through its
own batcher (so the checks of many streams batch together), with a threshold per label; patterns are RE2
regular expressions (linear time in the text: a pattern cannot be made to backtrack for minutes). A hit
either blocks or flags.

- Input: a prompt that a blocking check hits is refused (422) naming the policy's check and the label, never
  the classifier's scores.
- Output: the text is held back in chunks of `chunk_chars` and each chunk is checked with the
  `context_chars` already sent before it. A chunk that fails is never sent: the stream ends there with
  finish_reason "content_filter". What is held back is the cost: a reader gets the text in chunks.

Every check and hit is counted per endpoint, version, stage and label.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from bentos.config import compile_pattern
from bentos.errors import InvalidInput

Stage = Literal["input", "output"]
Classify = Callable[[str, str], Awaitable[dict[str, float]]]  # (classifier endpoint, text) -> label scores


@dataclass(frozen=True)
class Violation:
    check: str
    label: str
    action: str
    stage: Stage

    def as_dict(self) -> dict[str, str]:
        return {"check": self.check, "label": self.label, "action": self.action, "stage": self.stage}


class ContentBlocked(InvalidInput):
    """A prompt a blocking check hit: names the check and the label, never the scores."""

    def __init__(self, field: str, violation: Violation) -> None:
        super().__init__(field, f"refused by the endpoint's guardrails: check {violation.check!r} found "
                                f"{violation.label!r}")
        self.violation = violation


class Guard:
    """One endpoint's policy, run for one version's text."""

    def __init__(self, endpoint: str, policy: Any, classify: Classify, counted: Any) -> None:
        self.endpoint, self.policy, self.classify = endpoint, policy, classify
        self.counted = counted  # (endpoint, version, stage, label, hit) -> None: the metrics

    async def check(self, stage: Stage, text: str, version: str) -> list[Violation]:
        """Every hit of the stage's checks on `text`."""
        hits: list[Violation] = []
        for check in self.policy.input if stage == "input" else self.policy.output:
            for label, pattern in check.patterns.items():
                hit = compile_pattern(pattern).search(text) is not None
                self.counted(self.endpoint, version, stage, label, hit)
                if hit:
                    hits.append(Violation(check.name, label, check.action, stage))
            if check.classifier and check.labels:
                scores = await self.classify(check.classifier, text)
                for label, threshold in check.labels.items():
                    hit = scores.get(label, 0.0) >= threshold
                    self.counted(self.endpoint, version, stage, label, hit)
                    if hit:
                        hits.append(Violation(check.name, label, check.action, stage))
        return hits

    async def admit(self, prompt: str, version: str, field: str) -> list[Violation]:
        """The prompt's flagged hits; ContentBlocked at the first blocking one."""
        hits = await self.check("input", prompt, version)
        for hit in hits:
            if hit.action == "block":
                raise ContentBlocked(field, hit)
        return hits

    def window(self, version: str) -> OutputWindow:
        return OutputWindow(self, version, self.policy.chunk_chars, self.policy.context_chars)


@dataclass
class OutputWindow:
    """One stream's held-back text: released a checked chunk at a time, cut at the first blocked one."""

    guard: Guard
    version: str
    chunk_chars: int
    context_chars: int
    released: str = ""
    pending: str = ""
    cut: Violation | None = None
    flagged: list[Violation] = field(default_factory=list)

    async def push(self, piece: str) -> list[str]:
        """The chunks `piece` completes, checked and released (none once cut)."""
        self.pending += piece
        out: list[str] = []
        while self.cut is None and len(self.pending) >= self.chunk_chars:
            chunk, self.pending = self.pending[:self.chunk_chars], self.pending[self.chunk_chars:]
            if await self._passes(chunk):
                out.append(chunk)
        return out

    async def flush(self) -> list[str]:
        """The end of the text: what is still held, checked and released."""
        chunk, self.pending = self.pending, ""
        if chunk and self.cut is None and await self._passes(chunk):
            return [chunk]
        return []

    async def _passes(self, chunk: str) -> bool:
        context = self.released[-self.context_chars:] if self.context_chars else ""
        for hit in await self.guard.check("output", context + chunk, self.version):
            if hit.action == "block":
                self.cut = hit
                return False
            self.flagged.append(hit)
        self.released += chunk
        return True
