"""LLMDispatcher: every chat request passes here between the API edge and a provider client.

Today it resolves the model (an alias from the profile, or `<provider>/<model>`) to a deployment and
retries retryable failures that happen before the first streamed chunk. Rate limits, the bounded
queue, circuit breakers and failover across deployments compose here next, behind the same methods.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import Deployment, Settings
from llm_service.core.llm.base import BaseLLMClient
from llm_service.core.llm.models import LLMChunk, LLMRequest, LLMResponse, ModelNotFoundError
from llm_service.core.llm.retry import RetryPolicy, Sleep, retry_async

_PROVIDERS = {p.value: p for p in ProviderID}


class DeploymentClients(Protocol):
    """The clients the dispatcher routes to (`factory.ClientRegistry`): by provider, and by deployment
    when a deployment brings its own reach."""

    def __contains__(self, provider: object) -> bool: ...

    def for_deployment(self, deployment: Deployment) -> BaseLLMClient: ...


@dataclass(slots=True)
class RoutedStream:
    """An opened stream: the deployment serving it and its chunks (the first already received)."""

    deployment: Deployment
    chunks: AsyncGenerator[LLMChunk, None]


class LLMDispatcher:
    def __init__(
        self,
        settings: Settings,
        clients: DeploymentClients,
        *,
        sleep: Sleep = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._aliases = settings.aliases
        self._clients = clients
        #: Aliases whose first deployment has its settings in place: the only ones that resolve and are listed.
        self._servable = frozenset(
            alias
            for alias, deployments in self._aliases.items()
            if deployments and settings.deployment_configured(deployments[0])
        )
        d = settings.dispatcher
        self._policy = RetryPolicy(
            max_retries=d.max_retries,
            backoff_base=d.retry_backoff_base,
            backoff_max=d.retry_backoff_max,
            max_retry_after=d.retry_max_retry_after,
        )
        self._sleep = sleep
        self._rand = rand

    def resolve(self, model: str) -> Deployment:
        """An alias -> its first deployment; `<provider>/<model>` -> that deployment."""
        deployments = self._aliases.get(model)
        if deployments:
            if model not in self._servable:
                raise self._unavailable(deployments[0], model)
            return deployments[0]
        prefix, _, upstream_model = model.partition("/")
        provider = _PROVIDERS.get(prefix)
        if provider is None or not upstream_model:
            known = ", ".join(sorted(self._aliases)) or "none defined"
            raise ModelNotFoundError(
                f"The model '{model}' does not exist. Use '<provider>/<model>' with a provider among "
                f"{', '.join(_PROVIDERS)}, or an alias ({known}).",
                code="model_not_found",
                param="model",
            )
        return self._available(Deployment(provider=provider, model=upstream_model), model)

    def _available(self, deployment: Deployment, model: str) -> Deployment:
        """A directly addressed deployment: it needs a client (an unconfigured one names its setting)."""
        if deployment.provider not in self._clients:
            raise self._unavailable(deployment, model)
        return deployment

    @staticmethod
    def _unavailable(deployment: Deployment, model: str) -> ModelNotFoundError:
        return ModelNotFoundError(
            f"The model '{model}' is served by provider '{deployment.provider.value}', "
            "which is not available in this service.",
            code="model_not_found",
            param="model",
        )

    def servable(self, alias: str) -> bool:
        """Whether an alias's first deployment has its settings in place (for listing models)."""
        return alias in self._servable

    def _route(self, request: LLMRequest) -> tuple[Deployment, BaseLLMClient, LLMRequest]:
        deployment = self.resolve(request.model)
        return (
            deployment,
            self._clients.for_deployment(deployment),
            dataclasses.replace(request, model=deployment.model),
        )

    async def generate(self, request: LLMRequest) -> tuple[Deployment, LLMResponse]:
        deployment, client, upstream_request = self._route(request)
        response = await retry_async(
            lambda: client.generate(upstream_request), self._policy, sleep=self._sleep, rand=self._rand
        )
        return deployment, response

    async def open_stream(self, request: LLMRequest) -> RoutedStream:
        """Open a stream and wait for its first chunk, retrying failures that come before it.

        Errors up to the first chunk raise here, so the API edge can still answer with an HTTP
        status; later errors raise from the returned iterator.
        """
        deployment, client, upstream_request = self._route(request)

        async def first_chunk() -> tuple[AsyncIterator[LLMChunk], LLMChunk | None]:
            stream = client.generate_stream(upstream_request)
            try:
                return stream, await anext(stream)
            except StopAsyncIteration:
                return stream, None

        stream, first = await retry_async(first_chunk, self._policy, sleep=self._sleep, rand=self._rand)
        return RoutedStream(deployment, _prepend(first, stream))


async def _prepend(first: LLMChunk | None, rest: AsyncIterator[LLMChunk]) -> AsyncGenerator[LLMChunk, None]:
    try:
        if first is not None:
            yield first
            async for chunk in rest:
                yield chunk
    finally:
        aclose = getattr(rest, "aclose", None)
        if aclose is not None:
            await aclose()
