"""The console's only way to the service: its /v1/admin API, /v1/health and /metrics."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from admin.settings import ConsoleSettings


class ConsoleError(Exception):
    """A failure worded for the person at the console; `status` is None when the service was not reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AdminClient:
    """`url_hint` and `token_hint` name the setting a person changes when the URL or token is wrong:
    environment variables for the console, flags for the command line."""

    def __init__(self, settings: ConsoleSettings, url_hint: str = "SWITCHYARD_SERVICE_URL",
                 token_hint: str = "SWITCHYARD_ADMIN_TOKEN", token: str | None = None) -> None:
        """`token`, when given, is a signed-in person's own; else the settings' token."""
        self.settings, self.url_hint, self.token_hint = settings, url_hint, token_hint
        if token is None:
            token = settings.admin_token.get_secret_value() if settings.admin_token else ""
        self._http = httpx.Client(base_url=settings.service_url.rstrip("/"), timeout=settings.timeout_s,
                                  headers={"Authorization": f"Bearer {token}"} if token else {})

    def _send(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        try:
            return self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise ConsoleError(f"Cannot reach the service at {self.settings.service_url} ({type(exc).__name__}). "
                               f"Is it running? Check {self.url_hint}.") from None

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        r = self._send(method, path, body)
        if r.status_code == 401:
            raise ConsoleError(f"The service refused the admin token: check {self.token_hint}.", 401)
        if r.status_code == 403 and "role" in r.text:
            raise ConsoleError(_explain(r), 403)
        if r.status_code == 403:
            raise ConsoleError("The service's admin API is disabled: start it with SWITCHYARD_ADMIN_TOKEN set.", 403)
        if r.status_code >= 400:
            raise ConsoleError(_explain(r), r.status_code)
        return r.json() if "json" in r.headers.get("content-type", "") else r.text

    def whoami(self) -> dict[str, Any]:
        """The token's name and role: {"name": "olga", "role": "operator"}."""
        return dict(self._call("GET", "/v1/admin/whoami"))

    def keys(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/admin/keys"))

    def create_key(self, name: str, rate: float, burst: float, scopes: list[str], reason: str,
                   weight: float = 1.0) -> dict[str, Any]:
        body = {"name": name, "rate": rate, "burst": burst, "scopes": scopes, "weight": weight, "reason": reason}
        return dict(self._call("POST", "/v1/admin/keys", body))

    def update_key(self, name: str, changes: dict[str, Any], reason: str) -> dict[str, Any]:
        return dict(self._call("PATCH", f"/v1/admin/keys/{quote(name)}", {**changes, "reason": reason}))

    def revoke_key(self, name: str, reason: str) -> dict[str, Any]:
        return dict(self._call("DELETE", f"/v1/admin/keys/{quote(name)}?reason={quote(reason)}"))

    def drift(self, endpoint: str, feature: str | None = None) -> dict[str, Any]:
        """Per watched version: rows, PSI/KS per feature, the worst ones, prediction drift (and `feature`'s bins)."""
        query = f"?endpoint={quote(endpoint)}" + (f"&feature={quote(feature)}" if feature else "")
        return dict(dict(self._call("GET", f"/v1/admin/drift{query}")).get(endpoint) or {})

    def payloads(self, endpoint: str, version: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The newest logged exchanges (payload log), newest first; operators and admins."""
        query = f"?endpoint={quote(endpoint)}&limit={limit}" + (f"&version={quote(version)}" if version else "")
        return list(self._call("GET", f"/v1/admin/payloads{query}"))

    def health(self) -> dict[str, Any]:
        return dict(self._send("GET", "/v1/health").json())

    def repository_load(self, endpoint: str, loaded: bool) -> None:
        """Triton's repository API: keep an endpoint's versions loaded, or let an on-demand one's go."""
        self._send("POST", f"/v2/repository/models/{endpoint}/{'load' if loaded else 'unload'}")

    def metrics_text(self) -> str:
        return str(self._call("GET", "/metrics"))

    def models(self, task: str | None = None) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/admin/models" + (f"?task={quote(task)}" if task else "")))

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

    def deploy(self, endpoint: str, versions: list[dict[str, Any]], sticky: bool, reason: str,
               shadow_sample: float = 100.0) -> dict[str, Any]:
        body = {"versions": versions, "sticky": sticky, "shadow_sample": shadow_sample, "reason": reason}
        return dict(self._call("PUT", f"/v1/admin/deployments/{endpoint}", body))

    def promote(self, endpoint: str, reason: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/v1/admin/deployments/{endpoint}/promote", {"reason": reason}))

    def rollback(self, endpoint: str, revision: int | None, reason: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/v1/admin/deployments/{endpoint}/rollback",
                               {"revision": revision, "reason": reason}))

    def rollout(self, endpoint: str) -> dict[str, Any] | None:
        """The endpoint's latest rollout, or None if it never had one."""
        try:
            return dict(self._call("GET", f"/v1/admin/rollouts/{endpoint}"))
        except ConsoleError as exc:
            if exc.status == 404 and "no rollout" in str(exc):
                return None
            raise

    def start_rollout(self, endpoint: str, tag: str, policy: dict[str, Any], reason: str) -> dict[str, Any]:
        body = {"tag": tag, "policy": policy, "reason": reason}
        return dict(self._call("POST", f"/v1/admin/rollouts/{endpoint}", body))

    def rollout_action(self, endpoint: str, action: str, reason: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/v1/admin/rollouts/{endpoint}/{action}", {"reason": reason}))

    def stats(self, window_s: int = 60) -> dict[str, Any]:
        """Per-version counts and latency quantiles over the last `window_s` seconds, from every worker."""
        return dict(self._call("GET", f"/v1/admin/stats?window={window_s}"))

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


def quality(model: dict[str, Any]) -> str:
    """A version's gate metric in words: accuracy for classifiers, mean cosine for embeddings."""
    m = (model.get("metrics") or {}).get("validate") or {}
    if "accuracy" in m:
        return f"accuracy {m['accuracy'] * 100:.2f}%"
    if "mean_cosine" in m:
        return f"cosine {m['mean_cosine']:.4f}"
    return "-"
