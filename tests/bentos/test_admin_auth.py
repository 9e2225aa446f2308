"""The admin token gate: closed without a token, 401 on a wrong one, actor from the token's name."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from bentos.api.admin import actor_for
from bentos.settings import ServeSettings


def request(auth: str | None) -> Request:
    headers = [(b"authorization", auth.encode())] if auth else []
    return Request({"type": "http", "method": "GET", "path": "/v1/admin/models", "headers": headers})


def test_no_token_configured_means_closed() -> None:
    out = actor_for(request("Bearer anything"), ServeSettings().tokens())
    assert isinstance(out, Response) and out.status_code == 403
    assert b"SWITCHYARD_ADMIN_TOKEN" in out.body


def test_missing_or_wrong_token_is_401() -> None:
    tokens = ServeSettings(admin_token="s3cret").tokens()
    for auth in (None, "Bearer wrong", "Basic s3cret", "Bearer "):
        out = actor_for(request(auth), tokens)
        assert isinstance(out, Response) and out.status_code == 401
        assert out.headers["www-authenticate"].startswith("Bearer")


def test_actor_is_the_token_name() -> None:
    tokens = ServeSettings(admin_token="root-tok", admin_tokens={"alice": "alice-tok"}).tokens()
    assert actor_for(request("Bearer root-tok"), tokens) == "admin"
    assert actor_for(request("Bearer alice-tok"), tokens) == "alice"
    assert actor_for(request("bearer alice-tok"), tokens) == "alice"
