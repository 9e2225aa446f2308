"""Drift on a real `bentoml serve`, seeded: digits the model was validated on stay under the threshold;
inverted digits cross it within 500 requests. Every request is sampled here (SWITCHYARD_DRIFT_SAMPLE=1),
so that 500 requests are 500 rows; the default samples 5 %."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from models.families.digits import splits
from tests.integration.conftest import AUTH, serve_with
from tests.servers import Served

pytestmark = pytest.mark.integration
THRESHOLD = 0.25  # PSI; the alert in deploy/prometheus/rules/alerts.yml uses the same


@pytest.fixture(scope="module")
def watched(tags: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve_with(tags, tmp_path_factory.mktemp("state-drift"), 1, drift_sample="1.0")


def drift(served: Served) -> dict[str, Any]:
    report = httpx.get(f"{served.url}/v1/admin/drift", params={"endpoint": "digits"}, headers=AUTH, timeout=30)
    assert report.status_code == 200, report.text
    (version,) = report.json()["digits"].values()
    return dict(version)


def test_in_distribution_stays_under_the_threshold_and_inverted_digits_cross_it(watched: Served) -> None:
    rows = splits()["val"][0]  # validated on the test split; these are other real digits
    with httpx.Client(base_url=watched.url, timeout=30) as c:
        for row in rows:
            assert c.post("/v1/digits/predict", json={"inputs": [row.tolist()]}).status_code == 200
        before = drift(watched)
        crossed_at = None
        for i in range(500):
            inverted = (16.0 - rows[i % len(rows)]).tolist()
            assert c.post("/v1/digits/predict", json={"inputs": [inverted]}).status_code == 200
            if i % 25 == 24 and crossed_at is None and (drift(watched)["score"] or 0) > THRESHOLD:
                crossed_at = i + 1
    after = drift(watched)
    metrics = httpx.get(f"{watched.url}/metrics", timeout=30).text
    print(f"in distribution: {len(rows)} rows, score {before['score']}, prediction drift "
          f"{before['prediction_drift']}; inverted: crossed {THRESHOLD} after {crossed_at} requests, score "
          f"{after['score']} (worst {after['worst'][0]}), prediction drift {after['prediction_drift']}")
    assert before["score"] is not None and before["score"] < THRESHOLD
    assert crossed_at is not None and crossed_at <= 500
    assert after["prediction_drift"] > before["prediction_drift"]
    assert 'switchyard_drift_score{' in metrics and "switchyard_prediction_drift{" in metrics
