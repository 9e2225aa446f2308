"""The admin token gate: closed without a token, 401 on a wrong one, actor from the token's name."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from bentos.api.admin import principal_for
from bentos.settings import Principal, ServeSettings


def request(auth: str | None) -> Request:
    headers = [(b"authorization", auth.encode())] if auth else []
    return Request({"type": "http", "method": "GET", "path": "/v1/admin/models", "headers": headers})


def test_no_token_configured_means_closed() -> None:
    out = principal_for(request("Bearer anything"), ServeSettings().tokens())
    assert isinstance(out, Response) and out.status_code == 403
    assert b"SWITCHYARD_ADMIN_TOKEN" in out.body


def test_missing_or_wrong_token_is_401() -> None:
    tokens = ServeSettings(admin_token="s3cret-s3cret-s3cret").tokens()
    for auth in (None, "Bearer wrong", "Basic s3cret-s3cret-s3cret", "Bearer "):
        out = principal_for(request(auth), tokens)
        assert isinstance(out, Response) and out.status_code == 401
        assert out.headers["www-authenticate"].startswith("Bearer")


def test_actor_is_the_token_name() -> None:
    tokens = ServeSettings(admin_token="root-token-0123456", admin_tokens={"alice": "alice-token-012345"}).tokens()
    assert principal_for(request("Bearer root-token-0123456"), tokens) == Principal(name="admin", role="admin")
    assert principal_for(request("Bearer alice-token-012345"), tokens) == Principal(name="alice", role="admin")
    assert principal_for(request("bearer alice-token-012345"), tokens) == Principal(name="alice", role="admin")


def test_named_tokens_carry_their_roles_and_roles_are_ordered() -> None:
    tokens = ServeSettings(admin_tokens={"vic": {"token": "vic-token-0123456", "role": "viewer"},
                                         "olga": {"token": "olga-token-012345", "role": "operator"}}).tokens()
    vic = principal_for(request("Bearer vic-token-0123456"), tokens)
    olga = principal_for(request("Bearer olga-token-012345"), tokens)
    assert isinstance(vic, Principal) and isinstance(olga, Principal)
    assert (vic.role, olga.role) == ("viewer", "operator")
    assert vic.may("viewer") and not vic.may("operator")
    assert olga.may("operator") and not olga.may("admin")


def test_a_role_that_does_not_exist_is_refused_at_start_naming_it() -> None:
    with pytest.raises(ValidationError, match="role"):
        ServeSettings(admin_tokens={"eve": {"token": "eve-token-0123456", "role": "root"}})


@pytest.mark.parametrize("secret", ["", " ", "\u00a0", "short", "x" * 15, " padded-token-0123456 ",
                                    "tab\there-token-0123"])
@pytest.mark.parametrize("variable", ["SWITCHYARD_ADMIN_TOKEN", "SWITCHYARD_ADMIN_TOKENS"])
def test_an_empty_or_weak_token_stops_the_service_at_start_naming_the_variable(secret: str, variable: str) -> None:
    """An empty SWITCHYARD_ADMIN_TOKEN once let a bearer token of one non-breaking space in as an admin."""
    settings = {"admin_token": secret} if variable == "SWITCHYARD_ADMIN_TOKEN" else \
        {"admin_tokens": {"ann": secret, "bob": {"token": secret, "role": "viewer"}}}
    with pytest.raises(ValidationError, match=f"{variable}.*at least 16 printable characters"):
        ServeSettings(**settings)


def test_a_token_is_compared_on_the_exact_bytes_sent() -> None:
    tokens = ServeSettings(admin_token="exact-token-0123456").tokens()
    assert principal_for(request("Bearer exact-token-0123456"), tokens) == Principal(name="admin", role="admin")
    for near in ("Bearer exact-token-0123456\u00a0", "Bearer \u00a0", "Bearer exact-token-012345", "Bearer  "):
        out = principal_for(request(near.encode("utf-8").decode("latin-1")), tokens)
        assert isinstance(out, Response) and out.status_code == 401
