"""Prompt lookup's drafts and the acceptance that switches it off, on plain token lists."""

from __future__ import annotations

from bentos.dataplane.decode.speculation import Acceptance, PromptLookup, Speculation, accepted_prefix


def test_the_draft_follows_the_latest_earlier_occurrence_of_the_longest_suffix() -> None:
    lookup = PromptLookup([1, 2, 3, 9, 1, 2, 3, 7, 5, 2, 3], ngram=3)
    # the suffix (5? no) 2 3 -> longest indexed: (7,5,2,3)? ngram 3: (5,2,3) unseen, (2,3) last ended at 7
    assert lookup.propose(3) == [7, 5, 2]
    lookup.extend([7])  # text ends 2 3 7: the 3-gram (2,3,7) occurred, ending at 8
    assert lookup.propose(2) == [5, 2]
    assert lookup.propose(0) == []


def test_no_draft_without_an_earlier_occurrence_and_never_the_suffix_itself() -> None:
    assert PromptLookup([1, 2, 3, 4], ngram=3).propose(4) == []
    assert PromptLookup([5], ngram=2).propose(4) == []
    assert PromptLookup([5, 5], ngram=2).propose(4) == [5]  # the 1-gram 5 ended at 1: what followed it


def test_the_draft_is_cut_at_the_end_of_the_text() -> None:
    assert PromptLookup([1, 2, 1], ngram=2).propose(5) == [2, 1]


def test_accepted_prefix_stops_at_the_first_disagreement() -> None:
    assert accepted_prefix([4, 5, 6], [4, 5, 6]) == 3
    assert accepted_prefix([4, 5, 6], [4, 9, 6]) == 1
    assert accepted_prefix([4, 5, 6], [0, 5, 6]) == 0
    assert accepted_prefix([], [1]) == 0


def test_acceptance_switches_a_request_off_after_judging_and_forgets_it() -> None:
    acceptance = Acceptance(Speculation(min_acceptance=0.5, judge_after=8))
    acceptance.record("a", 4, 0)
    assert acceptance.active("a")  # not judged yet
    acceptance.record("a", 4, 3)
    assert not acceptance.active("a")  # 3 of 8 < 0.5
    acceptance.record("b", 8, 4)
    assert acceptance.active("b")  # exactly the threshold stays on
    acceptance.forget("a")
    assert acceptance.active("a") and "a" not in acceptance.drafted


def test_a_pass_carries_at_most_pass_tokens_so_drafts_shrink_as_the_batch_grows() -> None:
    spec = Speculation(tokens=5, pass_tokens=8)
    assert [spec.draft_room(rows) for rows in (1, 2, 3, 4, 5, 8, 32)] == [5, 3, 1, 1, 0, 0, 0]
    assert Speculation(tokens=2, pass_tokens=64).draft_room(4) == 2  # never past tokens
