"""The bentofile `make bento` builds: bentofile.yaml plus every version deployed on an endpoint.

    python deploy/bento_models.py build/bentofile.yaml && bentoml build -f build/bentofile.yaml .

Versions deployed through the admin API (stable, canary or shadow, imported ones included)
live in the control plane, not in bentofile.yaml; this adds them to its `models`, so the
image carries what serves today. No torch is involved: the list comes from the store.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def deployed_tags(state_dir: Path, db_url: str | None) -> list[str]:
    """Every tag in the current deployment of every stored endpoint; empty without a control plane."""
    from bentos.controlplane.store import StoreUnavailable, open_store

    if db_url is None and not (state_dir / "control.db").is_file():
        return []
    try:
        store = open_store(state_dir, db_url)
    except StoreUnavailable:
        return []
    tags = set()
    for name in store.current_revisions():
        record = store.get_deployment(name)
        tags.update(v["tag"] for v in (record.spec["versions"] if record else []))
    store.close()
    return sorted(tags)


def with_models(spec: dict[str, Any], tags: list[str]) -> dict[str, Any]:
    """bentofile's models plus `tags`; a deployed tag replaces the same model's `:latest` entry."""
    pinned = {t.split(":")[0] for t in tags}
    kept = [m for m in spec.get("models") or [] if not (m.endswith(":latest") and m.split(":")[0] in pinned)]
    return {**spec, "models": kept + [t for t in tags if t not in kept]}


def main(dest: str) -> None:
    from bentos.settings import ServeSettings

    settings = ServeSettings()
    spec = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    url = settings.db_url.get_secret_value() if settings.db_url else None
    out = with_models(spec, deployed_tags(settings.state_dir, url))
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    Path(dest).write_text(yaml.safe_dump(out, sort_keys=False))
    print(dest)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "build/bentofile.yaml")
