"""Endpoints from switchyard.yaml (SWITCHYARD_CONFIG) come up at start and again after a restart; a
typo stops start-up naming the key; a fifth task type is a plug-in module written by the test."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from bench.user_models import color_images, normalise, register_user_models
from models.registry import register_file
from tests.integration.conftest import TOKEN
from tests.servers import Served, serve_env

pytestmark = pytest.mark.integration

# A fifth task type, outside the project: one serving module (and, for the build side, register_file).
PLUGIN = '''
from typing import Any, ClassVar
import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from bentos.tasks.base import Codec, Feed, Limits, Task


class ScaleCodec(Codec):
    def encode(self, items: list[Any]) -> Feed:
        return {"x": np.asarray(items, np.float32)}

    def decode(self, rows: list[Any], **options: Any) -> list[Any]:
        return [float(r[0]) for r in rows]

    def agreement(self, a: Any, b: Any) -> float:
        return float(np.isclose(a, b).all())

    def warmup_items(self) -> list[Any]:
        return [[1.0]]


class Scale(Task):
    name: ClassVar[str] = "scale"
    verb: ClassVar[str] = "scale"
    items_field: ClassVar[str] = "values"
    result_field: ClassVar[str] = "scaled"
    summary: ClassVar[str] = "Multiply numbers"
    codec_class: ClassVar[type[Codec]] = ScaleCodec

    @classmethod
    def request_model(cls, limits: Limits, signature: Any) -> type[BaseModel]:
        class ScaleRequest(BaseModel):
            model_config = ConfigDict(extra="forbid")
            values: list[float] = Field(min_length=1, max_length=limits.max_rows)
        return ScaleRequest

    @classmethod
    def items(cls, body: BaseModel) -> list[Any]:
        return [[v] for v in body.values]

    @classmethod
    def result_schema(cls) -> dict[str, Any]:
        return {"type": "number"}

    @classmethod
    def playground(cls, kit: Any) -> None:
        kit.gr.Markdown("scale: use the API")
'''


def double_graph(dest: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["y"])], "double", [x], [y],
                              [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(dest))
    return dest


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path]:
    work = tmp_path_factory.mktemp("config-file")
    plugins = work / "plugins"
    plugins.mkdir()
    (plugins / "scale_task.py").write_text(textwrap.dedent(PLUGIN))
    tags = register_user_models(work / "models")
    from bentos.tasks import load_plugins

    sys.path.insert(0, str(plugins))
    load_plugins(["scale_task"])  # so that this process can register a version of that task
    tags["double"] = register_file("double", double_graph(work / "double.onnx"), task="scale", preprocess={})
    return tags, plugins


def config_text(tags: dict[str, str]) -> str:
    return textwrap.dedent(f"""\
        endpoints:
          - {{name: shapes, task: image-classification, model: "{tags['cnn']}", limits: {{max_rows: 8}}}}
          - {{name: reviews, task: text-classification, model: "{tags['bert']}"}}
          - {{name: doubler, task: scale, model: "{tags['double']}"}}
        """)


def start(tmp: Path, config: Path, plugins: Path, state: Path) -> Served:
    env = serve_env(Path(os.environ["BENTOML_HOME"]), state, admin_token=TOKEN, config=str(config),
                    task_modules='["scale_task"]')
    env["PYTHONPATH"] = f"{plugins}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return Served(env, log_dir=tmp)


def test_config_endpoints_come_up_and_again_after_a_restart(setup: tuple[dict[str, str], Path],
                                                            tmp_path: Path) -> None:
    tags, plugins = setup
    config = tmp_path / "switchyard.yaml"
    config.write_text(config_text(tags))
    state = tmp_path / "state"
    pics, labels = color_images(3, seed=11)
    for _ in range(2):  # the second start reads the same file and the same control plane
        served = start(tmp_path, config, plugins, state)
        try:
            served.wait_ready()
            with httpx.Client(base_url=served.url, timeout=60) as c:
                r = c.post("/v1/shapes/predict", json={"inputs": normalise(pics).tolist()})
                assert r.status_code == 200, r.text
                assert [p["label"] for p in r.json()["predictions"]] == [("red", "green", "blue")[i] for i in labels]
                assert c.post("/v1/shapes/predict", json={"inputs": [[0.0]] * 9}).status_code == 422  # max_rows 8
                assert c.post("/v1/reviews/predict", json={"texts": ["fine"]}).status_code == 200
                r = c.post("/v1/doubler/scale", json={"values": [1.5, -2.0]})
                assert r.status_code == 200 and r.json()["scaled"] == [3.0, -4.0], r.text
                assert c.post("/v1/digits/predict", json={"inputs": [[1.0] * 64]}).status_code == 404
                assert "/v1/doubler/scale" in c.get("/v1/openapi.json").json()["paths"]
        finally:
            served.kill()


def test_a_typo_in_the_file_stops_start_up_naming_the_key(setup: tuple[dict[str, str], Path],
                                                          tmp_path: Path) -> None:
    tags, plugins = setup
    config = tmp_path / "switchyard.yaml"
    config.write_text(config_text(tags).replace("max_rows: 8", "max_rowz: 8"))
    served = start(tmp_path, config, plugins, tmp_path / "state")
    try:
        with pytest.raises(RuntimeError, match="bentoml serve exited"):  # exits: never respawns for ever
            served.wait_ready(timeout=60)
        assert "endpoints[0].limits.max_rowz (endpoint 'shapes'): Extra inputs are not permitted" in served.log_text()
        assert "switchyard cannot start: " in served.log_text()
    finally:
        served.kill()
