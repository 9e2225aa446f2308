"""Shared fixtures: temporary stores and work dirs, and the CLI run as a user runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

CLI = Callable[..., subprocess.CompletedProcess[str]]


def artifacts_dir(*parts: str) -> Path:
    """Where screenshots and terminal panes go: this run's pytest temp dir, never the checkout (the path is
    printed at the end of the run)."""
    path = Path(os.environ["SWITCHYARD_TEST_ARTIFACTS"], *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.hookimpl(trylast=True)  # after pytest's tmp_path_factory exists
def pytest_configure(config: pytest.Config) -> None:
    os.environ["SWITCHYARD_TEST_ARTIFACTS"] = str(config._tmp_path_factory.getbasetemp() / "artifacts")  # type: ignore[attr-defined]
    # In-process registration uses this session's own store, never the user's.
    os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="switchyard-test-bentoml-")
    # ...and its own signing key, made by the first build (bentos/signing.py), never the user's.
    os.environ["SWITCHYARD_SIGNING_KEY_FILE"] = str(Path(os.environ["BENTOML_HOME"]).parent /
                                                    f"{Path(os.environ['BENTOML_HOME']).name}-signing.key")
    os.environ["BENTOML_DO_NOT_TRACK"] = "True"
    os.environ["HF_HUB_OFFLINE"] = "1"


def pytest_unconfigure(config: pytest.Config) -> None:
    # The session's own model store and signing key go with it.
    home = os.environ.get("BENTOML_HOME", "")
    if "switchyard-test-bentoml-" in home:
        shutil.rmtree(home, ignore_errors=True)
        Path(os.environ.get("SWITCHYARD_SIGNING_KEY_FILE", "")).unlink(missing_ok=True)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    artifacts = Path(os.environ.get("SWITCHYARD_TEST_ARTIFACTS", ""))
    if artifacts.is_dir() and any(artifacts.iterdir()):
        terminalreporter.write_line(f"screenshots and terminal panes: {artifacts}")


@pytest.fixture
def store_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a subprocess with its own empty BentoML store."""
    return {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True",
            "HF_HUB_OFFLINE": "1", "SWITCHYARD_THREADS": "2"}


@pytest.fixture
def cli(store_env: dict[str, str]) -> CLI:
    """Run `python -m models ...` in a subprocess; returns the completed process."""

    def run(*args: str, env: dict[str, str] | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "models", *args], cwd=ROOT, env=env or store_env,
                              capture_output=True, text=True, timeout=900)
        if check and proc.returncode != 0:
            raise AssertionError(f"models {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        return proc

    return run


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits-mlp and digits-cnn trained and exported once per session."""
    from models.export import export
    from models.families import get_builder
    from models.settings import BuildSettings
    from models.workdir import ModelDir

    root = tmp_path_factory.mktemp("digits-work")
    settings = BuildSettings(work_dir=root, threads=2)
    for key in ("digits-mlp", "digits-cnn"):
        builder, md = get_builder(key, settings), ModelDir(root, key)
        builder.train(md)
        export(builder, md)
    return root


@pytest.fixture
def digits_work(digits_root: Path, tmp_path: Path) -> Path:
    """A private copy of the trained and exported digits models, safe to modify."""
    dest = tmp_path / "work"
    shutil.copytree(digits_root, dest)
    return dest


@pytest.fixture(scope="session")
def minilm_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM exported once per session (about 40 s)."""
    from models.export import export
    from models.families import get_builder
    from models.settings import BuildSettings
    from models.workdir import ModelDir

    root = tmp_path_factory.mktemp("minilm-work")
    export(get_builder("minilm", BuildSettings(work_dir=root, threads=2)), ModelDir(root, "minilm"))
    return root


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A real PostgreSQL server from Debian's package, started for this session."""
    from tests.servers import Postgres

    try:
        server = Postgres()
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        message = f"cannot start PostgreSQL ({exc}); install Debian's 'postgresql'"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):  # in CI a missing real part fails the run
            pytest.fail(message)
        print(f"\n{'!' * 80}\nPOSTGRES TESTS SKIPPED: {message}\n{'!' * 80}", file=sys.stderr)
        pytest.skip(f"POSTGRES TESTS SKIPPED: {message}")
    server.start()
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def tiny_lms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small causal LMs trained here on text models/tiny_lm.py writes, saved as Hugging Face directories:
    "gpt2" and "llama" write English-like sentences, "garbage" (GPT-2, trained on lines of numbers) writes
    nothing like them: the bad canary. About a minute together."""
    from models.tiny_lm import Shape, train

    root = tmp_path_factory.mktemp("tiny-lm")
    # Steps, not seconds: the tests rely on what these models write (formats that end, sentences), and a machine
    # loaded by other work once trained fewer steps in the same seconds and made a model that rambled. The
    # counts are what 12, 8 and 4 s gave on an idle 2-core machine.
    gpt2 = train(root / "gpt2", Shape("gpt2"), "english", seconds=None, steps=350)
    return {"gpt2": gpt2, "llama": train(root / "llama", Shape("llama"), "english", seconds=None, steps=320),
            "garbage": train(root / "garbage", Shape("gpt2"), "digits", seconds=None, steps=128, tokenizer_from=gpt2)}


@pytest.fixture(scope="session")
def tiny_lm_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Validation text for the generation gate: sentences the training corpus did not hold verbatim."""
    from models.tiny_lm import sentences

    path = tmp_path_factory.mktemp("tiny-lm-text") / "validation.txt"
    path.write_text("\n".join(sentences("english", 60, seed=7)) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_lm_graphs(tiny_lms: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each tiny LM exported with its KV cache, next to its tokenizer, with the metadata the server reads
    (`meta.json`): a model directory as the store keeps it, without the store."""
    import json

    from transformers import AutoModelForCausalLM

    from models.tasks.text_generation import export, graph_spec_of

    out = {}
    for name, hf in tiny_lms.items():
        dest = tmp_path_factory.mktemp(f"graph-{name}")
        model = AutoModelForCausalLM.from_pretrained(str(hf), attn_implementation="eager").eval()
        spec = graph_spec_of(model.config, model.config.eos_token_id)
        export(model, spec, dest / "model.onnx")
        shutil.copyfile(hf / "tokenizer.json", dest / "tokenizer.json")
        (dest / "meta.json").write_text(json.dumps({"tokenizer": "tokenizer.json", "generation": spec.as_meta()}))
        out[name] = dest
    return out
