"""A real Prometheus (Debian's) scrapes a running service while digits runs at 90/10."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT
from tests.integration.conftest import deploy
from tests.servers import Prometheus, Served

pytestmark = pytest.mark.integration
RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
ROW = [0.0] * 20 + [16.0] * 10 + [4.0] * 34


@pytest.fixture(scope="module")
def prometheus(server: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    prom = Prometheus([f"127.0.0.1:{server.port}"], tmp_path_factory.mktemp("prometheus"), RULES)
    try:
        prom.wait_ready()
        yield prom
    finally:
        prom.stop()


def _send(url: str, seconds: float) -> Counter[str]:
    seen: Counter[str] = Counter()
    end = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=30) as c:
        while time.monotonic() < end:
            r = c.post("/v1/digits/predict", json={"inputs": [ROW]})
            assert r.status_code == 200, r.text
            seen[r.headers["x-model-version"]] += 1
    return seen


def _wait_for(prom: Prometheus, promql: str, n: int, timeout: float = 30) -> list[dict[str, object]]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        result = prom.query(promql)
        if len(result) >= n:
            return result
        time.sleep(1)
    raise AssertionError(f"{promql!r} returned fewer than {n} series")


def _wait_until(prom: Prometheus, promql: str, done: Callable[[list[dict[str, Any]]], bool],
                timeout: float = 40) -> list[dict[str, Any]]:
    """The query's result once `done` holds of it (within 40 s: the rules' 1 m windows still hold the traffic)."""
    end = time.monotonic() + timeout
    while not done(result := prom.query(promql)) and time.monotonic() < end:
        time.sleep(1)
    assert done(result), f"{promql!r}: {result}"
    return result


def test_prometheus_sees_both_versions_in_the_split(prometheus: Prometheus, client: httpx.Client,
                                                     tags: dict[str, str]) -> None:
    r = deploy(client, "digits", [(tags["mlp"], "stable", 90), (tags["cnn"], "canary", 10)], reason="prometheus")
    assert r.status_code == 200, r.text
    time.sleep(1.5)  # both workers pick up the revision
    _wait_for(prometheus, 'up{job="switchyard"} == 1', 1)
    with ThreadPoolExecutor(4) as pool:
        seen = sum((f.result() for f in [pool.submit(_send, client.base_url.__str__(), 10) for _ in range(4)]),
                   Counter())
    assert set(seen) == {tags["mlp"], tags["cnn"]}
    time.sleep(3)  # the last scrapes and a rule evaluation

    rates = _wait_for(prometheus, 'sum by (version) (rate(switchyard_requests_total{endpoint="digits",'
                      'source="api"}[1m]))', 2)
    by_version = {r["metric"]["version"]: float(r["value"][1]) for r in rates}  # type: ignore[index]
    share = by_version[tags["cnn"]] / sum(by_version.values())
    client_share = seen[tags["cnn"]] / sum(seen.values())
    print(f"canary share: prometheus {share:.3f}, clients {client_share:.3f}, {sum(seen.values())} requests")
    assert 0.04 < share < 0.18 and abs(share - client_share) < 0.03

    # The recording rules run every 15 s (deploy/'s interval): until their first run after this traffic, they hold
    # an earlier run's values, which may be another test's versions at a rate of 0 and a share of 0/0.
    both = {tags["mlp"], tags["cnn"]}
    _wait_until(prometheus, 'switchyard:requests:rate1m{endpoint="digits"}',
                lambda rs: {r["metric"]["version"] for r in rs if float(r["value"][1]) > 0} >= both)
    shares = _wait_until(prometheus, 'switchyard:traffic_share:rate1m{endpoint="digits"}',
                         lambda rs: {r["metric"]["version"] for r in rs if float(r["value"][1]) > 0} >= both)
    assert abs(sum(float(s["value"][1]) for s in shares) - 1) < 1e-6, shares  # type: ignore[index]
    assert _wait_for(prometheus, f'switchyard:request_duration_seconds:p99_1m{{version="{tags["cnn"]}"}}', 1)


def test_every_rule_evaluates_without_error(prometheus: Prometheus) -> None:
    # Until every rule has been evaluated once ("unknown" before): first in the module, Prometheus may have
    # only just started (the 2 s this waited were not always enough on a busy machine).
    end = time.monotonic() + 60
    while True:
        groups = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if (rules and all(r["health"] != "unknown" for r in rules)) or time.monotonic() > end:
            break
        time.sleep(0.5)
    assert len(rules) >= 10
    bad = [(r["name"], r.get("health"), r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad


def test_dashboard_queries_run(prometheus: Prometheus, client: httpx.Client) -> None:
    # Its own traffic, kept up until Prometheus sees it: first in the module, Prometheus may scrape for the first
    # time only after a short burst ended, and rate() of a counter that never rose between two scrapes is 0.
    rising = 'sum(rate(switchyard_batch_size_count{endpoint="digits"}[1m])) > 0'
    end = time.monotonic() + 60
    while not prometheus.query(rising):
        assert time.monotonic() < end, f"{rising!r} stayed empty through 60 s of traffic"
        _send(str(client.base_url), 1)
    dash = json.loads(Path(ROOT / "deploy" / "grafana" / "dashboards" / "switchyard.json").read_text())
    for panel in dash["panels"]:
        for target in panel["targets"]:
            promql = (target["expr"].replace("$__rate_interval", "1m").replace('"$endpoint"', '".*"')
                      .replace('"$version"', '".*"'))
            prometheus.query(promql)  # asserts status success: the query parses and evaluates
    assert prometheus.query('sum(rate(switchyard_batch_size_count{endpoint="digits"}[1m]))')


def test_the_autoscaling_query_follows_requests_in_flight(prometheus: Prometheus, server: Served) -> None:
    """prometheus-adapter's rule (deploy/k8s/overlays/queue-autoscaling) on real scrapes: its metricsQuery,
    with the labels a static scrape has in place of namespace and pod, rises with load."""
    import yaml

    rules = yaml.safe_load((ROOT / "deploy" / "k8s" / "overlays" / "queue-autoscaling" /
                            "prometheus-adapter-rules.yaml").read_text())
    rule = yaml.safe_load(rules["data"]["config.yaml"])["rules"][0]
    series = rule["seriesQuery"].split("{")[0]
    promql = (rule["metricsQuery"].replace("<<.Series>>", series).replace("<<.LabelMatchers>>", 'job="switchyard"')
              .replace("<<.GroupBy>>", "instance"))

    async def load(seconds: float) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=60,
                                     limits=httpx.Limits(max_connections=64)) as c:
            end = time.monotonic() + seconds

            async def one_client(i: int) -> None:
                n = 0
                while time.monotonic() < end:  # a new, long text each time: the model, not this client, is
                    n += 1                      # the bottleneck, and the prediction cache must not answer
                    text = f"client {i} keeps the queue full, {n}: " + "a long sentence of many words " * 50
                    r = await c.post("/v1/minilm/embed", json={"texts": [text]})
                    assert r.status_code == 200, r.text
            await asyncio.gather(*(one_client(i) for i in range(64)))

    asyncio.run(load(8))
    time.sleep(2)  # a sample and a scrape after the load
    in_flight = float(_wait_for(prometheus, promql, 1)[0]["value"][1])  # type: ignore[index]
    peak_queue = prometheus.query('max_over_time(sum(switchyard_queue_depth{endpoint="minilm"})[30s:1s])')
    print(f"adapter metric {in_flight:.1f} requests in flight (1 min average); queue peak "
          f"{float(peak_queue[0]['value'][1]):.0f}")  # type: ignore[index]
    assert in_flight > 1  # 64 clients for 8 s of the last minute
    assert float(peak_queue[0]["value"][1]) > 1  # type: ignore[index]
    now = prometheus.query('sum(switchyard_requests_in_flight{endpoint="minilm"})')
    assert float(now[0]["value"][1]) == 0  # type: ignore[index]  # back to nothing once the load stopped
