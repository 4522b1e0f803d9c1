"""ProviderID -> a ready client, with its settings and credentials injected.

Clients never read the environment: everything they know comes from here.
"""

from __future__ import annotations

import aiohttp

from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import Settings
from llm_service.core.llm.base import BaseLLMClient
from llm_service.core.llm.credentials import APIKeyCredentialProvider
from llm_service.core.llm.models import ModelNotFoundError
from llm_service.core.llm.openai_client import OpenAIClient
from llm_service.core.llm.openai_compat import OpenAICompatibleClient
from llm_service.core.llm.openrouter_client import OpenRouterClient
from llm_service.core.llm.remote_client import RemoteClient

_CLIENT_CLASSES: dict[ProviderID, type[OpenAICompatibleClient]] = {
    cls.provider: cls for cls in (OpenAIClient, OpenRouterClient, RemoteClient)
}


def supported_providers() -> list[ProviderID]:
    return list(_CLIENT_CLASSES)


def create_client(provider: ProviderID, settings: Settings, session: aiohttp.ClientSession) -> BaseLLMClient:
    cls = _CLIENT_CLASSES.get(provider)
    group = settings.provider_settings(provider)
    if cls is None or group is None:
        raise ModelNotFoundError(f"provider {provider.value!r} is not available yet", code="provider_not_found")
    credentials = APIKeyCredentialProvider(
        group.api_key, env_var=group.env_name("api_key"), required=cls.api_key_required
    )
    return cls(settings=group, credentials=credentials, session=session)


def create_clients(settings: Settings, session: aiohttp.ClientSession) -> dict[ProviderID, BaseLLMClient]:
    """One client per supported provider; unconfigured ones fail on use, naming the setting."""
    return {provider: create_client(provider, settings, session) for provider in _CLIENT_CLASSES}
