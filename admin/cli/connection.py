"""Where the command line connects: flags, then SWITCHYARD_URL / SWITCHYARD_TOKEN, then a named profile
in ~/.config/switchyard/config.toml (as kubectl contexts work), then the local `make serve` defaults.

    current = "local"

    [profiles.local]
    url = "http://127.0.0.1:3000"
    token_file = "~/src/switchyard/.state/admin-token"

    [profiles.prod]
    url = "https://switchyard.internal:3000"
    token = "..."
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

DEFAULT_URL = "http://127.0.0.1:3000"
# `make serve` writes its admin token here; used only for a service on this machine.
LOCAL_TOKEN_FILE = Path(".state") / "admin-token"


@dataclass(frozen=True)
class Connection:
    url: str
    token: str | None
    profile: str | None

    def __repr__(self) -> str:  # never print a token, even in a traceback
        return f"Connection(url={self.url!r}, profile={self.profile!r}, token={'set' if self.token else 'unset'})"


def config_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "switchyard" / "config.toml"


def load_profiles(path: Path | None = None) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """(the current profile's name, every profile); a broken file is a usage error naming it."""
    path = path or config_file()
    if not path.exists():
        return None, {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.UsageError(f"{path}: {exc}") from None
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict) or not all(isinstance(p, dict) for p in profiles.values()):
        raise click.UsageError(f"{path}: [profiles.NAME] tables expected")
    current = data.get("current")
    return (str(current) if current else None), profiles


def resolve(url: str | None, token: str | None, profile: str | None) -> Connection:
    current, profiles = load_profiles()
    name = profile or os.environ.get("SWITCHYARD_PROFILE") or current
    if name is not None and name not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise click.UsageError(f"--profile: no profile {name!r} in {config_file()} (profiles: {known})")
    chosen = profiles.get(name, {}) if name else {}
    url = url or os.environ.get("SWITCHYARD_URL") or chosen.get("url") or DEFAULT_URL
    token = token or os.environ.get("SWITCHYARD_TOKEN") or chosen.get("token") or _token_file(chosen.get("token_file"))
    if token is None and not chosen and _is_local(url) and LOCAL_TOKEN_FILE.exists():
        token = _token_file(str(LOCAL_TOKEN_FILE))
    return Connection(url.rstrip("/"), token, name)


def _token_file(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return Path(path).expanduser().read_text().strip() or None
    except OSError as exc:
        raise click.UsageError(f"token_file: cannot read {path} ({exc.strerror})") from None


def _is_local(url: str) -> bool:
    return any(host in url for host in ("://127.0.0.1", "://localhost", "://[::1]"))
