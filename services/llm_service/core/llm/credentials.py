"""Credential providers: how a client proves who it is to its upstream.

A client asks its `CredentialProvider` for the headers to send on each request; the provider caches
what it can and raises `ConfigurationError` naming the setting to fix. Azure AD and GCP providers
(token acquisition with refresh ahead of expiry) implement the same protocol::

    CredentialProvider                     auth_headers() -> headers for one upstream request
     ├── APIKeyCredentialProvider          a static key
     └── TokenCredentialProvider           caches one AccessToken from a TokenSource, one fetch at a time
          ├── AzureADCredentialProvider    source: AzureADTokenSource (azure_token.py, azure-identity)
          └── GCPCredentialProvider        source: GCPTokenSource (google-auth, refreshed off the loop)

    TokenSource                            fetch_token() -> AccessToken, always from the token endpoint
     ├── AzureADTokenSource                client secret, or DefaultAzureCredential
     ├── GCPTokenSource                    service-account file, or application default credentials
     └── OAuthClientCredentialsTokenSource a client-credentials POST (the GenAI Platform gateway)

A source raises `CredentialError` when the endpoint refused it, `CredentialUnavailableError` when
the endpoint is down (5xx, timeout, refused connection) and `ConfigurationError` when a configured
credential cannot be used (a missing key file, an invalid tenant id: the operator's to fix, so a 500,
not the 404 of `ProviderNotConfiguredError`, which means the provider has no settings at all).
Messages name the provider and the credential kind, never a secret nor what the token endpoint said
about it. azure-identity and google-auth are imported on first use, off the event loop: a process
that needs neither does not pay ~1.4 s of imports.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol
from urllib.parse import quote_plus

import aiohttp
import orjson
from pydantic import SecretStr

from llm_service.core.config.constants import ProviderID, RetryableStatusCodes
from llm_service.core.llm.models import (
    ConfigurationError,
    CredentialError,
    CredentialUnavailableError,
    LLMServiceError,
    ProviderNotConfiguredError,
)
from llm_service.core.llm.retry import parse_retry_after

log = logging.getLogger("llm_service.credentials")

# RFC 6749 5.1 leaves `expires_in` optional; without it, assume a short life and ask again soon.
ASSUMED_LIFETIME = 300.0
# Statuses after which the token endpoint is worth another try: 408 and the shared retryable set.
_UNAVAILABLE_STATUSES = RetryableStatusCodes | {HTTPStatus.REQUEST_TIMEOUT}
# An OAuth `error` code is echoed into our messages only when it looks like one (RFC 6749 5.2).
_OAUTH_ERROR_CODE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


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


# --------------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccessToken:
    token: SecretStr
    expires_at: float
    """Unix epoch seconds."""


class TokenSource(Protocol):
    """Gets a new token from its token endpoint on every call; caching is the provider's job."""

    kind: str
    """What authenticates, for messages: "Azure AD client secret", "GCP service account", ..."""

    async def fetch_token(self) -> AccessToken: ...

    async def close(self) -> None: ...


class TokenCredentialProvider:
    """Sends `<header>: <scheme> <token>` with a token from `source`, cached until it nears expiry.

    - A token is fetched when there is none or when `clock() >= expires_at - refresh_margin` (the
      margin shrinks to half the token's lifetime for short-lived tokens, so they are not fetched
      on every call).
    - Concurrent callers share one fetch: one request to the token endpoint however many callers.
    - Ahead of expiry the refresh runs in the background and callers keep the still-valid token
      without waiting for the token endpoint. If that refresh fails, the cached token is served
      (with a warning) and the refresh is tried again on a call `retry_interval` seconds later.
    - Without a valid token callers wait for the fetch; a failed fetch raises to every waiter. Its
      error is then remembered for `failure_backoff` seconds: callers in that window get it again
      (a fresh copy) without a fetch, so a dead token endpoint is not asked once per request; the
      first call after the window tries again.

    `clock` must tell epoch seconds (tokens carry epoch expiry times); tests pass a movable one.
    """

    def __init__(
        self,
        source: TokenSource,
        *,
        header: str = "Authorization",
        scheme: str = "Bearer",
        clock: Callable[[], float] = time.time,
        refresh_margin: float = 300.0,
        retry_interval: float = 10.0,
        failure_backoff: float = 1.0,
    ) -> None:
        self._source = source
        self._header = header
        self._scheme = scheme
        self._clock = clock
        self._margin = refresh_margin
        self._retry_interval = retry_interval
        self._failure_backoff = failure_backoff
        self._token: AccessToken | None = None
        self._headers: dict[str, str] = {}
        self._refresh_at = 0.0
        self._retry_at = 0.0  # a failed refresh ahead of expiry is not retried before this time
        self._failure: Exception | None = None  # the last fetch's error when it left us without a token
        self._failed_until = 0.0  # ... raised again, without a fetch, until this time
        self._fetch: asyncio.Task[AccessToken] | None = None
        self._closed = False

    @property
    def kind(self) -> str:
        return self._source.kind

    async def auth_headers(self) -> Mapping[str, str]:
        await self._current()
        return self._headers

    async def token(self) -> SecretStr:
        return (await self._current()).token

    async def close(self) -> None:
        """Stop any fetch in flight and release the source's resources. Requests still in flight
        keep getting the cached token while it is valid; nothing is fetched any more."""
        self._closed = True
        task, self._fetch = self._fetch, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])
        await self._source.close()

    async def _current(self) -> AccessToken:
        token, now = self._token, self._clock()
        if token is not None and now < token.expires_at:
            if now >= self._refresh_at and now >= self._retry_at and not self._closed:
                self._start_fetch()  # in the background: this caller keeps the valid token
            return token
        if self._closed:
            raise RuntimeError(f"the {self._source.kind} token provider is closed")
        if self._failure is not None and now < self._failed_until:
            raise _again(self._failure)
        # shield: a caller that is cancelled (client gone) does not cancel the fetch the others share.
        return await asyncio.shield(self._start_fetch())

    def _start_fetch(self) -> asyncio.Task[AccessToken]:
        if self._fetch is None or self._fetch.done():
            task = asyncio.get_running_loop().create_task(self._fetch_and_store())
            task.add_done_callback(self._fetch_done)
            self._fetch = task
        return self._fetch

    async def _fetch_and_store(self) -> AccessToken:
        started = self._clock()
        token = await self._source.fetch_token()
        lifetime = max(0.0, token.expires_at - started)
        self._token = token
        self._headers = {self._header: f"{self._scheme} {token.token.get_secret_value()}"}
        self._refresh_at = token.expires_at - min(self._margin, lifetime / 2)
        self._retry_at = 0.0
        self._failure = None
        return token

    def _fetch_done(self, task: asyncio.Task[AccessToken]) -> None:
        if self._fetch is task:
            self._fetch = None
        if task.cancelled():
            return
        error = task.exception()  # also marks it retrieved when no caller was waiting
        if error is None:
            return
        now = self._clock()
        self._retry_at = now + self._retry_interval
        token = self._token
        if token is None or now >= token.expires_at:
            if isinstance(error, Exception):
                self._failure, self._failed_until = error, now + self._failure_backoff
        else:
            log.warning(
                "token refresh failed; serving the cached token until it expires",
                extra={
                    "fields": {
                        "credential": self._source.kind,
                        "error": error.message if isinstance(error, LLMServiceError) else type(error).__name__,
                        "expires_in_s": round(token.expires_at - now, 1),
                        "retry_in_s": self._retry_interval,
                    }
                },
            )


def _again(error: Exception) -> Exception:
    """A fresh copy of `error` (class, args, attributes), to raise once more. Raising the one object
    again from many tasks would grow its traceback and chain whatever each caller was handling."""
    fresh = type(error).__new__(type(error), *error.args)
    fresh.__dict__.update(error.__dict__)
    return fresh


# --------------------------------------------------------------------------------------------------
# Errors shared by the token sources (azure_token.py too)
# --------------------------------------------------------------------------------------------------


def credential_rejected(
    provider: ProviderID, kind: str, *, status: int | None, error_code: str | None = None, hint: str = ""
) -> CredentialError:
    """The token endpoint answered and refused: not worth retrying until the settings change."""
    details = ", ".join(part for part in (f"HTTP {status}" if status else "", error_code or "") if part)
    message = f"{provider.value}: the token endpoint rejected the {kind}"
    message += f" ({details})" if details else ""
    message += f"; {hint}" if hint else ""
    return CredentialError(message, provider=provider, status=status, code="credential_rejected")


def credential_unavailable(
    provider: ProviderID, kind: str, detail: str, *, status: int | None = None, retry_after: float | None = None
) -> CredentialUnavailableError:
    """The token endpoint could not be reached or failed: worth another attempt."""
    return CredentialUnavailableError(
        f"{provider.value}: could not get a token with the {kind}: {detail}",
        provider=provider,
        status=status,
        retryable=True,
        retry_after=retry_after,
        code="credential_unavailable",
    )


def credential_misconfigured(provider: ProviderID, kind: str, detail: str) -> ConfigurationError:
    """A credential is configured but cannot be used (a missing key file, an invalid tenant id): the
    operator's to fix, a server error. `detail` names the setting."""
    return ConfigurationError(f"{provider.value}: {kind}: {detail}", code="credential_misconfigured")


def endpoint_failure(status: int | None, exc_name: str) -> str:
    """What went wrong with the token endpoint, for a message: its status, or that it is unreachable."""
    if status is not None:
        return f"the token endpoint answered HTTP {status}"
    return f"the token endpoint is unreachable ({exc_name})"


def is_unavailable_status(status: int) -> bool:
    return status in _UNAVAILABLE_STATUSES or status >= HTTPStatus.INTERNAL_SERVER_ERROR


def oauth_error_code(body: bytes | str | None) -> str | None:
    """The `error` field of an OAuth error body (`invalid_client`), never its description."""
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None
    return oauth_code(data.get("error") if isinstance(data, dict) else None)


def oauth_code(value: object) -> str | None:
    """An OAuth error code (`invalid_grant`) when `value` looks like one: safe to repeat in messages."""
    return value if isinstance(value, str) and _OAUTH_ERROR_CODE.fullmatch(value) else None


# --------------------------------------------------------------------------------------------------
# Azure AD
# --------------------------------------------------------------------------------------------------

AZURE_COGNITIVE_SERVICES_SCOPE = "https://cognitiveservices.azure.com/.default"


class AzureADCredentialProvider(TokenCredentialProvider):
    """An Entra ID (Azure AD) bearer token: client secret when tenant, client id and secret are all
    set, else DefaultAzureCredential (managed identity, workload identity, ...). See azure_token.py."""

    def __init__(
        self,
        *,
        provider: ProviderID,
        tenant_id: str | None,
        client_id: str | None,
        client_secret: SecretStr | None,
        authority_host: str | None = None,
        scope: str = AZURE_COGNITIVE_SERVICES_SCOPE,
        ca_file: str | None = None,
        clock: Callable[[], float] = time.time,
        refresh_margin: float = 300.0,
        failure_backoff: float = 1.0,
    ) -> None:
        # Imported here: azure_token.py needs AccessToken and the error helpers above.
        from llm_service.core.llm.azure_token import AzureADTokenSource

        source = AzureADTokenSource(
            provider=provider,
            tenant_id=tenant_id,
            client_id=client_id,
            client_secret=client_secret,
            authority_host=authority_host,
            scope=scope,
            ca_file=ca_file,
        )
        super().__init__(source, clock=clock, refresh_margin=refresh_margin, failure_backoff=failure_backoff)


# --------------------------------------------------------------------------------------------------
# GCP
# --------------------------------------------------------------------------------------------------

GCP_CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


class GCPCredentialProvider(TokenCredentialProvider):
    """A Google OAuth access token for `scopes`, from `credentials_file` or application default
    credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud, the metadata server)."""

    def __init__(
        self,
        *,
        provider: ProviderID,
        credentials_file: str | None,
        scopes: Sequence[str] = (GCP_CLOUD_PLATFORM_SCOPE,),
        clock: Callable[[], float] = time.time,
        refresh_margin: float = 300.0,
        failure_backoff: float = 1.0,
    ) -> None:
        # Imported here: gcp_token.py needs AccessToken and the error helpers above.
        from llm_service.core.llm.gcp_token import GCPTokenSource

        source = GCPTokenSource(provider=provider, credentials_file=credentials_file, scopes=scopes)
        super().__init__(source, clock=clock, refresh_margin=refresh_margin, failure_backoff=failure_backoff)


# --------------------------------------------------------------------------------------------------
# OAuth 2.0 client credentials
# --------------------------------------------------------------------------------------------------


class OAuthClientCredentialsTokenSource:
    """RFC 6749 4.4: POST `grant_type=client_credentials`, the client authenticated with HTTP Basic.

    RFC 6749 2.3.1: servers MUST support HTTP Basic for clients with a secret, and sending the
    credentials in the form is NOT RECOMMENDED; so they go in `Authorization: Basic` only, the id and
    the secret each form-urlencoded (Appendix B) before they are joined with ":" and base64-encoded.
    """

    def __init__(
        self,
        *,
        provider: ProviderID,
        token_url: str,
        client_id: str,
        client_secret: SecretStr,
        scope: str | None,
        session: aiohttp.ClientSession,
        timeout: float = 10.0,
        kind: str = "OAuth client credentials",
    ) -> None:
        self.provider = provider
        self.kind = kind
        self._token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._scope = scope
        self._session = session  # shared, owned by the caller: not closed here
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def fetch_token(self) -> AccessToken:
        given = {
            "token URL": self._token_url,
            "client id": self._client_id,
            "client secret": self._client_secret.get_secret_value(),
        }
        missing = [name for name, value in given.items() if not value]
        if missing:
            raise credential_misconfigured(
                self.provider,
                self.kind,
                f"a token URL, client id and client secret are needed: no {', '.join(missing)}",
            )
        form = {"grant_type": "client_credentials"}
        if self._scope:
            form["scope"] = self._scope
        headers = {"Accept": "application/json", "Authorization": self._basic_authorization()}
        started = time.time()
        try:
            async with self._session.post(
                self._token_url, data=form, headers=headers, timeout=self._timeout
            ) as response:
                status, body = response.status, await response.read()
                retry_after = parse_retry_after(response.headers)
        except TimeoutError:
            raise credential_unavailable(self.provider, self.kind, "the token endpoint timed out") from None
        except aiohttp.ClientError as exc:
            raise credential_unavailable(self.provider, self.kind, endpoint_failure(None, type(exc).__name__)) from None
        if status != HTTPStatus.OK:
            if is_unavailable_status(status):
                detail = endpoint_failure(status, "")
                raise credential_unavailable(self.provider, self.kind, detail, status=status, retry_after=retry_after)
            raise credential_rejected(self.provider, self.kind, status=status, error_code=oauth_error_code(body))
        return self._parse(body, started)

    def _basic_authorization(self) -> str:
        user = quote_plus(self._client_id, safe="")
        password = quote_plus(self._client_secret.get_secret_value(), safe="")
        return "Basic " + base64.b64encode(f"{user}:{password}".encode("ascii")).decode("ascii")

    def _parse(self, body: bytes, started: float) -> AccessToken:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        token = data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise CredentialError(
                f"{self.provider.value}: the token endpoint returned no access token for the {self.kind}",
                provider=self.provider,
                status=HTTPStatus.OK,
                code="credential_error",
            )
        assert isinstance(data, dict)
        return AccessToken(SecretStr(token), started + _lifetime(data.get("expires_in")))

    async def close(self) -> None:
        """Nothing to release: the session belongs to the caller."""


def _lifetime(expires_in: object) -> float:
    """`expires_in` as seconds: an int, or a numeric string (some servers quote it)."""
    if isinstance(expires_in, bool):
        return ASSUMED_LIFETIME
    if isinstance(expires_in, int | float):
        return float(expires_in)
    if isinstance(expires_in, str):
        try:
            return float(expires_in)
        except ValueError:
            pass
    return ASSUMED_LIFETIME
