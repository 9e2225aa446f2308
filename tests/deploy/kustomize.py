"""The part of kustomize that deploy/k8s uses, in Python, so that the overlays are rendered and checked on a
machine without kubectl. Anything outside that part raises instead of being skipped, and
test_manifests.py compares this renderer with `kubectl kustomize` wherever kubectl is installed."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]

KNOWN = {"apiVersion", "kind", "resources", "labels", "images", "patches"}
# Strategic-merge keys of the lists our patches touch (Kubernetes' patchMergeKey); other lists are replaced.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath"}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


class Unsupported(ValueError):
    """A kustomization uses something this renderer does not implement: extend it, or render with kubectl."""


def build(directory: Path) -> list[Doc]:
    """What `kubectl kustomize DIRECTORY` prints, as documents."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - KNOWN
    if unknown:
        raise Unsupported(f"{directory}/kustomization.yaml: {sorted(unknown)} not implemented here")
    docs: list[Doc] = []
    for resource in spec.get("resources", []):
        path = directory / resource
        docs += build(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in spec.get("patches", []):
        docs = [_patched(d, patch, directory) for d in docs]
    for label in spec.get("labels", []):
        _label(docs, label)
    for image in spec.get("images", []):
        _retag(docs, image)
    return docs


def _patched(doc: Doc, patch: Doc, directory: Path) -> Doc:
    body = yaml.safe_load((directory / patch["path"]).read_text() if "path" in patch else patch["patch"])
    target = patch.get("target") or {"kind": body["kind"], "name": body["metadata"]["name"]}
    if set(target) - {"kind", "name"}:
        raise Unsupported(f"patch target {target}: only kind and name are implemented")
    if (doc["kind"], doc["metadata"]["name"]) != (target.get("kind", doc["kind"]),
                                                  target.get("name", doc["metadata"]["name"])):
        return doc
    return _json6902(doc, body) if isinstance(body, list) else merge(doc, body)


def merge(base: Any, patch: Any, field: str = "") -> Any:
    """A strategic-merge patch: maps merge key by key, lists with a merge key merge item by item (new items
    first, as kustomize writes them), every other value is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:  # `key: null` deletes it
                out.pop(key, None)
            else:
                out[key] = merge(base.get(key), value, key)
        return out
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        old = {item[key]: item for item in base}
        new = [merge(old.get(item[key]), item) for item in patch if item[key] not in old]
        return new + [merge(item, next((p for p in patch if p[key] == item[key]), None) or {}) for item in base]
    return copy.deepcopy(patch)


def _json6902(doc: Doc, ops: list[Doc]) -> Doc:
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        index: Any = int(last) if isinstance(node, list) and last != "-" else last
        if op["op"] in ("add", "replace"):
            if isinstance(node, list):
                node.append(op["value"]) if index == "-" else (
                    node.insert(index, op["value"]) if op["op"] == "add" else node.__setitem__(index, op["value"]))
            else:
                if op["op"] == "replace" and index not in node:
                    raise KeyError(f"replace {op['path']}: no such field")
                node[index] = op["value"]
        elif op["op"] == "remove":
            del node[index]
        else:
            raise Unsupported(f"JSON patch op {op['op']!r} not implemented")
    return doc


def _label(docs: list[Doc], label: Doc) -> None:
    if label.get("includeSelectors") or label.get("includeTemplates"):
        raise Unsupported("labels with includeSelectors or includeTemplates are not implemented")
    for doc in docs:
        doc["metadata"]["labels"] = {**doc["metadata"].get("labels", {}), **label["pairs"]}


def _retag(docs: list[Doc], image: Doc) -> None:
    for doc in docs:
        if doc["kind"] not in POD_TEMPLATE_KINDS:
            continue
        pod = doc["spec"]["template"]["spec"]
        for c in [*pod.get("containers", []), *pod.get("initContainers", [])]:
            name, _, tag = c["image"].partition(":")
            if name == image["name"]:
                tag = image.get("newTag", tag)
                c["image"] = image.get("newName", name) + (f":{tag}" if tag else "")
