"""Demo mode: with no provider keys set, the service answers from built-in fixtures.

It starts the fixture-backed fake upstreams (`llm_service.fakes`) inside the service's own event loop
on loopback ports and points every provider (openai, openrouter, azure_openai, vertex_ai, remote) at
them, so a demo request takes exactly the path a real one does (Vertex with a static demo token).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pydantic import SecretStr

from llm_service.core.config.settings import Settings

log = logging.getLogger("llm_service.demo")
DEMO_KEY = "demo-key"
DEMO_AZURE_DEPLOYMENT = "gpt-4o-mini"
DEMO_VERTEX_PROJECT, DEMO_VERTEX_LOCATION = "demo-proj", "us-central1"


@asynccontextmanager
async def demo_upstreams(settings: Settings) -> AsyncIterator[Settings]:
    from llm_service.fakes import FakeUpstream, FakeVertex  # only demo mode pays for the fakes' import

    openai_fake = FakeUpstream("openai", api_key=DEMO_KEY)
    openrouter_fake = FakeUpstream("openrouter", api_key=DEMO_KEY)
    azure_fake = FakeUpstream("azure_openai", api_key=DEMO_KEY, deployments=(DEMO_AZURE_DEPLOYMENT,))
    vertex_fake = FakeVertex(access_token=DEMO_KEY, project=DEMO_VERTEX_PROJECT, location=DEMO_VERTEX_LOCATION)
    remote_fake = FakeUpstream("openai", api_key=None)
    fakes: dict[str, FakeUpstream | FakeVertex] = {
        "openai": openai_fake,
        "openrouter": openrouter_fake,
        "azure_openai": azure_fake,
        "vertex_ai": vertex_fake,
        "remote": remote_fake,
    }
    started: list[FakeUpstream | FakeVertex] = []
    try:
        for fake in fakes.values():
            await fake.start()
            started.append(fake)
        key = SecretStr(DEMO_KEY)
        with_key = {"api_key": key}
        demo = settings.model_copy(
            update={
                "openai": settings.openai.model_copy(update={"base_url": openai_fake.url, **with_key}),
                "openrouter": settings.openrouter.model_copy(update={"base_url": openrouter_fake.url, **with_key}),
                "azure_openai": settings.azure_openai.model_copy(
                    update={"base_url": azure_fake.url, "auth": "api_key", **with_key}
                ),
                "vertex_ai": settings.vertex_ai.model_copy(
                    update={
                        "base_url": vertex_fake.url,
                        "project": DEMO_VERTEX_PROJECT,
                        "location": DEMO_VERTEX_LOCATION,
                        **with_key,
                    }
                ),
                "remote": settings.remote.model_copy(update={"base_url": remote_fake.url, "api_key": None}),
                "genai_platform": settings.genai_platform.model_copy(update={"enabled": False}),
            }
        )
        log.warning(
            "DEMO MODE: no provider is configured, so answers come from the built-in fixtures. Set "
            "OPENAI_API_KEY, OPENROUTER_API_KEY, AZURE_OPENAI_ENDPOINT, VERTEX_PROJECT or REMOTE_LLM_BASE_URL "
            "to use real providers.",
            extra={"fields": {name: fake.url for name, fake in fakes.items()}},
        )
        yield demo
    finally:
        for fake in started:
            await fake.close()
