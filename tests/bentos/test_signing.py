"""Signed manifests alone: what is signed, and every way a version is refused."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from pydantic import SecretStr

from bentos.signing import SIGNED_FIELDS, SigningSettings, Trust, load_trust, problem, sign

KEY = Trust(b"k" * 32, "test")
META = {"sha256": {"model.onnx": "ab" * 32}, "task": "tensor", "schema": {"inputs": [], "outputs": []},
        "preprocess": {"scale": 0.5}, "lineage": {"model": "m", "parent": None}, "gate": {"passed": True},
        "metrics": {"validate": {"accuracy": 0.9}}}


def signed(meta: dict, tag: str = "m:v1", trust: Trust = KEY) -> dict:  # type: ignore[type-arg]
    return {**meta, "signed": sign(tag, meta, trust)}


def test_a_signed_manifest_verifies_and_metrics_may_change() -> None:
    meta = signed(META)
    assert problem("m:v1", meta, KEY) is None
    meta["metrics"] = {"validate": {"accuracy": 0.1}}  # not signed: stats, not what the model computes
    assert problem("m:v1", meta, KEY) is None


@pytest.mark.parametrize("field", SIGNED_FIELDS)
def test_any_signed_field_altered_is_refused(field: str) -> None:
    meta = copy.deepcopy(signed(META))
    meta[field] = {"changed": True}
    assert "altered after it was signed" in str(problem("m:v1", meta, KEY))


def test_a_manifest_cannot_stand_in_for_another_tag() -> None:
    assert "altered after it was signed" in str(problem("m:v2", signed(META, "m:v1"), KEY))


def test_another_key_is_named_by_id_never_shown() -> None:
    other = Trust(b"o" * 32, "SWITCHYARD_SIGNING_KEY")
    why = str(problem("m:v1", signed(META, trust=other), KEY))
    assert f"signed with key {other.key_id}" in why and KEY.key_id in why and "kkkk" not in why


def test_unsigned_or_unverifiable_loads_only_when_allowed() -> None:
    assert "is not signed" in str(problem("m:v1", META, KEY))
    assert "python -m models sign m:v1" in str(problem("m:v1", META, KEY))
    assert problem("m:v1", META, Trust(KEY.key, "test", allow_unsigned=True)) is None
    no_key = Trust(None, "/nowhere/signing.key")
    assert "no signing key is set here" in str(problem("m:v1", signed(META), no_key))
    assert problem("m:v1", signed(META), Trust(None, "x", allow_unsigned=True)) is None
    altered = {**signed(META), "task": "other"}  # allowing unsigned never lets an altered one through
    assert "altered" in str(problem("m:v1", altered, Trust(KEY.key, "test", allow_unsigned=True)))


def test_the_build_side_makes_a_private_key_file_once(tmp_path: Path) -> None:
    settings = SigningSettings(signing_key_file=tmp_path / "conf" / "signing.key")
    assert load_trust(settings).key is None
    made = load_trust(settings, create=True)
    assert made.key is not None and len(made.key) == 64
    assert (tmp_path / "conf" / "signing.key").stat().st_mode & 0o077 == 0
    assert load_trust(settings, create=True).key == made.key


def test_a_short_key_is_refused_naming_where_it_came_from(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="SWITCHYARD_SIGNING_KEY has 5 characters; it needs at least 16"):
        load_trust(SigningSettings(signing_key=SecretStr("short")))
    (tmp_path / "k").write_text("tiny\n")
    with pytest.raises(ValueError, match=f"{tmp_path / 'k'} has 4 characters"):
        load_trust(SigningSettings(signing_key_file=tmp_path / "k"))
