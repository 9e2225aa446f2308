"""The decode scheduler alone: a fake step function (a script of tokens per request; a request finishes when
its script ends) and a clock passed in. No model, no sleeps."""

from __future__ import annotations

import math

import pytest

from bentos.dataplane.decode.kv_budget import KvBudget
from bentos.dataplane.decode.scheduler import DecodeScheduler, Sequence, StepPlan
from bentos.errors import DeadlineExceeded, InvalidInput, QueueFull, RateLimited


class Driver:
    """Runs plans the way the decode loop will: plan, step, hand out tokens, finish the finished."""

    def __init__(self, scheduler: DecodeScheduler) -> None:
        self.s, self.now, self.plans = scheduler, 0.0, []
        self.scripts: dict[str, int] = {}  # request -> tokens it will write
        self.out: dict[str, int] = {}

    def add(self, rid: str, prompt: int = 8, tokens: int = 3, *, deadline: float = 1e9, bucket: int = 0,
            shadow: bool = False, tenant: str = "", priority: int = 1, weight: float = 1.0) -> None:
        self.s.add(Sequence(rid, prompt, tokens, self.now, deadline, bucket, shadow, tenant, priority, weight),
                   self.now)
        self.scripts[rid] = tokens

    def step(self) -> StepPlan:
        plan = self.s.plan(self.now)
        self.plans.append(plan)
        ended = [rid for rid, _ in plan.chunks if not self.s.running[rid].prefilling]  # a prompt's last chunk
        for rid in (*plan.prefill, *plan.decode, *ended):
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


def prefilled(plan: StepPlan, d: Driver) -> int:
    """Prompt tokens a step runs: whole prompts and chunks."""
    return sum(d.s.running[rid].prefill_tokens for rid in plan.prefill) + sum(n for _, n in plan.chunks)


def test_the_prefill_budget_caps_newcomers_per_step() -> None:
    d = driver(prefill_tokens=20)
    for rid in "abc":
        d.add(rid, prompt=8)
    assert d.step().prefill == ("a", "b")  # 16 of 20 tokens; c's 8 more would pass it
    assert d.step().prefill == ("c",)


def test_a_long_prompt_is_prefilled_in_chunks_while_the_running_streams_decode() -> None:
    d = driver(prefill_tokens=20)
    d.add("a", prompt=8, tokens=50)
    d.step()
    d.add("long", prompt=50, tokens=3)
    plans = [d.step() for _ in range(4)]
    assert [p.chunks for p in plans[:3]] == [(("long", 20),), (("long", 20),), (("long", 10),)]
    assert all(p.decode == ("a",) for p in plans[:3])  # the stream in flight writes a token every step
    assert d.out["long"] == 2 and plans[3].decode == ("a", "long")  # first token from its last chunk, then decodes
    assert all(prefilled(p, d) <= 20 for p in plans)


def test_a_short_newcomer_does_not_wait_behind_a_long_prompts_chunks() -> None:
    d = driver(prefill_tokens=20)
    d.add("long", prompt=50, tokens=3)
    assert d.step().chunks == (("long", 20),)
    d.add("short", prompt=8, tokens=3)
    plan = d.step()
    assert plan.prefill == ("short",) and plan.chunks == ()  # its first token costs a short step, not a chunk's
    d.add("short2", prompt=8, tokens=3)
    plan = d.step()  # the chunk waited the step before: it goes now, beside the room kept for the newcomer
    assert plan.prefill == ("short2",) and plan.chunks == (("long", 12),)
    assert d.step().chunks == (("long", 18),)
    d.add("long2", prompt=50, tokens=3)
    assert d.step().chunks == (("long2", 20),)
    d.add("medium", prompt=15, tokens=3)  # over half the budget: no room is kept for it
    plans = [d.step() for _ in range(2)]
    assert plans[0].chunks == (("long2", 20),) and plans[0].prefill == ()
    assert plans[1].chunks == (("long2", 10), ("medium", 10))  # it starts in what the last chunk leaves


def test_a_newcomer_every_step_still_lets_the_chunks_move_every_other_step() -> None:
    d = driver(prefill_tokens=20)
    d.add("long", prompt=90, tokens=3)
    d.step()
    moved = []
    for i in range(8):
        d.add(f"short{i}", prompt=4, tokens=1)
        moved.append(sum(n for _, n in d.step().chunks))
    assert moved == [0, 16, 0, 16, 0, 16, 0, 16]  # half of the steps, each all but the newcomer's 4 tokens


def test_a_long_prompt_waiting_for_the_chunk_budget_does_not_hold_up_the_short_ones_behind_it() -> None:
    d = driver(prefill_tokens=20)
    d.add("long", prompt=50, tokens=3)
    assert d.step().chunks == (("long", 20),)
    d.add("long2", prompt=50, tokens=3)  # the head: the chunks in progress take the whole budget
    d.add("short", prompt=4, tokens=3)
    plan = d.step()
    assert plan.chunks == (("long", 20),) and plan.prefill == ()
    assert "long2" in d.s.running and d.s.running["long2"].prefill_left == 50  # started, no token run yet
    plan = d.step()  # the short one is the head now: its step without the chunks
    assert plan.prefill == ("short",) and plan.chunks == ()
    assert [d.step().chunks for _ in range(2)] == [(("long", 10), ("long2", 10)), (("long2", 20),)]


def test_a_chunk_the_step_did_not_finish_is_planned_again_from_where_it_stopped() -> None:
    d = driver(prefill_tokens=20)
    d.add("long", prompt=50, tokens=3)
    assert d.step().chunks == (("long", 20),)
    d.s.unplanned("long", 15)  # a newcomer ended the step after 5 of its 20 tokens
    d.s.unplanned("gone", 3)  # a request no longer running: nothing to plan
    assert [d.step().chunks for _ in range(3)] == [(("long", 20),), (("long", 20),), (("long", 5),)]
    assert d.out["long"] == 1  # its last chunk wrote its first token: 5 + 20 + 20 + 5 = 50


def test_no_step_is_kept_from_the_chunks_for_a_newcomer_that_cannot_start() -> None:
    d = driver(prefill_tokens=20, max_running=2)
    d.add("a", prompt=4, tokens=50)
    d.add("long", prompt=50, tokens=3)
    d.step()
    d.step()
    d.add("short", prompt=4, tokens=3)  # both streams are taken
    assert d.step().chunks and "short" not in d.s.running


def test_a_prompt_with_a_cached_prefix_prefills_only_the_rest_and_a_preempted_one_all_of_it() -> None:
    d = driver(prefill_tokens=100, max_running=1)
    d.s.add(Sequence("low", 40, 10, 0.0, 1e9, 0, priority=0, cached=32), 0.0)
    d.scripts["low"] = 10
    assert d.step().chunks == (("low", 8),)  # on top of the 32 cached tokens: a chunk's way
    d.add("high", prompt=8, tokens=2, priority=2)
    assert d.step().preempted == ("low",)  # its KV, the cached prefix with it, is gone
    d.step()
    plan = d.step()
    assert plan.prefill == ("low",) and d.s.running["low"].cached == 0  # whole again, with what it wrote


def test_prompts_on_cached_prefixes_start_together_beside_a_whole_batch() -> None:
    d = driver(prefill_tokens=100)
    d.add("whole", prompt=20)
    for rid in ("c1", "c2"):
        d.s.add(Sequence(rid, 520, 3, 0.0, 1e9, 9, cached=512), 0.0)
        d.scripts[rid] = 3
    plan = d.step()
    assert plan.prefill == ("whole",) and plan.chunks == (("c1", 8), ("c2", 8))  # 36 of 100 tokens, one step


def test_a_prompt_over_what_the_step_has_left_starts_in_chunks_and_a_preempted_one_starts_over() -> None:
    d = driver(prefill_tokens=20, max_running=1)
    d.add("low", prompt=12, tokens=10, priority=0)
    d.add("long", prompt=30, tokens=3, priority=0)
    assert d.step().prefill == ("low",)  # 12 whole; "long" would pass 20 and the running set is full anyway
    d.s.max_running = 2
    assert d.step().chunks == (("long", 20),)  # alone in its step: its first 20
    d.add("high", prompt=8, tokens=2, priority=2)
    plan = d.step()
    assert plan.preempted == ("long",) and plan.prefill == ("high",)  # its 20 in the cache are gone
    (seq,) = d.s.waiting
    assert seq.request_id == "long" and seq.prefill_left == 0
    plans = [d.step() for _ in range(6)]
    long_chunks = [c for p in plans for c in p.chunks if c[0] == "long"]
    assert sum(n for _, n in long_chunks) == 30 and d.out["long"] == 3  # all of it again, then it finishes


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


# --- fair shares, priorities, early refusal (issue 29) -----------------------------------------------------

def tokens_by_tenant(d: Driver, steps: int) -> dict[str, int]:
    """Tokens each tenant was given over `steps` steps (requests are named tenant-n)."""
    given: dict[str, int] = {}
    for _ in range(steps):
        plan = d.step()
        for rid in (*plan.prefill, *plan.decode):
            tenant = rid.split("-")[0]
            given[tenant] = given.get(tenant, 0) + 1
    return given


def test_two_backlogged_tenants_get_equal_tokens_whatever_their_prompt_lengths() -> None:
    d = driver(max_running=4, prefill_tokens=100_000, max_waiting=1000)
    for i in range(60):  # "long" floods 2,000-token prompts first: oldest-first would serve it alone for 120 steps
        d.add(f"long-{i}", prompt=2000, tokens=8, tenant="long")
    for i in range(60):  # then "short" sends 8-token ones: both always have requests waiting
        d.add(f"short-{i}", prompt=8, tokens=8, tenant="short")
    given = tokens_by_tenant(d, 100)
    assert abs(given["long"] - given["short"]) <= 0.1 * max(given.values()), given


def test_a_weight_buys_its_share_and_a_tenant_alone_gets_every_slot() -> None:
    d = driver(tokens=10**5, max_running=6, max_waiting=1000)
    for i in range(80):  # the weight comes with each request, from its API key
        d.add(f"gold-{i}", tokens=6, tenant="gold", weight=2.0)
        d.add(f"free-{i}", tokens=6, tenant="free")
    given = tokens_by_tenant(d, 120)
    assert 1.8 <= given["gold"] / given["free"] <= 2.2, given
    alone = driver(max_running=6)
    for i in range(20):
        alone.add(f"solo-{i}", tokens=50, tenant="solo")
    alone.step()
    assert len(alone.step().decode) == 6  # the whole machine


def test_with_fair_shares_off_the_flood_that_came_first_is_served_first_and_nobody_gets_429() -> None:
    """The switch the benchmark compares against: arrival order within a class, no per-tenant queue share."""
    from bentos.dataplane.decode.shares import FairShare

    d = Driver(DecodeScheduler(KvBudget(10**6, 10), max_running=4, prefill_tokens=100_000, max_waiting=100,
                               shares=FairShare(enabled=False)))
    for i in range(60):  # over half the queue from one tenant: with shares on, the 51st would be 429
        d.add(f"long-{i}", prompt=2000, tokens=8, tenant="long")
    for i in range(20):
        d.add(f"short-{i}", prompt=8, tokens=8, tenant="short")
    given = tokens_by_tenant(d, 100)
    assert given == {"long": 400}, given  # 50 long requests of 8 tokens ahead of the first short one


def test_a_tenant_under_its_share_of_streams_takes_them_from_a_flood_and_no_more() -> None:
    d = driver(max_running=4, prefill_tokens=100_000, max_waiting=100)
    for i in range(8):
        d.add(f"flood-{i}", tokens=50, tenant="flood")
    d.step()
    assert set(d.s.running) == {f"flood-{i}" for i in range(4)}
    d.add("steady-0", tokens=5, tenant="steady")
    plan = d.step()
    assert plan.preempted == ("flood-3",) and plan.prefill == ("steady-0",)  # the flood's latest, at once
    d.add("steady-1", tokens=5, tenant="steady")
    plan = d.step()
    assert plan.preempted == ("flood-2",) and plan.prefill == ("steady-1",)  # two of four: its share
    d.add("steady-2", tokens=5, tenant="steady")
    plan = d.step()
    assert not plan.preempted and "steady-2" not in plan.prefill  # at its share: it waits its turn
    for _ in range(400):
        d.step()
    assert d.out == {**{f"flood-{i}": 50 for i in range(8)}, **{f"steady-{i}": 5 for i in range(3)}}


def test_with_fair_shares_off_nobody_is_preempted_for_a_share() -> None:
    from bentos.dataplane.decode.shares import FairShare

    d = Driver(DecodeScheduler(KvBudget(10**6, 10), max_running=4, shares=FairShare(enabled=False)))
    for i in range(8):
        d.add(f"flood-{i}", tokens=50, tenant="flood")
    d.step()
    d.add("steady-0", tokens=5, tenant="steady")
    plan = d.step()
    assert not plan.preempted and not plan.prefill


def test_idle_time_banks_no_credit() -> None:
    d = driver(max_running=2, max_waiting=1000)
    for i in range(30):
        d.add(f"early-{i}", tokens=4, tenant="early")
    tokens_by_tenant(d, 40)  # "early" alone, served a lot
    for i in range(30):
        d.add(f"late-{i}", tokens=4, tenant="late")
        d.add(f"early-x{i}", tokens=4, tenant="early")
    given = tokens_by_tenant(d, 60)
    # Lifted to the served level on arrival: it shares from here, it does not take every slot to catch up.
    assert given["early"] >= 0.4 * (given["early"] + given["late"]), given


def test_a_higher_class_goes_first_and_preempts_a_lower_one_which_resumes_and_finishes() -> None:
    d = driver(max_running=2)
    d.add("low-a", tokens=10, priority=0, deadline=3.0)
    d.add("low-b", tokens=10, priority=0)
    d.step()
    d.step()
    d.add("normal-1", tokens=3, priority=1)
    d.add("high-1", tokens=3, priority=2)
    plan = d.step()
    assert plan.preempted == ("low-b",) and plan.prefill == ("high-1",)  # latest admitted of the lowest class
    for _ in range(40):
        plan = d.step()
        assert not plan.refused  # low-a's deadline has passed: a started request is never refused
    assert d.out == {"low-a": 10, "low-b": 10, "normal-1": 3, "high-1": 3}  # every token, none twice
    assert not d.s.running and not d.s.waiting and d.s.budget.used == 0


def test_a_preempted_request_is_prefilled_again_with_what_it_wrote() -> None:
    d = driver(max_running=1)
    d.add("low", prompt=8, tokens=10, priority=0)
    d.step()
    d.step()  # two tokens out
    d.add("high", tokens=2, priority=2)
    assert d.step().preempted == ("low",)
    (seq,) = [s for s in d.s.waiting if s.request_id == "low"]
    assert seq.prefill_tokens == 8 + 2 and seq.preempted == 1
    d.step()  # high's last token; it leaves
    assert d.step().prefill == ("low",)


def test_no_preemption_within_a_class() -> None:
    d = driver(max_running=1)
    d.add("a", tokens=5)
    d.step()
    d.add("b", tokens=5)
    assert d.step() == StepPlan(decode=("a",))


def test_a_tenant_over_its_share_of_the_queue_is_429_and_a_full_queue_503_both_with_a_computed_wait() -> None:
    d = driver(max_running=1, max_waiting=6)
    d.add("busy-0", tokens=100, tenant="busy")
    d.step()
    d.s.observe_step(0.05)
    d.add("other-0", tokens=100, tenant="other")  # two tenants: each may have half the queue waiting
    for i in range(1, 4):
        d.add(f"busy-{i}", tokens=100, tenant="busy")
    with pytest.raises(RateLimited) as limited:
        d.add("busy-4", tokens=100, tenant="busy")
    wait = int(limited.value.headers["Retry-After"])
    assert wait == math.ceil(d.s.wait_estimate()) and wait > 1  # ~500 tokens ahead at 0.05 s each
    for i in range(1, 3):
        d.add(f"other-{i}", tokens=100, tenant="other")
    with pytest.raises(QueueFull) as full:
        d.add("third-0", tokens=100, tenant="third")
    assert int(full.value.headers["Retry-After"]) == math.ceil(d.s.wait_estimate())


def test_a_deadline_the_running_work_makes_impossible_is_refused_at_once() -> None:
    d = driver(max_running=1)
    d.add("long", tokens=200)
    d.step()
    d.s.observe_step(0.1)  # 199 tokens left: about 20 s before the slot frees
    with pytest.raises(DeadlineExceeded, match="could not start before its deadline"):
        d.add("hurried", tokens=5, deadline=d.now + 5)
    d.add("patient", tokens=5, deadline=d.now + 60)  # possible: it waits
    d.add("urgent", tokens=5, deadline=d.now + 5, priority=2)  # it may preempt: not refused
