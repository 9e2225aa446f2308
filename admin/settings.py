"""Console settings from SWITCHYARD_* environment variables (and PROMETHEUS_URL)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_", extra="ignore")

    service_url: str = Field("http://127.0.0.1:3000", description="The Switchyard service.")
    admin_token: SecretStr | None = Field(None, description="Bearer token for /v1/admin.")
    refresh_s: float = Field(3.0, ge=2, le=5, description="Live-metrics refresh interval.")
    prometheus_url: str | None = Field(
        None, validation_alias=AliasChoices("PROMETHEUS_URL", "SWITCHYARD_PROMETHEUS_URL"),
        description="Query a Prometheus server instead of scraping /metrics.")
    timeout_s: float = Field(10.0, gt=0, description="HTTP timeout for calls to the service.")
    docs_url: str | None = Field(None, description="The docs site (`make docs-serve`: http://127.0.0.1:8000); "
                                 "each setting the console names then links to its entry in the settings reference.")
