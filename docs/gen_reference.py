"""Writes the docs site's reference pages from the code, so that they cannot drift from it:
every setting (environment variables, `switchyard.yaml` and the admin API's endpoint fields, a rollout's
policy) with its default and meaning from the pydantic models, every metric with its labels from the
registry, and every fixed route from the OpenAPI document's own table.

    python docs/gen_reference.py           # rewrite docs/reference/*.md
    python docs/gen_reference.py --check   # exit 1 naming each page that is not what the code says

`make docs` runs it before building; `tests/test_docs.py` fails when a page is stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "reference"
HEADER = "<!-- Written by docs/gen_reference.py from the code; do not edit by hand. -->\n\n"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if hasattr(value, "get_secret_value"):
        return "(secret)"
    if isinstance(value, BaseModel):
        return "(below)"
    if isinstance(value, Path):
        value = str(value)
    return f"`{value!r}`" if value not in (None, "") else "unset"


def env_table(settings: type[BaseModel], prefix: str = "SWITCHYARD_") -> list[str]:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in settings.model_fields.items():
        alias = field.validation_alias
        names = getattr(alias, "choices", None) or [f"{prefix}{name.upper()}"]
        # an anchor per variable: the console links each setting it names here (admin/common.py: setting)
        variable = f'<a id="{names[0].lower()}"></a>' + " or ".join(f"`{n}`" for n in names)
        rows.append(f"| {variable} | {_cell(_default(field))} | {_cell(field.description or '')} |")
    return rows


def field_table(model: type[BaseModel], path: str) -> list[str]:
    rows = [f"### `{path}`", "", "| field | default | meaning |", "|---|---|---|"]
    for name, field in model.model_fields.items():
        rows.append(f"| `{name}` | {_cell(_default(field))} | {_cell(field.description or '')} |")
    return [*rows, ""]


def settings_page() -> str:
    from admin.settings import ConsoleSettings
    from bentos.config import EndpointConfig, EndpointLimits, GuardCheck, Guardrails, SpeculationConfig
    from bentos.controlplane.rollouts import RolloutPolicy
    from bentos.settings import PayloadLogSettings, ServeSettings
    from bentos.signing import SigningSettings
    from models.settings import BuildSettings

    lines = ["# Settings", "", "Every setting Switchyard reads, with its default, generated from the pydantic models "
             "that read it. A bad value stops start-up (or is a 422) naming the setting and its limit.", "",
             "## The service (`bentoml serve`)", "", *env_table(ServeSettings), "",
             "`SWITCHYARD_PAYLOAD_LOG` is JSON with these fields:", "", *field_table(PayloadLogSettings, "payload_log"),
             "## Signed versions", "", *env_table(SigningSettings), "",
             "## The console (`switchyard console`)", "", *env_table(ConsoleSettings), "",
             "## The build pipeline (`python -m models`)", "", *env_table(BuildSettings), "",
             "## Endpoints (`switchyard.yaml`, `POST /v1/admin/endpoints`)", "",
             *field_table(EndpointConfig, "endpoints.<name>"), *field_table(EndpointLimits, "endpoints.<name>.limits"),
             *field_table(SpeculationConfig, "endpoints.<name>.speculation"),
             *field_table(Guardrails, "endpoints.<name>.guardrails"),
             *field_table(GuardCheck, "endpoints.<name>.guardrails.input[] / output[]"),
             "## Rollouts (`POST /v1/admin/rollouts/{endpoint}`)", "", *field_table(RolloutPolicy, "policy")]
    return HEADER + "\n".join(lines).rstrip() + "\n"


def metrics_page() -> str:
    from bentos.dataplane.metrics import get_metrics

    metrics = get_metrics()
    rows = ["# Metrics", "", "Every metric the service exports at `/metrics`, generated from its registry.", "",
            "| metric | labels | meaning |", "|---|---|---|"]
    for name in metrics.__dataclass_fields__:
        metric = getattr(metrics, name)
        kind = type(metric).__name__.lower()
        suffix = "_total" if kind == "counter" else ""
        labels = ", ".join(metric._labelnames) or "-"
        rows.append(f"| `{metric._name}{suffix}` | {labels} | {kind}: {_cell(metric._documentation)} |")
    return HEADER + "\n".join(rows) + "\n"


def routes_page() -> str:
    from bentos.api.openapi import SUMMARY

    rows = ["# Routes", "", "The fixed routes, from the table the served OpenAPI document (`GET /v1/openapi.json`) "
            "is built from. Each endpoint adds its own inference routes (`POST /v1/{endpoint}/{verb}`, the Open "
            "Inference Protocol's `/v2/models/{endpoint}/...`); the live document lists them with their request "
            "schemas, the role each admin call needs and every status it can answer.", "",
            "| method | path | what it does |", "|---|---|---|"]
    for (method, path), summary in sorted(SUMMARY.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rows.append(f"| {method} | `{path}` | {_cell(summary)} |")
    return HEADER + "\n".join(rows) + "\n"


PAGES = {"settings.md": settings_page, "metrics.md": metrics_page, "routes.md": routes_page}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a page is stale")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    OUT.mkdir(exist_ok=True)
    stale = []
    for name, make in PAGES.items():
        text, path = make(), OUT / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run python docs/gen_reference.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
