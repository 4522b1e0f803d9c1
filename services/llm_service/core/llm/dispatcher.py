"""LLMDispatcher: every chat request passes here between the API edge and a provider client.

It resolves the model (an alias from the profile, or `<provider>/<model>`) to its ordered usable
deployments and tries them in order: a retryable failure before the first streamed chunk fails over
to the next deployment at once, and comes back round (after the backoff, or the upstream's
Retry-After) while attempts remain (`retry.retry_across`). Failovers are counted through the injected
`DispatchObserver`. Rate limits, the bounded queue and circuit breakers compose here next, behind
the same methods.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import Deployment, Settings
from llm_service.core.llm.base import BaseLLMClient
from llm_service.core.llm.models import LLMChunk, LLMRequest, LLMResponse, ModelNotFoundError, ProviderError
from llm_service.core.llm.retry import RetryPolicy, Sleep, retry_across

_PROVIDERS = {p.value: p for p in ProviderID}
T = TypeVar("T")


class DeploymentClients(Protocol):
    """The clients the dispatcher routes to (`factory.ClientRegistry`): by provider, and by deployment
    when a deployment brings its own reach."""

    def __contains__(self, provider: object) -> bool: ...

    def for_deployment(self, deployment: Deployment) -> BaseLLMClient: ...


class DispatchObserver(Protocol):
    """What the dispatcher reports (metrics implement it)."""

    def failover(self, from_deployment: Deployment, to_deployment: Deployment, error: ProviderError) -> None: ...


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
        observer: DispatchObserver | None = None,
    ) -> None:
        self._aliases = settings.aliases
        self._clients = clients
        #: Each alias's deployments that have their settings in place, in order; an alias with none is
        #: neither resolved nor listed.
        self._usable = {
            alias: usable
            for alias, deployments in self._aliases.items()
            if (usable := tuple(d for d in deployments if settings.deployment_configured(d)))
        }
        self._observer = observer
        d = settings.dispatcher
        self._policy = RetryPolicy(
            max_retries=d.max_retries,
            backoff_base=d.retry_backoff_base,
            backoff_max=d.retry_backoff_max,
            max_retry_after=d.retry_max_retry_after,
        )
        self._sleep = sleep
        self._rand = rand

    def resolve(self, model: str) -> tuple[Deployment, ...]:
        """An alias -> its usable deployments in order; `<provider>/<model>` -> that one deployment."""
        deployments = self._aliases.get(model)
        if deployments:
            usable = self._usable.get(model)
            if not usable:
                raise self._unavailable(deployments[0], model)
            return usable
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
        return (self._available(Deployment(provider=provider, model=upstream_model), model),)

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
        """Whether an alias has a deployment with its settings in place (for listing models)."""
        return alias in self._usable

    async def _across(
        self, model: str, call: Callable[[BaseLLMClient, LLMRequest], Awaitable[T]], request: LLMRequest
    ) -> tuple[Deployment, T]:
        def attempt(deployment: Deployment) -> Awaitable[T]:
            upstream_request = dataclasses.replace(request, model=deployment.model)
            return call(self._clients.for_deployment(deployment), upstream_request)

        return await retry_across(
            self.resolve(model),
            attempt,
            self._policy,
            sleep=self._sleep,
            rand=self._rand,
            on_failover=self._observer.failover if self._observer is not None else None,
        )

    async def generate(self, request: LLMRequest) -> tuple[Deployment, LLMResponse]:
        return await self._across(request.model, lambda client, upstream: client.generate(upstream), request)

    async def open_stream(self, request: LLMRequest) -> RoutedStream:
        """Open a stream and wait for its first chunk, failing over or retrying failures before it.

        Errors up to the first chunk raise here, so the API edge can still answer with an HTTP
        status; later errors raise from the returned iterator.
        """

        async def first_chunk(
            client: BaseLLMClient, upstream: LLMRequest
        ) -> tuple[AsyncIterator[LLMChunk], LLMChunk | None]:
            stream = client.generate_stream(upstream)
            try:
                return stream, await anext(stream)
            except StopAsyncIteration:
                return stream, None

        deployment, (stream, first) = await self._across(request.model, first_chunk, request)
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
