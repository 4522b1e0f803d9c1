"""BaseLLMClient's template method: lazy, once-only, safe under a cold-start stampede."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest
from pydantic import SecretStr
from typing_extensions import override

from llm_service.core.config.settings import OpenAISettings
from llm_service.core.llm.base import UpstreamClient
from llm_service.core.llm.credentials import APIKeyCredentialProvider, CredentialProvider
from llm_service.core.llm.models import ConfigurationError
from llm_service.core.llm.openai_client import OpenAIClient


class SlowCredentials:
    """Yields to the loop while 'fetching', so concurrent first calls really interleave."""

    async def auth_headers(self) -> Mapping[str, str]:
        await asyncio.sleep(0)
        return {"Authorization": "Bearer k"}


class CountingClient(OpenAIClient):
    def __init__(self, credentials: CredentialProvider, **settings) -> None:
        super().__init__(settings=OpenAISettings(**settings), credentials=credentials, session=None)  # type: ignore[arg-type]
        self.instances = 0

    @override
    def _create_client_instance(self, endpoint: str, credentials: CredentialProvider) -> UpstreamClient:
        self.instances += 1
        return super()._create_client_instance(endpoint, credentials)


def test_concurrent_first_requests_initialise_the_client_once() -> None:
    client = CountingClient(SlowCredentials(), api_key="k")

    async def stampede() -> list[UpstreamClient]:
        return await asyncio.gather(*(client._initialize_client() for _ in range(50)))

    results = asyncio.run(stampede())
    assert client.instances == 1
    assert all(r is results[0] for r in results)
    assert results[0].endpoint == "https://api.openai.com/v1"


def test_a_failed_initialisation_is_not_cached_and_names_the_setting() -> None:
    client = CountingClient(APIKeyCredentialProvider(None, env_var="OPENAI_API_KEY"))

    for _ in range(2):
        with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
            asyncio.run(client._initialize_client())
    assert client.instances == 0


def test_missing_base_url_names_its_env_var() -> None:
    client = CountingClient(APIKeyCredentialProvider(SecretStr("k"), env_var="OPENAI_API_KEY"), base_url=None)
    with pytest.raises(ConfigurationError, match="OPENAI_BASE_URL"):
        asyncio.run(client._initialize_client())
