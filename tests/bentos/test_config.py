"""switchyard.yaml: validated by one pydantic model; a bad file names the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bentos.config import EndpointConfig, config_path, load_config
from bentos.errors import ConfigError
from tests.conftest import ROOT


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "switchyard.yaml"
    path.write_text(text)
    return path


def test_the_shipped_file_declares_digits_and_minilm() -> None:
    config = load_config(ROOT / "switchyard.yaml")
    assert {e.name: e.task for e in config.endpoints} == {"digits": "image-classification",
                                                          "minilm": "text-embedding"}


@pytest.mark.parametrize(("text", "needle"), [
    ("endpoints:\n  - {name: a, task: tensr}\n", "endpoints[0].task (endpoint 'a'): Value error, unknown task type"),
    ("endpoints:\n  - {name: a, task: tensor, limts: {}}\n", "endpoints[0].limts (endpoint 'a'): Extra inputs"),
    ("endpoints:\n  - {name: a, task: tensor, limits: {max_rows: -1}}\n", "endpoints[0].limits.max_rows"),
    ("endpoints:\n  - {name: A!, task: tensor}\n", "endpoints[0].name"),
    ("endpoints:\n  - {name: a, task: tensor}\n  - {name: a, task: tensor}\n", "repeated: a"),
    ("endpoint: []\n", "endpoint: Extra inputs"),
    ("endpoints: [\n", "cannot read it as YAML"),
])
def test_a_typo_stops_start_up_naming_the_key(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert needle in str(info.value) and str(tmp_path) in str(info.value)


def test_config_path_prefers_the_variable_and_requires_its_file(tmp_path: Path) -> None:
    assert config_path(None, tmp_path) is None
    path = write(tmp_path, "endpoints: []\n")
    assert config_path(None, tmp_path) == path
    assert config_path(str(path), Path("/")) == path
    with pytest.raises(ConfigError, match=r"SWITCHYARD_CONFIG=/nope\.yaml: no such file"):
        config_path("/nope.yaml", tmp_path)


def test_a_declared_signature_must_fit_the_task() -> None:
    with pytest.raises(ValueError, match="exactly one input tensor"):
        EndpointConfig.model_validate({"name": "x", "task": "image-classification", "signature": {"inputs": [
            {"name": "a", "dtype": "float32", "shape": ["batch", 2]},
            {"name": "b", "dtype": "float32", "shape": ["batch", 2]}]}})


@pytest.mark.parametrize("name", ["chat", "completions", "models", "admin", "health"])
def test_names_that_v1_routes_take_or_will_take_are_refused(name: str) -> None:
    """/v1/chat/completions, /v1/completions and /v1/models belong to the OpenAI-compatible API."""
    with pytest.raises(ValidationError, match="reserved"):
        EndpointConfig(name=name, task="tensor")
