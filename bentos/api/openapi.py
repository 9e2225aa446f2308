"""GET /v1/openapi.json: every route the service answers, built from the routes themselves.

Inference paths follow the endpoints as they are now; admin, health and OIP paths come from the
app's routing table, with the role each admin route needs, its pydantic body (marked required),
its query parameters and every status it can answer. Pydantic's `$defs` are hoisted into
`components/schemas`, so every `$ref` resolves.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from starlette.routing import BaseRoute, Route

from bentos.controlplane.engine import Engine
from bentos.schemas import TAG_PATTERN

REF = "#/components/schemas/{model}"
PROBLEM = {"type": "object", "required": ["detail"], "properties": {
    "detail": {"type": "string"}, "errors": {"type": "array", "items": {"type": "object"}, "maxItems": 20},
    "more_errors": {"type": "integer"}, "request_id": {"type": "string"}}}
# OIP errors carry "error"; its readiness routes answer 503 with their usual body, so both fit.
OIP_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}}
# The OpenAI-compatible routes answer errors as the official client reads them (bentos/api/openai.py).
OPENAI_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "properties": {
    "message": {"type": "string"}, "type": {"type": "string"}, "param": {"type": ["string", "null"]},
    "code": {"type": "string"}, "request_id": {"type": "string"}}}}}
LATENCY = {"type": "object", "properties": {k: {"type": "number"} for k in ("queue", "inference", "total")}}
WORDS = {400: "malformed request", 401: "missing or wrong credential", 403: "the role or scope does not allow it",
         404: "no such endpoint, version, rollout or key", 409: "conflicts with the current state",
         413: "body too large", 422: "invalid input: the field and its limit", 429: "over the key's or client's rate",
         500: "the model failed; the server log has its error",
         503: "overloaded, no model deployed, or control plane unavailable; see Retry-After"}
ADMIN_ERRORS = (401, 403, 404, 409, 413, 422, 503)
INFER_ERRORS = (401, 403, 404, 413, 422, 429, 503)
OIP_ERRORS = (400, 401, 403, 404, 409, 413, 429, 503)
OPENAI_ERRORS = (400, 401, 403, 404, 413, 429, 500, 503)
OPENAI_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/models")
# What each path parameter can be: anything else matches no route at all.
PATH_PARAMS: dict[str, dict[str, Any]] = {
    "endpoint": {"type": "string", "pattern": "^[a-z0-9-]{1,40}$"},
    "model": {"type": "string", "pattern": "^[a-z0-9-]{1,40}$"},
    "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,39}$"},
    "version": {"type": "string", "pattern": TAG_PATTERN, "maxLength": 200},
    "action": {"enum": ["pause", "resume", "abort"]},
}
QUERY: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("GET", "/v1/admin/models"): [{"name": "task", "in": "query", "schema": {"type": "string"}}],
    ("GET", "/v1/admin/audit"): [
        {"name": "endpoint", "in": "query", "schema": {"type": "string"}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10_000}}],
    ("GET", "/v1/admin/stats"): [
        {"name": "window", "in": "query", "schema": {"type": "integer", "minimum": 5, "maximum": 86_400}}],
    ("GET", "/v1/admin/drift"): [{"name": "endpoint", "in": "query", "schema": {"type": "string"}},
                                 {"name": "feature", "in": "query", "schema": {"type": "string"}}],
    ("GET", "/v1/admin/payloads"): [
        {"name": "endpoint", "in": "query", "schema": {"type": "string"}},
        {"name": "version", "in": "query", "schema": {"type": "string"}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
    ("DELETE", "/v1/admin/endpoints/{endpoint}"): [
        {"name": "reason", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1}}],
    ("DELETE", "/v1/admin/keys/{name}"): [
        {"name": "reason", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1}}],
}
SUMMARY: dict[tuple[str, str], str] = {
    ("GET", "/v1/health"): "Every endpoint's live versions, their state and circuits",
    ("GET", "/v1/openapi.json"): "This document",
    ("GET", "/v1/admin/whoami"): "The calling token's name and role",
    ("GET", "/v1/admin/models"): "Versions in the model store",
    ("GET", "/v1/admin/endpoints"): "Every endpoint",
    ("POST", "/v1/admin/endpoints"): "Create an endpoint",
    ("GET", "/v1/admin/endpoints/{endpoint}"): "One endpoint",
    ("DELETE", "/v1/admin/endpoints/{endpoint}"): "Delete an endpoint made through the API",
    ("GET", "/v1/admin/deployments"): "Every endpoint's split",
    ("GET", "/v1/admin/deployments/{endpoint}"): "One endpoint's split and revisions",
    ("PUT", "/v1/admin/deployments/{endpoint}"): "Change the split (a new revision)",
    ("POST", "/v1/admin/deployments/{endpoint}/promote"): "Promote the canary",
    ("POST", "/v1/admin/deployments/{endpoint}/rollback"): "Roll back to a revision",
    ("GET", "/v1/admin/rollouts/{endpoint}"): "The endpoint's latest rollout",
    ("POST", "/v1/admin/rollouts/{endpoint}"): "Start a rollout",
    ("POST", "/v1/admin/rollouts/{endpoint}/{action}"): "Pause, resume or abort the rollout",
    ("GET", "/v1/admin/audit"): "The audit log, newest first",
    ("GET", "/v1/admin/stats"): "Per-version counts and latency from every worker",
    ("GET", "/v1/admin/drift"): "Input and prediction drift per version (PSI, KS, the worst features)",
    ("GET", "/v1/admin/payloads"): "The newest logged requests and answers on this host (payload log)",
    ("GET", "/v1/admin/keys"): "API keys (never their secrets)",
    ("POST", "/v1/admin/keys"): "Create an API key; its secret is in this answer only",
    ("PATCH", "/v1/admin/keys/{name}"): "Change a key's rate, burst or scopes",
    ("DELETE", "/v1/admin/keys/{name}"): "Revoke a key",
    ("GET", "/v2"): "OIP server metadata",
    ("GET", "/v2/health/live"): "OIP liveness",
    ("GET", "/v2/health/ready"): "OIP readiness",
    ("GET", "/v2/models/{model}"): "OIP model metadata (an endpoint)",
    ("GET", "/v2/models/{model}/ready"): "OIP model readiness",
    ("POST", "/v2/models/{model}/infer"): "OIP inference (JSON or the binary tensor extension)",
    ("POST", "/v2/models/{model}/versions/{version}/infer"): "OIP inference pinned to a version",
    ("POST", "/v2/repository/index"): "Triton's repository index: each endpoint, READY when loaded here",
    ("POST", "/v2/repository/models/{model}/load"): "Load an endpoint's versions and keep them loaded",
    ("POST", "/v2/repository/models/{model}/unload"): "Let an on-demand endpoint's idle versions go",
}


class Components:
    """Collects schemas under components/schemas: pydantic models with their $defs hoisted."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {"Problem": PROBLEM, "OipError": OIP_ERROR, "OpenAIError": OPENAI_ERROR}

    def model(self, model: type[BaseModel]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template=REF)
        self.schemas.update(schema.pop("$defs", {}))
        self.schemas[model.__name__] = schema
        return {"$ref": REF.format(model=model.__name__)}

    def inline(self, model: type[BaseModel]) -> dict[str, Any]:
        """A request model whose name is not unique across endpoints (one per task and limits)."""
        schema = model.model_json_schema(ref_template=REF)
        self.schemas.update(schema.pop("$defs", {}))
        return schema


def errors(codes: tuple[int, ...], schema: str = "Problem") -> dict[str, Any]:
    ref = {"$ref": REF.format(model=schema)}
    return {str(c): {"description": WORDS[c], "content": {"application/json": {"schema": ref}}} for c in codes}


def ok(schema: dict[str, Any], status: int = 200) -> dict[str, Any]:
    return {str(status): {"description": "OK", "content": {"application/json": {"schema": schema}}}}


def openapi_path(path: str) -> str:
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", path)


def path_parameters(path: str) -> list[dict[str, Any]]:
    return [{"name": name, "in": "path", "required": True, "schema": PATH_PARAMS[name]}
            for name in re.findall(r"\{(\w+)\}", path)]


def inference_paths(engine: Engine, parts: Components) -> dict[str, Any]:
    """POST /v1/{endpoint}/{verb} for each endpoint as it is now: its task gives the schemas."""
    paths: dict[str, Any] = {}
    for name, endpoint in sorted(engine.endpoints.items()):
        task = endpoint.task
        result = task.result_schema()
        response = {"type": "object", "required": [task.result_field, "model_version", "route", "latency_ms"],
                    "properties": {task.result_field: {"type": "array", "items": result}
                                   if task.result_field != "outputs" else result,
                                   "model_version": {"type": "string"},
                                   "route": {"enum": ["stable", "canary", "pinned", "fallback"]},
                                   "latency_ms": LATENCY}}
        paths[f"/v1/{name}/{task.verb}"] = {"post": {
            "summary": endpoint.config.description or f"{task.summary} ({name})", "tags": [task.name],
            "operationId": f"{name}-{task.verb}",
            "security": [{}, {"apiKey": []}],
            "parameters": [{"name": "X-Model-Version", "in": "header", "schema": {"type": "string"}},
                           {"name": "X-Routing-Key", "in": "header", "schema": {"type": "string"}}],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": parts.inline(endpoint.request_model)}}},
            "responses": {**ok(response), **errors(INFER_ERRORS)}}}
    return paths


def route_operation(method: str, path: str, route: Route, parts: Components) -> dict[str, Any]:
    role = getattr(route.endpoint, "role", None)
    body = getattr(route.endpoint, "body", None)
    oip = path.startswith("/v2")
    op: dict[str, Any] = {"summary": SUMMARY.get((method, path), path),
                          "operationId": f"{method.lower()}{re.sub(r'[^a-z0-9]+', '-', path.lower())}".rstrip("-"),
                          "tags": ["admin" if role else "oip" if oip else "service"],
                          "parameters": path_parameters(path) + QUERY.get((method, path), [])}
    if role:
        op["security"] = [{"bearerAuth": []}]
        op["description"] = f"Needs the {role} role (or higher)."
    elif oip and method == "POST":
        op["security"] = [{}, {"apiKey": []}]
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": parts.model(body)}}}
    status = 201 if method == "POST" and path in ("/v1/admin/endpoints", "/v1/admin/keys") else 200
    if path in OPENAI_PATHS:
        op["security"] = [{}, {"apiKey": []}]
        op["responses"] = {**ok({"type": "object"}), **errors(OPENAI_ERRORS, "OpenAIError")}
        if method == "POST":
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
    elif oip:
        listed = path == "/v2/repository/index"
        answer = {"type": "array", "items": {"type": "object"}} if listed else {"type": "object"}
        op["responses"] = {**ok(answer), **errors(OIP_ERRORS, "OipError")}
        if method == "POST":
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"type": "object"}},
                                                               "application/octet-stream": {"schema": {}}}}
    elif role:
        op["responses"] = {**ok({"type": ["object", "array"]}, status), **errors(ADMIN_ERRORS)}
    else:  # health answers 503 with the same body when not ready
        op["responses"] = {**ok({"type": "object"}), "503": {"description": WORDS[503], "content": {
            "application/json": {"schema": {"type": "object"}}}}}
    return op


def document(engine: Engine, routes: list[BaseRoute]) -> dict[str, Any]:
    parts = Components()
    paths = inference_paths(engine, parts)
    for route in routes:
        if not isinstance(route, Route) or route.path == "/v1/{endpoint}/{verb}":
            continue
        path = openapi_path(route.path)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            paths.setdefault(path, {})[method.lower()] = route_operation(method, path, route, parts)
    return {"openapi": "3.1.0",
            "info": {"title": "Switchyard", "version": "1",
                     "description": "Inference, the Open Inference Protocol (v2), health and the admin API."},
            "paths": dict(sorted(paths.items())),
            "components": {"schemas": parts.schemas, "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "An admin token"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                           "description": "An inference API key (required with SWITCHYARD_REQUIRE_API_KEY)"}}}}
