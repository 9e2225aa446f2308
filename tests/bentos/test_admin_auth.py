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
    tokens = ServeSettings(admin_token="s3cret").tokens()
    for auth in (None, "Bearer wrong", "Basic s3cret", "Bearer "):
        out = principal_for(request(auth), tokens)
        assert isinstance(out, Response) and out.status_code == 401
        assert out.headers["www-authenticate"].startswith("Bearer")


def test_actor_is_the_token_name() -> None:
    tokens = ServeSettings(admin_token="root-tok", admin_tokens={"alice": "alice-tok"}).tokens()
    assert principal_for(request("Bearer root-tok"), tokens) == Principal(name="admin", role="admin")
    assert principal_for(request("Bearer alice-tok"), tokens) == Principal(name="alice", role="admin")
    assert principal_for(request("bearer alice-tok"), tokens) == Principal(name="alice", role="admin")


def test_named_tokens_carry_their_roles_and_roles_are_ordered() -> None:
    tokens = ServeSettings(admin_tokens={"vic": {"token": "v-tok", "role": "viewer"},
                                         "olga": {"token": "o-tok", "role": "operator"}}).tokens()
    vic, olga = principal_for(request("Bearer v-tok"), tokens), principal_for(request("Bearer o-tok"), tokens)
    assert isinstance(vic, Principal) and isinstance(olga, Principal)
    assert (vic.role, olga.role) == ("viewer", "operator")
    assert vic.may("viewer") and not vic.may("operator")
    assert olga.may("operator") and not olga.may("admin")


def test_a_role_that_does_not_exist_is_refused_at_start_naming_it() -> None:
    with pytest.raises(ValidationError, match="role"):
        ServeSettings(admin_tokens={"eve": {"token": "t", "role": "root"}})
