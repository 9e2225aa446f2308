"""Signed version manifests: what the server trusts about a stored version (its artifacts' sha256, task,
signature, preprocessing, lineage, gate), with an HMAC-SHA256 key held outside the model store.

The sha256 of each artifact sits in the same metadata as the files, so whoever can change a file can
change its hash too: hashes find corruption, not tampering. The manifest's MAC, made with a key the
store does not hold, finds both. HMAC rather than a public-key signature: the machine that builds and
the servers that load share one secret, and the standard library has it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

ALGORITHM = "HMAC-SHA256"
# Everything serving trusts about a version. Stats, measured sizes and the like are not signed: they
# change after registration and decide nothing about what the model computes.
SIGNED_FIELDS = ("sha256", "task", "schema", "preprocess", "lineage", "gate")
MIN_KEY_CHARS = 16
MAKE_KEY = "make one with: python -c 'import secrets; print(secrets.token_hex(32))'"


class SigningSettings(BaseSettings):
    """SWITCHYARD_SIGNING_KEY, SWITCHYARD_SIGNING_KEY_FILE and SWITCHYARD_ALLOW_UNSIGNED, read when called."""

    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_")

    signing_key: SecretStr | None = Field(None, description="The key itself (a Kubernetes secret, say).")
    signing_key_file: Path | None = Field(None, description="A file holding the key; default "
                                          "~/.config/switchyard/signing.key, made by the first build.")
    allow_unsigned: bool = Field(False, description="Development only: load versions that carry no "
                                 "signature, or that cannot be checked because no key is set.")


def default_key_file() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "switchyard" / "signing.key"


@dataclass(frozen=True)
class Trust:
    """The key versions are signed and checked with, where it came from, and whether unsigned ones load."""

    key: bytes | None
    source: str
    allow_unsigned: bool = False

    @property
    def key_id(self) -> str:
        """A short name for the key, to tell two keys apart in a message; never the key."""
        return hashlib.sha256(b"switchyard signing key id\0" + (self.key or b"")).hexdigest()[:12]


def _checked(raw: str, source: str) -> bytes:
    key = raw.strip()
    if len(key) < MIN_KEY_CHARS:
        raise ValueError(f"the signing key in {source} has {len(key)} characters; it needs at least "
                         f"{MIN_KEY_CHARS}: {MAKE_KEY}")
    return key.encode()


def load_trust(settings: SigningSettings | None = None, create: bool = False) -> Trust:
    """The key from SWITCHYARD_SIGNING_KEY, else from the key file; with `create` (the build side), a new
    random key file where there is none, readable by its owner only."""
    settings = settings or SigningSettings()
    allow = settings.allow_unsigned
    if settings.signing_key is not None:
        return Trust(_checked(settings.signing_key.get_secret_value(), "SWITCHYARD_SIGNING_KEY"),
                     "SWITCHYARD_SIGNING_KEY", allow)
    path = settings.signing_key_file or default_key_file()
    if not path.is_file() and create:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another build made it a moment ago
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(os.urandom(32).hex() + "\n")
    if not path.is_file():
        return Trust(None, str(path), allow)
    return Trust(_checked(path.read_text(), str(path)), str(path), allow)


def manifest(tag: str, metadata: dict[str, Any]) -> bytes:
    """The signed bytes: the tag (so one version's files and metadata cannot stand in for another's) and
    each signed field, as canonical JSON."""
    body = {"tag": tag, **{name: metadata.get(name) for name in SIGNED_FIELDS}}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str).encode()


def _mac(key: bytes, tag: str, metadata: dict[str, Any]) -> str:
    return hmac.new(key, manifest(tag, metadata), hashlib.sha256).hexdigest()


def sign(tag: str, metadata: dict[str, Any], trust: Trust) -> dict[str, str]:
    """What is stored as the version's `signed` metadata."""
    if trust.key is None:
        raise ValueError(f"no signing key: set SWITCHYARD_SIGNING_KEY or write one to {trust.source}; {MAKE_KEY}")
    return {"algorithm": ALGORITHM, "key_id": trust.key_id, "mac": _mac(trust.key, tag, metadata)}


def problem(tag: str, metadata: dict[str, Any], trust: Trust) -> str | None:
    """Why this version must not load, or None when its manifest is signed with this key and unaltered."""
    signed = metadata.get("signed")
    if not isinstance(signed, dict):
        if trust.allow_unsigned:
            return None
        return (f"{tag} is not signed (registered before signing, or by hand): check and sign it with "
                f"`python -m models sign {tag}`, or set SWITCHYARD_ALLOW_UNSIGNED=true for development")
    if trust.key is None:
        if trust.allow_unsigned:
            return None
        return (f"{tag} is signed with key {signed.get('key_id')} but no signing key is set here: set "
                f"SWITCHYARD_SIGNING_KEY, or SWITCHYARD_SIGNING_KEY_FILE (looked in {trust.source})")
    if signed.get("algorithm") != ALGORITHM or signed.get("key_id") != trust.key_id:
        return (f"{tag} is signed with key {signed.get('key_id')} ({signed.get('algorithm')}), not with this "
                f"key {trust.key_id} ({trust.source})")
    if not hmac.compare_digest(_mac(trust.key, tag, metadata), str(signed.get("mac", ""))):
        return (f"{tag} was altered after it was signed: its manifest (artifact hashes, task, signature, "
                "preprocessing, lineage, gate) does not match its signature")
    return None
