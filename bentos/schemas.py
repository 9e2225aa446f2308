"""Request and response bodies: one pydantic model per boundary.

Limits come from ServeSettings, so the request models are built per service instance;
validation errors name the field and the limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bentos.families.digits import N_CLASSES, N_PIXELS, PIXEL_MAX

Role = Literal["stable", "canary", "shadow"]
Route = Literal["stable", "canary", "pinned", "fallback"]

Pixel = Annotated[float, Field(ge=0.0, le=PIXEL_MAX, allow_inf_nan=False, strict=True)]
Row = Annotated[list[Pixel], Field(min_length=N_PIXELS, max_length=N_PIXELS)]


class Latency(BaseModel):
    queue: float
    inference: float
    total: float


class Prediction(BaseModel):
    label: int = Field(ge=0, lt=N_CLASSES)
    confidence: float
    probabilities: list[float] = Field(min_length=N_CLASSES, max_length=N_CLASSES)


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model_version: str
    route: Route
    latency_ms: Latency


class EmbedResponse(BaseModel):
    embeddings: list[list[float]]
    model_version: str
    route: Route
    latency_ms: Latency


@dataclass(frozen=True)
class RequestModels:
    digits: type[BaseModel]
    minilm: type[BaseModel]


def request_models(max_rows: int, max_chars: int) -> RequestModels:
    """Request bodies with this service's limits baked into their schemas."""

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        inputs: list[Row] = Field(min_length=1, max_length=max_rows,
                                  description=f"1 to {max_rows} rows of {N_PIXELS} pixels in 0..{PIXEL_MAX:g}")

    class EmbedRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        texts: list[Annotated[str, Field(min_length=1, max_length=max_chars, strict=True)]] = Field(
            min_length=1, max_length=max_rows, description=f"1 to {max_rows} texts of at most {max_chars} characters")

    return RequestModels(digits=PredictRequest, minilm=EmbedRequest)


# --- admin API ---------------------------------------------------------------------


class VersionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tag: str = Field(min_length=1, max_length=200)
    weight: int = Field(ge=0, le=100, strict=True)
    role: Role


class DeploymentSpec(BaseModel):
    """What an endpoint serves: its versions, their roles and weights, and stickiness."""

    model_config = ConfigDict(extra="forbid")
    versions: list[VersionSpec] = Field(min_length=1, max_length=16)
    sticky: bool = False

    @model_validator(mode="after")
    def _check_split(self) -> DeploymentSpec:
        stables = [v for v in self.versions if v.role == "stable"]
        if len(stables) != 1:
            raise ValueError(f"versions must contain exactly one 'stable' role, found {len(stables)}")
        tags = [v.tag for v in self.versions]
        if len(set(tags)) != len(tags):
            raise ValueError("versions: each tag may appear only once")
        total = sum(v.weight for v in self.versions if v.role != "shadow")
        if total != 100:
            raise ValueError(f"weights of the stable and canary versions must sum to 100, got {total}")
        if any(v.weight for v in self.versions if v.role == "shadow"):
            raise ValueError("shadow versions take no traffic: their weight must be 0")
        return self

    def by_role(self, role: Role) -> list[VersionSpec]:
        return [v for v in self.versions if v.role == role]

    @property
    def stable(self) -> VersionSpec:
        return self.by_role("stable")[0]


class DeploymentRequest(DeploymentSpec):
    reason: str = Field(min_length=1, max_length=1000, description="Why; recorded in the audit log.")
    expect_revision: int | None = Field(
        None, ge=0, description="Refuse (409) unless the endpoint is still at this revision: no lost updates.")

    def spec(self) -> DeploymentSpec:
        return DeploymentSpec(versions=self.versions, sticky=self.sticky)


class ActionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("", max_length=1000)
    revision: int | None = Field(None, ge=1, description="rollback: the revision to restore (default: previous)")
