"""The console's only way to the service: its /v1/admin API, /v1/health and /metrics."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from admin.settings import ConsoleSettings


class ConsoleError(Exception):
    """A failure worded for the person at the console."""


class AdminClient:
    def __init__(self, settings: ConsoleSettings) -> None:
        self.settings = settings
        token = settings.admin_token.get_secret_value() if settings.admin_token else ""
        self._http = httpx.Client(base_url=settings.service_url.rstrip("/"), timeout=settings.timeout_s,
                                  headers={"Authorization": f"Bearer {token}"} if token else {})

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            r = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise ConsoleError(f"Cannot reach the service at {self.settings.service_url} ({type(exc).__name__}). "
                               "Is it running? Check SWITCHYARD_SERVICE_URL.") from None
        if r.status_code == 401:
            raise ConsoleError("The service refused the admin token: check SWITCHYARD_ADMIN_TOKEN.")
        if r.status_code == 403:
            raise ConsoleError("The service's admin API is disabled: start it with SWITCHYARD_ADMIN_TOKEN set.")
        if r.status_code >= 400:
            raise ConsoleError(_explain(r))
        return r.json() if "json" in r.headers.get("content-type", "") else r.text

    def health(self) -> dict[str, Any]:
        try:
            r = self._http.get("/v1/health")
        except httpx.HTTPError:
            raise ConsoleError(f"Cannot reach the service at {self.settings.service_url}. Is it running?") from None
        return dict(r.json())

    def metrics_text(self) -> str:
        return str(self._call("GET", "/metrics"))

    def models(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/admin/models"))

    def endpoints(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/admin/endpoints"))

    def create_endpoint(self, config: dict[str, Any], reason: str) -> dict[str, Any]:
        return dict(self._call("POST", "/v1/admin/endpoints", {**config, "reason": reason}))

    def delete_endpoint(self, name: str, reason: str) -> dict[str, Any]:
        return dict(self._call("DELETE", f"/v1/admin/endpoints/{name}?reason={quote(reason)}"))

    def deployments(self) -> dict[str, Any]:
        return dict(self._call("GET", "/v1/admin/deployments"))

    def deployment(self, endpoint: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/admin/deployments/{endpoint}"))

    def deploy(self, endpoint: str, versions: list[dict[str, Any]], sticky: bool, reason: str) -> dict[str, Any]:
        body = {"versions": versions, "sticky": sticky, "reason": reason}
        return dict(self._call("PUT", f"/v1/admin/deployments/{endpoint}", body))

    def promote(self, endpoint: str, reason: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/v1/admin/deployments/{endpoint}/promote", {"reason": reason}))

    def rollback(self, endpoint: str, revision: int | None, reason: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/v1/admin/deployments/{endpoint}/rollback",
                               {"revision": revision, "reason": reason}))

    def rollout(self, endpoint: str) -> dict[str, Any] | None:
        """The endpoint's latest rollout, or None if it never had one."""
        try:
            r = self._http.get(f"/v1/admin/rollouts/{endpoint}")
        except httpx.HTTPError:
            raise ConsoleError(f"Cannot reach the service at {self.settings.service_url}. Is it running?") from None
        if r.status_code == 404:
            return None
        return dict(self._call("GET", f"/v1/admin/rollouts/{endpoint}"))

    def start_rollout(self, endpoint: str, tag: str, policy: dict[str, Any], reason: str) -> dict[str, Any]:
        body = {"tag": tag, "policy": policy, "reason": reason}
        return dict(self._call("POST", f"/v1/admin/rollouts/{endpoint}", body))

    def rollout_action(self, endpoint: str, action: str, reason: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/v1/admin/rollouts/{endpoint}/{action}", {"reason": reason}))

    def audit(self, endpoint: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
        query = f"?limit={limit}" + (f"&endpoint={endpoint}" if endpoint else "")
        return list(self._call("GET", f"/v1/admin/audit{query}"))


def _explain(r: httpx.Response) -> str:
    """The service's own words for a refused change, without JSON noise."""
    try:
        body = r.json()
    except ValueError:
        return f"The service answered {r.status_code}: {r.text[:300]}"
    detail = str(body.get("detail", body))
    detail = detail.removeprefix("body: ").removeprefix("Value error, ")
    return f"Refused ({r.status_code}): {detail}"
