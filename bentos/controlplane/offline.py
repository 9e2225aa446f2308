"""The last deployment this host applied, on disk: what a worker serves when it starts while the
control plane is unreachable (a database outage must not take serving down with it)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

FILE = "last-known.json"


class LastKnown:
    """{"endpoints": {name: config}, "deployments": {name: {"revision": n, "spec": {...}}}}, replaced
    atomically: workers of one host write the same content, and a reader never sees half a file."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE

    def read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {"endpoints": {}, "deployments": {}}
        return data if isinstance(data, dict) else {"endpoints": {}, "deployments": {}}

    def write(self, endpoints: dict[str, Any], deployments: dict[str, Any]) -> None:
        body = json.dumps({"endpoints": endpoints, "deployments": deployments}, sort_keys=True)
        with contextlib.suppress(OSError):  # a read-only state dir costs the cache, never serving
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".last-known-")
            with os.fdopen(fd, "w") as f:
                f.write(body)
            os.replace(tmp, self.path)
