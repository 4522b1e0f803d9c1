"""ProviderID -> a ready client, with its settings, credentials and reach injected.

Clients never read the environment and never know who fronts their upstream: everything they know
comes from here. Credentials are chosen per provider from its settings group (an API key, an Azure AD
token, GCP credentials); with the GenAI Platform enabled, the providers it fronts get the platform's
endpoint, token and attribution headers instead of their own.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
from pydantic import SecretStr
from typing_extensions import override

from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import (
    AzureOpenAISettings,
    Deployment,
    GenAIPlatformSettings,
    ProviderSettings,
    Settings,
    VertexAISettings,
)
from llm_service.core.llm.azure_openai import AzureOpenAIClient
from llm_service.core.llm.base import BaseLLMClient, RequestHeaders
from llm_service.core.llm.credentials import (
    APIKeyCredentialProvider,
    AzureADCredentialProvider,
    CredentialProvider,
    GCPCredentialProvider,
    OAuthClientCredentialsTokenSource,
    TokenCredentialProvider,
)
from llm_service.core.llm.dispatch.attempt_trace import attempt_headers
from llm_service.core.llm.genai_platform import (
    GenAIPlatformCredentialProvider,
    platform_prefixes,
    resolve_genai_endpoint,
)
from llm_service.core.llm.models import LLMRequest, ModelNotFoundError
from llm_service.core.llm.openai_client import OpenAIClient
from llm_service.core.llm.openrouter_client import OpenRouterClient
from llm_service.core.llm.remote_client import RemoteClient
from llm_service.core.llm.tool_call_store import ToolCallStore
from llm_service.core.llm.vertex import VertexAIClient

Clock = Callable[[], float]

_CLIENT_CLASSES: dict[ProviderID, type[BaseLLMClient]] = {
    cls.provider: cls for cls in (OpenAIClient, OpenRouterClient, AzureOpenAIClient, VertexAIClient, RemoteClient)
}


def supported_providers() -> list[ProviderID]:
    return list(_CLIENT_CLASSES)


@dataclass(slots=True)
class _Context:
    """What building the clients of one process shares: transport, clock, the tool-call store, and the
    token providers to close at shutdown."""

    settings: Settings
    session: aiohttp.ClientSession
    clock: Clock
    tool_calls: ToolCallStore = field(init=False)
    token_providers: list[TokenCredentialProvider] = field(default_factory=list)

    def __post_init__(self) -> None:
        d = self.settings.dispatcher
        self.tool_calls = ToolCallStore(ttl_seconds=d.tool_call_ttl_seconds, max_entries=d.tool_call_max_entries)

    def token_provider(self, provider: TokenCredentialProvider) -> TokenCredentialProvider:
        self.token_providers.append(provider)  # closed with the clients
        return provider


def _api_key(group: ProviderSettings, key_env: str, *, required: bool = True) -> APIKeyCredentialProvider:
    return APIKeyCredentialProvider(group.api_key, env_var=key_env, required=required)


def _azure_credentials(group: AzureOpenAISettings, ctx: _Context, key_env: str) -> CredentialProvider:
    if group.uses_api_key() or not group.is_configured():
        return APIKeyCredentialProvider(group.api_key, env_var=key_env, header="api-key", scheme=None)
    return ctx.token_provider(
        AzureADCredentialProvider(
            provider=ProviderID.AZURE_OPENAI,
            tenant_id=group.tenant_id,
            client_id=group.client_id,
            client_secret=group.client_secret,
            authority_host=group.authority_host,
            scope=group.ad_scope,
            ca_file=group.authority_ca_file,
            clock=ctx.clock,
        )
    )


def _vertex_credentials(group: VertexAISettings, ctx: _Context, key_env: str) -> CredentialProvider:
    if group.api_key is not None or not group.is_configured():
        return _api_key(group, key_env)  # a static access token, sent as a bearer token
    return ctx.token_provider(
        GCPCredentialProvider(provider=ProviderID.VERTEX_AI, credentials_file=group.credentials_file, clock=ctx.clock)
    )


def _own_credentials(
    cls: type[BaseLLMClient], group: ProviderSettings, ctx: _Context, key_env: str
) -> CredentialProvider:
    """`key_env` names the variable to set when the key is missing: the provider's, or a deployment's own."""
    if isinstance(group, AzureOpenAISettings):
        return _azure_credentials(group, ctx, key_env)
    if isinstance(group, VertexAISettings):
        return _vertex_credentials(group, ctx, key_env)
    return _api_key(group, key_env, required=cls.api_key_required)


def _platform(provider: ProviderID, settings: GenAIPlatformSettings, ctx: _Context) -> GenAIPlatformCredentialProvider:
    """The platform's credentials for `provider`: its static token, or its OAuth client's token (one
    per fronted provider, so that a token-endpoint failure names the provider the caller asked for)."""
    token: SecretStr | TokenCredentialProvider
    if settings.token is not None:
        token = settings.token
    else:
        source = OAuthClientCredentialsTokenSource(
            provider=provider,
            token_url=settings.token_url or "",
            client_id=settings.client_id or "",
            client_secret=settings.client_secret or SecretStr(""),
            scope=settings.scope,
            session=ctx.session,
            kind="GenAI Platform OAuth client credentials",
        )
        token = ctx.token_provider(TokenCredentialProvider(source, clock=ctx.clock))
    return GenAIPlatformCredentialProvider(settings, token)


def _create(provider: ProviderID, ctx: _Context, deployment: Deployment | None = None) -> BaseLLMClient:
    """The client of `provider`, or of one `deployment` that brings its own reach (server, key)."""
    cls = _CLIENT_CLASSES.get(provider)
    settings = ctx.settings
    group = settings.provider_settings(provider) if deployment is None else settings.deployment_settings(deployment)
    if cls is None or group is None:
        raise ModelNotFoundError(f"provider {provider.value!r} is not available yet", code="provider_not_found")
    # The variable to set when the key is missing: the provider's, or the deployment's own.
    key_env = (deployment.api_key_env if deployment else None) or group.env_name("api_key")
    platform = ctx.settings.genai_platform
    request_headers: RequestHeaders | None = None
    if platform.fronts(provider):
        endpoint = resolve_genai_endpoint(platform.base_url or "", "", provider, prefixes=platform_prefixes(platform))
        group = group.model_copy(update={"base_url": endpoint})
        gateway = _platform(provider, platform, ctx)
        credentials: CredentialProvider = gateway
        request_headers = gateway.request_headers
    else:
        credentials = _own_credentials(cls, group, ctx, key_env)
    if settings.telemetry.propagates_trace_context():
        request_headers = _with_attempt_headers(request_headers)
    return cls(
        settings=group,
        credentials=credentials,
        session=ctx.session,
        request_headers=request_headers,
        tool_calls=ctx.tool_calls,
        checkpoint_every=ctx.settings.streaming.checkpoint_every_chunks,
    )


def _with_attempt_headers(hook: RequestHeaders | None) -> RequestHeaders:
    """`hook`'s headers (the GenAI Platform's attribution), and the current attempt's trace context."""
    if hook is None:
        return attempt_headers
    own = hook

    def both(request: LLMRequest) -> Mapping[str, str]:
        return {**own(request), **attempt_headers(request)}

    return both


class ClientRegistry(Mapping[ProviderID, BaseLLMClient]):
    """The clients of one process: one per provider, and one per deployment that brings its own reach
    (its own server, Azure resource or key), all built at start-up."""

    def __init__(self, ctx: _Context) -> None:
        #: Every client's tool-call data (one store for the process), for the lifespan to share.
        self.tool_calls = ctx.tool_calls
        self._clients = {provider: _create(provider, ctx) for provider in _CLIENT_CLASSES}
        self._own: dict[Deployment, BaseLLMClient] = {}
        for deployments in ctx.settings.aliases.values():
            for deployment in deployments:
                if deployment.own_reach() and deployment not in self._own:
                    self._own[deployment] = _create(deployment.provider, ctx, deployment)

    def for_deployment(self, deployment: Deployment) -> BaseLLMClient:
        return self._own.get(deployment) or self._clients[deployment.provider]

    @override
    def __getitem__(self, provider: ProviderID) -> BaseLLMClient:
        return self._clients[provider]

    @override
    def __iter__(self) -> Iterator[ProviderID]:
        return iter(self._clients)

    @override
    def __len__(self) -> int:
        return len(self._clients)


@asynccontextmanager
async def provider_clients(
    settings: Settings, session: aiohttp.ClientSession, *, clock: Clock = time.time
) -> AsyncIterator[ClientRegistry]:
    """Every client the profile needs (unconfigured providers fail on use, naming the setting); the
    token providers they hold are closed on exit."""
    ctx = _Context(settings, session, clock)
    try:
        yield ClientRegistry(ctx)
    finally:
        for token_provider in ctx.token_providers:
            await token_provider.close()
