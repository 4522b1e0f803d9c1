"""The telemetry settings group: log format, prompt logging, metrics, and the OpenTelemetry trace exporter.

Tracing is on when an OTLP endpoint is set. Its settings are read from the env vars every OpenTelemetry
SDK reads (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS`, ...), with their meaning: an
empty value is no value, the timeout is in milliseconds, headers are `key=value` pairs separated by
commas with URL-encoded values. Only OTLP over HTTP with protobuf bodies is spoken: another protocol is a
configuration error rather than traces that silently go nowhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar, Final, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, field_validator

from llm_service.core.config.groups import SettingsGroup

#: What a header name may be (an HTTP token, RFC 9110).
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
#: The one OTLP transport spoken: HTTP with protobuf bodies (gRPC would bring grpcio, http/json is rare).
OTLP_PROTOCOL: Final = "http/protobuf"


class TelemetrySettings(SettingsGroup):
    """Logs, metrics and OpenTelemetry traces. Tracing is on when an OTLP endpoint is set; its settings are
    read from the standard OpenTelemetry env vars."""

    ENV_PREFIX: ClassVar[str] = "LLM_"
    ENV_NAMES: ClassVar[Mapping[str, str]] = {
        "otlp_endpoint": "OTEL_EXPORTER_OTLP_ENDPOINT",
        "otlp_traces_endpoint": "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "otlp_headers": "OTEL_EXPORTER_OTLP_HEADERS",
        "otlp_protocol": "OTEL_EXPORTER_OTLP_PROTOCOL",
        "otlp_timeout_ms": "OTEL_EXPORTER_OTLP_TIMEOUT",
        "service_name": "OTEL_SERVICE_NAME",
        "traces_sample_ratio": "OTEL_TRACES_SAMPLER_ARG",
    }
    log_prompts: bool = Field(default=False, description="Log prompt and completion text (off: never)")
    log_format: Literal["json", "text"] = Field(
        default="json", description="json: one JSON object per line; text: human-readable lines"
    )
    metrics_enabled: bool = Field(default=True, description="Serve Prometheus metrics at GET /metrics")
    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP base URL of the trace collector, e.g. http://otel-collector:4318; traces go to "
        "its /v1/traces (unset: no tracing)",
    )
    otlp_traces_endpoint: str | None = Field(
        default=None, description="Full URL traces are sent to, e.g. http://otel-collector:4318/v1/traces (wins)"
    )
    otlp_headers: SecretStr | None = Field(
        default=None,
        description="Headers sent with every export, as key=value pairs separated by commas (values URL-encoded)",
    )
    otlp_protocol: Literal["http/protobuf"] = Field(
        default=OTLP_PROTOCOL, description="OTLP transport: only http/protobuf (not grpc, not http/json)"
    )
    otlp_timeout_ms: int = Field(
        default=10_000, gt=0, description="Longest wait for one export, in milliseconds (as OpenTelemetry says)"
    )
    service_name: str = Field(default="llm-service", min_length=1, description="service.name of the traces")
    traces_sample_ratio: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Share of new traces recorded, 0 to 1; a caller's traceparent decides for its own trace",
    )
    propagate_trace_context: bool = Field(
        default=True,
        description="With tracing on, send each upstream attempt's W3C traceparent (and the caller's tracestate) "
        "to the upstream, so one that traces too (vLLM, another instance of this service) joins the trace",
    )

    @field_validator("otlp_endpoint", "otlp_traces_endpoint", "otlp_headers", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        """As in every OpenTelemetry SDK, an empty value is no value."""
        return None if value == "" else value

    @field_validator("otlp_endpoint", "otlp_traces_endpoint")
    @classmethod
    def _collector_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018 - a port that is not a number raises here
        except ValueError:
            raise ValueError("the port is not a number") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host, e.g. http://otel-collector:4318")
        return value

    @field_validator("otlp_protocol", mode="before")
    @classmethod
    def _http_protobuf_only(cls, value: Any) -> Any:
        if value != OTLP_PROTOCOL:
            raise ValueError(f"only {OTLP_PROTOCOL} is supported: traces go over OTLP/HTTP (no grpc, no http/json)")
        return value

    @field_validator("otlp_headers")
    @classmethod
    def _header_syntax(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_otlp_headers(value.get_secret_value())
        return value

    def propagates_trace_context(self) -> bool:
        """Whether upstream requests carry the attempt's trace context: tracing on, propagation not off."""
        return self.propagate_trace_context and self.traces_url() is not None

    def traces_url(self) -> str | None:
        """Where spans are exported; None: tracing is off."""
        if self.otlp_traces_endpoint:
            return self.otlp_traces_endpoint
        if self.otlp_endpoint:
            return self.otlp_endpoint.rstrip("/") + "/v1/traces"
        return None

    def export_headers(self) -> dict[str, str]:
        return parse_otlp_headers(self.otlp_headers.get_secret_value()) if self.otlp_headers else {}


def parse_otlp_headers(text: str) -> dict[str, str]:
    """`k=v,k2=v2` (OpenTelemetry's format: keys and values URL-encoded, blanks around them ignored) as a
    mapping. An error names the position of the bad pair only: a value may be a credential."""
    headers: dict[str, str] = {}
    for position, pair in enumerate(text.split(","), 1):
        if not pair.strip():
            continue
        key, sep, value = pair.partition("=")
        name = unquote(key.strip())
        if not sep:
            raise ValueError(f"pair {position} has no '=': write key=value pairs separated by commas")
        if not _HEADER_NAME.match(name):
            raise ValueError(f"pair {position} has no valid header name before its '='")
        decoded = unquote(value.strip())
        if "\r" in decoded or "\n" in decoded:
            raise ValueError(f"pair {position} has a line break in its value")
        headers[name] = decoded
    return headers
