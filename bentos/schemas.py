"""Admin bodies for deployments: one pydantic model per boundary.

Inference bodies belong to the task types (bentos/tasks/), endpoint configs to bentos/config.py.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Role = Literal["stable", "canary", "shadow"]
# A stored version as BentoML names it: `name` or `name:version`, no empty part, one colon at most.
TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*(:[A-Za-z0-9][A-Za-z0-9._-]*)?$"

# --- admin API ---------------------------------------------------------------------


class VersionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tag: str = Field(min_length=1, max_length=200, pattern=TAG_PATTERN)
    weight: int = Field(ge=0, le=100, strict=True)
    role: Role


class DeploymentSpec(BaseModel):
    """What an endpoint serves: its versions, their roles and weights, and stickiness."""

    model_config = ConfigDict(extra="forbid")
    versions: list[VersionSpec] = Field(min_length=1, max_length=16)
    sticky: bool = False
    shadow_sample: float = Field(100.0, ge=0, le=100, description=(
        "Percent of requests copied to the shadow versions. Copies run only on spare capacity: one is "
        "dropped (and counted) whenever a primary version has requests waiting."))

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
        return DeploymentSpec(versions=self.versions, sticky=self.sticky, shadow_sample=self.shadow_sample)


class ActionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("", max_length=1000)
    revision: int | None = Field(None, ge=1, description="rollback: the revision to restore (default: previous)")


# --- API keys ------------------------------------------------------------------------
Scope = Literal["pin", "priority"]


class KeyLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rate: float = Field(10.0, gt=0, le=100_000, description="Requests per second (token bucket refill).")
    burst: float = Field(20.0, ge=1, le=100_000, description="Requests allowed at once (bucket size).")
    scopes: list[Scope] = Field(default_factory=list, max_length=4,
                                description="'pin': may pin a version with X-Model-Version; 'priority': may "
                                            "ask generation for priority 'high' (others are capped at 'normal').")
    weight: float = Field(1.0, gt=0, le=1000, description="Generation: the key's share of a busy version's "
                                                          "tokens against the other keys waiting (fair shares).")


class KeyRequest(KeyLimits):
    """POST /v1/admin/keys: the secret is in the answer, once."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$", description="Shown in metrics and the audit log.")
    reason: str = Field(min_length=1, max_length=1000, description="Why; recorded in the audit log.")


class KeyUpdate(BaseModel):
    """PATCH /v1/admin/keys/{name}: only the fields given change."""

    model_config = ConfigDict(extra="forbid")
    rate: float | None = Field(None, gt=0, le=100_000)
    burst: float | None = Field(None, ge=1, le=100_000)
    scopes: list[Scope] | None = Field(None, max_length=4)
    weight: float | None = Field(None, gt=0, le=1000)
    reason: str = Field(min_length=1, max_length=1000, description="Why; recorded in the audit log.")

    def changes(self) -> dict[str, object]:
        return self.model_dump(exclude={"reason"}, exclude_none=True)
