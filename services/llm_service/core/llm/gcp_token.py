"""GCP token acquisition for `GCPCredentialProvider`, on top of google-auth (sync, so run off the loop).

A service-account key file (GOOGLE_APPLICATION_CREDENTIALS, handed in by the settings) or application
default credentials; every `fetch_token` refreshes in a worker thread. Errors are classified by the
token endpoint's HTTP status (recorded by a small transport wrapper, since google-auth's RefreshError
carries none), never by message text, and never chain google-auth's exception (which may quote the
response).

One HTTP request per attempt: google-auth 2.63 retries a failed token request itself, with sleeps in
our worker thread (`oauth2/_client.py`: 3 attempts on 408/429/500/503/504 or an `error` of
`internal_failure`, `server_error`, `temporarily_unavailable`; the metadata server client: 5 attempts,
also on a TransportError). The transport wrapper stops that by raising on such a response; whether
to try again is the provider's and the caller's retry policy's decision.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import SecretStr

from llm_service.core.config.constants import ProviderID
from llm_service.core.llm.credentials import (
    ASSUMED_LIFETIME,
    GCP_CLOUD_PLATFORM_SCOPE,
    AccessToken,
    credential_misconfigured,
    credential_rejected,
    credential_unavailable,
    endpoint_failure,
    is_unavailable_status,
    oauth_code,
)
from llm_service.core.llm.models import CredentialError, LLMServiceError
from llm_service.core.llm.retry import parse_retry_after

if TYPE_CHECKING:
    import requests
    from google.auth.credentials import Credentials as GoogleCredentials


# OAuth error codes after which google-auth's token client tries again (`_client._can_retry`).
_RETRIED_ERROR_CODES = frozenset({"internal_failure", "server_error", "temporarily_unavailable"})


class _EndpointUnavailable(Exception):
    """The token endpoint answered with a failure worth another attempt later (not now).

    Deliberately not a google-auth TransportError: the metadata-server client catches those and
    tries again (5 attempts, with sleeps), while nothing in google-auth catches other exceptions
    around a request, so this one ends the refresh after its one request.
    """

    def __init__(self, status: int, detail: str, retry_after: float | None) -> None:
        super().__init__(status)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


class _TimedRequest:
    """A google-auth transport request with our timeout on every call, remembering the last status.

    google-auth's RefreshError carries no HTTP status, so the status is how a 502 (endpoint down) is
    told apart from a 400 (rejected) — status first, message text never. A failure that google-auth
    would retry raises `_EndpointUnavailable` instead of reaching google-auth's retry loops.
    """

    def __init__(self, session: requests.Session, timeout: float) -> None:
        import google.auth.transport.requests

        self.session = session  # google-auth's metadata client mounts mTLS adapters on `request.session`
        self._inner = google.auth.transport.requests.Request(session)
        self._timeout = timeout
        self.last_status: int | None = None

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        response = self._inner(
            url, method=method, body=body, headers=headers, timeout=timeout or self._timeout, **kwargs
        )
        status = int(response.status)
        self.last_status = status
        if status != HTTPStatus.OK:
            detail = _unavailable(status, response.data)
            if detail is not None:
                raise _EndpointUnavailable(status, detail, parse_retry_after(response.headers))
        return response


def _unavailable(status: int, body: object) -> str | None:
    """What makes this failed response one that google-auth would retry, or None if it would not."""
    if is_unavailable_status(status):
        return endpoint_failure(status, "")
    try:
        data = orjson.loads(body) if isinstance(body, bytes | str) and body else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    for key in ("error", "error_description"):
        value = data.get(key)
        if isinstance(value, str) and value in _RETRIED_ERROR_CODES:
            return f"{endpoint_failure(status, '')} ({value})"
    return None


class _CredentialsFileError(Exception):
    """The credentials file cannot be used; the message is safe to show (no file content)."""


class GCPTokenSource:
    """google-auth credentials from a key file or from application default credentials (ADC).

    Loaded once, refreshed on every `fetch_token`, both in a worker thread (google-auth is sync).
    `Credentials.refresh()` has no cache of its own: for a service account it always signs a new
    JWT and posts it to `token_uri` (in self-signed-JWT mode, used outside googleapis.com, it makes
    no request at all), so our provider alone decides when a token is fetched.

    Service-account and authorized-user files are loaded with their type's own loader (google-auth
    deprecates the generic `load_credentials_from_file` for configs of unchecked origin); other
    types (workload identity federation, impersonation) go through the generic loader exactly as
    google-auth's ADC does for GOOGLE_APPLICATION_CREDENTIALS, which is where this path comes from.
    """

    def __init__(
        self,
        *,
        provider: ProviderID,
        credentials_file: str | None,
        scopes: Sequence[str] = (GCP_CLOUD_PLATFORM_SCOPE,),
        timeout: float = 10.0,
    ) -> None:
        self.provider = provider
        self.kind = "GCP service account" if credentials_file else "GCP application default credentials"
        self._file = credentials_file
        self._scopes = list(scopes)
        self._timeout = timeout
        self._credentials: GoogleCredentials | None = None
        self._request: _TimedRequest | None = None
        self._lock = asyncio.Lock()  # google-auth credentials are not safe to refresh concurrently
        self._closed = False

    async def fetch_token(self) -> AccessToken:
        async with self._lock:
            if self._closed:
                raise RuntimeError(f"the {self.kind} token source is closed")
            failure: LLMServiceError
            try:
                token, expiry = await asyncio.to_thread(self._refresh_blocking)
            except Exception as exc:  # google-auth's and the file's errors; classified, the rest re-raised
                failure = self._classify(exc)
            else:
                # google-auth's expiry is a naive UTC datetime.
                expires_at = expiry.replace(tzinfo=UTC).timestamp() if expiry else time.time() + ASSUMED_LIFETIME
                return AccessToken(SecretStr(token), expires_at)
        # Raised outside the handler: google-auth's error (which may quote the response) is not chained.
        raise failure

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            request, self._request = self._request, None
        if request is not None:
            await asyncio.to_thread(request.session.close)

    def _refresh_blocking(self) -> tuple[str, datetime | None]:
        if self._request is None:
            import requests

            self._request = _TimedRequest(requests.Session(), self._timeout)
        if self._credentials is None:
            self._credentials = self._load_file() if self._file else self._load_default()
        self._request.last_status = None
        self._credentials.refresh(self._request)  # type: ignore[no-untyped-call]
        token = self._credentials.token
        if not isinstance(token, str) or not token:
            raise ValueError("google-auth returned no access token")
        return token, self._credentials.expiry

    def _load_default(self) -> GoogleCredentials:
        import google.auth

        credentials, _project = google.auth.default(scopes=self._scopes)
        return credentials

    def _load_file(self) -> GoogleCredentials:
        import google.auth
        from google.auth import exceptions as gexc
        from google.oauth2 import credentials as user_credentials
        from google.oauth2 import service_account

        assert self._file
        try:
            with open(self._file, "rb") as handle:
                info = orjson.loads(handle.read())
            if not isinstance(info, dict):
                raise ValueError("not a JSON object")
            file_type = info.get("type")
            if file_type == "service_account":
                return service_account.Credentials.from_service_account_info(info, scopes=self._scopes)  # type: ignore[no-any-return,no-untyped-call]
            if file_type == "authorized_user":
                return user_credentials.Credentials.from_authorized_user_info(info, scopes=self._scopes)  # type: ignore[no-any-return,no-untyped-call]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                credentials, _project = google.auth.load_credentials_from_file(self._file, scopes=self._scopes)  # type: ignore[no-untyped-call]
                return credentials  # type: ignore[no-any-return]
        except FileNotFoundError:
            raise _CredentialsFileError(f"{self._file} does not exist") from None
        except (OSError, ValueError, gexc.GoogleAuthError) as exc:
            # The type only: messages from the JSON parser or a key loader may quote the file.
            raise _CredentialsFileError(
                f"{self._file} is not a usable credentials file ({type(exc).__name__})"
            ) from None

    def _classify(self, exc: Exception) -> LLMServiceError:
        from google.auth import exceptions as gexc

        status = self._request.last_status if self._request else None
        env = "GOOGLE_APPLICATION_CREDENTIALS"
        if isinstance(exc, _CredentialsFileError):
            return credential_misconfigured(self.provider, self.kind, f"{exc} (set {env})")
        if isinstance(exc, gexc.DefaultCredentialsError):
            # google-auth's own text: "Your default credentials were not found. To set up ..."
            first = exc.args[0] if exc.args and isinstance(exc.args[0], str) else type(exc).__name__
            return credential_misconfigured(self.provider, self.kind, f"{first} (or set {env})")
        if isinstance(exc, _EndpointUnavailable):
            return credential_unavailable(
                self.provider, self.kind, exc.detail, status=exc.status, retry_after=exc.retry_after
            )
        if isinstance(exc, gexc.TransportError) or (status is not None and is_unavailable_status(status)):
            detail = endpoint_failure(status, type(exc).__name__)
            return credential_unavailable(self.provider, self.kind, detail, status=status)
        if isinstance(exc, gexc.RefreshError):
            code = oauth_code(exc.args[1].get("error")) if len(exc.args) > 1 and isinstance(exc.args[1], dict) else None
            hint = f"check the key file ({env})" if self._file else "check the application default credentials"
            return credential_rejected(self.provider, self.kind, status=status, error_code=code, hint=hint)
        if isinstance(exc, gexc.GoogleAuthError | ValueError):
            return CredentialError(
                f"{self.provider.value}: could not get a token with the {self.kind} ({type(exc).__name__})",
                provider=self.provider,
                code="credential_error",
            )
        raise exc
