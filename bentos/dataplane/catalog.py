"""What the model store holds, as the server sees it: versions, their task and signature, defaults."""

from __future__ import annotations

from typing import Any

from bentos.dataplane.runtime import VersionLoadError, resolve_tag, task_of

BATCH_INVARIANT = 0.999


def describe(model: Any) -> dict[str, Any]:
    labels, meta = model.info.labels, model.info.metadata
    return {"tag": str(model.tag), "labels": dict(labels), "task": task_of(labels),
            "created": model.info.creation_time.isoformat(), "size_bytes": meta.get("size_bytes"),
            "metrics": meta.get("metrics", {}), "lineage": meta.get("lineage", {}), "sha256": meta.get("sha256", {}),
            "signature": meta.get("schema"), "gate": meta.get("gate"),
            # the id of the key its manifest is signed with (bentos/signing.py); None when unsigned
            "signed_with": (meta.get("signed") or {}).get("key_id"),
            "batch_invariance_min_cosine": meta.get("batch_invariance_min_cosine"),
            # text-generation: the graph's shape (layers, KV heads, head dim, context), what KV budgets are made of
            "generation": (meta.get("preprocess") or {}).get("generation")}


def list_versions(task: str | None = None, selector: str | None = None) -> list[dict[str, Any]]:
    """Switchyard versions in the store; `selector` matches a model key, family or model name."""
    import bentoml

    out = []
    for model in bentoml.models.list():
        labels = model.info.labels
        if task_of(labels) is None or (task and task_of(labels) != task):
            continue
        if selector and selector not in (labels.get("family"), labels.get("model"), model.tag.name):
            continue
        out.append(describe(model))
    return out


def _p50(version: dict[str, Any]) -> float:
    bench = version["metrics"].get("benchmark") or {}
    return float((bench.get("latency_ms") or {}).get("p50", float("inf")))


def pick_default(task: str, selector: str | None = None, override: str | None = None) -> str | None:
    """The version an endpoint starts with: the override or an exact tag, else the best validated variant.

    Best: passed its accuracy gate, batch-invariant where that was measured (a user gets
    the same answer whatever shares the batch), then the lowest batch-1 latency.
    """
    for exact in (override, selector if selector and ":" in selector else None):
        if exact:
            return str(resolve_tag(exact).tag)
    # Only versions that passed their gate: one registered with --force is served when deployed by its tag,
    # never chosen by name.
    candidates = [v for v in list_versions(task, selector) if v["metrics"].get("validation_passed")]
    invariant = [v for v in candidates
                 if v["batch_invariance_min_cosine"] is None or v["batch_invariance_min_cosine"] >= BATCH_INVARIANT]
    pool = invariant or candidates
    if not pool:
        return None
    return str(min(pool, key=lambda v: (_p50(v), v["created"]))["tag"])


def _shape_text(spec: dict[str, Any]) -> str:
    return f"{spec['name']}:{spec['dtype']}[{','.join(str(d) for d in spec['shape'])}]"


def signature_text(signature: dict[str, Any] | None) -> str:
    if not signature:
        return "(none recorded)"
    ins = ", ".join(_shape_text(s) for s in signature.get("inputs", []))
    outs = ", ".join(_shape_text(s) for s in signature.get("outputs", []))
    return f"inputs ({ins})" + (f" -> outputs ({outs})" if outs else "")


def _dims_fit(a: list[Any], b: list[Any]) -> bool:
    """Symbolic axes (strings, -1) fit anything; fixed sizes must be equal."""
    return len(a) == len(b) and all(isinstance(x, str) or isinstance(y, str) or -1 in (x, y) or x == y
                                    for x, y in zip(a, b, strict=True))


def _tensors_fit(want: list[dict[str, Any]], got: list[dict[str, Any]]) -> bool:
    by_name = {t["name"]: t for t in got}
    return len(want) == len(got) and all(
        t["name"] in by_name and by_name[t["name"]]["dtype"] == t["dtype"] and _dims_fit(t["shape"],
                                                                                          by_name[t["name"]]["shape"])
        for t in want)


def signatures_match(want: dict[str, Any], got: dict[str, Any] | None) -> bool:
    """`got` serves where `want` is expected: same inputs, and same outputs where `want` names any."""
    if not got:
        return False
    if not _tensors_fit(want["inputs"], got.get("inputs", [])):
        return False
    return not want.get("outputs") or _tensors_fit(want["outputs"], got.get("outputs", []))


def check_version(tag: str, task: str, endpoint: str, signature: dict[str, Any] | None) -> str:
    """The full tag for `tag` if it serves `task` with `signature`; VersionLoadError naming both otherwise."""
    model = resolve_tag(tag)
    got = task_of(model.info.labels)
    if got != task:
        raise VersionLoadError(f"{model.tag} is a {got or 'non-switchyard'} model; endpoint {endpoint} serves "
                               f"{task}")
    have = model.info.metadata.get("schema")
    if signature is not None and not signatures_match(signature, have):
        raise VersionLoadError(f"{model.tag} has signature {signature_text(have)}; endpoint {endpoint} expects "
                               f"{signature_text(signature)}")
    return str(model.tag)


def is_validated(tag: str) -> bool:
    """Whether the version passed its accuracy gate when it was registered."""
    return bool(resolve_tag(tag).info.metadata.get("metrics", {}).get("validation_passed"))
