"""Speculative decoding by prompt lookup: drafts from the text a request already has, verified in one pass.

Text that copies from its prompt (extract, rewrite, quote, fill a template) repeats n-grams of it. For a
request, `PromptLookup` keeps an index of every n-gram of its prompt and of what it wrote, mapped to where
its latest occurrence ends; the draft is the `tokens` that followed the latest earlier occurrence of the
text's last n tokens (the longest n that has one, from `ngram` down to 1). The runner feeds the draft after
the request's last token in one forward pass and keeps the longest prefix that greedy decoding would have
written itself, plus the token the model writes after it: the output is the same as without speculation,
only the number of forward passes changes.

A request whose drafts are mostly wrong pays for the longer pass and gains nothing, so `Acceptance` turns
speculation off for it once `judge_after` drafted tokens were accepted less than `min_acceptance` of the time.

A pass is only cheap while it is narrow: on a CPU, one row's pass of 1 to about 5 tokens costs the same (the
step is bound by its fixed costs), but a batch that already feeds many rows is bound by its arithmetic, and a
draft per row makes every row's pass wider (5-token drafts at 8 rows ran slower than none in a trial run). So a pass carries at most `pass_tokens` tokens over all its rows, `rows x (1 + draft)`: drafts are
cut to fit, and a batch of more than `pass_tokens / 2` rows decodes without them.

Greedy requests only: a sampled request's tokens would then depend on how many passes made them, and a
seed would no longer repeat.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Speculation:
    tokens: int = 5  # drafted per step (k) at most; `pass_tokens` cuts it in a batch
    ngram: int = 3  # the longest suffix looked up
    min_acceptance: float = 0.3  # below this share of drafted tokens accepted, a request stops speculating
    judge_after: int = 16  # drafted tokens before that judgement
    pass_tokens: int = 8  # the widest pass, over all rows: rows x (1 + draft)

    def draft_room(self, rows: int) -> int:
        """The longest draft a row may carry in a pass over `rows` rows."""
        return max(0, min(self.tokens, self.pass_tokens // max(rows, 1) - 1))


class PromptLookup:
    """One request's n-gram index over its prompt and the tokens it has written since."""

    def __init__(self, prompt: list[int], ngram: int) -> None:
        self.ngram = ngram
        self.text: list[int] = []
        # index[n][the n tokens] = where their latest occurrence ends; only occurrences ending before the
        # text's end are indexed, so a lookup of the text's own suffix finds an earlier one.
        self.index: list[dict[tuple[int, ...], int]] = [{} for _ in range(ngram + 1)]
        self.extend(prompt)

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            end = len(self.text)
            for n in range(1, min(self.ngram, end) + 1):
                self.index[n][tuple(self.text[end - n:end])] = end
            self.text.append(token)

    def propose(self, k: int) -> list[int]:
        """Up to `k` tokens that followed the latest earlier occurrence of the text's longest indexed suffix."""
        if k < 1:
            return []
        text = self.text
        for n in range(min(self.ngram, len(text)), 0, -1):
            end = self.index[n].get(tuple(text[-n:]))
            if end is not None:
                return text[end:end + k]
        return []


@dataclass
class Acceptance:
    """Drafted and accepted tokens per request, and which requests still speculate."""

    config: Speculation
    drafted: dict[str, int] = field(default_factory=dict)
    accepted: dict[str, int] = field(default_factory=dict)
    stopped: set[str] = field(default_factory=set)

    def active(self, rid: str) -> bool:
        return rid not in self.stopped

    def record(self, rid: str, drafted: int, accepted: int) -> None:
        total = self.drafted[rid] = self.drafted.get(rid, 0) + drafted
        good = self.accepted[rid] = self.accepted.get(rid, 0) + accepted
        if total >= self.config.judge_after and good < self.config.min_acceptance * total:
            self.stopped.add(rid)

    def forget(self, rid: str) -> None:
        self.drafted.pop(rid, None)
        self.accepted.pop(rid, None)
        self.stopped.discard(rid)


def accepted_prefix(draft: list[int], greedy: list[int]) -> int:
    """How many of `draft` greedy decoding agrees with: greedy[i] is the model's token after draft[:i]."""
    n = 0
    while n < len(draft) and draft[n] == greedy[n]:
        n += 1
    return n
