"""Settings: one pydantic-settings root with nested groups, read from flat env names and a profile.

Sources, strongest first: keyword arguments, nested env (`LLM_OPENAI__API_KEY`), the ecosystem's
flat env names (`OPENAI_API_KEY`, from the environment or `.env`), the profile YAML
(`config/<profile>.yaml`), then the defaults below. Each group declares its flat prefix in
`ENV_PREFIX`; a field's flat name is that prefix plus the field name in upper case, unless the group's
`ENV_NAMES` table gives the name the ecosystem already uses (`AZURE_OPENAI_ENDPOINT`, `AZURE_TENANT_ID`,
`GOOGLE_APPLICATION_CREDENTIALS`, ...): `groups.SettingsGroup`. The telemetry group (logs, metrics,
OpenTelemetry traces) is in `telemetry.py`.

Settings validate as a whole once built: an enabled GenAI Platform with missing fields stops start-up
with one `ConfigurationError` naming every missing variable (`validate_genai_config()`).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

import yaml
from dotenv import dotenv_values
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from typing_extensions import override

from llm_service.core.config.auth import AuthSettings as AuthSettings
from llm_service.core.config.constants import DefaultTimeouts, ProviderID, ToolCallIdFormat
from llm_service.core.config.groups import SettingsGroup as SettingsGroup
from llm_service.core.config.limits import RequestLimitSettings as RequestLimitSettings
from llm_service.core.config.scale_out import ScaleOutSettings as ScaleOutSettings
from llm_service.core.config.telemetry import TelemetrySettings as TelemetrySettings
from llm_service.core.llm.genai_platform import validate_genai_config

# A wheel carries the profiles inside the package; a source checkout keeps them at the repo root.
_PACKAGED_CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
_REPO_CONFIG_DIR = (
    _PACKAGED_CONFIG_DIR if _PACKAGED_CONFIG_DIR.is_dir() else Path(__file__).resolve().parents[4] / "config"
)
_TIMEOUTS = DefaultTimeouts()


def _api_version_text(value: Any) -> Any:
    """YAML reads an unquoted `2024-10-21` as a date; an api-version is that date as text."""
    return value.isoformat() if isinstance(value, date) else value


ApiVersion = Annotated[str, BeforeValidator(_api_version_text)]


class ProviderSettings(SettingsGroup):
    """What every provider group has: where it is, the key, and its timeouts."""

    api_key: SecretStr | None = Field(default=None, description="API key sent to the provider")
    base_url: str | None = Field(default=None, description="Base URL of the provider's API")
    timeout_connect: float = Field(default=_TIMEOUTS.connect, gt=0, description="Connect timeout (s)")
    timeout_read: float = Field(default=_TIMEOUTS.read, gt=0, description="Max wait between reads (s)")
    timeout_total: float = Field(default=_TIMEOUTS.total, gt=0, description="Whole-call timeout (s)")
    tool_call_id_format: ToolCallIdFormat = Field(
        default="any",
        description="Tool-call ids the provider accepts: any (OpenAI-like); alnum9: exactly 9 letters and digits "
        "(Mistral models)",
    )

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    def is_configured(self, *, behind_gateway: bool = False) -> bool:
        """Whether the provider can serve; `behind_gateway`: the GenAI Platform supplies its reach."""
        return self.api_key is not None and bool(self.api_key.get_secret_value())


class OpenAISettings(ProviderSettings):
    ENV_PREFIX: ClassVar[str] = "OPENAI_"
    base_url: str | None = Field(default="https://api.openai.com/v1", description="OpenAI API base URL")
    org_id: str | None = Field(default=None, description="Sent as OpenAI-Organization")
    project_id: str | None = Field(default=None, description="Sent as OpenAI-Project")


class OpenRouterSettings(ProviderSettings):
    ENV_PREFIX: ClassVar[str] = "OPENROUTER_"
    base_url: str | None = Field(default="https://openrouter.ai/api/v1", description="OpenRouter base URL")
    http_referer: str | None = Field(default=None, description="Attribution: sent as HTTP-Referer")
    app_title: str | None = Field(default=None, description="Attribution: sent as X-Title")


class RemoteSettings(ProviderSettings):
    """Any OpenAI-compatible server (vLLM, Ollama, another instance of this service)."""

    ENV_PREFIX: ClassVar[str] = "REMOTE_LLM_"

    @override
    def is_configured(self, *, behind_gateway: bool = False) -> bool:
        return bool(self.base_url)


class AzureOpenAISettings(ProviderSettings):
    """Azure OpenAI: a resource endpoint, deployments as models, an API key or an Entra ID (Azure AD) token."""

    ENV_PREFIX: ClassVar[str] = "AZURE_OPENAI_"
    ENV_NAMES: ClassVar[Mapping[str, str]] = {
        "base_url": "AZURE_OPENAI_ENDPOINT",
        "tenant_id": "AZURE_TENANT_ID",
        "client_id": "AZURE_CLIENT_ID",
        "client_secret": "AZURE_CLIENT_SECRET",
        "authority_host": "AZURE_AUTHORITY_HOST",
    }
    api_key: SecretStr | None = Field(default=None, description="API key, sent as the api-key header")
    base_url: str | None = Field(
        default=None, description="Resource endpoint, e.g. https://my-resource.openai.azure.com"
    )
    api_version: ApiVersion = Field(default="2024-10-21", description="The api-version query parameter")
    auth: Literal["auto", "api_key", "azure_ad"] = Field(
        default="auto",
        description="api_key, azure_ad (Entra ID token), or auto: the API key when one is set, else Azure AD",
    )
    tenant_id: str | None = Field(default=None, description="Azure AD tenant (client-secret credential)")
    client_id: str | None = Field(default=None, description="Azure AD application (client) id")
    client_secret: SecretStr | None = Field(
        default=None,
        description="Azure AD client secret; without tenant, client id and secret, DefaultAzureCredential "
        "(managed / workload identity) is used",
    )
    authority_host: str | None = Field(
        default=None, description="Azure AD authority, e.g. login.microsoftonline.us (default: public cloud)"
    )
    authority_ca_file: str | None = Field(
        default=None, description="PEM bundle trusted for the Azure AD authority (private PKI)"
    )
    ad_scope: str = Field(
        default="https://cognitiveservices.azure.com/.default", description="Scope of the Azure AD token"
    )

    @override
    def is_configured(self, *, behind_gateway: bool = False) -> bool:
        return bool(self.base_url) or behind_gateway  # the gateway's URL replaces the endpoint

    def uses_api_key(self) -> bool:
        return self.auth == "api_key" or (self.auth == "auto" and super().is_configured())


class VertexAISettings(ProviderSettings):
    """Vertex AI Gemini: a GCP project and location, authenticated with GCP credentials."""

    ENV_PREFIX: ClassVar[str] = "VERTEX_"
    ENV_NAMES: ClassVar[Mapping[str, str]] = {
        "api_key": "VERTEX_ACCESS_TOKEN",
        "credentials_file": "GOOGLE_APPLICATION_CREDENTIALS",
    }
    api_key: SecretStr | None = Field(
        default=None,
        description="A static OAuth access token (e.g. from gcloud auth print-access-token); "
        "when unset, GCP credentials are used",
    )
    base_url: str | None = Field(
        default=None, description="API root; default https://{location}-aiplatform.googleapis.com"
    )
    project: str | None = Field(default=None, description="GCP project id")
    location: str = Field(default="us-central1", description="Vertex AI location (region, or global)")
    credentials_file: str | None = Field(
        default=None, description="Service-account key file; unset: application default credentials"
    )

    @override
    def is_configured(self, *, behind_gateway: bool = False) -> bool:
        return bool(self.project)  # the project is in the path, gateway or not

    def api_root(self) -> str:
        """The base URL, or Google's regional (or global) endpoint for `location`."""
        if self.base_url:
            return self.base_url
        region = "" if self.location == "global" else f"{self.location}-"
        return f"https://{region}aiplatform.googleapis.com"


class GenAIPlatformSettings(SettingsGroup):
    """The enterprise GenAI Platform gateway that can front Azure OpenAI and Vertex AI."""

    ENV_PREFIX: ClassVar[str] = "GENAI_PLATFORM_"
    #: The providers the platform can front.
    FRONTS: ClassVar[frozenset[ProviderID]] = frozenset({ProviderID.AZURE_OPENAI, ProviderID.VERTEX_AI})
    enabled: bool = Field(default=False, description="Send Azure OpenAI and Vertex AI requests through the platform")
    base_url: str | None = Field(default=None, description="The platform's base URL")
    project_name: str | None = Field(default=None, description="Project the usage is attributed to")
    user_id: str | None = Field(default=None, description="Default user for attribution (a request's user wins)")
    token: SecretStr | None = Field(default=None, description="Static platform token (or use the OAuth client)")
    client_id: str | None = Field(default=None, description="OAuth client-credentials client id")
    client_secret: SecretStr | None = Field(default=None, description="OAuth client-credentials secret")
    token_url: str | None = Field(default=None, description="OAuth token endpoint for the client credentials")
    scope: str | None = Field(default=None, description="OAuth scope to request, if the platform wants one")
    user_header: str = Field(default="X-GenAI-User-Id", description="Header carrying the user")
    project_header: str = Field(default="X-GenAI-Project-Name", description="Header carrying the project name")
    azure_openai_path: str = Field(default="/azure-openai", description="Path prefix of Azure OpenAI on the platform")
    vertex_ai_path: str = Field(default="/vertex-ai", description="Path prefix of Vertex AI on the platform")

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    def fronts(self, provider: ProviderID) -> bool:
        """Whether requests to `provider` go through the platform."""
        return self.enabled and provider in self.FRONTS


class ServerSettings(SettingsGroup):
    ENV_PREFIX: ClassVar[str] = "LLM_"
    host: str = Field(default="127.0.0.1", description="Interface to listen on")
    port: int = Field(default=8000, ge=0, le=65535, description="Port to listen on")
    max_body_bytes: int = Field(default=20 * 1024 * 1024, gt=0, description="Largest request body accepted")
    backlog: int = Field(
        default=8192,
        ge=1,
        description="Connections the kernel queues for accept (a burst of thousands of streams needs many; "
        "capped by net.core.somaxconn)",
    )
    cors_allow_origins: str | None = Field(
        default=None,
        description="Browser origins allowed to call the API, comma-separated, or * for any (unset: no CORS)",
    )
    drain_seconds: float = Field(
        default=30.0,
        ge=0,
        description="On SIGTERM, how long requests and streams in flight may run on before they are ended (s)",
    )

    def cors_origins(self) -> list[str]:
        return [o.strip() for o in (self.cors_allow_origins or "").split(",") if o.strip()]


class BreakerOverrides(BaseModel):
    """A provider's own circuit-breaker settings; what is left out comes from the global `breaker_*`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    failure_ratio: float | None = Field(default=None, gt=0, le=1, description="Failure ratio that opens it")
    min_calls: int | None = Field(default=None, ge=1, description="Calls in the window before the ratio counts")
    window_seconds: float | None = Field(default=None, gt=0, description="Sliding window of outcomes (s)")
    cooldown_seconds: float | None = Field(default=None, gt=0, description="Open time before probes (s)")
    half_open_probes: int | None = Field(default=None, ge=1, description="Probes let through while half-open")


class DispatcherSettings(SettingsGroup):
    ENV_PREFIX: ClassVar[str] = "LLM_"
    max_retries: int = Field(default=2, ge=0, description="Extra attempts after a retryable upstream failure")
    retry_backoff_base: float = Field(default=0.5, ge=0, description="First retry wait (s), doubling each time")
    retry_backoff_max: float = Field(default=8.0, ge=0, description="Longest retry wait (s)")
    retry_max_retry_after: float = Field(
        default=10.0,
        ge=0,
        description="Longest upstream Retry-After honoured by waiting; longer ones go to the caller",
    )
    request_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        description="Budget for a request until its answer starts (queueing, attempts, failover): then 504",
    )
    first_chunk_timeout_seconds: float = Field(
        default=60.0, gt=0, description="An attempt whose stream sends no chunk for this long fails over (s)"
    )
    stream_idle_timeout_seconds: float = Field(
        default=120.0, gt=0, description="A stream with no chunk for this long is ended with an error event (s)"
    )
    max_queue_size: int = Field(
        default=100, ge=0, description="Requests that may wait for capacity per model; beyond, 429 at once"
    )
    queue_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Longest wait for capacity before a 429 with Retry-After"
    )
    breaker_failure_ratio: float = Field(
        default=0.5, gt=0, le=1, description="Failure ratio over the window that opens a deployment's breaker"
    )
    breaker_min_calls: int = Field(default=10, ge=1, description="Calls in the window before the ratio counts")
    breaker_window_seconds: float = Field(default=60.0, gt=0, description="Sliding window of recorded outcomes (s)")
    breaker_cooldown_seconds: float = Field(
        default=30.0, gt=0, description="How long an open breaker refuses traffic before letting probes through (s)"
    )
    breaker_half_open_probes: int = Field(default=1, ge=1, description="Probe requests let through while half-open")
    health_check_interval_seconds: float = Field(
        default=10.0,
        ge=0,
        description="How often a deployment whose breaker is open is re-checked by a one-token probe (s); 0: never",
    )
    breaker_by_provider: dict[ProviderID, BreakerOverrides] = Field(
        default_factory=dict,
        description='Per-provider breaker settings over the global ones, e.g. {"openai": {"min_calls": 20}}',
    )

    def breaker_settings(self, provider: ProviderID) -> dict[str, Any]:
        """The breaker settings for `provider`: the global ones with the provider's own over them."""
        own = self.breaker_by_provider.get(provider)
        overrides = own.model_dump(exclude_none=True) if own is not None else {}
        base = {
            "failure_ratio": self.breaker_failure_ratio,
            "min_calls": self.breaker_min_calls,
            "window_seconds": self.breaker_window_seconds,
            "cooldown_seconds": self.breaker_cooldown_seconds,
            "half_open_probes": self.breaker_half_open_probes,
        }
        return base | overrides

    tool_call_ttl_seconds: float = Field(
        default=86400.0, gt=0, description="How long provider data of a tool call (Gemini signatures) is kept (s)"
    )
    tool_call_max_entries: int = Field(
        default=20_000, gt=0, description="Most tool calls whose provider data is kept (oldest dropped first)"
    )


class StreamingSettings(SettingsGroup):
    """Streams that survive upstream failures, and clients that pick a stream up where it left off."""

    ENV_PREFIX: ClassVar[str] = "LLM_"
    enable_stream_replay: bool = Field(
        default=True, description="Recover a stream that breaks after its first chunk without a seam for the client"
    )
    max_buffer_chunks: int = Field(
        default=2000,
        ge=0,
        description="Chunks a stream keeps for replay and resumption; past them a break ends it with an error event",
    )
    max_stream_replays: int = Field(
        default=2, ge=0, description="Times one stream may be re-established after breaking mid-answer"
    )
    checkpoint_every_chunks: int = Field(
        default=20, ge=1, description="Chunks between a stream's checkpoints (one more is taken at its end)"
    )
    stream_resume_enabled: bool = Field(
        default=True, description="Clients may reconnect with Last-Event-ID and receive the rest of a stream"
    )
    stream_resume_ttl_seconds: float = Field(
        default=300.0, gt=0, description="How long a stream can be resumed after its last chunk (s)"
    )
    stream_resume_grace_seconds: float = Field(
        default=30.0,
        ge=0,
        description="How long generation goes on after its client disconnects, waiting for it to resume (s)",
    )
    max_resumable_streams: int = Field(
        default=10_000, ge=1, description="Streams kept for resumption at most (the oldest dropped first)"
    )
    stream_resume_max_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1,
        description="Encoded events of ended streams kept for resumption at most, in bytes (oldest dropped first)",
    )


@functools.lru_cache(maxsize=4096)
def _deployment_label(provider: ProviderID, model: str, base_url: str | None) -> str:
    """Worked out once per deployment: metrics name a deployment every request (a URL parse: ~2 µs)."""
    host = urlsplit(base_url).netloc if base_url else ""
    return f"{provider.value}/{model}" + (f"@{host}" if host else "")


class Deployment(BaseModel):
    """One place a model is served: a provider and the model name it knows, and where this deployment's
    reach differs from its provider's settings (another server, Azure resource or region, key).

    Limits and weight describe the deployment's capacity for the dispatcher's routing and admission.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: ProviderID = Field(description="The provider: openai, openrouter, azure_openai, vertex_ai, remote")
    model: str = Field(min_length=1, description="The model the provider knows (Azure: the deployment name)")
    base_url: str | None = Field(
        default=None, description="This deployment's own base URL (Azure: resource endpoint); default: the provider's"
    )
    api_version: ApiVersion | None = Field(default=None, description="Azure OpenAI api-version for this deployment")
    api_key_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of the env var holding this deployment's API key (keys never go in the YAML)",
    )
    rpm: int | None = Field(default=None, gt=0, description="Requests per minute this deployment accepts")
    tpm: int | None = Field(default=None, gt=0, description="Tokens per minute this deployment accepts")
    max_concurrency: int | None = Field(default=None, gt=0, description="Requests in flight at most")
    priority: int | None = Field(
        default=None,
        description="Lower is tried first; deployments of equal priority share traffic by weight "
        "(default: the position in the list, so the list order is the priority order)",
    )
    weight: float = Field(default=1.0, gt=0, description="Share of traffic among deployments of equal priority")
    context_fallback: str | None = Field(
        default=None,
        description="Alias that takes a request this deployment refuses as too long for its context window",
    )
    accepts_assistant_prefix: bool = Field(
        default=False,
        description="Continues a partial answer given as a final assistant message: a stream broken elsewhere "
        "may be continued here instead of re-generated",
    )

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @override
    def __hash__(self) -> int:
        # Deployments key the dispatcher's dicts, a few lookups a request: pydantic's frozen-model hash
        # goes over every field (about 2 µs a hash). Equal deployments share their model and URL, which
        # is all a hash must honour; lookups of the same object do not even compare.
        return hash((self.model, self.base_url))

    @property
    def label(self) -> str:
        """How logs, metrics and the `x-llm-deployment` header name it: provider/model[@host]."""
        return _deployment_label(self.provider, self.model, self.base_url)

    def own_reach(self) -> dict[str, Any]:
        """The settings-group fields this deployment overrides (empty: the provider's own reach)."""
        reach: dict[str, Any] = {}
        if self.base_url is not None:
            reach["base_url"] = self.base_url
        if self.api_version is not None:
            reach["api_version"] = self.api_version
        if self.api_key_env is not None:
            reach["api_key_env"] = self.api_key_env
        return reach


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LLM_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        validate_default=True,
        # A rejected secret (OTLP headers of bad syntax) must not appear in the error's text; `config check`
        # shows the values that are not secrets itself.
        hide_input_in_errors=True,
    )

    config_profile: str = Field(default="default", description="Profile: loads config/<profile>.yaml")
    config_dir: Path = Field(default=_REPO_CONFIG_DIR, description="Folder holding the profile YAML files")
    debug: bool = Field(default=False, description="Debug mode")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level")
    demo_mode: Literal["auto", "on", "off"] = Field(
        default="auto", description="Serve built-in fixtures; auto: when no provider is configured"
    )

    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    openrouter: OpenRouterSettings = Field(default_factory=OpenRouterSettings)
    azure_openai: AzureOpenAISettings = Field(default_factory=AzureOpenAISettings)
    vertex_ai: VertexAISettings = Field(default_factory=VertexAISettings)
    remote: RemoteSettings = Field(default_factory=RemoteSettings)
    genai_platform: GenAIPlatformSettings = Field(default_factory=GenAIPlatformSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    dispatcher: DispatcherSettings = Field(default_factory=DispatcherSettings)
    streaming: StreamingSettings = Field(default_factory=StreamingSettings)
    scale_out: ScaleOutSettings = Field(default_factory=ScaleOutSettings)
    request_limits: RequestLimitSettings = Field(default_factory=RequestLimitSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)

    aliases: dict[str, list[Deployment]] = Field(
        default_factory=dict, description="Model aliases from the profile: alias -> ordered deployments"
    )

    _deployment_keys: dict[str, SecretStr] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _validate_genai_platform(self) -> Settings:
        validate_genai_config(self.genai_platform)
        return self

    @model_validator(mode="after")
    def _read_deployment_keys(self) -> Settings:
        """The keys deployments name by env var (`api_key_env`), read here: nothing below settings reads
        the environment. A name that is not set is left out; its client then says which to set."""
        env = read_environment()
        names = {d.api_key_env for deployments in self.aliases.values() for d in deployments if d.api_key_env}
        self._deployment_keys = {name: SecretStr(env[name]) for name in sorted(names) if env.get(name)}
        return self

    def deployment_key(self, env_name: str) -> SecretStr | None:
        """The API key a deployment names by its env var, if that variable is set."""
        return self._deployment_keys.get(env_name)

    def provider_settings(self, provider: ProviderID) -> ProviderSettings | None:
        """The settings group of `provider`: the field named after it (None while it has none)."""
        group = getattr(self, provider.value, None)
        return group if isinstance(group, ProviderSettings) else None

    def deployment_settings(self, deployment: Deployment) -> ProviderSettings | None:
        """The provider's settings group as `deployment` reaches it: its own base URL, API version and key."""
        group = self.provider_settings(deployment.provider)
        reach = deployment.own_reach()
        if group is None or not reach:
            return group
        update = {k: v for k, v in reach.items() if k in type(group).model_fields}
        if deployment.api_key_env:
            update["api_key"] = self.deployment_key(deployment.api_key_env)
        return group.model_copy(update=update)

    def deployment_configured(self, deployment: Deployment) -> bool:
        group = self.deployment_settings(deployment)
        fronted = self.genai_platform.fronts(deployment.provider)
        return group is not None and group.is_configured(behind_gateway=fronted)

    def configured_providers(self) -> list[ProviderID]:
        platform = self.genai_platform
        return [
            p
            for p in ProviderID
            if (s := self.provider_settings(p)) and s.is_configured(behind_gateway=platform.fronts(p))
        ]

    def demo_enabled(self) -> bool:
        if self.demo_mode == "auto":
            return not self.configured_providers()
        return self.demo_mode == "on"

    @override
    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        init_kwargs: dict[str, Any] = init_settings()
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            FlatEnvSource(settings_cls),
            ProfileYamlSource(settings_cls, init_kwargs),
        )


def read_environment() -> dict[str, str]:
    """The process environment over `.env` (the process wins, as pydantic-settings does)."""
    values = {k: v for k, v in dotenv_values(".env").items() if v is not None}
    values.update(os.environ)
    return values


class FlatEnvSource(PydanticBaseSettingsSource):
    """Reads each group's flat env names (OPENAI_API_KEY, REMOTE_LLM_BASE_URL, ...)."""

    @override
    def __call__(self) -> dict[str, Any]:
        env = read_environment()
        found: dict[str, Any] = {}
        for name, info in self.settings_cls.model_fields.items():
            group = info.annotation
            if not (isinstance(group, type) and issubclass(group, SettingsGroup)):
                continue
            values = {
                f: self._value(info, env[group.env_name(f)])
                for f, info in group.model_fields.items()
                if group.env_name(f) in env
            }
            if values:
                found[name] = values
        return found

    def _value(self, field: FieldInfo, raw: str) -> Any:
        """A structured field (a mapping, a list) is written as JSON, as in the nested form."""
        if not (raw and self.field_is_complex(field)):
            return raw
        try:
            return json.loads(raw)
        except ValueError:
            return raw  # validation then says which variable holds no valid value

    @override
    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False


#: Top-level keys of a profile besides `aliases` and `providers`: settings that are not per provider.
PROFILE_SETTINGS = frozenset(
    {"debug", "log_level", "demo_mode", "server", "telemetry", "dispatcher", "streaming", "genai_platform"}
    | {"scale_out"}
    | {"request_limits"}
    | {"auth"}
)
PROFILE_KEYS = frozenset({"aliases", "providers"}) | PROFILE_SETTINGS


class ProfileYamlSource(PydanticBaseSettingsSource):
    """Loads `<config_dir>/<config_profile>.yaml`: `aliases`, per-provider `providers` overrides, and the
    other settings groups and top-level settings by their field names (`PROFILE_SETTINGS`)."""

    def __init__(self, settings_cls: type[BaseSettings], init_kwargs: Mapping[str, Any]) -> None:
        super().__init__(settings_cls)
        env = read_environment()
        self.profile = str(init_kwargs.get("config_profile") or env.get("LLM_CONFIG_PROFILE") or "default")
        config_dir = init_kwargs.get("config_dir") or env.get("LLM_CONFIG_DIR") or _REPO_CONFIG_DIR
        self.path = Path(config_dir) / f"{self.profile}.yaml"

    @override
    def __call__(self) -> dict[str, Any]:
        if not self.path.is_file():
            if self.profile != "default":
                raise ValueError(f"config profile {self.profile!r} not found: {self.path} does not exist")
            return {}
        data = yaml.safe_load(self.path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{self.path}: expected a mapping at the top level")
        found: dict[str, Any] = dict(data.get("providers") or {})
        found.update({key: data[key] for key in PROFILE_SETTINGS | {"aliases"} if key in data})
        return found

    @override
    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False
