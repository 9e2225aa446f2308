"""Runs one `StepPlan` on ONNX Runtime: decode the running requests, prefill the newcomers, sample.

The running requests' KV cache is one left-padded batch (`Rows`): a step with the same requests as the
last one feeds the graph's present tensors straight back as the next past, with no copy of ours. The
batch is re-made only when it changes: newcomers' prefilled rows are padded and joined to it, and rows
that leave (finished, aborted) or pause (a slow reader: `park`) are taken out, and padding no row needs
any more is trimmed. Each row's positions are its own, so a request's tokens do not depend on what shares
its batch (tests/bentos/test_decode_runner.py checks this against each prompt run alone).

A prompt too long for one step's prefill budget is run in chunks (`StepPlan.chunks`): each chunk is fed
with the KV of the chunks before it as its past, kept in `partial` between steps, and the chunk that ends
the prompt samples the first token and joins the running batch. The logits are the same as one whole
prefill: a chunk's tokens see exactly the keys and values they would have seen. A step may run its chunks in
passes, and stop before or between two when the loop asks (a newcomer): `StepResult.left` says what it did not run.

A prompt whose first blocks the prefix cache holds (prefix_cache.py) starts the same way: the cached keys
and values are its first chunk, already done, and its prefill runs from there. Every prompt, once
prefilled, leaves its whole blocks in the cache under its tenant.

With prompt-lookup speculation on (speculation.py), a greedy request's decode step may feed a draft after
its last token: the batch's pass is then as wide as the longest draft (rows with a shorter one, or none, are
padded after their own tokens, which causal attention keeps from them), each row keeps its accepted tokens'
keys and values, and the rows are re-aligned so that every row still ends at the batch's last column. The
drafted columns past a row's accepted ones are scratch for that one pass: they are never kept.

Runs in the version's thread; the decode loop (loop.py) never touches these arrays itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Set
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bentos.dataplane.decode.constraints import Masks
from bentos.dataplane.decode.prefix_cache import Hit, PrefixCache
from bentos.dataplane.decode.scheduler import StepPlan
from bentos.dataplane.decode.speculation import Acceptance, PromptLookup, Speculation, accepted_prefix
from bentos.tasks.text_generation import GenerationCodec, SamplingParams, sample


@dataclass
class Rows:
    """Requests' KV state, one row each, left-padded to one length."""

    ids: list[str]
    past: list[np.ndarray]  # one per past input, [rows, kv heads, length, head dim]
    mask: np.ndarray  # [rows, length]: 1 where a real token's keys and values are
    pos: np.ndarray  # [rows]: the next token's position
    last: np.ndarray  # [rows]: the last token sampled, the next step's input

    def take(self, keep: list[str]) -> Rows:
        index = [self.ids.index(rid) for rid in keep]
        rows = Rows(list(keep), [p[index] for p in self.past], self.mask[index], self.pos[index], self.last[index])
        return rows.trimmed()

    def trimmed(self) -> Rows:
        """Without the leading columns that are padding in every row."""
        used = np.flatnonzero(self.mask.any(axis=0))
        start = int(used[0]) if used.size else self.mask.shape[1]
        if start == 0:
            return self
        return Rows(self.ids, [p[:, :, start:] for p in self.past], self.mask[:, start:], self.pos, self.last)


def join(parts: list[Rows]) -> Rows:
    """One batch from several, each left-padded to the longest."""
    parts = [p for p in parts if p.ids]
    if len(parts) == 1:
        return parts[0]
    length = max(p.mask.shape[1] for p in parts)

    def pad(a: np.ndarray, axis: int) -> np.ndarray:
        missing = length - a.shape[axis]
        if not missing:
            return a
        widths = [(0, 0)] * a.ndim
        widths[axis] = (missing, 0)
        return np.pad(a, widths)

    past = [np.concatenate([pad(p.past[i], 2) for p in parts]) for i in range(len(parts[0].past))]
    return Rows([rid for p in parts for rid in p.ids], past, np.concatenate([pad(p.mask, 1) for p in parts]),
                np.concatenate([p.pos for p in parts]), np.concatenate([p.last for p in parts]))


@dataclass
class StepResult:
    tokens: dict[str, int]  # each request's next token
    prefill_s: float = 0.0
    decode_s: float = 0.0
    more: dict[str, list[int]] = field(default_factory=dict)  # accepted draft tokens, after `tokens`' one
    drafted: int = 0
    accepted: int = 0
    left: dict[str, int] = field(default_factory=dict)  # chunk tokens an interrupted step did not run


class DecodeRunner:
    def __init__(self, session: Any, codec: GenerationCodec, cache: PrefixCache | None = None,
                 speculation: Speculation | None = None) -> None:
        self.session, self.codec, self.cache = session, codec, cache
        self.speculation = speculation
        self._lookups: dict[str, PromptLookup] = {}  # greedy requests that may speculate
        self._acceptance = Acceptance(speculation or Speculation())
        self.output_names = codec.output_names
        self.past_names = codec.spec.past_names
        self.running: Rows | None = None
        self.parked: dict[str, Rows] = {}
        self.partial: dict[str, Rows] = {}  # chunked prefills in progress: the KV of their chunks so far
        self._prompts: dict[str, list[int]] = {}
        self._written: dict[str, list[int]] = {}  # what each request has sampled: a preempted one recomputes it
        self._sampling: dict[str, tuple[SamplingParams, np.random.Generator | None]] = {}
        self._tenants: dict[str, str] = {}
        self._matchers: dict[str, Any] = {}  # structured output (constraints.py): each constrained request's grammar
        self._masks = Masks()
        self._chunks_skipped = False  # the last step's chunks were all handed back: the next runs one pass at least

    def lookup(self, prompt: list[int], tenant: str) -> Hit | None:
        """What the prefix cache holds of `prompt` for `tenant` (None without a cache)."""
        return None if self.cache is None else self.cache.lookup(prompt, tenant)

    def add(self, request_id: str, prompt: list[int], params: SamplingParams, tenant: str = "",
            hit: Hit | None = None, matcher: Any = None) -> None:
        """A request the scheduler may plan: its prompt, how it samples (a seeded generator when a seed is
        given), whose it is, its prefix from the cache (its prefill starts after it), and the grammar its text
        must follow (a matcher from constraints.Grammars)."""
        self._prompts[request_id] = prompt
        self._tenants[request_id] = tenant
        if hit is not None:
            self.partial[request_id] = Rows([request_id], hit.past, np.ones((1, hit.tokens), np.int64),
                                            np.array([hit.tokens], np.int64), np.zeros(1, np.int64))
        self._written[request_id] = []
        rng = None if params.greedy else np.random.default_rng(params.seed)
        self._sampling[request_id] = (params, rng)
        if matcher is not None:
            self._matchers[request_id] = matcher
        elif self.speculation is not None and self.speculation.tokens and rng is None:
            self._lookups[request_id] = PromptLookup(prompt, self.speculation.ngram)

    def release(self, request_id: str) -> None:
        """It left (finished, aborted, refused): its KV rows go at the next step."""
        self._prompts.pop(request_id, None)
        self._tenants.pop(request_id, None)
        self._written.pop(request_id, None)
        self._sampling.pop(request_id, None)
        self.parked.pop(request_id, None)
        self.partial.pop(request_id, None)
        self._lookups.pop(request_id, None)
        self._acceptance.forget(request_id)
        self._matchers.pop(request_id, None)

    def compact(self) -> None:
        """Drop the rows of requests that have left (the loop calls this before it goes idle: no step would)."""
        if self.running is not None:
            kept = [rid for rid in self.running.ids if rid in self._sampling]
            self.running = self.running.take(kept) if kept else None

    @property
    def rows(self) -> int:
        return len(self.running.ids) if self.running else 0

    def step(self, plan: StepPlan, interrupt: Callable[[], bool] | None = None, piece: int = 0,
             first: Callable[[dict[str, int]], object] | None = None) -> StepResult:
        """The plan's whole prefills, then its decode, then its chunks (`_chunks`: `piece` tokens a pass, and
        `interrupt` may end the step before or between passes). The newcomers' first tokens go to `first` as soon
        as they exist, before the running requests decode (without it, into the result with the others): a
        newcomer's time to first token is its own prefill, not the batch's step."""
        result = StepResult({})
        for rid in plan.preempted:  # its KV goes; its next prefill recomputes it from what it wrote
            self.parked.pop(rid, None)
            self.partial.pop(rid, None)
        fresh = None
        if plan.prefill:  # before the batch is re-made (`_arrange` copies its KV): the first token waits for neither
            began = time.perf_counter()
            tokens: dict[str, int] = {}
            fresh = self._prefill(list(plan.prefill), tokens)
            result.prefill_s = time.perf_counter() - began
            if first is not None:
                first(tokens)
            else:
                result.tokens.update(tokens)
        self._arrange(set(plan.decode), set(plan.preempted))
        if self.running is not None and self.running.ids:
            began = time.perf_counter()
            drafts = self._drafts(self.running.ids)
            self.running = (self._verify(self.running, drafts, result) if drafts
                            else self._decode(self.running, result.tokens))
            result.decode_s = time.perf_counter() - began
        if fresh is not None:
            began = time.perf_counter()
            self._join(fresh)  # after the decode: the running batch's pass is no wider for the newcomers
            result.prefill_s += time.perf_counter() - began
        if plan.chunks:
            began = time.perf_counter()
            self._chunks(plan.chunks, result, interrupt, piece)
            result.prefill_s += time.perf_counter() - began
        return result

    def _chunks(self, chunks: tuple[tuple[str, int], ...], result: StepResult, interrupt: Callable[[], bool] | None,
                piece: int) -> None:
        """The plan's chunks, `piece` tokens a pass (0: each chunk in one pass). Before or between passes,
        `interrupt()` may end the step: what was not run goes into `result.left`, for the scheduler to plan again.
        A newcomer then waits for one piece, not for the step's whole chunk budget; one that came during the decode
        waits for none, unless the step before ran none of its chunks either (chunks move every other step at least).
        """
        must, ran = self._chunks_skipped, False
        for i, (rid, n) in enumerate(chunks):
            done = 0
            while done < n:
                if (ran or not must) and interrupt is not None and interrupt():
                    result.left = {rid: n - done, **dict(chunks[i + 1:])}
                    self._chunks_skipped = not ran
                    return
                size = min(n - done, piece or n)
                ended = self._chunk(rid, size, result.tokens)
                if ended is not None:
                    self._join(ended)
                done, ran = done + size, True
        self._chunks_skipped = False

    def _join(self, fresh: Rows) -> None:
        self.running = fresh if self.running is None or not self.running.ids else join([self.running, fresh])

    def _arrange(self, decode: set[str], preempted: Set[str] = frozenset()) -> None:
        """The running batch becomes exactly `decode`: gone and preempted rows dropped, paused ones parked, resumed
        ones joined."""
        current = self.running
        have = set(current.ids) if current else set()
        if current is not None and have != decode:
            for rid in have - decode - preempted:
                if rid in self._sampling:  # still a request: a slow reader, kept for later
                    self.parked[rid] = current.take([rid])
            kept = [rid for rid in current.ids if rid in decode]
            current = current.take(kept) if kept else None
        back = [self.parked.pop(rid) for rid in decode - have if rid in self.parked]
        if back:
            current = join([current, *back] if current is not None else back)
        self.running = current

    def _decode(self, rows: Rows, tokens: dict[str, int]) -> Rows:
        n = len(rows.ids)
        mask = np.concatenate([rows.mask, np.ones((n, 1), np.int64)], axis=1)
        feed = {"input_ids": rows.last[:, None], "attention_mask": mask, "position_ids": rows.pos[:, None],
                **dict(zip(self.past_names, rows.past, strict=True))}
        out = self.session.run(self.output_names, feed)
        last = self._sample(rows.ids, out[0][:, -1, :], tokens)
        return Rows(rows.ids, out[1:], mask, rows.pos + 1, last)

    def _drafts(self, ids: list[str]) -> dict[str, list[int]]:
        """Each speculating request's draft, no longer than what it may still write after this step's token, nor
        than the pass's width allows (`Speculation.draft_room`)."""
        if not self._lookups or self.speculation is None:
            return {}
        most = self.speculation.draft_room(len(ids))
        drafts: dict[str, list[int]] = {}
        if not most:
            return drafts
        for rid in ids:
            lookup = self._lookups.get(rid)  # never a constrained request's: its mask is for one token a pass
            if lookup is None or not self._acceptance.active(rid):
                continue
            room = self._sampling[rid][0].max_tokens - len(self._written.get(rid, ())) - 1
            draft = lookup.propose(min(most, room))
            if draft:
                drafts[rid] = draft
        return drafts

    def _verify(self, rows: Rows, drafts: dict[str, list[int]], result: StepResult) -> Rows:
        """One pass over each row's last token and its draft: every row gets its next token, a speculating row
        also the draft's accepted prefix. Rows are then re-aligned to end together (`_realign`)."""
        n, width = len(rows.ids), 1 + max(len(d) for d in drafts.values())
        inputs = np.zeros((n, width), np.int64)
        inputs[:, 0] = rows.last
        for b, rid in enumerate(rows.ids):
            if rid in drafts:
                inputs[b, 1:1 + len(drafts[rid])] = drafts[rid]
        mask = np.concatenate([rows.mask, np.ones((n, width), np.int64)], axis=1)
        feed = {"input_ids": inputs, "attention_mask": mask,
                "position_ids": rows.pos[:, None] + np.arange(width, dtype=np.int64),
                **dict(zip(self.past_names, rows.past, strict=True))}
        out = self.session.run(self.output_names, feed)
        logits = out[0]
        first = self._sample(rows.ids, logits[:, 0, :], result.tokens)
        greedy = logits[:, 1:, :].argmax(axis=-1)
        kept = np.ones(n, np.int64)  # new columns each row keeps: its last token and its accepted draft
        for b, rid in enumerate(rows.ids):
            if rid not in drafts:
                continue
            draft = drafts[rid]
            good = accepted_prefix(draft, [int(first[b]), *map(int, greedy[b, :len(draft) - 1])])
            self._acceptance.record(rid, len(draft), good)
            result.drafted, result.accepted = result.drafted + len(draft), result.accepted + good
            if good:
                more = [int(t) for t in greedy[b, :good]]
                result.more[rid] = more
                self._wrote(rid, more)
                first[b] = more[-1]
                kept[b] += good
        return _realign(rows, out[1:], mask, kept, first)

    def _prefill(self, ids: list[str], tokens: dict[str, int]) -> Rows:
        prompts = [self._prompts[rid] + self._written.get(rid, []) for rid in ids]
        feed = self.codec.prefill_feed(prompts)
        out = self.session.run(self.output_names, feed)
        last = self._sample(ids, out[0][:, -1, :], tokens)
        width = feed["attention_mask"].shape[1]
        for b, (rid, p) in enumerate(zip(ids, prompts, strict=True)):  # left-padded: row b starts at width - len
            self._remember(rid, [kv[b:b + 1, :, width - len(p):] for kv in out[1:]])
        pos = np.array([len(p) for p in prompts], np.int64)
        return Rows(list(ids), out[1:], feed["attention_mask"], pos, last)

    def _remember(self, rid: str, past: list[np.ndarray]) -> None:
        """Its prompt's whole blocks into the prefix cache (`past` starts at the prompt's first token)."""
        if self.cache is not None:
            self.cache.insert(self._prompts[rid], self._tenants.get(rid, ""), past)

    def _chunk(self, rid: str, n: int, tokens: dict[str, int]) -> Rows | None:
        """The next `n` tokens of `rid`'s prefill on top of its chunks so far: its row once the prompt is done
        (with its first token sampled), None while chunks remain."""
        whole = self._prompts[rid] + self._written.get(rid, [])
        before = self.partial.pop(rid, None)
        done = 0 if before is None else int(before.pos[0])
        piece = whole[done:done + n]
        past = before.past if before is not None else list(self.codec.empty_past(1).values())
        mask = np.ones((1, done + len(piece)), np.int64)
        feed = {"input_ids": np.array([piece], np.int64), "attention_mask": mask,
                "position_ids": np.arange(done, done + len(piece), dtype=np.int64)[None],
                **dict(zip(self.past_names, past, strict=True))}
        out = self.session.run(self.output_names, feed)
        pos = np.array([done + len(piece)], np.int64)
        if done + len(piece) < len(whole):
            self.partial[rid] = Rows([rid], out[1:], mask, pos, np.zeros(1, np.int64))
            return None
        self._remember(rid, out[1:])
        return Rows([rid], out[1:], mask, pos, self._sample([rid], out[0][:, -1, :], tokens))

    def _sample(self, ids: list[str], logits: np.ndarray, tokens: dict[str, int]) -> np.ndarray:
        constrained = [(b, self._matchers[rid]) for b, rid in enumerate(ids) if rid in self._matchers]
        if constrained:
            self._masks.apply(logits, constrained)
        greedy = logits.argmax(axis=-1)
        out = np.empty(len(ids), np.int64)
        for b, rid in enumerate(ids):
            params, rng = self._sampling.get(rid, (None, None))
            token = int(greedy[b]) if params is None or rng is None else sample(logits[b], params, rng)
            out[b] = tokens[rid] = token
            self._wrote(rid, [token])
        for b, matcher in constrained:
            matcher.consume_token(int(out[b]))
        return out

    def _wrote(self, rid: str, tokens: list[int]) -> None:
        self._written.setdefault(rid, []).extend(tokens)
        lookup = self._lookups.get(rid)
        if lookup is not None:
            lookup.extend(tokens)


def _realign(rows: Rows, present: list[np.ndarray], mask: np.ndarray, kept: np.ndarray, last: np.ndarray) -> Rows:
    """The batch after a pass `width` columns wide in which row b keeps `kept[b]` of them: every row shifted
    right so that its kept columns end at the new last column (left padding grows where a row kept fewer)."""
    before = rows.mask.shape[1]
    length = before + int(kept.max())
    past = [p[:, :, :length] for p in present]
    mask = mask[:, :length]
    short = np.flatnonzero(kept < kept.max())
    if short.size:
        past = [p.copy() for p in past]
        mask = mask.copy()
        for b in short:
            shift = int(kept.max() - kept[b])
            for p in past:
                p[b, :, shift:] = p[b, :, :length - shift].copy()
                p[b, :, :shift] = 0
            mask[b, shift:] = mask[b, :length - shift].copy()
            mask[b, :shift] = 0
    return Rows(rows.ids, past, mask, rows.pos + kept, last).trimmed()
