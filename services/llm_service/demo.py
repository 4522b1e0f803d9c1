"""Demo mode: with no provider keys set, the service answers from built-in fixtures.

It starts the fixture-backed fake upstreams (`llm_service.fakes`) inside the service's own event loop
on loopback ports and points the openai, openrouter and remote providers at them, so a demo request
takes exactly the path a real one does.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pydantic import SecretStr

from llm_service.core.config.settings import Settings

log = logging.getLogger("llm_service.demo")
DEMO_KEY = "demo-key"


@asynccontextmanager
async def demo_upstreams(settings: Settings) -> AsyncIterator[Settings]:
    from llm_service.fakes import FakeUpstream  # only demo mode pays for the fakes' import

    openai_fake = FakeUpstream("openai", api_key=DEMO_KEY)
    openrouter_fake = FakeUpstream("openrouter", api_key=DEMO_KEY)
    remote_fake = FakeUpstream("openai", api_key=None)
    started: list[FakeUpstream] = []
    try:
        for fake in (openai_fake, openrouter_fake, remote_fake):
            await fake.start()
            started.append(fake)
        key = SecretStr(DEMO_KEY)
        demo = settings.model_copy(
            update={
                "openai": settings.openai.model_copy(update={"base_url": openai_fake.url, "api_key": key}),
                "openrouter": settings.openrouter.model_copy(update={"base_url": openrouter_fake.url, "api_key": key}),
                "remote": settings.remote.model_copy(update={"base_url": remote_fake.url, "api_key": None}),
            }
        )
        log.warning(
            "DEMO MODE: no provider API keys are set, so answers come from the built-in fixtures. "
            "Set OPENAI_API_KEY, OPENROUTER_API_KEY or REMOTE_LLM_BASE_URL to use real providers.",
            extra={
                "fields": {
                    "openai": openai_fake.url,
                    "openrouter": openrouter_fake.url,
                    "remote": remote_fake.url,
                }
            },
        )
        yield demo
    finally:
        for fake in started:
            await fake.close()
