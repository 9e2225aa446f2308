"""Where the command line connects: flags over environment over profile over local defaults."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from admin.cli.connection import DEFAULT_URL, resolve


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("SWITCHYARD_URL", "SWITCHYARD_TOKEN", "SWITCHYARD_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)  # no .state/admin-token here
    return tmp_path


def write_config(home: Path, text: str) -> None:
    path = home / "config" / "switchyard" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text(text)


def test_flags_win_over_the_environment_which_wins_over_the_profile(clean_env: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(clean_env, 'current = "prod"\n[profiles.prod]\nurl = "http://prod:3000"\ntoken = "p"\n')
    assert resolve(None, None, None).url == "http://prod:3000" and resolve(None, None, None).token == "p"
    monkeypatch.setenv("SWITCHYARD_URL", "http://env:3000/")
    assert resolve(None, None, None).url == "http://env:3000"
    assert resolve("http://flag:1", "f", None).url == "http://flag:1"
    assert resolve("http://flag:1", "f", None).token == "f"


def test_a_named_profile_with_a_token_file(clean_env: Path) -> None:
    (clean_env / "tok").write_text("from-file\n")
    write_config(clean_env, f'[profiles.lab]\nurl = "http://lab:3000"\ntoken_file = "{clean_env / "tok"}"\n')
    conn = resolve(None, None, "lab")
    assert (conn.url, conn.token, conn.profile) == ("http://lab:3000", "from-file", "lab")
    assert "from-file" not in repr(conn)  # a token never shows, not even in a traceback


@pytest.mark.parametrize(("text", "needle"), [
    ("[profiles.lab]\nurl = \"x\"\n", "no profile 'prod'"),
    ("[profiles.lab\n", "config.toml"),
])
def test_a_missing_profile_or_a_broken_file_is_a_usage_error(clean_env: Path, text: str, needle: str) -> None:
    write_config(clean_env, text)
    with pytest.raises(click.UsageError, match=needle):
        resolve(None, None, "prod")


def test_the_local_token_of_make_serve_is_used_only_for_a_local_service(clean_env: Path) -> None:
    (clean_env / ".state").mkdir()
    (clean_env / ".state" / "admin-token").write_text("local-secret\n")
    assert resolve(None, None, None).url == DEFAULT_URL and resolve(None, None, None).token == "local-secret"
    assert resolve("http://remote.example:3000", None, None).token is None
