"""The fast lane on a real server: Switchyard's requests skip BentoML's middleware by default, and take it
again when a user turns on a BentoML feature that must see them (its access log) or turns the lane off."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import serve_with
from tests.servers import Served

pytestmark = pytest.mark.integration  # real servers

DIGIT = {"inputs": [[0.0] * 64]}


def bentoml_counted(url: str, path: str) -> float:
    """BentoML's own request counter for `path`: its metrics middleware saw those requests."""
    text = httpx.get(url + "/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("bentoml_service_request_total{") and f'endpoint="{path}"' in line)


def predict(url: str, n: int) -> None:
    with httpx.Client(base_url=url, timeout=30) as c:
        for _ in range(n):
            r = c.post("/v1/digits/predict", json=DIGIT)
            assert r.status_code == 200 and r.headers["x-request-id"]


def test_by_default_inference_skips_bentomls_middleware(server: Served) -> None:
    predict(server.url, 5)
    assert bentoml_counted(server.url, "/v1/digits/predict") == 0
    # Its own counters still see them; BentoML's paths still take BentoML's way.
    metrics = httpx.get(server.url + "/metrics", timeout=30).text
    assert any(line.startswith("switchyard_requests_total{") and 'endpoint="digits"' in line
               for line in metrics.splitlines())
    assert httpx.get(server.url + "/readyz", timeout=30).status_code == 200
    assert bentoml_counted(server.url, "/readyz") >= 1


@pytest.mark.parametrize("how", ["access-log", "setting"])
def test_bentomls_middleware_sees_every_request_when_the_lane_is_off(how: str, tags: dict[str, str],
                                                                     tmp_path: Path) -> None:
    if how == "access-log":
        access_log = "services.switchyard.logging.access.enabled=true"
        served = serve_with(tags, tmp_path, workers=1, bentoml_options=access_log)
    else:
        served = serve_with(tags, tmp_path, workers=1, fast_lane="false")
    for server in served:
        predict(server.url, 5)
        assert bentoml_counted(server.url, "/v1/digits/predict") == 5
        log = server.log_text()
        if how == "access-log":
            assert "fast lane off: BentoML middleware AccessLogMiddleware is on" in log
            assert "path=/v1/digits/predict" in log
