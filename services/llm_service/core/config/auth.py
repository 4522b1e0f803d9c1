"""The inbound-authentication settings group: which callers' keys the service accepts, and their limits.

Keys are never configured, only their SHA-256 digests (`llm-service hash-key` prints one): a digest in
the environment, a profile or a log reveals no key. SHA-256 rather than a slow password hash (scrypt,
argon2): the keys are random 256-bit tokens, not passwords, so there is nothing to guess that a slow
hash would protect, and a slow hash would cost every request milliseconds of CPU (a denial of service
for anyone who sends wrong keys). Plain digests go in `LLM_API_KEY_HASHES`; a key with limits (requests
per minute, the models it may use) is an entry of the profile's `auth.api_keys`.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr

from llm_service.core.config.groups import SettingsGroup

_HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")
#: What `hash-key --generate` makes: a recognisable prefix and 256 random bits.
KEY_PREFIX = "sk-llm-"


def hash_api_key(key: SecretStr | str) -> str:
    """The digest a key is configured as: SHA-256 of its UTF-8 bytes, in lower-case hex."""
    text = key.get_secret_value() if isinstance(key, SecretStr) else key
    return hashlib.sha256(text.encode()).hexdigest()


def _digest(value: Any) -> Any:
    """A digest as written (`sha256:` prefix optional, any case) -> 64 lower-case hex characters."""
    if not isinstance(value, str):
        return value
    text = value.strip().lower().removeprefix("sha256:")
    if not _HEX_DIGEST.match(text):
        # Says what it should be, never the value: a key pasted here by mistake must not be echoed.
        raise ValueError("must be the SHA-256 hex digest of a key (64 hex characters): `llm-service hash-key`")
    return text


KeyDigest = Annotated[str, BeforeValidator(_digest)]


def _digest_list(value: Any) -> Any:
    """`LLM_API_KEY_HASHES` as an operator writes it: digests separated by commas or blanks (or JSON)."""
    if isinstance(value, str):
        return [part for part in re.split(r"[\s,]+", value) if part]
    return value


class ApiKey(BaseModel):
    """One caller's key, by its digest, with its own limits (none: only the deployments' limits apply)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hash: KeyDigest = Field(description="SHA-256 hex digest of the key (`llm-service hash-key` prints it)")
    name: str | None = Field(
        default=None, max_length=64, description="Who holds the key, for the operator (never sent to callers)"
    )
    rpm: int | None = Field(
        default=None,
        gt=0,
        description="Chat requests per minute this key may make (with Redis, counted by every replica together; "
        "without it, each replica: rpm / replicas)",
    )
    models: list[str] | None = Field(
        default=None,
        description="Models the key may use: names as requested (an alias, provider/model), or a prefix ending in "
        "* (openai/*); unset: every model",
    )


class AuthSettings(SettingsGroup):
    """Inbound authentication: callers send `Authorization: Bearer <key>` or `api-key: <key>`."""

    ENV_PREFIX: ClassVar[str] = "LLM_"

    api_key_hashes: Annotated[list[KeyDigest], BeforeValidator(_digest_list)] = Field(
        default_factory=list,
        description="SHA-256 hex digests of the keys callers may present, separated by commas (unset, and no "
        "api_keys: no authentication)",
    )
    api_keys: list[ApiKey] = Field(
        default_factory=list,
        description="Keys with their own limits (profile YAML: auth.api_keys), each {hash, name, rpm, models}",
    )
    allow_unauthenticated: bool = Field(
        default=False,
        description="With no keys configured, serve on an interface other than loopback anyway (else refused)",
    )
    health_requires_key: bool = Field(
        default=False, description="GET /health, /health/live and /health/ready need a key too (else open)"
    )
    metrics_requires_key: bool = Field(default=False, description="GET /metrics needs a key too (else open)")

    def accepted_keys(self) -> list[ApiKey]:
        """Every accepted key: the profile's entries, then the plain digests they do not already name."""
        named = {key.hash for key in self.api_keys}
        plain = dict.fromkeys(h for h in self.api_key_hashes if h not in named)
        return [*self.api_keys, *(ApiKey(hash=h) for h in plain)]

    def enabled(self) -> bool:
        return bool(self.api_key_hashes or self.api_keys)
