"""A key's rate holds for the whole fleet: two real replicas on their own PostgreSQL, one client spreading
requests over both; then one replica killed; then the database stopped."""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import TOKEN
from tests.integration.test_access import create_key
from tests.servers import Postgres, Served, serve_env

pytestmark = pytest.mark.integration
ROW = {"inputs": [[0.0] * 20 + [16.0] * 10 + [4.0] * 34]}
RATE = 20.0  # the key's requests/s, for the fleet
WINDOW_S = 10.0  # accepted requests counted over this, after the first burst is spent


@pytest.fixture(scope="module")
def fleet(pg: Postgres, tags: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Served]]:
    root = tmp_path_factory.mktemp("fleet")
    replicas = []
    for name in ("a", "b"):  # started side by side, then waited for
        (root / name).mkdir()
        env = serve_env(Path(os.environ["BENTOML_HOME"]), root / name, admin_token=TOKEN, db_url=pg.url,
                        default_models=json.dumps({"digits": tags["mlp"], "minilm": tags["minilm"]}))
        env["BENTOML_CONFIG_OPTIONS"] = "services.switchyard.workers=1"
        replicas.append(Served(env, log_dir=root / name))
    try:
        for replica in replicas:
            replica.wait_ready()
        yield replicas
    finally:
        for replica in replicas:
            replica.kill(signal.SIGKILL)


def rate_share(replica: Served) -> float:
    return float(httpx.get(f"{replica.url}/v1/health", timeout=10).json()["rate_share"])


def wait_for_share(replica: Served, share: float, timeout_s: float = 20) -> float:
    """Seconds until `replica` takes `share` of each key's rate."""
    start = time.monotonic()
    while rate_share(replica) != share:
        assert time.monotonic() - start < timeout_s, f"share still {rate_share(replica)}, not {share}"
        time.sleep(0.2)
    return time.monotonic() - start


def accepted_rate(replicas: list[Served], secret: str, threads: int = 8) -> float:
    """Requests/s answered 200 while `threads` clients post as fast as they can, each going round the
    replicas in turn; counted over WINDOW_S after 2 s, so the buckets' first bursts are not counted."""
    start = time.monotonic()
    begin, end = start + 2, start + 2 + WINDOW_S
    accepted: list[float] = []
    others: list[int] = []

    def client(offset: int) -> None:
        clients = [httpx.Client(base_url=r.url, timeout=30, headers={"x-api-key": secret}) for r in replicas]
        for c in itertools.islice(itertools.cycle(clients), offset, None):
            now = time.monotonic()
            if now >= end:
                break
            r = c.post("/v1/digits/predict", json=ROW)
            if r.status_code == 200:
                accepted.append(time.monotonic())
            elif r.status_code != 429:
                others.append(r.status_code)
        for c in clients:
            c.close()

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not others, f"statuses other than 200 and 429: {others[:10]}"
    return sum(begin <= t < end for t in accepted) / WINDOW_S


def test_a_keys_rate_holds_across_replicas_before_and_after_one_dies_and_during_an_outage(
        fleet: list[Served], pg: Postgres) -> None:
    a, b = fleet
    with httpx.Client(base_url=a.url, timeout=30) as c:
        secret = create_key(c, "fleet", rate=RATE, burst=2)
    wait_for_share(a, 0.5)
    wait_for_share(b, 0.5)
    time.sleep(1.5)  # every worker has the key (a poll) before it is used
    both = accepted_rate(fleet, secret)

    b.kill(signal.SIGKILL)  # no goodbye: a's next heartbeats stop counting it after the TTL
    rebalanced_s = wait_for_share(a, 1.0)
    alone = accepted_rate([a], secret)

    pg.stop()  # the control plane goes away: a keeps its last share, neither open nor closed
    try:
        outage = accepted_rate([a], secret)
    finally:
        pg.start()
    print(f"accepted {both:.1f}/s over two replicas, {alone:.1f}/s over one ({rebalanced_s:.1f} s to re-balance "
          f"after SIGKILL), {outage:.1f}/s during a database outage; the key's rate {RATE:g}/s")
    # More than the rate is the bug this guards against (a replica that did not take its share); less is
    # mostly the machine: in one local run another server test loaded the 2 cores and the two replicas
    # answered 17.4/s. A share that is wrong (1/3 or 1/4 of the rate where it should be 1/2) stays under 0.75.
    for measured in (both, alone, outage):
        assert 0.75 * RATE <= measured <= 1.1 * RATE, measured
