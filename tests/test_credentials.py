"""Token credential providers against the fake token endpoints, with the real azure-identity and
google-auth code on the other side of a loopback socket.

Time is an injected clock that starts at the real time (tokens carry epoch expiry times) and is
moved forward by the tests; azure-identity's and google-auth's own clocks stay real, which is how
these tests prove that our cache, not theirs, decides when a token endpoint is called.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from pydantic import SecretStr

from llm_service.core.config.constants import ProviderID
from llm_service.core.llm.credentials import (
    AZURE_COGNITIVE_SERVICES_SCOPE,
    AccessToken,
    AzureADCredentialProvider,
    GCPCredentialProvider,
    OAuthClientCredentialsTokenSource,
    TokenCredentialProvider,
)
from llm_service.core.llm.gcp_token import GCPTokenSource, _unavailable
from llm_service.core.llm.models import (
    ConfigurationError,
    CredentialError,
    CredentialUnavailableError,
    ProviderNotConfiguredError,
)
from llm_service.fakes.threaded import ServerThread
from llm_service.fakes.token_endpoints import FakeEntraID, FakeGoogleOAuth

pytestmark = pytest.mark.anyio

AZURE = ProviderID.AZURE_OPENAI
VERTEX = ProviderID.VERTEX_AI
HOUR = 3599


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def entra() -> AsyncIterator[FakeEntraID]:
    fake = FakeEntraID()
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def google() -> AsyncIterator[FakeGoogleOAuth]:
    fake = FakeGoogleOAuth()
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
def key_file(google: FakeGoogleOAuth, tmp_path: Path) -> Path:
    return google.write_service_account_file(tmp_path / "service-account.json")


@pytest.fixture
async def close_after() -> AsyncIterator[Callable[[TokenCredentialProvider], TokenCredentialProvider]]:
    """Registers providers to close when the test ends, even when it fails."""
    providers: list[TokenCredentialProvider] = []

    def register(provider: TokenCredentialProvider) -> TokenCredentialProvider:
        providers.append(provider)
        return provider

    yield register
    for provider in providers:
        await provider.close()


def azure_provider(fake: FakeEntraID, clock: Clock, *, secret: str | None = None, **overrides: object):
    options: dict[str, object] = {
        "provider": AZURE,
        "tenant_id": fake.tenant_id,
        "client_id": fake.client_id,
        "client_secret": SecretStr(secret if secret is not None else fake.client_secret),
        "authority_host": fake.authority,
        "ca_file": fake.ca_file,
        "clock": clock,
    }
    options.update(overrides)
    return AzureADCredentialProvider(**options)  # type: ignore[arg-type]


def gcp_provider(path: Path | str, clock: Clock) -> GCPCredentialProvider:
    return GCPCredentialProvider(provider=VERTEX, credentials_file=str(path), clock=clock)


def retarget(key_file: Path, old_url: str, new_url: str) -> None:
    key_file.write_text(key_file.read_text().replace(old_url, new_url))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def refreshed(provider: TokenCredentialProvider) -> bool:
    """The background refresh has stored its token (the endpoint answering is not enough: the token
    still has to travel back and be kept)."""
    fetch = provider._fetch
    return fetch is None or fetch.done()


async def eventually(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def assert_safe(error: Exception, *secrets: str) -> None:
    """Names the provider and kind, quotes no secret and carries no library exception along."""
    text = str(error)
    for secret in secrets:
        assert secret not in text
    assert "AADSTS" not in text
    assert error.__cause__ is None
    assert error.__context__ is None or isinstance(error.__context__, CredentialError)


# --------------------------------------------------------------------------------------------------
# Azure AD (azure-identity against FakeEntraID over TLS)
# --------------------------------------------------------------------------------------------------


async def test_azure_concurrent_cold_callers_share_one_token_request(entra: FakeEntraID, clock: Clock, close_after):
    entra.delay = 0.3  # the calls really overlap while the one request is in flight
    provider = close_after(azure_provider(entra, clock))

    headers = await asyncio.gather(*(provider.auth_headers() for _ in range(50)))

    assert entra.tokens_requested == 1
    assert entra.tokens_issued == 1
    assert all(h == {"Authorization": f"Bearer {entra.access_token}"} for h in headers)
    (request,) = entra.token_requests
    assert request.form["grant_type"] == "client_credentials"
    assert request.form["scope"] == "https://cognitiveservices.azure.com/.default"


async def test_azure_token_is_cached_until_our_clock_says_it_expired(entra: FakeEntraID, clock: Clock, close_after):
    provider = close_after(azure_provider(entra, clock))
    first = await provider.auth_headers()
    clock.advance(HOUR - 400)
    assert await provider.auth_headers() == first
    assert entra.tokens_issued == 1

    # Real time has hardly moved, so azure-identity's own cache would still hand out the first
    # token: a second request proves that our clock decides.
    entra.access_token = "second-entra-token"
    clock.advance(460)  # past expiry, with room for the time the first fetch took
    assert await provider.auth_headers() == {"Authorization": "Bearer second-entra-token"}
    assert entra.tokens_issued == 2


async def test_azure_refreshes_ahead_of_expiry_without_making_callers_wait(
    entra: FakeEntraID, clock: Clock, close_after
):
    provider = close_after(azure_provider(entra, clock))
    first = (await provider.token()).get_secret_value()
    entra.access_token = "refreshed-entra-token"
    entra.delay = 0.2
    clock.advance(HOUR - 200)  # inside the 300 s margin, still valid

    assert (await provider.token()).get_secret_value() == first  # served at once
    await eventually(lambda: entra.tokens_issued == 2 and refreshed(provider))
    assert (await provider.token()).get_secret_value() == "refreshed-entra-token"


async def test_azure_failed_refresh_ahead_keeps_serving_the_valid_token(
    entra: FakeEntraID, clock: Clock, close_after, caplog: pytest.LogCaptureFixture
):
    provider = close_after(azure_provider(entra, clock))
    first = await provider.auth_headers()
    entra.fail_with = 503
    clock.advance(HOUR - 200)

    with caplog.at_level(logging.WARNING, logger="llm_service.credentials"):
        assert await provider.auth_headers() == first
        await eventually(lambda: entra.tokens_requested == 2)
        await eventually(lambda: "serving the cached token" in caplog.text)
    assert await provider.auth_headers() == first  # within retry_interval: no new attempt
    assert entra.tokens_requested == 2
    assert entra.client_secret not in caplog.text
    assert entra.access_token not in caplog.text

    entra.fail_with = None
    entra.access_token = "after-the-outage"
    clock.advance(15)  # past retry_interval, token still valid: a later call tries again
    assert await provider.auth_headers() == first
    await eventually(lambda: entra.tokens_issued == 2 and refreshed(provider))
    assert await provider.auth_headers() == {"Authorization": "Bearer after-the-outage"}


async def test_azure_failed_fetch_without_a_token_is_remembered_for_the_failure_backoff(
    entra: FakeEntraID, clock: Clock, close_after
):
    provider = close_after(azure_provider(entra, clock))
    entra.fail_with = 503
    with pytest.raises(CredentialUnavailableError):
        await provider.auth_headers()
    entra.fail_with = None
    with pytest.raises(CredentialUnavailableError, match="HTTP 503"):
        await provider.auth_headers()  # within the second: the same error, no request
    assert entra.tokens_requested == 1
    clock.advance(1.0)
    assert await provider.auth_headers() == {"Authorization": f"Bearer {entra.access_token}"}
    assert entra.tokens_requested == 2


async def test_azure_token_endpoint_down_is_unavailable(entra: FakeEntraID, clock: Clock, close_after):
    entra.fail_with = 503
    provider = close_after(azure_provider(entra, clock))
    with pytest.raises(CredentialUnavailableError) as caught:
        await provider.auth_headers()
    error = caught.value
    assert error.retryable and error.status == 503 and error.provider is AZURE
    assert "azure_openai" in error.message and "Azure AD client secret" in error.message
    assert entra.tokens_requested == 1  # azure-core's own retries are off: the caller's policy decides
    assert_safe(error, entra.client_secret)


async def test_azure_unreachable_authority_is_unavailable(entra: FakeEntraID, clock: Clock, close_after):
    provider = close_after(azure_provider(entra, clock, authority_host=f"https://127.0.0.1:{closed_port()}"))
    with pytest.raises(CredentialUnavailableError) as caught:
        await provider.auth_headers()
    error = caught.value
    assert error.retryable and error.status is None
    assert "azure_openai" in error.message and "Azure AD client secret" in error.message
    assert "unreachable" in error.message
    assert_safe(error, entra.client_secret)


async def test_azure_rejected_secret_is_a_credential_error(entra: FakeEntraID, clock: Clock, close_after):
    wrong = "wrong-secret~abcdefghijklmnop"
    provider = close_after(azure_provider(entra, clock, secret=wrong))
    with pytest.raises(CredentialError) as caught:
        await provider.auth_headers()
    error = caught.value
    assert not isinstance(error, CredentialUnavailableError)
    assert error.status == 401 and not error.retryable
    assert "azure_openai" in error.message and "Azure AD client secret" in error.message
    assert "invalid_client" in error.message
    assert_safe(error, wrong, entra.client_secret)
    assert entra.tokens_issued == 0


async def test_azure_server_certificate_must_be_trusted(entra: FakeEntraID, clock: Clock, close_after):
    provider = close_after(azure_provider(entra, clock, ca_file=None))  # system trust store only
    with pytest.raises(CredentialUnavailableError):
        await provider.auth_headers()
    assert entra.requests == []


def assert_misconfigured(error: ConfigurationError) -> None:
    """A configured credential that cannot be used: a server error (500), not "no such provider" (404)."""
    assert type(error) is ConfigurationError and not isinstance(error, ProviderNotConfiguredError)
    assert error.code == "credential_misconfigured"


async def test_azure_secret_without_tenant_is_misconfigured(entra: FakeEntraID, clock: Clock, close_after):
    provider = close_after(azure_provider(entra, clock, tenant_id=None))
    with pytest.raises(ConfigurationError, match="AZURE_TENANT_ID") as caught:
        await provider.auth_headers()
    assert_misconfigured(caught.value)
    assert entra.requests == []


async def test_azure_unreadable_ca_file_is_misconfigured(entra: FakeEntraID, clock: Clock, close_after, tmp_path: Path):
    provider = close_after(azure_provider(entra, clock, ca_file=str(tmp_path / "absent.pem")))
    with pytest.raises(ConfigurationError, match="AZURE_OPENAI_AUTHORITY_CA_FILE") as caught:
        await provider.auth_headers()
    assert_misconfigured(caught.value)
    assert entra.requests == []


@pytest.mark.parametrize(
    ("setting", "value"),
    [("tenant_id", "not a tenant!"), ("authority_host", "http://127.0.0.1:1")],
    ids=["tenant id", "http authority"],
)
async def test_azure_invalid_settings_are_misconfigured(
    entra: FakeEntraID, clock: Clock, close_after, setting: str, value: str
):
    provider = close_after(azure_provider(entra, clock, **{setting: value}))
    with pytest.raises(ConfigurationError, match="azure_openai: Azure AD client secret: invalid setting") as caught:
        await provider.auth_headers()
    assert_misconfigured(caught.value)
    assert "AZURE_TENANT_ID" in caught.value.message and "AZURE_AUTHORITY_HOST" in caught.value.message
    assert entra.requests == []


async def test_azure_default_credential_uses_the_environment_service_principal(
    entra: FakeEntraID, clock: Clock, close_after, monkeypatch: pytest.MonkeyPatch
):
    """No secret in the settings: DefaultAzureCredential's EnvironmentCredential finds one."""
    monkeypatch.setenv("AZURE_TENANT_ID", entra.tenant_id)
    monkeypatch.setenv("AZURE_CLIENT_ID", entra.client_id)
    monkeypatch.setenv("AZURE_CLIENT_SECRET", entra.client_secret)
    for name in ("AZURE_TOKEN_CREDENTIALS", "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_USERNAME", "AZURE_AUTHORITY_HOST"):
        monkeypatch.delenv(name, raising=False)
    provider = close_after(azure_provider(entra, clock, tenant_id=None, client_id=None, client_secret=None))
    assert provider.kind == "Azure AD default credential"

    assert await provider.auth_headers() == {"Authorization": f"Bearer {entra.access_token}"}
    entra.access_token = "second-default-token"
    clock.advance(HOUR + 60)
    assert await provider.auth_headers() == {"Authorization": "Bearer second-default-token"}
    assert entra.tokens_issued == 2

    entra.client_secret = "rotated-away"
    clock.advance(HOUR + 60)
    with pytest.raises(CredentialError) as caught:
        await provider.auth_headers()
    assert not isinstance(caught.value, CredentialUnavailableError)
    assert caught.value.status == 401 and "Azure AD default credential" in caught.value.message
    assert_safe(caught.value, "rotated-away")


# A Kubernetes service-account token as the AKS workload identity webhook projects it into the pod.
FEDERATED_TOKEN = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImZha2Uta2V5In0.fake-kubernetes-service-account-token.fake-signature"

# What else could make DefaultAzureCredential pick an identity: a service principal for its
# EnvironmentCredential, AZURE_TOKEN_CREDENTIALS, and the managed identity endpoints (App Service,
# Service Fabric, Azure Arc, Azure ML, Cloud Shell, pod identity).
NOT_WORKLOAD_IDENTITY_VARS = (
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_USERNAME",
    "AZURE_PASSWORD",
    "AZURE_TOKEN_CREDENTIALS",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
)


@pytest.fixture
def token_file(entra: FakeEntraID, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A pod's workload identity environment, pointed at the fake: the webhook's four variables and
    the token file, with the app trusting that token; no client secret, no managed identity endpoint."""
    entra.federated_token = FEDERATED_TOKEN
    path = tmp_path / "azure-identity-token"
    path.write_text(FEDERATED_TOKEN)
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(path))
    monkeypatch.setenv("AZURE_TENANT_ID", entra.tenant_id)
    monkeypatch.setenv("AZURE_CLIENT_ID", entra.client_id)
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", entra.authority)
    for name in NOT_WORKLOAD_IDENTITY_VARS:
        monkeypatch.delenv(name, raising=False)
    return path


@pytest.fixture
def members_after_workload_identity(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stands in for the chain members after WorkloadIdentityCredential (managed identity, which
    would call IMDS at 169.254.169.254, and the Azure CLI, PowerShell and azd subprocesses): each
    records its name and declines, so a test sees whether the chain went past workload identity."""
    from azure.identity import CredentialUnavailableError as Unavailable
    from azure.identity import aio

    reached: list[str] = []
    for cls in (
        aio.ManagedIdentityCredential,
        aio.AzureCliCredential,
        aio.AzurePowerShellCredential,
        aio.AzureDeveloperCliCredential,
    ):

        async def decline(self: object, *scopes: str, **kwargs: Any) -> Any:
            reached.append(type(self).__name__)
            raise Unavailable("stubbed out by the test")

        monkeypatch.setattr(cls, "get_token_info", decline)
        monkeypatch.setattr(cls, "get_token", decline)
    return reached


@pytest.fixture
def off_loopback(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Refuses, and records, every socket connection to anything but a loopback address."""
    attempts: list[object] = []
    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address: Any) -> None:
        if isinstance(address, tuple) and not _is_loopback(str(address[0])):
            attempts.append(address)
            raise OSError(errno.ENETUNREACH, "the test allows loopback connections only")
        real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


def workload_identity_provider(fake: FakeEntraID, clock: Clock) -> AzureADCredentialProvider:
    """As the settings layer builds it in the pod: ids and authority from the webhook's variables."""
    return azure_provider(fake, clock, client_secret=None)


async def test_azure_default_credential_uses_the_workload_identity(
    entra: FakeEntraID,
    clock: Clock,
    close_after,
    token_file: Path,
    members_after_workload_identity: list[str],
    off_loopback: list[object],
):
    """No client secret: DefaultAzureCredential's WorkloadIdentityCredential trades the federated
    token file's content for an Entra ID token, and the chain stops there."""
    provider = close_after(workload_identity_provider(entra, clock))
    assert provider.kind == "Azure AD default credential"

    assert await provider.auth_headers() == {"Authorization": f"Bearer {entra.access_token}"}
    assert entra.tokens_issued == 1
    (request,) = entra.token_requests
    assert request.path == f"/{entra.tenant_id}/oauth2/v2.0/token"
    assert request.form == {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": FEDERATED_TOKEN,
        "client_id": entra.client_id,
        "scope": AZURE_COGNITIVE_SERVICES_SCOPE,
    }

    # Kubernetes rotates the projected token; the credential built for the next fetch reads it again.
    entra.federated_token = rotated = FEDERATED_TOKEN.replace("fake-signature", "rotated-signature")
    await asyncio.to_thread(token_file.write_text, rotated)
    entra.access_token = "second-workload-identity-token"
    clock.advance(HOUR + 60)
    assert await provider.auth_headers() == {"Authorization": "Bearer second-workload-identity-token"}
    assert [r.form["client_assertion"] for r in entra.token_requests] == [FEDERATED_TOKEN, rotated]
    assert entra.tokens_issued == 2
    assert members_after_workload_identity == [] and off_loopback == []


async def test_azure_rejected_federated_token_is_a_credential_error(
    entra: FakeEntraID,
    clock: Clock,
    close_after,
    token_file: Path,
    members_after_workload_identity: list[str],
    off_loopback: list[object],
    caplog: pytest.LogCaptureFixture,
):
    """A token the app's federated credential does not match is refused (401 invalid_client): not
    retryable, not passed on to managed identity, and not quoted."""
    wrong = FEDERATED_TOKEN.replace("fake-signature", "someone-elses-signature")
    await asyncio.to_thread(token_file.write_text, wrong)
    provider = close_after(workload_identity_provider(entra, clock))

    with caplog.at_level(logging.DEBUG), pytest.raises(CredentialError) as caught:
        await provider.auth_headers()
    error = caught.value
    assert not isinstance(error, CredentialUnavailableError)
    assert error.status == 401 and not error.retryable
    assert "azure_openai" in error.message and "Azure AD default credential" in error.message
    assert_safe(error, wrong, FEDERATED_TOKEN)
    assert wrong not in caplog.text
    assert entra.tokens_requested == 1 and entra.tokens_issued == 0
    assert members_after_workload_identity == [] and off_loopback == []


async def test_azure_default_credential_chain_has_no_member_that_blocks_the_event_loop(
    entra: FakeEntraID, monkeypatch: pytest.MonkeyPatch
):
    """SharedTokenCacheCredential loads the MSAL cache, and the async VisualStudioCodeCredential runs
    its sync twin, on the event loop: neither is in the chain the gateway builds."""
    from llm_service.core.llm.azure_token import AzureADTokenSource, _LastStatus

    monkeypatch.delenv("AZURE_TOKEN_CREDENTIALS", raising=False)
    source = AzureADTokenSource(provider=AZURE, tenant_id=None, client_id=None, client_secret=None)
    try:
        credential = await source._new_credential(await source._open_session(), _LastStatus())
        async with credential:
            members = [type(member).__name__ for member in credential.credentials]  # type: ignore[union-attr]
    finally:
        await source.close()
    assert "EnvironmentCredential" in members and "ManagedIdentityCredential" in members
    assert "SharedTokenCacheCredential" not in members
    assert "VisualStudioCodeCredential" not in members


# --------------------------------------------------------------------------------------------------
# GCP (google-auth against FakeGoogleOAuth)
# --------------------------------------------------------------------------------------------------


async def test_gcp_concurrent_cold_callers_share_one_token_request(
    google: FakeGoogleOAuth, key_file: Path, clock: Clock, close_after
):
    google.delay = 0.3
    provider = close_after(gcp_provider(key_file, clock))

    headers = await asyncio.gather(*(provider.auth_headers() for _ in range(50)))

    assert google.tokens_issued == 1
    assert len(google.requests) == 1
    assert all(h == {"Authorization": f"Bearer {google.access_token}"} for h in headers)
    claims = google.requests[0].jwt_claims
    assert claims is not None and claims["scope"] == "https://www.googleapis.com/auth/cloud-platform"


async def test_gcp_token_is_fetched_again_after_it_expires(
    google: FakeGoogleOAuth, key_file: Path, clock: Clock, close_after
):
    provider = close_after(gcp_provider(key_file, clock))
    assert await provider.auth_headers() == {"Authorization": f"Bearer {google.access_token}"}
    clock.advance(HOUR - 400)
    await provider.auth_headers()
    assert google.tokens_issued == 1

    google.access_token = "ya29.second"
    clock.advance(460)  # past expiry, with room for the time the first fetch took
    assert await provider.auth_headers() == {"Authorization": "Bearer ya29.second"}
    assert google.tokens_issued == 2


async def test_gcp_string_expires_in_is_understood(google: FakeGoogleOAuth, key_file: Path):
    google.expires_in = "120"
    source = GCPTokenSource(provider=VERTEX, credentials_file=str(key_file))
    try:
        token = await source.fetch_token()
    finally:
        await source.close()
    assert token.expires_at == pytest.approx(time.time() + 120, abs=5)


@pytest.mark.parametrize("down", ["408", "429", "500", "503", "504", "closed port"])
async def test_gcp_token_endpoint_down_is_unavailable_after_one_request(
    google: FakeGoogleOAuth, key_file: Path, clock: Clock, close_after, down: str
):
    """google-auth would try a 408/429/500/503/504 three times, sleeping between tries (~3 s)."""
    if down == "closed port":
        await google.close()
    else:
        google.fail_with = int(down)
    provider = close_after(gcp_provider(key_file, clock))
    with pytest.raises(CredentialUnavailableError) as caught:
        await provider.auth_headers()
    error = caught.value
    assert error.retryable and error.provider is VERTEX
    assert "vertex_ai" in error.message and "GCP service account" in error.message
    if down != "closed port":
        assert error.status == int(down) and f"HTTP {down}" in error.message
        assert len(google.requests) == 1
    private_key = await asyncio.to_thread(key_file.read_text)
    assert_safe(error, "PRIVATE KEY", private_key[200:260])


def test_gcp_failures_google_auth_would_retry_are_caught_before_it_does():
    assert _unavailable(503, b'{"error": "internal_failure"}') == "the token endpoint answered HTTP 503"
    assert _unavailable(400, b'{"error": "temporarily_unavailable"}') == (
        "the token endpoint answered HTTP 400 (temporarily_unavailable)"
    )
    assert _unavailable(400, b'{"error": "x", "error_description": "server_error"}') is not None
    assert _unavailable(400, b'{"error": "invalid_grant"}') is None
    assert _unavailable(401, b"not json") is None
    assert _unavailable(403, b'{"error": ["temporarily_unavailable"]}') is None


async def test_gcp_rejected_assertion_is_a_credential_error(google: FakeGoogleOAuth, tmp_path: Path, close_after):
    impostor = FakeGoogleOAuth()  # another key, another fake: its signatures do not verify here
    await impostor.start()
    try:
        path = impostor.write_service_account_file(tmp_path / "other.json")
    finally:
        await impostor.close()
    await asyncio.to_thread(retarget, path, impostor.token_url, google.token_url)
    provider = close_after(gcp_provider(path, Clock()))

    with pytest.raises(CredentialError) as caught:
        await provider.auth_headers()
    error = caught.value
    assert not isinstance(error, CredentialUnavailableError)
    assert error.status == 400 and "invalid_grant" in error.message
    assert "Invalid JWT Signature" not in error.message
    assert google.tokens_issued == 0
    assert_safe(error, "PRIVATE KEY")


@pytest.mark.parametrize("problem", ["missing", "not json", "not a key"])
async def test_gcp_unusable_key_file_is_misconfigured(tmp_path: Path, close_after, problem: str):
    path = tmp_path / "key.json"
    if problem == "not json":
        path.write_text("-----BEGIN PRIVATE KEY-----\nMIIEv...")
    elif problem == "not a key":
        path.write_text('{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----"}')
    provider = close_after(gcp_provider(path, Clock()))
    with pytest.raises(
        ConfigurationError, match=r"vertex_ai: GCP service account: .*GOOGLE_APPLICATION_CREDENTIALS"
    ) as caught:
        await provider.auth_headers()
    assert_misconfigured(caught.value)
    assert "PRIVATE KEY" not in caught.value.message


async def test_gcp_application_default_credentials_not_found_is_misconfigured(
    tmp_path: Path, close_after, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    provider = close_after(GCPCredentialProvider(provider=VERTEX, credentials_file=None, clock=Clock()))
    with pytest.raises(ConfigurationError, match="GOOGLE_APPLICATION_CREDENTIALS") as caught:
        await provider.auth_headers()
    assert_misconfigured(caught.value)


async def test_gcp_application_default_credentials_read_the_environment(
    google: FakeGoogleOAuth, key_file: Path, close_after, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    provider = close_after(GCPCredentialProvider(provider=VERTEX, credentials_file=None, clock=Clock()))
    assert provider.kind == "GCP application default credentials"
    assert await provider.auth_headers() == {"Authorization": f"Bearer {google.access_token}"}
    assert google.tokens_issued == 1


# --------------------------------------------------------------------------------------------------
# OAuth client credentials (the GenAI Platform's token URL, served by FakeGoogleOAuth)
# --------------------------------------------------------------------------------------------------


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


def client_credentials(
    fake: FakeGoogleOAuth, session: aiohttp.ClientSession, *, secret: str | None = None, url: str | None = None
) -> OAuthClientCredentialsTokenSource:
    return OAuthClientCredentialsTokenSource(
        provider=AZURE,
        token_url=url or fake.token_url,
        client_id=fake.client_id,
        client_secret=SecretStr(secret if secret is not None else fake.client_secret),
        scope="genai.platform",
        session=session,
    )


async def test_client_credentials_token_is_shared_and_sent_as_bearer(
    google: FakeGoogleOAuth, session: aiohttp.ClientSession, clock: Clock, close_after
):
    google.delay = 0.2
    google.expires_in = "3600"  # some servers quote it
    provider = close_after(TokenCredentialProvider(client_credentials(google, session), clock=clock))

    headers = await asyncio.gather(*(provider.auth_headers() for _ in range(50)))

    assert google.client_credentials_issued == 1 and google.tokens_issued == 0
    assert all(h == {"Authorization": f"Bearer {google.access_token}"} for h in headers)
    (request,) = google.requests
    assert request.form == {"grant_type": "client_credentials", "scope": "genai.platform"}  # no credentials
    basic = base64.b64encode(f"{google.client_id}:{google.client_secret}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {basic}"
    clock.advance(3660)
    await provider.auth_headers()
    assert google.client_credentials_issued == 2
    assert not session.closed  # the shared session belongs to the caller


async def test_client_credentials_are_form_urlencoded_inside_basic(session: aiohttp.ClientSession):
    """RFC 6749 2.3.1: id and secret are form-urlencoded, then joined by ":" and base64-encoded."""
    fake = FakeGoogleOAuth(client_id="genai client:1", client_secret="s3cr3t+/:=% é~")
    await fake.start()
    try:
        token = await client_credentials(fake, session).fetch_token()
    finally:
        await fake.close()
    assert token.token.get_secret_value() == fake.access_token
    (request,) = fake.requests
    raw = base64.b64decode(request.headers["authorization"].removeprefix("Basic ")).decode("ascii")
    assert raw == "genai+client%3A1:s3cr3t%2B%2F%3A%3D%25+%C3%A9~"  # RFC 3986 unreserved stay as they are
    assert "client_secret" not in request.form and "client_id" not in request.form


def test_google_fake_takes_client_credentials_in_the_form_or_basic_but_not_both():
    with ServerThread(FakeGoogleOAuth()) as running:
        fake = running.server
        grant = {"grant_type": "client_credentials"}
        body = {**grant, "client_id": fake.client_id, "client_secret": fake.client_secret}
        with requests.Session() as http:
            in_form = http.post(fake.token_url, data=body, timeout=5)
            basic = http.post(fake.token_url, data=grant, auth=(fake.client_id, fake.client_secret), timeout=5)
            both = http.post(fake.token_url, data=body, auth=(fake.client_id, fake.client_secret), timeout=5)
            wrong = http.post(fake.token_url, data=grant, auth=(fake.client_id, "nope"), timeout=5)
    assert in_form.status_code == 200 and basic.status_code == 200
    assert (both.status_code, both.json()["error"]) == (400, "invalid_request")
    assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_client")
    assert fake.client_credentials_issued == 2


async def test_client_credentials_rejected_secret(google: FakeGoogleOAuth, session: aiohttp.ClientSession):
    source = client_credentials(google, session, secret="not-the-secret-0123")
    with pytest.raises(CredentialError) as caught:
        await source.fetch_token()
    error = caught.value
    assert not isinstance(error, CredentialUnavailableError)
    assert error.status == 401 and "invalid_client" in error.message
    assert "OAuth client credentials" in error.message and "azure_openai" in error.message
    assert_safe(error, "not-the-secret-0123", google.client_secret)


@pytest.mark.parametrize("status", [502, 503, 429])
async def test_client_credentials_endpoint_failure_is_unavailable(
    google: FakeGoogleOAuth, session: aiohttp.ClientSession, status: int
):
    google.fail_with = status
    with pytest.raises(CredentialUnavailableError) as caught:
        await client_credentials(google, session).fetch_token()
    assert caught.value.status == status and caught.value.retryable
    assert_safe(caught.value, google.client_secret)


async def test_client_credentials_unreachable_and_unconfigured(google: FakeGoogleOAuth, session: aiohttp.ClientSession):
    dead = client_credentials(google, session, url=f"http://127.0.0.1:{closed_port()}/token")
    with pytest.raises(CredentialUnavailableError, match="unreachable"):
        await dead.fetch_token()
    empty = client_credentials(google, session, secret="")
    with pytest.raises(ConfigurationError, match="no client secret") as caught:
        await empty.fetch_token()
    assert_misconfigured(caught.value)
    assert google.requests == []


# --------------------------------------------------------------------------------------------------
# The provider's own rules, with a scripted source (no network)
# --------------------------------------------------------------------------------------------------


class ScriptedSource:
    kind = "scripted credential"

    def __init__(self, clock: Clock, lifetime: float = HOUR) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.calls = 0
        self.closed = False
        self.fail: Exception | None = None
        self.release = asyncio.Event()
        self.release.set()

    async def fetch_token(self) -> AccessToken:
        self.calls += 1
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return AccessToken(SecretStr(f"token-{self.calls}"), self.clock() + self.lifetime)

    async def close(self) -> None:
        self.closed = True


async def test_custom_header_and_scheme(clock: Clock):
    provider = TokenCredentialProvider(ScriptedSource(clock), header="api-key", scheme="Token", clock=clock)
    assert await provider.auth_headers() == {"api-key": "Token token-1"}
    await provider.close()


async def test_short_lived_tokens_are_refreshed_at_half_life_not_on_every_call(clock: Clock):
    source = ScriptedSource(clock, lifetime=120)  # shorter than the 300 s margin
    provider = TokenCredentialProvider(source, clock=clock)
    await provider.token()
    clock.advance(59)
    for _ in range(5):
        await provider.token()
    assert source.calls == 1
    clock.advance(2)
    await provider.token()
    await eventually(lambda: source.calls == 2)
    await provider.close()


def endpoint_down() -> CredentialUnavailableError:
    return CredentialUnavailableError(
        "vertex_ai: could not get a token with the scripted credential: the token endpoint answered HTTP 503",
        provider=VERTEX,
        status=503,
        retryable=True,
        code="credential_unavailable",
    )


async def test_a_failed_fetch_without_a_token_is_raised_again_until_the_failure_backoff_ends(clock: Clock):
    source = ScriptedSource(clock)
    source.fail = endpoint_down()
    provider = TokenCredentialProvider(source, clock=clock, failure_backoff=2.0)
    errors: list[CredentialUnavailableError] = []
    for _ in range(3):
        with pytest.raises(CredentialUnavailableError) as caught:
            await provider.token()
        errors.append(caught.value)
        clock.advance(0.5)
    assert source.calls == 1  # a dead token endpoint is asked once, not once per call
    for error in errors:
        assert (error.message, error.status, error.retryable, error.provider) == (
            source.fail.message,
            503,
            True,
            VERTEX,
        )
        assert error.__context__ is None and error.__cause__ is None

    clock.advance(0.5)  # 2.0 s after the failure: worth another try
    source.fail = None
    assert (await provider.token()).get_secret_value() == "token-2"
    assert source.calls == 2


async def test_the_failure_backoff_starts_again_after_each_failed_fetch(clock: Clock):
    source = ScriptedSource(clock)
    source.fail = endpoint_down()
    provider = TokenCredentialProvider(source, clock=clock)  # failure_backoff=1.0
    for expected_calls in (1, 1, 2, 2, 3):
        with pytest.raises(CredentialUnavailableError):
            await provider.token()
        assert source.calls == expected_calls
        clock.advance(0.5)
    await provider.close()


async def test_a_failed_refresh_while_the_token_is_valid_is_not_cached_once_it_expires(clock: Clock):
    source = ScriptedSource(clock, lifetime=600)
    provider = TokenCredentialProvider(source, clock=clock)
    await provider.token()
    source.fail = endpoint_down()
    clock.advance(400)  # within the margin: a background refresh, which fails
    assert (await provider.token()).get_secret_value() == "token-1"
    await eventually(lambda: source.calls == 2)
    await asyncio.sleep(0)  # the failed refresh's done-callback
    clock.advance(200.5)  # expired: the earlier failure had a valid token, so this call fetches
    source.fail = None
    assert (await provider.token()).get_secret_value() == "token-3"
    await provider.close()


async def test_a_cancelled_caller_does_not_cancel_the_shared_fetch(clock: Clock):
    source = ScriptedSource(clock)
    source.release.clear()
    provider = TokenCredentialProvider(source, clock=clock)
    impatient = asyncio.ensure_future(provider.token())
    patient = asyncio.ensure_future(provider.token())
    await eventually(lambda: source.calls == 1)
    impatient.cancel()
    source.release.set()
    assert (await patient).get_secret_value() == "token-1"
    assert impatient.cancelled() and source.calls == 1
    await provider.close()


async def test_close_stops_a_fetch_in_flight_and_closes_the_source(clock: Clock):
    source = ScriptedSource(clock)
    source.release.clear()
    provider = TokenCredentialProvider(source, clock=clock)
    waiter = asyncio.ensure_future(provider.token())
    await eventually(lambda: source.calls == 1)
    await provider.close()
    assert source.closed
    with pytest.raises(asyncio.CancelledError):
        await waiter
    with pytest.raises(RuntimeError, match="closed"):
        await provider.token()


# --------------------------------------------------------------------------------------------------
# The fakes themselves, also from a background thread (as synchronous tests use them)
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def entra_thread() -> Iterator[FakeEntraID]:
    with ServerThread(FakeEntraID()) as running:
        yield running.server


def test_entra_fake_serves_openid_configuration_over_tls(entra_thread: FakeEntraID):
    fake = entra_thread
    url = f"{fake.authority}/{fake.tenant_id}/v2.0/.well-known/openid-configuration"
    with requests.Session() as http:
        document = http.get(url, verify=fake.ca_file, timeout=5).json()
        assert document["token_endpoint"] == fake.token_url
        assert document["authorization_endpoint"].startswith(f"{fake.authority}/{fake.tenant_id}/")
        assert document["issuer"].startswith("https://127.0.0.1:")
        with pytest.raises(requests.exceptions.SSLError):
            http.get(url, timeout=5)  # not trusted without the test CA
        answer = http.post(
            fake.token_url,
            data={"grant_type": "client_credentials", "client_id": fake.client_id, "client_secret": "x", "scope": "a"},
            verify=fake.ca_file,
            timeout=5,
        )
    assert answer.status_code == 401
    body = answer.json()
    assert body["error"] == "invalid_client" and body["error_codes"] == [7000215]
    assert body["error_description"].startswith("AADSTS7000215:")


def test_entra_fake_checks_scope_and_grant(entra_thread: FakeEntraID):
    fake = entra_thread
    form = {"grant_type": "client_credentials", "client_id": fake.client_id, "client_secret": fake.client_secret}
    context = ssl.create_default_context(cafile=fake.ca_file)
    assert context.verify_mode == ssl.CERT_REQUIRED
    with requests.Session() as http:
        no_scope = http.post(fake.token_url, data=form, verify=fake.ca_file, timeout=5)
        bad_scope = http.post(fake.token_url, data={**form, "scope": "user.read"}, verify=fake.ca_file, timeout=5)
        password = http.post(fake.token_url, data={**form, "grant_type": "password"}, verify=fake.ca_file, timeout=5)
    assert (no_scope.status_code, no_scope.json()["error"]) == (400, "invalid_request")
    assert (bad_scope.status_code, bad_scope.json()["error"]) == (400, "invalid_scope")
    assert (password.status_code, password.json()["error"]) == (400, "unsupported_grant_type")
    assert fake.tokens_issued == 0


def test_entra_fake_takes_a_federated_token_as_client_assertion():
    jwt_bearer = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    with ServerThread(FakeEntraID(federated_token=FEDERATED_TOKEN)) as running:
        fake = running.server
        form = {
            "grant_type": "client_credentials",
            "client_id": fake.client_id,
            "client_assertion_type": jwt_bearer,
            "client_assertion": FEDERATED_TOKEN,
            "scope": AZURE_COGNITIVE_SERVICES_SCOPE,
        }

        def post(**changes: str | None) -> requests.Response:
            data = {key: value for key, value in {**form, **changes}.items() if value is not None}
            return http.post(fake.token_url, data=data, verify=fake.ca_file, timeout=5)

        with requests.Session() as http:
            good = post()
            wrong = post(client_assertion="not-the-federated-token")
            bad_type = post(client_assertion_type="urn:ietf:params:oauth:client-assertion-type:saml2-bearer")
            both = post(client_secret=fake.client_secret)
            neither = post(client_assertion=None, client_assertion_type=None)
            fake.federated_token = None  # the app trusts no federated credential
            untrusted = post()
        assert good.status_code == 200 and good.json()["access_token"] == fake.access_token
        assert wrong.status_code == 401
        assert (wrong.json()["error"], wrong.json()["error_codes"]) == ("invalid_client", [700211])
        assert "not-the-federated-token" not in wrong.text
        assert (bad_type.status_code, bad_type.json()["error"]) == (400, "invalid_request")
        assert (both.status_code, both.json()["error"]) == (400, "invalid_request")
        assert (neither.status_code, neither.json()["error_codes"]) == (401, [7000216])
        assert (untrusted.status_code, untrusted.json()["error_codes"]) == (401, [700211])
        assert fake.tokens_issued == 1


def test_google_fake_rejects_a_tampered_assertion(tmp_path: Path):
    from google.oauth2 import service_account

    with ServerThread(FakeGoogleOAuth()) as running:
        fake = running.server
        key_file = fake.write_service_account_file(tmp_path / "sa.json")
        creds = service_account.Credentials.from_service_account_file(str(key_file), scopes=["scope-a"])
        assertion = creds._make_authorization_grant_assertion().decode()
        header, claims, signature = assertion.split(".")
        tampered = f"{header}.{claims[:-4]}AAAA.{signature}"
        with requests.Session() as http:
            good = http.post(fake.token_url, data={"grant_type": fake_grant(), "assertion": assertion}, timeout=5)
            bad = http.post(fake.token_url, data={"grant_type": fake_grant(), "assertion": tampered}, timeout=5)
        assert good.status_code == 200 and good.json()["access_token"] == fake.access_token
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"
        assert fake.tokens_issued == 1


def fake_grant() -> str:
    return "urn:ietf:params:oauth:grant-type:jwt-bearer"
