"""Automated canary analysis against a real `bentoml serve` with two workers.

A good canary (the digits CNN over the MLP) is promoted; a bad one (a registered version that
fails on the inputs with a zero pixel) is rolled back while clients keep getting answers;
a manual change pauses a rollout. Both workers run the controller; the lease lets one act.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from tests.integration.conftest import AUTH, deploy
from tests.integration.traffic import FAST, NO_ZERO, WITH_ZERO, Traffic
from tests.servers import Served

T = TypeVar("T")

pytestmark = pytest.mark.integration
def _rollout(client: httpx.Client, action: str = "", body: dict[str, Any] | None = None) -> httpx.Response:
    path = "/v1/admin/rollouts/digits" + (f"/{action}" if action else "")
    if body is None and not action:
        return client.get(path, headers=AUTH)
    return client.post(path, json=body or {}, headers=AUTH)


def _wait_status(client: httpx.Client, wanted: set[str], timeout: float = 120) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        state = _rollout(client).json()
        if state["status"] in wanted:
            return dict(state)
        time.sleep(0.25)
    raise AssertionError(f"rollout still {state['status']} after {timeout}s: {state['history'][-3:]}")


@pytest.fixture
def mlp_stable(client: httpx.Client, tags: dict[str, str]) -> Iterator[None]:
    assert deploy(client, "digits", [(tags["mlp"], "stable", 100)], reason="rollout test: start").status_code == 200
    time.sleep(1)
    yield
    state = _rollout(client)
    if state.status_code == 200 and state.json()["status"] in ("running", "paused"):
        _rollout(client, "abort", {"reason": "test cleanup"})
    deploy(client, "digits", [(tags["mlp"], "stable", 100)], reason="rollout test: clean up")


def _until(get: Callable[[], T], done: Callable[[T], bool], timeout: float) -> T:
    end = time.monotonic() + timeout
    while not done(value := get()):
        assert time.monotonic() < end, f"not done after {timeout:g} s: {value}"
        time.sleep(0.1)
    return value


def _live(client: httpx.Client) -> list[dict[str, Any]]:
    """The deployment as the control plane has it (a worker's own view may lag one poll)."""
    revisions = client.get("/v1/admin/deployments/digits", headers=AUTH).json()["revisions"]
    return list(max(revisions, key=lambda r: r["revision"])["spec"]["versions"])


def _audit(client: httpx.Client, since: float) -> list[dict[str, Any]]:
    entries = client.get("/v1/admin/audit", params={"endpoint": "digits"}, headers=AUTH).json()
    return sorted((e for e in entries if e["ts"] >= since and e["action"].startswith("rollout-")),
                  key=lambda e: e["ts"])


def _timeline(state: dict[str, Any], began: float) -> list[str]:
    """For the closing note: when each decision fell, and on what evidence."""
    out = []
    for h in state["decisions"]:
        line = f"{h['at'] - began:5.1f} s {h['action']} at {h['step']} %"
        if "checks" in h:
            c, s = h["canary"], h["stable"]
            tests = "; ".join(f"{k} {v['test']} p={v.get('p_value')} alpha={v.get('alpha')} effect={v.get('effect')}"
                              for k, v in h["checks"].items())
            line += (f" (canary {c['requests']} req {c['errors']} err, stable {s['requests']} req "
                     f"{s['errors']} err; {tests})")
        out.append(line)
    return out


def test_a_good_canary_is_promoted_step_by_step(client: httpx.Client, server: Served, tags: dict[str, str],
                                                 mlp_stable: None) -> None:
    began = time.time()
    policy = {"steps": [20, 50, 100], **FAST}
    r = _rollout(client, body={"tag": tags["cnn"], "policy": policy, "reason": "CNN over MLP"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "running" and r.json()["percent"] == 20
    with Traffic(server.url, [WITH_ZERO, NO_ZERO]) as traffic:
        state = _wait_status(client, {"promoted", "rolled_back"})
    assert state["status"] == "promoted", state["history"][-2:]
    assert set(traffic.status) == {200} and traffic.versions[tags["cnn"]] > 0, traffic.report(server)
    live = _live(client)
    assert [(v["tag"], v["role"], v["weight"]) for v in live] == [(tags["cnn"], "stable", 100)]

    actions = [e["action"] for e in _audit(client, began)]
    assert actions == ["rollout-start", "rollout-advance", "rollout-promote"]  # each step exactly once
    promote = _audit(client, began)[-1]
    evidence = promote["details"]["evidence"]
    assert evidence["canary"]["requests"] >= 2 * FAST["min_requests"]
    assert {"errors", "latency"} <= evidence["checks"].keys()
    assert all("p_value" in c and "alpha" in c for c in evidence["checks"].values())
    print("promotion:", _timeline(state, began))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_bad_canary_is_rolled_back_and_clients_see_no_errors(client: httpx.Client, server: Served,
                                                               tags: dict[str, str], mlp_stable: None,
                                                               protocol: str) -> None:
    """Driven by one protocol's traffic alone: the evidence is the same whichever way requests came."""
    began = time.time()
    policy = {"steps": [10, 50, 100], "min_requests": 200, "min_seconds": 5, "interval_s": 0.5}
    r = _rollout(client, body={"tag": tags["faulty"], "policy": policy, "reason": "a bad canary"})
    assert r.status_code == 200, r.text
    grpc = server.grpc if protocol == "grpc" else None
    with Traffic(server.url, [WITH_ZERO, NO_ZERO, NO_ZERO], grpc=grpc) as traffic:  # a third fail on it
        state = _wait_status(client, {"promoted", "rolled_back"})
    assert state["status"] == "rolled_back"
    assert set(traffic.status) == {200}, traffic.report(server)  # the fallback to stable answered every failure
    live = _live(client)
    assert [(v["tag"], v["weight"]) for v in live] == [(tags["mlp"], 100)]

    rollback = _audit(client, began)[-1]
    assert rollback["action"] == "rollout-rollback" and "errors" in rollback["reason"]
    errors = rollback["details"]["evidence"]["checks"]["errors"]
    assert errors["reject"] and errors["p_value"] < errors["alpha"] and errors["effect"] > errors["threshold"]
    print("rollback:", _timeline(state, began))


def test_a_shadow_step_rolls_back_a_canary_that_disagrees_with_stable(client: httpx.Client, server: Served,
                                                                      tags: dict[str, str], mlp_stable: None) -> None:
    from models.families.digits import splits

    rows = splits()["test"][0].tolist()  # real digits: the CNN and the MLP disagree on a few
    policy = {"steps": [0, 50, 100], "checks": ["errors", "agreement"], "min_agreement": 0.999,
              "min_requests": 2 * len(rows), "min_seconds": 0, "interval_s": 0.5}
    r = _rollout(client, body={"tag": tags["cnn"], "policy": policy, "reason": "shadow first"})
    assert r.status_code == 200, r.text
    live = _live(client)
    assert {(v["tag"], v["role"]) for v in live} == {(tags["mlp"], "stable"), (tags["cnn"], "shadow")}
    with Traffic(server.url, rows, threads=2) as traffic:
        state = _wait_status(client, {"promoted", "rolled_back"})
    assert state["status"] == "rolled_back" and "agreement" in state["decisions"][-1]["reason"]
    assert set(traffic.versions) == {tags["mlp"]}  # a shadow never answers
    agreement = state["decisions"][-1]["checks"]["agreement"]
    assert agreement["comparisons"] >= 50 and 0.8 < agreement["effect"] < 0.999


def test_one_controller_acts_across_two_workers(client: httpx.Client, server: Served, tags: dict[str, str],
                                                mlp_stable: None) -> None:
    policy = {"steps": [20, 100], "min_requests": 1_000_000, "min_seconds": 3600, "interval_s": 0.3}
    assert _rollout(client, body={"tag": tags["cnn"], "policy": policy, "reason": "lease"}).status_code == 200
    # A new connection each time: keep-alive would pin every request to one worker.
    workers = {httpx.get(f"{server.url}/v1/health", timeout=10).json()["worker"] for _ in range(60)}
    assert len(workers) == 2  # both workers answer, and both run the controller loop
    with Traffic(server.url, [NO_ZERO], threads=2):
        # Looks are counted over this window alone: the probes above take a varying while under load. The
        # window lasts until 8 looks were made, however slow the machine; two controllers acting would make
        # about twice as many as the window allows one.
        before, began = _rollout(client).json()["looks"], time.monotonic()
        state = _until(lambda: _rollout(client).json(), lambda s: s["looks"] - before >= 8, timeout=60)
        window = time.monotonic() - began
    looks = [h["look"] for h in state["history"] if "look" in h]
    assert state["looks"] - before <= window / 0.3 + 2
    assert looks == sorted(set(looks))
    controllers = {h["controller"] for h in state["history"] if "controller" in h}
    assert len(controllers) == 1 and controllers <= workers


def _by_hand(client: httpx.Client, action: str, tags: dict[str, str]) -> httpx.Response:
    if action == "deploy":
        return deploy(client, "digits", [(tags["mlp"], "stable", 70), (tags["cnn"], "canary", 30)], reason="by hand")
    return client.post(f"/v1/admin/deployments/digits/{action}", json={"reason": "by hand"}, headers=AUTH)


@pytest.mark.parametrize("action", ["deploy", "promote", "rollback"])
def test_a_manual_change_pauses_the_rollout_and_abort_restores_stable(client: httpx.Client, tags: dict[str, str],
                                                                        mlp_stable: None, action: str) -> None:
    """Through the real engine: every change by hand pauses a running rollout in its own transaction."""
    policy = {"steps": [10, 100], "min_requests": 1_000_000, "interval_s": 1}
    assert _rollout(client, body={"tag": tags["cnn"], "policy": policy, "reason": "pause"}).status_code == 200
    assert _rollout(client, body={"tag": tags["cnn"], "reason": "twice"}).status_code == 409
    r = _by_hand(client, action, tags)
    assert r.status_code == 200, r.text
    state = _rollout(client).json()
    assert state["status"] == "paused" and f"manual {action} by admin" in state["history"][-1]["reason"]
    assert _rollout(client, "resume", {"reason": "go on"}).json()["status"] == "running"
    live = _live(client)
    assert {v["tag"]: v["weight"] for v in live} == {tags["mlp"]: 90, tags["cnn"]: 10}  # the step's split again
    assert _rollout(client, "abort", {"reason": "enough"}).json()["status"] == "aborted"
    live = _live(client)
    assert [(v["tag"], v["weight"]) for v in live] == [(tags["mlp"], 100)]
    assert _rollout(client, "abort").status_code == 409
    assert _rollout(client, "jump").status_code == 404


def test_bad_rollout_requests_name_the_field(client: httpx.Client, tags: dict[str, str], mlp_stable: None) -> None:
    r = _rollout(client, body={"tag": tags["cnn"], "reason": "x", "policy": {"steps": [50, 20, 100]}})
    assert r.status_code == 422 and "steps must increase" in r.text
    r = _rollout(client, body={"tag": "digits-nope", "reason": "x"})
    assert r.status_code == 422 and "tag" in r.json()["detail"]
    r = _rollout(client, body={"tag": tags["mlp"], "reason": "x"})
    assert r.status_code == 422 and "already stable" in r.json()["detail"]
    assert client.post("/v1/admin/rollouts/nowhere", json={"tag": "x", "reason": "x"}, headers=AUTH).status_code == 404
    r = client.post("/v1/admin/rollouts/minilm", headers=AUTH,  # embeddings name no classes: it would wait for ever
                    json={"tag": tags["minilm"], "reason": "x", "policy": {"checks": ["errors", "drift"]}})
    assert r.status_code == 422 and "policy.checks: drift" in r.json()["detail"], r.text
    r = _rollout(client, body={"tag": tags["cnn"], "reason": "x", "policy": {"checks": ["errors", "divergence"]}})
    assert r.status_code == 422 and "policy.checks: divergence" in r.json()["detail"], r.text  # not a language model
    r = _rollout(client, body={"tag": tags["cnn"], "reason": "x", "policy": {"max_token_kl": 9}})
    assert r.status_code == 422 and "max_token_kl" in r.text, r.text


@pytest.mark.parametrize(("canary", "outcome"), [("cnn", "promoted"), ("faulty", "rolled_back")])
def test_a_shadow_step_passes_a_good_canary_and_rolls_back_a_bad_one(client: httpx.Client, server: Served,
                                                                     tags: dict[str, str], mlp_stable: None,
                                                                     canary: str, outcome: str) -> None:
    policy = {"steps": [0, 50, 100], **FAST}
    r = _rollout(client, body={"tag": tags[canary], "policy": policy, "reason": "shadow first"})
    assert r.status_code == 200 and r.json()["percent"] == 0, r.text
    with Traffic(server.url, [WITH_ZERO, NO_ZERO]) as traffic:
        state = _wait_status(client, {"promoted", "rolled_back"})
    assert state["status"] == outcome, state["history"][-2:]
    # The shadow answers were the canary's evidence in the shadow step (copies run on spare capacity
    # only, so early looks may have had none yet).
    looks = [h for h in state["history"] if "checks" in h]
    assert any(h["step"] == 0 and h["canary"]["requests"] > 0 for h in looks), looks
    # A shadow never answers, so clients never saw the bad one.
    assert set(traffic.status) == {200}, traffic.report(server)


def test_a_canary_whose_predictions_drift_is_rolled_back_by_the_drift_check(
        client: httpx.Client, server: Served, tags: dict[str, str], mlp_stable: None) -> None:
    """It never fails and answers as fast as stable, so errors and latency pass it; its class mix does not."""
    began = time.time()
    policy = {"steps": [20, 50, 100], **FAST, "checks": ["errors", "drift"], "max_prediction_drift": 0.2}
    r = _rollout(client, body={"tag": tags["biased"], "policy": policy, "reason": "a drifting canary"})
    assert r.status_code == 200, r.text
    with Traffic(server.url, [WITH_ZERO, NO_ZERO, NO_ZERO]) as traffic:
        state = _wait_status(client, {"promoted", "rolled_back"})
    print("drift rollback:", _timeline(state, began))
    assert state["status"] == "rolled_back", state["history"][-2:]
    assert set(traffic.status) == {200}, traffic.report(server)
    rollback = _audit(client, began)[-1]
    checks = rollback["details"]["evidence"]["checks"]
    assert rollback["action"] == "rollout-rollback" and checks["drift"]["reject"] is True
    assert checks["errors"]["reject"] is False and checks["drift"]["effect"] > 0.2
    assert [(v["tag"], v["role"], v["weight"]) for v in _live(client)] == [(tags["mlp"], "stable", 100)]
