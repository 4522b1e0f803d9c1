"""Azure AD (Entra ID) token acquisition for `AzureADCredentialProvider`, on top of azure-identity.

Tenant + client id + secret -> `azure.identity.aio.ClientSecretCredential`; otherwise
`DefaultAzureCredential` (environment, workload identity, managed identity, developer tools; not the
shared token cache nor VS Code, whose async forms do blocking work on the event loop).

Why a new azure-identity credential for every fetch
---------------------------------------------------
azure-identity 1.27 caches tokens inside each credential, and its cache, not the caller, decides
whether a request is made: `GetTokenMixin._get_token_base` first asks `_acquire_token_silently`
(an MSAL `TokenCache` lookup that returns any token whose `expires_on` is later than the real
`time.time()`), then requests a new one only when `get_refresh_status` says so — the token is
expired, or within 300 s of expiry (`DEFAULT_REFRESH_OFFSET`) or past its `refresh_on`, and not
within 30 s of the previous request (`DEFAULT_TOKEN_REFRESH_RETRY_DELAY`). In the "recommended"
window a failed request is swallowed and the cached token returned. So a long-lived credential
would hand our provider the same cached token whenever our clock (an injected one in tests, or a
`refresh_margin` other than 300 s) says "refresh", and would hide refresh failures from it.

A credential built for the fetch starts with an empty cache, so `get_token_info` always reaches
the token endpoint and any failure reaches us: `TokenCredentialProvider` is the only cache. The
cost is building a small object per fetch (about once an hour); the HTTP session is ours and kept
across fetches. DefaultAzureCredential is built in a worker thread: its constructor reads files
(the VS Code credential's authentication record).

Async specifics checked in 1.27: the async `ClientSecretCredential` posts straight to
`{authority}/{tenant}/oauth2/v2.0/token` (its `AadClient`, not MSAL), so it makes no instance or
OIDC discovery request; `disable_instance_discovery` only matters to MSAL-based credentials and
is passed for non-Microsoft authorities in case the chain uses one. Authorities must be https.

Trusting a private CA (`ca_file`): azure-core's aiohttp transport takes `connection_verify=<path>`,
but it then calls `ssl.create_default_context(cafile=...)` on every request, reading the file on
the event loop. Instead we build that same context once (off the loop) and give azure-identity an
`AioHttpTransport` over our own `aiohttp.ClientSession` whose connector uses it; with
`connection_verify` left at True azure-core adds no `ssl=` of its own, so the connector's context
applies. As with `connection_verify`, only the bundle is trusted, not the system store.

Status first: azure-core's `raw_response_hook` records the last HTTP status, because
DefaultAzureCredential's chain wraps its members' errors in one status-less
`ClientAuthenticationError`.
"""

from __future__ import annotations

import asyncio
import importlib
import ssl
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from pydantic import SecretStr

from llm_service.core.config.constants import ProviderID
from llm_service.core.llm.credentials import (
    AZURE_COGNITIVE_SERVICES_SCOPE,
    AccessToken,
    credential_misconfigured,
    credential_rejected,
    credential_unavailable,
    is_unavailable_status,
    oauth_error_code,
)
from llm_service.core.llm.models import CredentialError, LLMServiceError

if TYPE_CHECKING:
    from azure.core.exceptions import AzureError
    from azure.identity.aio import ClientSecretCredential, DefaultAzureCredential

# azure.identity.AzureAuthorityHosts, spelled out so that importing this module stays cheap.
MICROSOFT_AUTHORITY_HOSTS = frozenset(
    {"login.microsoftonline.com", "login.microsoftonline.us", "login.chinacloudapi.cn"}
)
SECRET_KIND = "Azure AD client secret"
DEFAULT_KIND = "Azure AD default credential"
CA_FILE_ENV = "AZURE_OPENAI_AUTHORITY_CA_FILE"


class _LastStatus:
    """azure-core `raw_response_hook`: remembers the status of the last response seen."""

    def __init__(self) -> None:
        self.status: int | None = None

    def __call__(self, response: Any) -> None:
        self.status = response.http_response.status_code


class AzureADTokenSource:
    """A fresh Entra ID token on every `fetch_token` (see the module docstring for why)."""

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
        timeout: float = 10.0,
    ) -> None:
        self.provider = provider
        self._tenant_id = tenant_id or None
        self._client_id = client_id or None
        self._secret = client_secret if client_secret is not None and client_secret.get_secret_value() else None
        self.kind = SECRET_KIND if self._secret is not None else DEFAULT_KIND
        self._authority = _authority_url(authority_host)
        host = urlsplit(self._authority).hostname if self._authority else None
        self._disable_instance_discovery = host is not None and host.lower() not in MICROSOFT_AUTHORITY_HOSTS
        self._scope = scope
        self._ca_file = ca_file
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._session_lock = asyncio.Lock()
        self._closed = False

    async def fetch_token(self) -> AccessToken:
        self._check_settings()
        session = await self._open_session()
        last = _LastStatus()
        failure: LLMServiceError
        try:
            credential = await self._new_credential(session, last)
        except ValueError as exc:  # azure-identity validates the tenant id and the authority's scheme
            failure = credential_misconfigured(self.provider, self.kind, f"invalid setting: {exc} ({self._settings()})")
        else:
            from azure.core.exceptions import AzureError

            try:
                async with credential:
                    info = await credential.get_token_info(self._scope)
                return AccessToken(SecretStr(info.token), float(info.expires_on))
            except AzureError as exc:
                failure = self._classify(exc, last.status)
        # Raised outside the handler: azure's exception references the request, whose form holds
        # the secret, and must not travel along as our error's __context__.
        raise failure

    async def close(self) -> None:
        async with self._session_lock:
            self._closed = True
            session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _check_settings(self) -> None:
        if self._secret is None:
            return
        missing = [
            name
            for name, value in (("AZURE_TENANT_ID", self._tenant_id), ("AZURE_CLIENT_ID", self._client_id))
            if not value
        ]
        if missing:
            raise credential_misconfigured(self.provider, self.kind, f"set {' and '.join(missing)} with the secret")

    async def _open_session(self) -> aiohttp.ClientSession:
        async with self._session_lock:
            if self._closed:
                raise RuntimeError(f"the {self.kind} token source is closed")
            if self._session is None:
                # First use: import azure-identity (~0.9 s) and read the CA file off the loop.
                await asyncio.to_thread(importlib.import_module, "azure.identity.aio")
                tls: ssl.SSLContext | bool = True
                if self._ca_file:
                    try:
                        tls = await asyncio.to_thread(ssl.create_default_context, cafile=self._ca_file)
                    except (OSError, ssl.SSLError):
                        raise credential_misconfigured(
                            self.provider,
                            self.kind,
                            f"cannot load the authority CA file {self._ca_file} (check {CA_FILE_ENV})",
                        ) from None
                # Like azure-core's own session: proxies from the environment, no cookies.
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=tls), trust_env=True, cookie_jar=aiohttp.DummyCookieJar()
                )
            return self._session

    async def _new_credential(
        self, session: aiohttp.ClientSession, last: _LastStatus
    ) -> ClientSecretCredential | DefaultAzureCredential:
        from azure.core.pipeline.transport import AioHttpTransport
        from azure.identity.aio import ClientSecretCredential, DefaultAzureCredential

        transport = AioHttpTransport(
            session=session, session_owner=False, connection_timeout=self._timeout, read_timeout=self._timeout
        )
        options: dict[str, Any] = {"transport": transport, "raw_response_hook": last}
        if self._authority:
            options["authority"] = self._authority
        if self._disable_instance_discovery:
            options["disable_instance_discovery"] = True
        if self._secret is not None:
            assert self._tenant_id and self._client_id  # _check_settings
            # No retries of azure-core's own (0.8 s, 1.6 s, ... with callers waiting): the provider
            # serves the cached token or the caller's retry policy decides.
            return ClientSecretCredential(
                self._tenant_id, self._client_id, self._secret.get_secret_value(), retry_total=0, **options
            )
        # Explicit ids (read by the settings layer) pick the user-assigned / workload identity;
        # unset, DefaultAzureCredential reads AZURE_CLIENT_ID and AZURE_TENANT_ID itself.
        if self._client_id:
            options["managed_identity_client_id"] = self._client_id
            options["workload_identity_client_id"] = self._client_id
        if self._tenant_id:
            options["workload_identity_tenant_id"] = self._tenant_id
        # Left out of the chain: members that would block the event loop. SharedTokenCacheCredential
        # loads the MSAL persistent cache (a file, or the OS keyring over D-Bus) synchronously in its
        # async get_token_info; the async VisualStudioCodeCredential calls its sync twin, which with
        # azure-identity-broker installed runs the sync WAM broker flow. Both hold a developer's
        # sign-in, which a gateway should not run as; the Azure CLI, PowerShell and azd members
        # stay (async subprocesses).
        options["exclude_shared_token_cache_credential"] = True
        options["exclude_visual_studio_code_credential"] = True
        return await asyncio.to_thread(lambda: DefaultAzureCredential(**options))

    def _classify(self, exc: AzureError, last_status: int | None) -> LLMServiceError:
        from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

        response = exc.response if isinstance(exc, HttpResponseError) else None
        status = response.status_code if response is not None else last_status
        if isinstance(exc, ServiceRequestError | ServiceResponseError) and status is None:
            detail = f"the token endpoint is unreachable ({type(exc).__name__})"
            return credential_unavailable(self.provider, self.kind, detail)
        if status is not None and is_unavailable_status(status):
            detail = f"the token endpoint answered HTTP {status}"
            return credential_unavailable(self.provider, self.kind, detail, status=status)
        if status is not None:
            code = oauth_error_code(response.text()) if response is not None else None
            return credential_rejected(self.provider, self.kind, status=status, error_code=code, hint=self._hint())
        # DefaultAzureCredential's chain found no identity that could even ask for a token.
        return CredentialError(
            f"{self.provider.value}: the {self.kind} found no identity to get a token with; {self._hint()}",
            provider=self.provider,
            code="credential_error",
        )

    def _settings(self) -> str:
        """The settings azure-identity validates when a credential is built, for its ValueError."""
        if self._secret is not None:
            return "check AZURE_TENANT_ID and AZURE_AUTHORITY_HOST"
        return "check AZURE_TENANT_ID, AZURE_AUTHORITY_HOST and AZURE_TOKEN_CREDENTIALS"

    def _hint(self) -> str:
        if self._secret is not None:
            return "check AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET"
        return (
            "set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET, or run with a managed or workload identity"
        )


def _authority_url(authority_host: str | None) -> str | None:
    """`login.microsoftonline.us` -> `https://login.microsoftonline.us`; a URL is kept for
    azure-identity to validate (it refuses anything but https)."""
    if not authority_host or not authority_host.strip():
        return None
    value = authority_host.strip().rstrip("/")
    return value if "://" in value else f"https://{value}"
