"""Fake token endpoints that the real azure-identity and google-auth code can talk to.

:class:`FakeEntraID` is a Microsoft Entra ID (Azure AD) tenant over HTTPS: azure-identity refuses
non-https authorities, so it serves a certificate for ``127.0.0.1``/``localhost`` signed by a
throwaway CA made at start time (:attr:`FakeEntraID.ca_file` is that CA's PEM, to trust).

:class:`FakeGoogleOAuth` is Google's OAuth token endpoint over plain http (google-auth has no https
check on a service account's ``token_uri``): the JWT-bearer grant of service accounts, checked
against the RSA key it generated (:meth:`FakeGoogleOAuth.write_service_account_file` writes the
matching key file), and the client-credentials grant (the GenAI Platform's OAuth token URL).

Both log every request, count the tokens they issue and misbehave on demand: ``fail_with`` (a
status answered with the provider's error body), ``delay`` (seconds before any answer) and
``expires_in``. Start them in the test's event loop (``await fake.start()``) or in a thread with
:class:`~llm_service.fakes.threaded.ServerThread`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
import shutil
import ssl
import tempfile
import time
import uuid
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import orjson
from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typing_extensions import override

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_CREDENTIALS_GRANT = "client_credentials"
JWT_BEARER_CLIENT_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass
class TokenRequest:
    """One request as a token fake received it. Header names are lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, str]
    jwt_claims: dict[str, Any] | None = field(default=None)  # a verified JWT-bearer assertion's claims


class _LoopbackTokenFake(ABC):
    """Lifecycle, request log and the common knobs of the token fakes."""

    def __init__(self, *, expires_in: int | str, delay: float, fail_with: int | None) -> None:
        self.expires_in = expires_in
        self.delay = delay
        self.fail_with = fail_with
        self.requests: list[TokenRequest] = []
        self._runner: web.AppRunner | None = None
        self._origin: str | None = None
        self._transports: weakref.WeakSet[asyncio.Transport] = weakref.WeakSet()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (0 = any free port) inside the running event loop."""
        if self._runner is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        app = web.Application()
        self._add_routes(app)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        tls = await self._server_tls()
        site = web.TCPSite(runner, host, port, ssl_context=tls)
        await site.start()
        self._runner = runner
        bound_port = int(runner.addresses[0][1])
        url_host = f"[{host}]" if ":" in host else host
        self._origin = f"{'https' if tls else 'http'}://{url_host}:{bound_port}"

    async def close(self) -> None:
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        await runner.cleanup()
        # A closed TLS connection waits for the peer's close_notify (up to 30 s) before its socket
        # is closed; a fake need not be graceful, and a loop closed meanwhile would leak the socket.
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()
        await asyncio.sleep(0)  # the aborted sockets close on the next loop iteration

    @property
    def origin(self) -> str:
        """``scheme://host:port`` of the running fake."""
        if self._origin is None:
            raise RuntimeError(f"{type(self).__name__} not started")
        return self._origin

    def reset(self) -> None:
        """Forget the request log and counters; clear ``fail_with`` and ``delay``."""
        self.requests.clear()
        self.fail_with = None
        self.delay = 0.0

    # Hooks
    @abstractmethod
    def _add_routes(self, app: web.Application) -> None:
        """Register the fake's routes on `app`."""

    async def _server_tls(self) -> ssl.SSLContext | None:
        return None

    # Helpers for handlers
    async def _receive(self, request: web.Request) -> TokenRequest:
        """Record the request (form fields parsed), then wait ``delay`` seconds."""
        form: dict[str, str] = {}
        if request.method == "POST":
            form = {key: value for key, value in (await request.post()).items() if isinstance(value, str)}
        received = TokenRequest(
            method=request.method,
            path=request.path,
            headers={key.lower(): value for key, value in request.headers.items()},
            form=form,
        )
        self.requests.append(received)
        if request.transport is not None:
            self._transports.add(request.transport)
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        return received


def _json(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        content_type="application/json",
        charset="utf-8",
        headers={"Cache-Control": "no-store", "Pragma": "no-cache", **(headers or {})},
    )


# --------------------------------------------------------------------------------------------------
# Entra ID
# --------------------------------------------------------------------------------------------------


class FakeEntraID(_LoopbackTokenFake):
    """One Entra ID tenant with one confidential client (client-credentials grant), over HTTPS.

    Routes: ``GET /{tenant}/v2.0/.well-known/openid-configuration`` and
    ``POST /{tenant}/oauth2/v2.0/token``. Point azure-identity at :attr:`authority` and trust
    :attr:`ca_file`. ``access_token`` may be changed between issues to tell tokens apart.

    The client authenticates with ``client_secret``, or with a client assertion
    (``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer``,
    ``client_assertion=...``) as azure-identity's ``WorkloadIdentityCredential`` sends the
    Kubernetes service-account token it reads from ``AZURE_FEDERATED_TOKEN_FILE``. The assertion is
    accepted when it equals ``federated_token`` (the federated identity credential the app trusts;
    ``None``: the app trusts none), and is otherwise refused as Entra ID refuses an assertion no
    federated credential matches (401 ``invalid_client``, AADSTS700211). Both grants count in
    ``tokens_issued``.
    """

    def __init__(
        self,
        *,
        tenant_id: str = "11111111-2222-3333-4444-555555555555",
        client_id: str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        client_secret: str = "fake-entra-client-secret~0123456789",
        access_token: str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.fake-entra-access-token.fake",
        expires_in: int = 3599,
        delay: float = 0.0,
        fail_with: int | None = None,
        federated_token: str | None = None,
    ) -> None:
        super().__init__(expires_in=expires_in, delay=delay, fail_with=fail_with)
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.client_secret = client_secret
        self.federated_token = federated_token
        self.access_token = access_token
        self.tokens_issued = 0
        self._tls_dir: Path | None = None

    @override
    def reset(self) -> None:
        super().reset()
        self.tokens_issued = 0

    @property
    def authority(self) -> str:
        """``https://127.0.0.1:PORT``: the authority host to give azure-identity."""
        return self.origin

    @property
    def ca_file(self) -> str:
        """Path of the PEM of the CA that signed the server certificate (removed on close)."""
        if self._tls_dir is None:
            raise RuntimeError("FakeEntraID not started")
        return str(self._tls_dir / "ca.pem")

    @property
    def token_url(self) -> str:
        return f"{self.origin}/{self.tenant_id}/oauth2/v2.0/token"

    @property
    def token_requests(self) -> list[TokenRequest]:
        return [r for r in self.requests if r.method == "POST"]

    @property
    def tokens_requested(self) -> int:
        return len(self.token_requests)

    @override
    async def close(self) -> None:
        await super().close()
        directory, self._tls_dir = self._tls_dir, None
        if directory is not None:
            await asyncio.to_thread(shutil.rmtree, directory, True)

    @override
    def _add_routes(self, app: web.Application) -> None:
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._handle_openid_configuration)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._handle_token)

    @override
    async def _server_tls(self) -> ssl.SSLContext:
        self._tls_dir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="fake-entra-"))
        return await asyncio.to_thread(_write_test_pki, self._tls_dir)

    async def _handle_openid_configuration(self, request: web.Request) -> web.Response:
        await self._receive(request)
        tenant = request.match_info["tenant"]
        if tenant != self.tenant_id:
            return self._error(400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found.")
        base = f"{self.origin}/{tenant}"
        return _json(
            {
                "issuer": f"{base}/v2.0",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "jwks_uri": f"{self.origin}/{tenant}/discovery/v2.0/keys",
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "tenant_region_scope": "EU",
            }
        )

    async def _handle_token(self, request: web.Request) -> web.Response:
        received = await self._receive(request)
        if self.fail_with is not None:
            return self._failure(self.fail_with)
        rejection = self._check(request.match_info["tenant"], received.form)
        if rejection is not None:
            return rejection
        self.tokens_issued += 1
        expires = int(self.expires_in)
        return _json(
            {
                "token_type": "Bearer",
                "expires_in": expires,
                "ext_expires_in": expires,
                "access_token": self.access_token,
            }
        )

    def _check(self, tenant: str, form: dict[str, str]) -> web.Response | None:
        """The first reason Entra ID would refuse this client-credentials request, as its response."""
        if tenant != self.tenant_id:
            return self._error(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
        if form.get("grant_type") != CLIENT_CREDENTIALS_GRANT:
            return self._error(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
        if form.get("client_id") != self.client_id:
            return self._error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{form.get('client_id', '')}' was not found in the directory.",
            )
        rejection = self._check_client_authentication(form)
        if rejection is not None:
            return rejection
        scope = form.get("scope", "")
        if not scope:
            return self._error(400, "invalid_request", 900144, "The request body must contain the parameter: 'scope'.")
        if not all(part.endswith("/.default") for part in scope.split()):
            return self._error(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {scope} is not valid. Client credential flows must have a scope "
                "value with /.default suffixed to the resource identifier (application ID URI).",
            )
        return None

    def _check_client_authentication(self, form: dict[str, str]) -> web.Response | None:
        """The client secret, or else the client assertion (a federated token), checked."""
        assertion, assertion_type = form.get("client_assertion"), form.get("client_assertion_type")
        if form.get("client_secret") and (assertion or assertion_type):
            return self._error(
                400, "invalid_request", 90023, "Only one client authentication method may be used in a request."
            )
        if form.get("client_secret"):
            if secrets.compare_digest(form["client_secret"].encode(), self.client_secret.encode()):
                return None
            return self._error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret "
                f"value, not the client secret ID, for a secret added to app '{self.client_id}'.",
            )
        if not assertion:
            return self._error(
                401, "invalid_client", 7000216, "'client_assertion' or 'client_secret' is required for this grant."
            )
        if assertion_type != JWT_BEARER_CLIENT_ASSERTION:
            return self._error(
                400,
                "invalid_request",
                90014,
                f"The required field 'client_assertion_type' is missing or is not '{JWT_BEARER_CLIENT_ASSERTION}'.",
            )
        if self.federated_token is None or not secrets.compare_digest(
            assertion.encode(), self.federated_token.encode()
        ):
            # Never echoes the assertion, so tests can check that no error message quotes it.
            return self._error(
                401,
                "invalid_client",
                700211,
                "No matching federated identity record found for presented assertion issuer. Please check your "
                f"federated identity credential configuration on app '{self.client_id}'.",
            )
        return None

    def _failure(self, status: int) -> web.Response:
        if status >= 500 or status == 429:
            return self._error(status, "temporarily_unavailable", 90033, "A transient error has occurred.")
        return self._error(status, "invalid_request", 90014, "The request is not valid.")

    def _error(self, status: int, error: str, code: int, description: str) -> web.Response:
        trace_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())
        timestamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        return _json(
            {
                "error": error,
                "error_description": f"AADSTS{code}: {description} Trace ID: {trace_id} "
                f"Correlation ID: {correlation_id} Timestamp: {timestamp}",
                "error_codes": [code],
                "timestamp": timestamp,
                "trace_id": trace_id,
                "correlation_id": correlation_id,
                "error_uri": f"{self.origin}/error?code={code}",
            },
            status=status,
        )


def _write_test_pki(directory: Path) -> ssl.SSLContext:
    """A throwaway CA (``ca.pem``) and a server certificate it signs for 127.0.0.1 and localhost;
    returns the server's TLS context."""
    now = datetime.now(UTC)
    valid = {"not_valid_before": now - timedelta(minutes=5), "not_valid_after": now + timedelta(days=2)}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AgentOne FakeEntraID test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder(subject_name=ca_name, issuer_name=ca_name, serial_number=x509.random_serial_number())
        .public_key(ca_key.public_key())
        .not_valid_before(valid["not_valid_before"])
        .not_valid_after(valid["not_valid_after"])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    server_cert = (
        x509.CertificateBuilder(
            subject_name=server_name, issuer_name=ca_name, serial_number=x509.random_serial_number()
        )
        .public_key(server_key.public_key())
        .not_valid_before(valid["not_valid_before"])
        .not_valid_after(valid["not_valid_after"])
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (directory / "server.pem").write_bytes(server_cert.public_bytes(pem))
    (directory / "server.key").write_bytes(
        server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "server.pem", directory / "server.key")
    return context


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


# --------------------------------------------------------------------------------------------------
# Google OAuth
# --------------------------------------------------------------------------------------------------


class FakeGoogleOAuth(_LoopbackTokenFake):
    """Google's OAuth 2.0 token endpoint (``POST /token``) over http.

    Grants: the JWT bearer grant of service accounts (the RS256 assertion is verified against this
    fake's key; ``aud`` is not checked, google-auth always sends ``https://oauth2.googleapis.com/token``)
    counted in ``tokens_issued``; and ``client_credentials`` for ``client_id``/``client_secret``
    counted in ``client_credentials_issued``. The client authenticates with HTTP Basic as RFC 6749
    2.3.1 has it (id and secret each form-urlencoded, joined by ``:``, base64-encoded), or with
    ``client_id``/``client_secret`` form fields; both at once is ``invalid_request``, as the RFC
    forbids more than one method. ``expires_in`` may be a string, as some servers send it.
    """

    def __init__(
        self,
        *,
        access_token: str = "ya29.fake-access-token",
        expires_in: int | str = 3599,
        client_id: str = "genai-platform-client",
        client_secret: str = "genai-platform-client-secret-0123456789",
        service_account_email: str = "llm-gateway@demo-proj.iam.gserviceaccount.com",
        delay: float = 0.0,
        fail_with: int | None = None,
    ) -> None:
        super().__init__(expires_in=expires_in, delay=delay, fail_with=fail_with)
        self.access_token = access_token
        self.client_id = client_id
        self.client_secret = client_secret
        self.service_account_email = service_account_email
        self.tokens_issued = 0
        self.client_credentials_issued = 0
        self.private_key_id = secrets.token_hex(20)
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    @override
    def reset(self) -> None:
        super().reset()
        self.tokens_issued = 0
        self.client_credentials_issued = 0

    @property
    def token_url(self) -> str:
        return f"{self.origin}/token"

    def write_service_account_file(self, path: Path, project_id: str = "demo-proj") -> Path:
        """A service-account key file for this fake's key, with ``token_uri`` = :attr:`token_url`."""
        pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        email = self.service_account_email
        info = {
            "type": "service_account",
            "project_id": project_id,
            "private_key_id": self.private_key_id,
            "private_key": pem.decode("ascii"),
            "client_email": email,
            "client_id": "109876543210987654321",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_url,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{email.replace('@', '%40')}",
            "universe_domain": "googleapis.com",
        }
        path.write_bytes(orjson.dumps(info, option=orjson.OPT_INDENT_2))
        return path

    @override
    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post("/token", self._handle_token)

    async def _handle_token(self, request: web.Request) -> web.Response:
        received = await self._receive(request)
        if self.fail_with is not None:
            error = "internal_failure" if self.fail_with >= 500 else "invalid_request"
            return _json({"error": error, "error_description": "Injected failure."}, status=self.fail_with)
        grant = received.form.get("grant_type")
        if grant == JWT_BEARER_GRANT:
            return self._jwt_bearer(received)
        if grant == CLIENT_CREDENTIALS_GRANT:
            return self._client_credentials(received)
        return _json({"error": "unsupported_grant_type", "error_description": f"Invalid grant_type: {grant}"}, 400)

    def _jwt_bearer(self, received: TokenRequest) -> web.Response:
        claims, problem = self._verify_assertion(received.form.get("assertion", ""))
        if problem is not None:
            return _json({"error": "invalid_grant", "error_description": problem}, 400)
        assert claims is not None
        if not claims.get("scope") and not claims.get("target_audience"):
            return _json(
                {"error": "invalid_scope", "error_description": "Invalid OAuth scope or ID token audience."}, 400
            )
        received.jwt_claims = claims
        self.tokens_issued += 1
        return _json({"access_token": self.access_token, "expires_in": self.expires_in, "token_type": "Bearer"})

    def _verify_assertion(self, assertion: str) -> tuple[dict[str, Any] | None, str | None]:
        """(claims, None) for a valid RS256 assertion by this fake's key, else (None, why not)."""
        parts = assertion.split(".")
        if len(parts) != 3:
            return None, "Invalid JWT: not a compact JWS."
        try:
            header, claims = orjson.loads(_b64url(parts[0])), orjson.loads(_b64url(parts[1]))
            signature = _b64url(parts[2])
        except (ValueError, binascii.Error):
            return None, "Invalid JWT: undecodable."
        if not isinstance(header, dict) or not isinstance(claims, dict) or header.get("alg") != "RS256":
            return None, "Invalid JWT: expected an RS256 JWS."
        if header.get("kid") not in (None, self.private_key_id):
            return None, "Invalid JWT Signature."
        try:
            signed = f"{parts[0]}.{parts[1]}".encode("ascii")
            self._key.public_key().verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return None, "Invalid JWT Signature."
        if claims.get("iss") != self.service_account_email:
            return None, "Invalid grant: account not found"
        now = time.time()
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int | float) or not isinstance(exp, int | float) or exp < now or exp - iat > 3600:
            return None, (
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
                "Check your iat and exp values in the JWT claim."
            )
        return claims, None

    def _client_credentials(self, received: TokenRequest) -> web.Response:
        client_id, client_secret = received.form.get("client_id", ""), received.form.get("client_secret", "")
        scheme, _, credentials = received.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            if "client_secret" in received.form:
                return _json(
                    {"error": "invalid_request", "error_description": "More than one client authentication method."},
                    400,
                )
            try:
                user, colon, password = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
            except (ValueError, binascii.Error):  # UnicodeDecodeError is a ValueError
                user, colon, password = "", "", ""
            if not colon:
                return _json({"error": "invalid_client", "error_description": "Malformed Basic credentials."}, 401)
            client_id, client_secret = unquote_plus(user), unquote_plus(password)
        if client_id != self.client_id:
            return _json({"error": "invalid_client", "error_description": "The OAuth client was not found."}, 401)
        if not secrets.compare_digest(client_secret.encode(), self.client_secret.encode()):
            return _json({"error": "invalid_client", "error_description": "Unauthorized"}, 401)
        self.client_credentials_issued += 1
        body: dict[str, Any] = {
            "access_token": self.access_token,
            "expires_in": self.expires_in,
            "token_type": "Bearer",
        }
        if received.form.get("scope"):
            body["scope"] = received.form["scope"]
        return _json(body)


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
