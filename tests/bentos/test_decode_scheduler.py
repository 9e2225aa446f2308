"""The decode scheduler alone: a fake step function (a script of tokens per request; a request finishes when
its script ends) and a clock passed in. No model, no sleeps."""

from __future__ import annotations

import pytest

from bentos.dataplane.decode.kv_budget import KvBudget
from bentos.dataplane.decode.scheduler import DecodeScheduler, Sequence, StepPlan
from bentos.errors import InvalidInput, QueueFull


class Driver:
    """Runs plans the way the decode loop will: plan, step, hand out tokens, finish the finished."""

    def __init__(self, scheduler: DecodeScheduler) -> None:
        self.s, self.now, self.plans = scheduler, 0.0, []
        self.scripts: dict[str, int] = {}  # request -> tokens it will write
        self.out: dict[str, int] = {}

    def add(self, rid: str, prompt: int = 8, tokens: int = 3, *, deadline: float = 1e9, bucket: int = 0,
            shadow: bool = False) -> None:
        self.s.add(Sequence(rid, prompt, tokens, self.now, deadline, bucket, shadow))
        self.scripts[rid] = tokens

    def step(self) -> StepPlan:
        plan = self.s.plan(self.now)
        self.plans.append(plan)
        for rid in (*plan.prefill, *plan.decode):
            self.out[rid] = self.out.get(rid, 0) + 1
            self.s.advanced(rid)
            if self.out[rid] == self.scripts[rid]:
                self.s.finish(rid)
        self.now += 1.0
        return plan


def driver(tokens: int = 10_000, **kw: int) -> Driver:
    return Driver(DecodeScheduler(KvBudget(tokens * 10, 10), **kw))


def test_a_late_joiner_shares_the_next_step() -> None:
    d = driver()
    d.add("a", tokens=5)
    assert d.step() == StepPlan(prefill=("a",))
    d.add("b", tokens=3)
    plan = d.step()
    assert plan.prefill == ("b",) and plan.decode == ("a",) and plan.batch == 2
    assert d.step().decode == ("a", "b")


def test_a_finished_request_leaves_at_once_and_frees_its_kv() -> None:
    d = driver()
    d.add("short", tokens=2)
    d.add("long", tokens=5)
    d.step()
    d.step()  # "short" writes its second and last token here
    assert "short" not in d.s.running and not d.s.budget.holds("short")
    assert d.step().decode == ("long",)


def test_the_prefill_budget_caps_newcomers_per_step_but_one_always_goes() -> None:
    d = driver(prefill_tokens=20)
    for rid in "abc":
        d.add(rid, prompt=8)
    assert d.step().prefill == ("a", "b")  # 16 of 20 tokens; c's 8 more would pass it
    assert d.step().prefill == ("c",)
    d.add("huge", prompt=500)
    assert d.step().prefill == ("huge",)  # over the budget alone: it still goes, alone, so it never starves


def test_oldest_first_and_a_bigger_head_is_not_jumped() -> None:
    d = driver(tokens=100)
    d.add("a", prompt=10, tokens=50)  # holds 60 of 100
    d.step()
    d.add("big", prompt=30, tokens=30)  # needs 60: waits for room
    d.add("small", prompt=5, tokens=5)  # would fit now, but is behind the head
    plans = [d.step() for _ in range(100)]
    firsts = {rid: next(i for i, p in enumerate(plans) if rid in p.prefill) for rid in ("big", "small")}
    assert firsts["big"] <= firsts["small"]
    assert d.out["a"] == 50 and d.out["big"] == 30 and d.out["small"] == 5


def test_prompts_of_one_step_share_a_length_class() -> None:
    d = driver()
    d.add("short1", bucket=3)
    d.add("long", bucket=7)
    d.add("short2", bucket=3)
    assert d.step().prefill == ("short1",)  # "long" starts the next batch: no padding to its length
    assert d.step().prefill == ("long",)


def test_an_over_budget_request_waits_then_is_refused_at_its_deadline() -> None:
    d = driver(tokens=100)
    d.add("a", prompt=50, tokens=50)  # the whole budget
    d.step()
    d.add("b", prompt=10, tokens=10, deadline=d.now + 3)
    for _ in range(3):
        assert "b" not in d.step().prefill
    assert d.step().refused == ("b",) and not d.s.waiting
    with pytest.raises(InvalidInput, match=r"over this version's KV budget of 100 tokens"):
        d.add("never", prompt=60, tokens=41)  # could never fit: a 422 at once, not a wait


def test_a_full_waiting_queue_is_503() -> None:
    d = driver(max_waiting=2, max_running=1)
    d.add("a")
    d.add("b")
    with pytest.raises(QueueFull, match=r"limits\.max_waiting"):
        d.add("c")


def test_an_abort_frees_at_the_next_step_running_or_waiting() -> None:
    d = driver(max_running=1)
    d.add("a", tokens=100)
    d.add("queued", tokens=100)
    d.step()
    d.s.abort("a")
    d.s.abort("queued")
    plan = d.step()
    assert plan.removed == ("a", "queued") and plan.idle
    assert d.s.budget.used == 0 and not d.s.running and not d.s.waiting


def test_a_slow_reader_is_skipped_and_keeps_its_kv() -> None:
    d = driver()
    d.add("fast", tokens=10)
    d.add("slow", tokens=10)
    d.step()
    d.s.hold("slow", True)
    assert d.step().decode == ("fast",) and d.s.budget.holds("slow")
    d.s.hold("slow", False)
    assert d.step().decode == ("fast", "slow")


def test_shadow_copies_run_only_when_nobody_waits() -> None:
    d = driver(max_running=1)
    d.add("user1", tokens=2)
    d.add("copy", tokens=2, shadow=True)
    d.add("user2", tokens=2)
    assert not d.s.has_spare
    order = [p.prefill for p in (d.step() for _ in range(6)) if p.prefill]
    assert order == [("user1",), ("user2",), ("copy",)]
    assert d.s.has_spare
