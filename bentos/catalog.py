"""What the model store holds, as the server sees it: versions, their metadata, defaults."""

from __future__ import annotations

from typing import Any

from bentos.runtime import VersionLoadError, resolve_tag

BATCH_INVARIANT = 0.999


def list_versions(family: str | None = None) -> list[dict[str, Any]]:
    import bentoml

    out = []
    for model in bentoml.models.list():
        labels = model.info.labels
        if "family" not in labels or (family and labels["family"] != family):
            continue
        meta = model.info.metadata
        out.append({"tag": str(model.tag), "labels": dict(labels), "created": model.info.creation_time.isoformat(),
                    "size_bytes": meta.get("size_bytes"), "metrics": meta.get("metrics", {}),
                    "lineage": meta.get("lineage", {}), "sha256": meta.get("sha256", {}),
                    "batch_invariance_min_cosine": meta.get("batch_invariance_min_cosine")})
    return out


def _p50(version: dict[str, Any]) -> float:
    bench = version["metrics"].get("benchmark") or {}
    return float((bench.get("latency_ms") or {}).get("p50", float("inf")))


def pick_default(family: str, override: str | None = None) -> str | None:
    """The version an endpoint starts with: the override, else the best validated variant.

    Best: passed its accuracy gate, batch-invariant where that was measured (a user gets
    the same answer whatever shares the batch), then the lowest batch-1 latency.
    """
    if override:
        return str(resolve_tag(override).tag)
    candidates = [v for v in list_versions(family) if v["metrics"].get("validation_passed")]
    invariant = [v for v in candidates
                 if v["batch_invariance_min_cosine"] is None or v["batch_invariance_min_cosine"] >= BATCH_INVARIANT]
    pool = invariant or candidates
    if not pool:
        return None
    return str(min(pool, key=lambda v: (_p50(v), v["created"]))["tag"])


def check_tag(tag: str, family: str) -> str:
    """The full tag for `tag`, if it is a `family` model; VersionLoadError otherwise."""
    model = resolve_tag(tag)
    got = model.info.labels.get("family")
    if got != family:
        raise VersionLoadError(f"{model.tag} is a {got or 'non-switchyard'} model; this endpoint serves {family}")
    return str(model.tag)
