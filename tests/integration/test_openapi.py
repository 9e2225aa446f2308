"""The served /v1/openapi.json: valid OpenAPI 3.1, every route described with its auth, every $ref resolving,
and schemathesis (a fuzzer no one here wrote) finding no server error and no schema violation in it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bentos.api.admin import admin_routes
from bentos.api.app import EngineHolder
from bentos.api.health import health_routes
from bentos.api.oip import oip_routes
from tests.integration.conftest import TOKEN, serve_with
from tests.servers import Served

pytestmark = pytest.mark.integration
# Fixed, so that the run is the same every time. With the coverage phase's boundary cases, 8 examples per
# operation made 2,201 cases over 42 operations in 69 s here (one schemathesis worker: two crashed it).
SEED, EXAMPLES = 1, 8
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


@pytest.fixture(scope="module")
def fuzzed(tags: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A server of its own: the fuzzer changes deployments, creates endpoints and keys. At most 4 rows a
    request: the coverage phase builds a body at each array's largest size, and at the default 64 rows of 64
    pixels hypothesis spent three quarters of the run drawing floats for it (284 s; 69 s at 4 rows, with as
    many cases). The limit's own code is the same at any size (tests/bentos/tasks use 3 to 8)."""
    yield from serve_with(tags, tmp_path_factory.mktemp("state-fuzzed"), 1, max_rows="4")


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def test_the_document_is_valid_complete_and_its_refs_resolve(fuzzed: Served) -> None:
    from openapi_spec_validator import validate

    doc = httpx.get(f"{fuzzed.url}/v1/openapi.json", timeout=30).json()
    validate(doc)  # OpenAPI 3.1, by the validator's own rules
    for ref in set(refs(doc)):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in doc["components"]["schemas"], ref
    holder = EngineHolder()
    for route in [*admin_routes(holder), *health_routes(holder), *oip_routes(holder)]:
        path = route.path.replace(":str", "").replace(":path", "")
        for method in (route.methods or set()) - {"HEAD"}:
            op = doc["paths"][path][method.lower()]  # every route is described
            if path.startswith("/v1/admin"):
                assert op["security"] == [{"bearerAuth": []}] and "role" in op["description"]
            if "requestBody" in op:
                assert op["requestBody"]["required"] is True
    for name in ("digits", "minilm"):
        verb = "predict" if name == "digits" else "embed"
        op = doc["paths"][f"/v1/{name}/{verb}"]["post"]
        assert op["requestBody"]["required"] is True and {"200", "401", "422", "429"} <= op["responses"].keys()


def test_schemathesis_finds_no_server_error_and_no_schema_violation(fuzzed: Served, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    # Real names for path parameters, so that operations reach their logic instead of answering 404.
    config.write_text('[parameters]\n"path.endpoint" = "digits"\n"path.model" = "digits"\n')
    cmd = [str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(config), "run",
           f"{fuzzed.url}/v1/openapi.json", "-H", f"Authorization: Bearer {TOKEN}", "--checks", CHECKS,
           "--max-examples", str(EXAMPLES), "--seed", str(SEED), "--phases", "examples,coverage,fuzzing",
           "--workers", "1", "--generation-database", "none", "--no-color"]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"})
    summary = run.stdout[run.stdout.find("SUMMARY"):]
    print(summary)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", summary)
    assert counts is not None and int(counts[1]) > 1000 and counts[1] == counts[2], summary
    assert httpx.get(f"{fuzzed.url}/v1/health", timeout=30).status_code == 200  # still up
