"""LLMDispatcher: every chat request passes here between the API edge and a provider client.

For each request it:
1. resolves the model (an alias from the profile, or `<provider>/<model>`) to its ordered usable
   deployments;
2. takes a slot on the first deployment whose circuit breaker admits traffic and whose limits
   (concurrency, RPM, TPM from an estimate of the request's tokens) have room (`DeploymentPool`);
   with none free, waits in that model's bounded FIFO queue (`AdmissionQueue`): a full queue or a wait
   past `queue_timeout_seconds` is a 429 with Retry-After, every deployment open-circuited a 503;
3. calls the client; a retryable failure before the first streamed chunk fails over to the next
   deployment at once and comes back round after the backoff or the upstream's Retry-After while
   attempts remain; a request error (context length, content filter) is attempted once;
4. ends the slot on every path (success, error, cancellation, a stream's end or its client leaving),
   recording the outcome in the breaker and freeing the limiter, which wakes the queue.

Breaker transitions and failovers go to the injected `DispatchObserver` (metrics). Time comes from the
injected clock, sleep and timer, so tests never wait.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import Deployment, Settings
from llm_service.core.llm.base import BaseLLMClient
from llm_service.core.llm.dispatch.admission import AdmissionError, AdmissionQueue
from llm_service.core.llm.dispatch.breaker import BreakerPolicy, BreakerState, Transition
from llm_service.core.llm.dispatch.limits import estimate_tokens
from llm_service.core.llm.dispatch.pool import DeploymentPool, DeploymentState, Slot
from llm_service.core.llm.models import (
    DeploymentsUnavailableError,
    LLMChunk,
    LLMRequest,
    LLMResponse,
    ModelNotFoundError,
    OverloadedError,
    ProviderError,
    Usage,
)
from llm_service.core.llm.retry import RetryPolicy, Sleep, retry_delay, should_retry

_PROVIDERS = {p.value: p for p in ProviderID}
T = TypeVar("T")
#: Schedules a call after a delay (the event loop's `call_later`, or a test's).
Timer = Callable[[float, Callable[[], None]], Any]


class DeploymentClients(Protocol):
    """The clients the dispatcher routes to (`factory.ClientRegistry`): by provider, and by deployment
    when a deployment brings its own reach."""

    def __contains__(self, provider: object) -> bool: ...

    def for_deployment(self, deployment: Deployment) -> BaseLLMClient: ...


class DispatchObserver(Protocol):
    """What the dispatcher reports (metrics implement it)."""

    def failover(self, from_deployment: Deployment, to_deployment: Deployment, error: ProviderError) -> None: ...

    def breaker_transition(self, transition: Transition) -> None: ...

    def rejected(self, reason: str) -> None: ...


@dataclass(slots=True)
class RoutedStream:
    """An opened stream: the deployment serving it and its chunks (the first already received)."""

    deployment: Deployment
    chunks: HeldStream


class LLMDispatcher:
    def __init__(
        self,
        settings: Settings,
        clients: DeploymentClients,
        *,
        sleep: Sleep = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        observer: DispatchObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        timer: Timer | None = None,
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
        self._clock = clock
        self._timer = timer
        self._queue_size, self._queue_timeout = d.max_queue_size, d.queue_timeout_seconds
        self._queues: dict[tuple[Deployment, ...], AdmissionQueue[Slot]] = {}
        self._pool = DeploymentPool(
            BreakerPolicy(
                failure_ratio=d.breaker_failure_ratio,
                min_calls=d.breaker_min_calls,
                window_seconds=d.breaker_window_seconds,
                cooldown_seconds=d.breaker_cooldown_seconds,
                half_open_probes=d.breaker_half_open_probes,
            ),
            clock=clock,
            on_transition=observer.breaker_transition if observer is not None else None,
            on_release=self._capacity_freed,
        )
        for deployments in self._usable.values():
            for deployment in deployments:
                self._pool.register(deployment)
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

    # ------------------------------------------------------------------ admission

    def _queue(self, deployments: tuple[Deployment, ...]) -> AdmissionQueue[Slot]:
        """The wait line of requests for these deployments (one per model), made when first needed."""
        queue = self._queues.get(deployments)
        if queue is None:
            queue = AdmissionQueue(max_size=self._queue_size, timeout=self._queue_timeout, clock=self._clock)
            self._queues[deployments] = queue
        return queue

    def _capacity_freed(self) -> None:
        for queue in list(self._queues.values()):
            queue.notify()

    async def _admit(self, deployments: tuple[Deployment, ...], start: int, tokens: int) -> Slot:
        slot = self._pool.try_take(deployments, start, tokens)
        if slot is not None:
            return slot
        open_for = self._pool.all_open(deployments)
        if open_for is not None:
            self._reject("deployments_unavailable")
            raise DeploymentsUnavailableError(
                "Every deployment of this model is failing and temporarily taken out of service.",
                retry_after=max(open_for, 1.0),
            )
        if self._pool.too_large(deployments, tokens):
            self._reject("too_many_tokens")
            raise OverloadedError(
                f"The request (about {tokens} tokens) exceeds the tokens-per-minute limit of every deployment.",
                retry_after=60.0,
                code="tokens_per_minute_exceeded",
            )
        wait = self._pool.room_in(deployments, tokens)
        if self._queue_timeout < wait < math.inf:
            # Only time frees this room (a 429 pause, a full RPM window), and later than a queued caller
            # would wait: say when to come back now rather than hold the connection for nothing.
            self._reject("rate_limited")
            raise OverloadedError(
                "The deployments of this model are rate limited; retry after the time given.", retry_after=wait
            )
        if wait > 0:
            self._wake_later(wait)
        try:
            return await self._queue(deployments).admit(
                lambda: self._pool.try_take(deployments, start, tokens), on_abandoned=Slot.abandoned
            )
        except AdmissionError as exc:
            self._reject("queue_full_or_timeout")
            raise OverloadedError(
                f"The service is at capacity for this model ({exc}); retry after the time given.",
                retry_after=exc.retry_after,
            ) from None

    def _wake_later(self, wait: float) -> None:
        """A time-based limit (RPM/TPM window, a 429 pause) frees room without any release: wake the
        queues then (`inf`: only a release can help, and releases wake them)."""
        if wait < math.inf:
            schedule = self._timer or asyncio.get_running_loop().call_later
            schedule(wait, self._capacity_freed)

    def _reject(self, reason: str) -> None:
        if self._observer is not None:
            self._observer.rejected(reason)

    # ------------------------------------------------------------------ attempts

    async def _run(
        self, request: LLMRequest, call: Callable[[BaseLLMClient, LLMRequest], Awaitable[T]]
    ) -> tuple[Slot, T]:
        """Attempts in order over the model's deployments; the slot of the one that answered is returned
        still open (the caller ends it: at once, or when its stream ends)."""
        deployments = self.resolve(request.model)
        tokens = estimate_tokens(request)
        attempts = max(self._policy.max_retries + 1, len(deployments))
        attempt = 0
        while True:
            slot = await self._admit(deployments, attempt, tokens)
            upstream = dataclasses.replace(request, model=slot.deployment.model)
            try:
                return slot, await call(self._clients.for_deployment(slot.deployment), upstream)
            except ProviderError as error:
                slot.failed(error)
                attempt += 1
                if attempt >= attempts or not error.retryable:
                    raise
                await self._before_next(deployments, attempt, slot.deployment, error)
            except BaseException:
                slot.abandoned()
                raise

    async def _before_next(
        self, deployments: tuple[Deployment, ...], attempt: int, failed: Deployment, error: ProviderError
    ) -> None:
        """Moving on to another deployment is immediate; coming back round waits the backoff or the
        upstream's Retry-After (and gives up when that is longer than the policy allows)."""
        if attempt % len(deployments) == 0:
            if not should_retry(error, 0, self._policy):
                raise error
            await self._sleep(retry_delay(error, attempt // len(deployments) - 1, self._policy, self._rand))
        following = deployments[attempt % len(deployments)]
        if following != failed and self._observer is not None:
            self._observer.failover(failed, following, error)

    async def generate(self, request: LLMRequest) -> tuple[Deployment, LLMResponse]:
        slot, response = await self._run(request, lambda client, upstream: client.generate(upstream))
        slot.succeeded(response.usage)
        return slot.deployment, response

    async def open_stream(self, request: LLMRequest) -> RoutedStream:
        """Open a stream and wait for its first chunk, failing over or retrying failures before it.

        Errors up to the first chunk raise here, so the API edge can still answer with an HTTP
        status; later errors raise from the returned iterator. The slot is held until the stream ends.
        """

        async def first_chunk(
            client: BaseLLMClient, upstream: LLMRequest
        ) -> tuple[AsyncIterator[LLMChunk], LLMChunk | None]:
            stream = client.generate_stream(upstream)
            try:
                return stream, await anext(stream)
            except StopAsyncIteration:
                return stream, None
            except BaseException:
                await _close(stream)
                raise

        slot, (stream, first) = await self._run(request, first_chunk)
        if first is None:
            slot.succeeded()
        return RoutedStream(slot.deployment, HeldStream(slot, first, stream))

    # ------------------------------------------------------------------ state

    @property
    def in_flight(self) -> int:
        return self._pool.in_flight

    @property
    def queue_depth(self) -> int:
        return sum(queue.depth for queue in self._queues.values())

    def deployment_states(self) -> list[DeploymentState]:
        return self._pool.states()

    def ready(self) -> bool:
        """Whether some deployment the profile names, or some configured provider, can take traffic."""
        states = self._pool.states()
        return bool(self._clients) and (not states or any(s.breaker.state is not BreakerState.OPEN for s in states))

    def snapshot(self) -> dict[str, Any]:
        return {
            "in_flight": self.in_flight,
            "queue_depth": self.queue_depth,
            "queues": {"|".join(d.label for d in key): q.snapshot() for key, q in self._queues.items() if q.depth},
            "deployments": [state.snapshot() for state in self._pool.states()],
        }


async def _close(stream: AsyncIterator[LLMChunk]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


class HeldStream:
    """A routed stream holding its deployment slot, which it ends exactly once however the stream ends:
    at its end (success, with the usage seen), on an upstream error (failure), or when closed early or
    never read at all (abandoned) — `aclose()` works on a stream that was never started."""

    def __init__(self, slot: Slot, first: LLMChunk | None, rest: AsyncIterator[LLMChunk]) -> None:
        self._slot = slot
        self._first = first
        self._rest = rest
        self._usage: Usage | None = None
        self._exhausted = first is None

    def __aiter__(self) -> HeldStream:
        return self

    async def __anext__(self) -> LLMChunk:
        chunk = self._first
        if chunk is not None:
            self._first = None
        elif self._exhausted:
            raise StopAsyncIteration
        else:
            try:
                chunk = await anext(self._rest)
            except StopAsyncIteration:
                self._exhausted = True
                self._slot.succeeded(self._usage)
                raise
            except ProviderError as error:
                self._slot.failed(error)
                raise
            except BaseException:
                self._slot.abandoned()
                raise
        self._usage = chunk.usage or self._usage
        return chunk

    async def aclose(self) -> None:
        self._slot.abandoned()  # a no-op when the stream already ended
        await _close(self._rest)
