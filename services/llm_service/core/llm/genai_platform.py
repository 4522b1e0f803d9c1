"""The GenAI Platform gateway: an enterprise gateway that can front Azure OpenAI and Vertex AI.

When `GENAI_PLATFORM_ENABLED` is true, the factory gives the Azure OpenAI and Vertex AI clients the
platform's "reach" instead of their own: the platform's URL (its base URL plus a per-provider path
prefix), its bearer token (static, or from an OAuth client-credentials grant) and its attribution
headers (project, and the user: the request's `user` field, else the configured default). The
clients' "talk" (wire translation) is unchanged, and neither client knows the platform exists.

Defaults (each a setting): `Authorization: Bearer <token>`, `X-GenAI-Project-Name: <project>`,
`X-GenAI-User-Id: <user>`; Azure OpenAI under `<base>/azure-openai`, Vertex AI under `<base>/vertex-ai`,
followed by the provider's own path (`/openai/deployments/...`, `/v1/projects/...`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import SecretStr

from llm_service.core.config.constants import ProviderID
from llm_service.core.llm.models import ConfigurationError, InvalidRequestError, LLMRequest

if TYPE_CHECKING:
    from llm_service.core.config.settings import GenAIPlatformSettings
    from llm_service.core.llm.credentials import TokenCredentialProvider

DEFAULT_USER_HEADER = "X-GenAI-User-Id"
DEFAULT_PROJECT_HEADER = "X-GenAI-Project-Name"
DEFAULT_PATHS: Mapping[ProviderID, str] = {
    ProviderID.AZURE_OPENAI: "/azure-openai",
    ProviderID.VERTEX_AI: "/vertex-ai",
}
_OAUTH_FIELDS = ("client_id", "client_secret", "token_url")


def validate_genai_config(settings: GenAIPlatformSettings) -> None:
    """With the platform enabled, raise one ConfigurationError naming every missing variable."""
    if not settings.enabled:
        return
    missing = [settings.env_name(f) for f in ("base_url", "project_name", "user_id") if not getattr(settings, f)]
    oauth_given = [f for f in _OAUTH_FIELDS if getattr(settings, f)]
    if settings.token is None and not oauth_given:
        names = ", ".join(settings.env_name(f) for f in _OAUTH_FIELDS)
        missing.append(f"{settings.env_name('token')} (or the OAuth client: {names})")
    elif settings.token is None:
        missing += [settings.env_name(f) for f in _OAUTH_FIELDS if f not in oauth_given]
    if missing:
        raise ConfigurationError(
            f"{settings.env_name('enabled')} is true but these settings are missing: {'; '.join(missing)}",
            code="genai_platform_misconfigured",
        )


def build_genai_headers(
    user_id: str,
    project_name: str,
    token: str,
    *,
    user_header: str = DEFAULT_USER_HEADER,
    project_header: str = DEFAULT_PROJECT_HEADER,
) -> dict[str, str]:
    """The headers every request through the platform carries: its token and the attribution."""
    return {"Authorization": f"Bearer {token}", project_header: project_name, user_header: user_id}


def resolve_genai_endpoint(
    base_url: str, path: str, provider: ProviderID, *, prefixes: Mapping[ProviderID, str] = DEFAULT_PATHS
) -> str:
    """The platform URL for `path` of `provider`: base URL + the provider's prefix + path."""
    prefix = prefixes.get(provider)
    if prefix is None:
        raise ConfigurationError(f"the GenAI Platform does not front provider {provider.value!r}")
    segments = [base_url.rstrip("/"), prefix.strip("/"), path.lstrip("/")]
    return "/".join(segment for segment in segments if segment)


async def get_genai_token(credentials: SecretStr | TokenCredentialProvider) -> SecretStr:
    """The platform bearer token: the static one, or the OAuth client's (cached, refreshed ahead)."""
    if isinstance(credentials, SecretStr):
        return credentials
    return await credentials.token()


def platform_prefixes(settings: GenAIPlatformSettings) -> dict[ProviderID, str]:
    return {ProviderID.AZURE_OPENAI: settings.azure_openai_path, ProviderID.VERTEX_AI: settings.vertex_ai_path}


class GenAIPlatformCredentialProvider:
    """A CredentialProvider for the platform: its token plus the project and default-user headers.

    `request_headers` (handed to the client as its per-request header hook) puts the request's own
    `user` in the user header when the caller sent one.
    """

    def __init__(self, settings: GenAIPlatformSettings, token: SecretStr | TokenCredentialProvider) -> None:
        validate_genai_config(settings)
        self._token = token
        self._project = settings.project_name or ""
        self._user = settings.user_id or ""
        self._user_header = settings.user_header
        self._project_header = settings.project_header

    async def auth_headers(self) -> Mapping[str, str]:
        token = await get_genai_token(self._token)
        return build_genai_headers(
            self._user,
            self._project,
            token.get_secret_value(),
            user_header=self._user_header,
            project_header=self._project_header,
        )

    def request_headers(self, request: LLMRequest) -> Mapping[str, str]:
        user = request.user
        if not user:
            return {}
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in user):
            # It becomes a header value: a line break there would forge headers.
            raise InvalidRequestError(
                "Invalid 'user': control characters are not allowed.", param="user", code="invalid_value"
            )
        return {self._user_header: user}
