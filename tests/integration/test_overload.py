"""Past every cap, over HTTP, on a real two-worker `bentoml serve` with small caps: requests and body bytes
in flight, the batch queue, and the per-address rate behind a trusted proxy. Every refusal is a 503 or
429 with Retry-After; none is a timeout or a reset, and the server answers as before once the load is
gone."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import serve_with
from tests.servers import Served

pytestmark = pytest.mark.integration
ROW = [float(i % 17) for i in range(64)]
IP_RATE, IP_BURST = 1.0, 4.0


@pytest.fixture(scope="module")
def capped(tags: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve_with(tags, tmp_path_factory.mktemp("state-capped"), workers=2, share_workers=True,
                          max_concurrency="8", max_inflight_bytes="65536", max_queue="4",
                          ip_rate=str(IP_RATE), ip_burst=str(IP_BURST), trusted_proxies='["127.0.0.1/32"]')


async def flood(url: str, bodies: list[bytes], headers: list[dict[str, str]]) -> list[httpx.Response | Exception]:
    """Every body at once, each on a connection of its own."""
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        async def one(body: bytes, head: dict[str, str]) -> httpx.Response | Exception:
            try:
                return await client.post("/v1/digits/predict", content=body,
                                         headers={"Content-Type": "application/json", **head})
            except httpx.HTTPError as exc:
                return exc
        return await asyncio.gather(*(one(b, h) for b, h in zip(bodies, headers, strict=True)))


def refusals_are_clean(answers: list[httpx.Response | Exception]) -> Counter[int]:
    errors = [a for a in answers if isinstance(a, Exception)]
    assert not errors, f"{len(errors)} transport errors, e.g. {errors[0]!r}"
    codes = Counter(a.status_code for a in answers if isinstance(a, httpx.Response))
    for a in answers:
        assert isinstance(a, httpx.Response)
        if a.status_code != 200:
            assert a.status_code in (429, 503), a.text
            assert int(a.headers["retry-after"]) >= 1 and a.json()["detail"]
    return codes


def client_headers(n: int) -> list[dict[str, str]]:
    """A different client address for each request (through the trusted proxy): no per-address limit."""
    return [{"X-Forwarded-For": f"198.51.{100 + i // 250}.{i % 250}"} for i in range(n)]


def test_requests_and_bytes_past_their_caps_get_503_with_retry_after(capped: Served) -> None:
    rows = json.dumps({"inputs": [ROW] * 32}).encode()  # 32 rows: the batch queue fills too
    answers = asyncio.run(flood(capped.url, [rows] * 300, client_headers(300)))
    codes = refusals_are_clean(answers)
    assert codes[503] > 0 and codes[200] > 0, codes
    big = json.dumps({"inputs": [[float(i % 16) + 0.123456789 for i in range(64)]] * 32}).encode()
    assert len(big) > 20_000  # four of them pass the 64 KiB of body bytes in flight
    codes = refusals_are_clean(asyncio.run(flood(capped.url, [big] * 60, client_headers(60))))
    assert codes[503] > 0, codes
    with httpx.Client(base_url=capped.url, timeout=30) as c:  # and then it serves as before
        assert c.post("/v1/digits/predict", json={"inputs": [ROW]}).status_code == 200


def test_one_address_behind_a_trusted_proxy_is_limited_on_every_worker_together(capped: Served) -> None:
    body = json.dumps({"inputs": [ROW]}).encode()
    start = time.monotonic()
    one = [{"X-Forwarded-For": "203.0.113.7"}] * 40
    codes = refusals_are_clean(asyncio.run(flood(capped.url, [body] * 40, one)))
    elapsed = time.monotonic() - start
    # Each worker holds half the rate and burst (SWITCHYARD_WORKERS=2): together one address gets the burst,
    # plus what the rate refilled meanwhile, whichever worker each connection reached.
    assert codes[200] <= IP_BURST + IP_RATE * elapsed + 1, (codes, elapsed)
    assert codes[429] >= 40 - (IP_BURST + IP_RATE * elapsed + 1)
    other = [{"X-Forwarded-For": "203.0.113.8"}]
    assert refusals_are_clean(asyncio.run(flood(capped.url, [body], other)))[200] == 1  # its own limit
