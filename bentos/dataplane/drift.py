"""Input and prediction drift per version: a reference profile from validation data, a live profile from
sampled traffic, and the population stability index (PSI) and Kolmogorov-Smirnov (KS) statistic between.

The reference is made once, when a version is registered (`reference_profile`, stored in its metadata):
for each feature the codec watches, decile edges and the share of validation rows between them; for a
classifier, the share of each predicted class. Live profiles count sampled rows into the same bins; counts
are halved when they pass a cap, so memory is fixed and recent traffic weighs most.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BINS = 10
EPS = 1e-4  # an empty bin's share, so that PSI stays finite
CAP_ROWS = 2000  # live counts are halved past this many rows
MIN_ROWS = 50  # fewer live rows than this give no score (too noisy to alarm on)


def edges_for(values: np.ndarray) -> list[float]:
    """Inner decile edges, deduplicated: a feature with few distinct values gets fewer bins."""
    qs = np.quantile(values.astype(np.float64), np.linspace(0, 1, BINS + 1)[1:-1])
    return sorted({float(q) for q in qs})


def shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return np.full(len(counts), 1.0 / len(counts)) if total == 0 else counts / total


def psi(live: np.ndarray, ref: np.ndarray) -> float:
    p, q = np.maximum(shares(live), EPS), np.maximum(np.asarray(ref, np.float64), EPS)
    return float(np.sum((p - q) * np.log(p / q)))


def ks(live: np.ndarray, ref: np.ndarray) -> float:
    """KS statistic on the binned distributions (an approximation at the bin edges)."""
    return float(np.max(np.abs(np.cumsum(shares(live)) - np.cumsum(np.asarray(ref, np.float64)))))


def reference_profile(features: dict[str, np.ndarray], classes: np.ndarray | None,
                      n_classes: int | None) -> dict[str, Any]:
    """The stored reference: per feature its edges and shares, and the class mix of the predictions."""
    out: dict[str, Any] = {"rows": len(next(iter(features.values()))) if features else 0, "features": {}}
    for name, values in features.items():
        edges = edges_for(values)
        counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
        out["features"][name] = {"edges": edges, "shares": [round(float(s), 6) for s in shares(counts)]}
    if classes is not None and n_classes:
        counts = np.bincount(classes, minlength=n_classes)[:n_classes]
        out["classes"] = [round(float(s), 6) for s in shares(counts)]
    return out


@dataclass
class LiveProfile:
    """Sampled rows of one version, binned like its reference."""

    reference: dict[str, Any]
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    classes: np.ndarray | None = None
    rows: float = 0.0

    def __post_init__(self) -> None:
        self.counts = {name: np.zeros(len(f["edges"]) + 1) for name, f in self.reference["features"].items()}
        if "classes" in self.reference:
            self.classes = np.zeros(len(self.reference["classes"]))

    def add(self, features: dict[str, np.ndarray], classes: np.ndarray | None) -> None:
        for name, values in features.items():
            ref = self.reference["features"].get(name)
            if ref is not None:
                self.counts[name] += np.bincount(np.searchsorted(ref["edges"], values, side="right"),
                                                 minlength=len(ref["edges"]) + 1)
        if classes is not None and self.classes is not None:
            self.classes += np.bincount(np.clip(classes, 0, len(self.classes) - 1), minlength=len(self.classes))
        self.rows += len(next(iter(features.values()))) if features else 0
        if self.rows > CAP_ROWS:  # fixed memory; the past fades
            for counts in self.counts.values():
                counts /= 2
            if self.classes is not None:
                self.classes /= 2
            self.rows /= 2

    def histogram(self, feature: str) -> dict[str, Any] | None:
        """One feature's bins: their edges, the reference shares and the live shares, to draw side by side."""
        ref = self.reference["features"].get(feature)
        if ref is None:
            return None
        return {"feature": feature, "edges": ref["edges"], "reference": ref["shares"],
                "live": [round(float(x), 6) for x in shares(self.counts[feature])]}

    def report(self, worst: int = 5) -> dict[str, Any]:
        """Per feature PSI and KS, the worst ones named, and prediction drift; None scores below MIN_ROWS."""
        if self.rows < MIN_ROWS:
            return {"rows": round(self.rows), "score": None, "features": {}, "worst": [], "prediction_drift": None}
        scores = {name: {"psi": round(psi(c, self.reference["features"][name]["shares"]), 4),
                         "ks": round(ks(c, self.reference["features"][name]["shares"]), 4)}
                  for name, c in self.counts.items()}
        ranked = sorted(scores, key=lambda n: scores[n]["psi"], reverse=True)
        prediction = None
        if self.classes is not None:
            prediction = round(psi(self.classes, self.reference["classes"]), 4)
        return {"rows": round(self.rows), "score": scores[ranked[0]]["psi"] if ranked else None,
                "features": scores, "worst": [{"feature": n, **scores[n]} for n in ranked[:worst]],
                "prediction_drift": prediction,
                "live_classes": None if self.classes is None else [round(float(s), 4) for s in shares(self.classes)]}


HOLD_MAX = 2000  # sampled requests held between two absorptions; more are dropped


class DriftMonitor:
    """One endpoint's live profiles, by version; only versions with a stored reference are watched."""

    def __init__(self, sample: float) -> None:
        self.sample = sample
        self.live: dict[str, LiveProfile] = {}
        self.changed = False  # rows were added since the last export: an idle service computes nothing
        self._held: list[tuple[str, Any, list[Any], list[Any]]] = []

    def hold(self, tag: str, codec: Any, items: list[Any], outputs: list[Any]) -> None:
        """Keep a sampled request for the next absorption (the request path does nothing else)."""
        if len(self._held) < HOLD_MAX:
            self._held.append((tag, codec, items, outputs))

    def take(self) -> list[tuple[str, Any, list[Any], list[Any]]]:
        held, self._held = self._held, []
        return held

    def watch(self, tag: str, reference: dict[str, Any] | None) -> None:
        if reference and reference.get("features") and tag not in self.live:
            self.live[tag] = LiveProfile(reference)

    def forget(self, keep: set[str]) -> None:
        self.live = {tag: p for tag, p in self.live.items() if tag in keep}

    def wants(self, tag: str) -> bool:
        return tag in self.live and self.sample > 0 and random.random() < self.sample

    def observe(self, tag: str, features: dict[str, np.ndarray], classes: np.ndarray | None) -> None:
        self.live[tag].add(features, classes)
        self.changed = True

    def reports(self, feature: str | None = None) -> dict[str, dict[str, Any]]:
        out = {tag: profile.report() for tag, profile in self.live.items()}
        if feature:
            for tag, profile in self.live.items():
                out[tag]["histogram"] = profile.histogram(feature)
        return out


def features_of(held: list[tuple[str, Any, list[Any], list[Any]]]) -> list[tuple[str, dict[str, np.ndarray],
                                                                                np.ndarray | None]]:
    """Per version, the watched features and predicted classes of its held requests, computed together."""
    by_tag: dict[str, tuple[Any, list[Any], list[Any]]] = {}
    for tag, codec, items, outputs in held:
        _, all_items, all_outputs = by_tag.setdefault(tag, (codec, [], []))
        all_items += items
        all_outputs += outputs
    out = []
    for tag, (codec, items, outputs) in by_tag.items():
        features = {**codec.drift_features(items), **codec.output_features(outputs)}
        predicted = codec.predicted_classes(outputs)
        out.append((tag, features, predicted[0] if predicted else None))
    return out
