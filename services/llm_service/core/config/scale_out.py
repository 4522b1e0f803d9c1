"""The scale-out settings group: several replicas sharing one Redis, and what each does without it.

With `REDIS_URL` set, every replica keeps the dispatcher's shared state (rate-limit windows,
concurrency slots, breaker openings, 429 pauses, stream checkpoints) in that Redis; unset, each process
keeps its own in memory. The URL may hold a password (`redis://:secret@host:6379/0`): it is a secret,
never logged or shown. `LLM_REPLICAS` is how many replicas share the limits: while Redis is unreachable,
or with no Redis at all (workers of one host, say), each one admits its share, the deployment's limits
divided by it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator

from llm_service.core.config.groups import SettingsGroup

#: URL schemes redis-py's `from_url` speaks: TCP, TLS, a Unix socket.
REDIS_SCHEMES = ("redis", "rediss", "unix")


class ScaleOutSettings(SettingsGroup):
    """Replicas that act as one: shared state in Redis, and each replica's share while it is unreachable."""

    ENV_PREFIX: ClassVar[str] = "LLM_"
    ENV_NAMES: ClassVar[Mapping[str, str]] = {"redis_url": "REDIS_URL"}

    redis_url: SecretStr | None = Field(
        default=None,
        description="Redis holding the state replicas share, e.g. redis://:password@redis:6379/0 (unset: each "
        "process keeps its own, in memory)",
    )
    replicas: int = Field(
        default=1,
        ge=1,
        description="Replicas (or workers) sharing the limits: without Redis, or while it is unreachable, each "
        "admits limit / replicas",
    )
    redis_key_prefix: str = Field(
        default="llm:", min_length=1, description="Prefix of every Redis key (several services may share a Redis)"
    )
    redis_timeout_seconds: float = Field(
        default=0.5, gt=0, description="Longest wait for Redis on one call (s); then it counts as unreachable"
    )
    redis_retry_seconds: float = Field(
        default=2.0, gt=0, description="How often an unreachable Redis is tried again (s)"
    )
    redis_poll_seconds: float = Field(
        default=0.1,
        gt=0,
        description="How often a waiting request asks Redis again for room freed by other replicas (s)",
    )
    slot_lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A concurrency slot in Redis is a lease renewed while held; a replica that dies loses its "
        "slots after this long (s)",
    )

    @field_validator("redis_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        """The error says what is wrong, never the URL: it may hold the password."""
        if value is None:
            return None
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in REDIS_SCHEMES:
            raise ValueError(f"must be a {', '.join(s + '://' for s in REDIS_SCHEMES)} URL")
        try:
            parts.port  # noqa: B018 - a port that is not a number raises here
        except ValueError:
            raise ValueError("the port is not a number") from None
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("has no host, e.g. redis://redis:6379/0")
        return value
