"""Credential providers: how a client proves who it is to its upstream.

A client asks its `CredentialProvider` for the headers to send on each request; the provider caches
what it can and raises `ConfigurationError` naming the setting to fix. Azure AD and GCP providers
(token acquisition with refresh ahead of expiry) implement the same protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from pydantic import SecretStr

from llm_service.core.llm.models import ProviderNotConfiguredError


class CredentialProvider(Protocol):
    async def auth_headers(self) -> Mapping[str, str]:
        """Headers that authenticate one upstream request."""
        ...


class APIKeyCredentialProvider:
    """A static API key sent as `<header>: [<scheme> ]<key>` (default `Authorization: Bearer`).

    With `required=False` and no key, no header is sent (e.g. a local vLLM without auth).
    """

    def __init__(
        self,
        key: SecretStr | None,
        *,
        env_var: str,
        header: str = "Authorization",
        scheme: str | None = "Bearer",
        required: bool = True,
    ) -> None:
        self._env_var = env_var
        self._required = required
        self._headers: dict[str, str] = {}
        if key is not None and key.get_secret_value():
            value = key.get_secret_value()
            self._headers[header] = f"{scheme} {value}" if scheme else value

    async def auth_headers(self) -> Mapping[str, str]:
        if not self._headers and self._required:
            raise ProviderNotConfiguredError(
                f"this provider has no API key configured: set {self._env_var}", code="provider_not_configured"
            )
        return self._headers
