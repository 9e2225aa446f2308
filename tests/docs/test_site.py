"""The docs site: it builds with --strict (no broken link, no page left out of the navigation), its reference
pages are what the code says, and the short README only shows commands that a test runs elsewhere."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCS = ROOT / "docs"


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "settings" / "index.html").is_file()
    assert (tmp_path / "site" / "search" / "search_index.json").is_file()  # the site is searchable


def test_the_reference_pages_are_what_the_code_says() -> None:
    sys.path.insert(0, str(DOCS))
    try:
        import gen_reference
    finally:
        sys.path.remove(str(DOCS))
    assert gen_reference.main(["--check"]) == 0, "run: python docs/gen_reference.py"


@pytest.mark.parametrize("settings", ["bentos.settings:ServeSettings", "bentos.signing:SigningSettings",
                                      "admin.settings:ConsoleSettings", "models.settings:BuildSettings"])
def test_every_environment_setting_is_in_the_settings_reference(settings: str) -> None:
    import importlib

    module, name = settings.split(":")
    model = getattr(importlib.import_module(module), name)
    page = (DOCS / "reference" / "settings.md").read_text()
    missing = [f for f, info in model.model_fields.items()
               if f"`SWITCHYARD_{f.upper()}`" not in page and not getattr(info.validation_alias, "choices", None)]
    assert not missing, f"not in docs/reference/settings.md: {missing}"


def test_every_endpoint_and_policy_field_is_in_the_settings_reference() -> None:
    from bentos.config import EndpointConfig, EndpointLimits, Guardrails
    from bentos.controlplane.rollouts import RolloutPolicy

    page = (DOCS / "reference" / "settings.md").read_text()
    for model in (EndpointConfig, EndpointLimits, Guardrails, RolloutPolicy):
        missing = [f for f in model.model_fields if f"| `{f}` |" not in page]
        assert not missing, f"{model.__name__}: not in docs/reference/settings.md: {missing}"


def test_the_readme_is_short_and_its_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), f"README links to {target}, which is not there"


def test_the_readmes_commands_are_ones_the_tests_run() -> None:
    """README's five commands are lines of docs/serve-your-own-model.md, whose blocks a test runs against a
    real server (tests/integration/test_readme_walkthrough.py); its first requests are Get started's."""
    readme = (ROOT / "README.md").read_text()
    walkthrough = (DOCS / "serve-your-own-model.md").read_text()
    get_started = (DOCS / "get-started.md").read_text()
    five = re.search(r"## Serve your own model in five commands.*?```shell\n(.*?)```", readme, re.S)
    assert five is not None
    for line in five.group(1).splitlines():
        assert line in walkthrough, f"README shows a line the walkthrough does not run: {line}"
    first = re.search(r"## First requests.*?```bash\n(.*?)```", readme, re.S)
    assert first is not None and first.group(1) in get_started


def test_the_console_links_a_setting_it_names_to_its_reference_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    from admin.common import setting

    monkeypatch.delenv("SWITCHYARD_DOCS_URL", raising=False)
    assert setting("SWITCHYARD_DRIFT_SAMPLE") == "`SWITCHYARD_DRIFT_SAMPLE`"
    monkeypatch.setenv("SWITCHYARD_DOCS_URL", "http://127.0.0.1:8000/")
    link = setting("SWITCHYARD_DRIFT_SAMPLE")
    assert link == "[`SWITCHYARD_DRIFT_SAMPLE`](http://127.0.0.1:8000/reference/settings/#switchyard_drift_sample)"
    page = (DOCS / "reference" / "settings.md").read_text()
    for name in re.findall(r"setting\('(SWITCHYARD_[A-Z_]+)'\)", "".join(
            p.read_text() for p in (ROOT / "admin").rglob("*.py"))):
        assert f'<a id="{name.lower()}"></a>' in page, f"the console links {name}, which has no reference entry"


def test_console_errors_link_each_setting_they_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from admin.common import linked

    message = "The service's admin API is disabled: start it with SWITCHYARD_ADMIN_TOKEN set."
    monkeypatch.delenv("SWITCHYARD_DOCS_URL", raising=False)
    assert linked(message) == message
    monkeypatch.setenv("SWITCHYARD_DOCS_URL", "http://docs.example")
    assert linked(message) == ("The service's admin API is disabled: start it with [`SWITCHYARD_ADMIN_TOKEN`]"
                               "(http://docs.example/reference/settings/#switchyard_admin_token) set.")
    assert linked("see `SWITCHYARD_PAYLOAD_LOG`").count("SWITCHYARD_PAYLOAD_LOG") == 1
