"""One generation request's output, token by token: the only per-step loop over outputs.

The decode loop pushes each new token id; the stream turns ids into text as it can be shown, and a
protocol adapter (SSE, OpenAI, OIP generate) reads pieces of text as they come.

- Text is decoded incrementally: only the tokens since the last settled point are decoded again, from one
  window back (a tokenizer may decode a token differently at the start of a text, as SentencePiece's
  leading space), so a step costs the same at the thousandth token as at the first. Byte-level BPE splits
  characters over tokens: a trailing U+FFFD (an incomplete character) is held back until the next token
  completes it, and the window does not move past it.
- A stop string can span tokens: text that could still become one is held back; once one appears, the
  text ends before it, the stream finishes ("stop") and the loop is told to drop the request.
- It finishes at `max_tokens` ("length") or the end-of-text token ("stop").
- Pieces wait in a bounded buffer. A full buffer means a slow reader: the scheduler skips the request
  (it keeps its KV) until the reader catches up; the stream never blocks the step.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

FinishReason = Literal["stop", "length", "abort"]
INCOMPLETE = "\ufffd"


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class TokenStream:
    def __init__(self, request_id: str, decode: Callable[[list[int]], str], *, prompt_tokens: int,
                 max_tokens: int, stop: Sequence[str] = (), eos_id: int | None = None, buffer: int = 64) -> None:
        self.request_id, self._decode = request_id, decode
        self.prompt_tokens, self.max_tokens = prompt_tokens, max_tokens
        self.stop, self.eos_id, self.buffer = tuple(s for s in stop if s), eos_id, buffer
        self.ids: list[int] = []  # the tokens of the text (an end-of-text token is not one)
        self.ended_by_eos = False
        self.text = ""  # what has been sent so far
        self._settled = ""  # the text of ids[:_read], final
        self._prefix, self._read = 0, 0  # the window decoded again: ids[_prefix:]; ids[_prefix:_read] is settled
        self._prefix_text = ""  # the text of ids[_prefix:_read], decoded alone
        self.finish_reason: FinishReason | None = None
        self._pieces: deque[str] = deque()
        self._ready = asyncio.Event()

    # --- the loop's side -------------------------------------------------------------
    def push(self, token_id: int) -> bool:
        """One new token; False once the stream is done (the loop then drops the request)."""
        if self.finish_reason is not None:
            return False
        if token_id == self.eos_id:
            self.ended_by_eos = True
            self._end("stop", self._text())
            return False
        self.ids.append(token_id)
        decoded = self._text()
        cut = self._stop_at(decoded)
        if cut is not None:
            self._end("stop", decoded[:cut])
            return False
        if len(self.ids) >= self.max_tokens:
            self._end("length", decoded)
            return False
        self._emit(decoded[:len(decoded) - self._held_back(decoded)])
        return True

    @property
    def written(self) -> list[int]:
        """Every token the model chose, the end-of-text token included: what a comparison judges (a version that
        ends at once has written something, and it can be wrong)."""
        return [*self.ids, self.eos_id] if self.ended_by_eos and self.eos_id is not None else list(self.ids)

    def abort(self) -> None:
        """The request left before it finished (the client went, its deadline passed)."""
        if self.finish_reason is None:
            self.finish_reason = "abort"
            self._ready.set()

    @property
    def full(self) -> bool:
        """The reader is behind: the scheduler skips this request until it catches up."""
        return len(self._pieces) >= self.buffer

    # --- the reader's side -----------------------------------------------------------
    async def next_piece(self) -> str | None:
        """The next piece of text, waiting for it; None once the stream is done and drained."""
        while not self._pieces:
            if self.finish_reason is not None:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._pieces.popleft()

    @property
    def usage(self) -> Usage:
        return Usage(self.prompt_tokens, len(self.ids))

    # --- inside ----------------------------------------------------------------------
    def _text(self) -> str:
        """All the text so far (the same as decoding every id), decoding only the window since the last
        settled point; the window moves on once its text ends in a whole character."""
        tail = self._decode(self.ids[self._prefix:])
        if not tail.startswith(self._prefix_text):  # the new token changed text before it: decode it all
            return self._decode(self.ids)
        new = tail[len(self._prefix_text):]
        if new and not new.endswith(INCOMPLETE):
            self._settled += new
            self._prefix, self._read = self._read, len(self.ids)
            self._prefix_text = self._decode(self.ids[self._prefix:self._read])
            return self._settled
        return self._settled + new
    def _stop_at(self, decoded: str) -> int | None:
        """Where the first stop string begins in text not yet sent (it may start in text held back)."""
        start = max(0, len(self.text) - max((len(s) for s in self.stop), default=0))
        found = [i for s in self.stop if (i := decoded.find(s, start)) >= 0]
        return min(found) if found else None

    def _held_back(self, decoded: str) -> int:
        """Characters at the end that may still change: an incomplete character, or a stop string's start."""
        held = len(decoded) - len(decoded.rstrip(INCOMPLETE))
        for s in self.stop:
            for n in range(min(len(s) - 1, len(decoded)), 0, -1):
                if decoded.endswith(s[:n]):
                    held = max(held, n)
                    break
        return held

    def _emit(self, shown: str) -> None:
        if len(shown) > len(self.text) and shown.startswith(self.text):
            self._pieces.append(shown[len(self.text):])
            self.text = shown
            self._ready.set()

    def _end(self, reason: FinishReason, final: str) -> None:
        self._emit(final.rstrip(INCOMPLETE))
        self.finish_reason = reason
        self._ready.set()
