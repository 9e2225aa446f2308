"""Drift on a real `bentoml serve`, seeded: digits the model was validated on stay under the threshold;
inverted digits cross it within 500 requests. Every request is sampled here (SWITCHYARD_DRIFT_SAMPLE=1),
so that 500 requests are 500 rows; the default samples 5 %."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from models.families.digits import splits
from tests.conftest import ROOT
from tests.integration.conftest import AUTH, TOKEN, deploy, serve_with
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


def edges_of(labels: list[str]) -> list[float]:
    """The edges named by bin labels ("< 0", "0 to 1", ..., ">= 16"), whatever order they came in."""
    edges = {float(x) for label in labels for x in re.findall(r"-?\d+(?:\.\d+)?", label)}
    return sorted(edges)


def test_the_monitoring_page_shows_the_drift_its_features_and_their_bins(watched: Served, tags: dict[str, str],
                                                                        tmp_path: Any) -> None:
    """Looked at in Chromium, with a screenshot (console-monitoring.png in the run's artifacts). On the CNN, so
    that the drift it makes never reaches the MLP's profile, which the test above needs clean."""
    from playwright.sync_api import sync_playwright

    from admin.charts import bin_names
    from tests.integration.test_console import ARTIFACTS, chart_texts, start_console
    from tests.integration.test_playground import CHROMIUM_FLAGS

    rows = splits()["val"][0]
    with httpx.Client(base_url=watched.url, timeout=30) as c:
        assert deploy(c, "digits", [(tags["cnn"], "stable", 100)]).status_code == 200
    if (drift(watched)["score"] or 0) <= THRESHOLD:  # make the drift this page should show
        with httpx.Client(base_url=watched.url, timeout=30) as c:
            for row in rows[:150]:
                c.post("/v1/digits/predict", json={"inputs": [(16.0 - row).tolist()]})
    with start_console(watched.url, TOKEN) as url:
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "console-monitoring.png"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.goto(f"{url}/monitoring", wait_until="networkidle", timeout=60_000)
            page.get_by_text("Features drifting most").wait_for(timeout=30_000)
            page.get_by_text("validation data against live traffic").first.wait_for(timeout=30_000)
            page.get_by_text("drifting:").first.wait_for(timeout=30_000)
            page.wait_for_timeout(2000)
            page.screenshot(path=str(shot), full_page=True)
            assert page.locator("[data-testid='stException']").count() == 0
            charts = chart_texts(page)
            browser.close()
        # "Drift over time" reads clock times (it read ".500" at every tick); the histogram's bins come in value
        # order (their labels sorted as text: "10: >= 16" before "1: < 0").
        assert any(re.fullmatch(r"\d\d:\d\d:\d\d", t) for t in charts[0]), charts[0]
        assert not any(t == ".500" for t in charts[0])
        binned = next(texts for texts in charts if "validation data" in texts)
        shown = [t for t in binned if t.startswith(("<", ">=")) or " to " in t]
        assert shown == bin_names(edges_of(shown)), shown
        assert shot.stat().st_size > 20_000


# Another language: the tokenizer splits these into many more, rarer pieces than English of the same length.
FOREIGN = ["Завтра обещают сильный снег и гололёд на дорогах.", "Пожалуйста, закройте за собой дверь.",
           "Доклад указывает на нехватку средств в здравоохранении.", "Поезд опоздал на сорок минут из-за ремонта.",
           "Мы встретимся у входа в библиотеку в пять часов.", "Цены на жильё снова выросли этой весной.",
           "Οι τιμές των κατοικιών αυξήθηκαν ξανά αυτή την άνοιξη.", "Το τρένο καθυστέρησε σαράντα λεπτά.",
           "明天会下大雪，路面可能结冰。", "请随手关门，谢谢。", "报告指出公共卫生资金存在缺口。",
           "火车因维修晚点了四十分钟。"]


def test_text_in_another_language_drifts_and_english_does_not(watched: Served) -> None:
    # In distribution: the validation sentences themselves. The 80 calibration sentences are English too but
    # shorter on the whole (PSI 0.98 on tokens per text here): too few and too unlike to stand for them.
    english = [line.strip() for line in (ROOT / "models" / "data" / "minilm_eval.txt").read_text()
               .splitlines() if line.strip()]
    with httpx.Client(base_url=watched.url, timeout=30) as c:
        for sentence in english:
            assert c.post("/v1/minilm/embed", json={"texts": [sentence]}).status_code == 200
        before = text_drift(watched)
        crossed_at = None
        for i in range(500):
            assert c.post("/v1/minilm/embed", json={"texts": [FOREIGN[i % len(FOREIGN)]]}).status_code == 200
            if i % 25 == 24 and crossed_at is None and (text_drift(watched)["score"] or 0) > THRESHOLD:
                crossed_at = i + 1
    after = text_drift(watched)
    print(f"english: score {before['score']} (worst {before['worst'][0]}); another language: crossed {THRESHOLD} "
          f"after {crossed_at} requests, worst {after['worst'][:3]}")
    assert before["score"] is not None and before["score"] < THRESHOLD
    assert crossed_at is not None and crossed_at <= 500
    assert {w["feature"] for w in after["worst"][:3]} & {"tokens", "unknown_share"}


def text_drift(served: Served) -> dict[str, Any]:
    report = httpx.get(f"{served.url}/v1/admin/drift", params={"endpoint": "minilm"}, headers=AUTH, timeout=30)
    (version,) = report.json()["minilm"].values()
    return dict(version)
