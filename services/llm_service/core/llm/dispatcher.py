"""LLMDispatcher: every chat request passes here between the API edge and a provider client.

For each request it:
1. resolves the model (an alias from the profile, or `<provider>/<model>`) to its ordered usable
   deployments;
2. takes a slot on the first deployment whose circuit breaker admits traffic and whose limits
   (concurrency, RPM, TPM from an estimate of the request's tokens) have room (`DeploymentPool`);
   with none free, waits in that model's bounded FIFO queue (`dispatch/gate.py`): a full queue or a wait
   past `queue_timeout_seconds` is a 429 with Retry-After, every deployment open-circuited a 503;
3. calls the client; a retryable failure before the first streamed chunk fails over to the next
   deployment at once and comes back round after the backoff or the upstream's Retry-After while
   attempts remain; a request error (context length, content filter) is attempted once;
4. ends the slot on every path (success, error, cancellation, a stream's end or its client leaving),
   recording the outcome in the breaker and freeing the limiter, which wakes the queue.

Breaker transitions and failovers go to the injected `DispatchObserver` (metrics), each upstream attempt
to the injected `AttemptTracer` when there is one (OpenTelemetry). Time comes from the injected clock and
sleep, so tests never wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from llm_service.core.aio import Deadlines
from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import Deployment, Settings
from llm_service.core.llm.base import BaseLLMClient
from llm_service.core.llm.dispatch.attempt_trace import ATTEMPT_HEADERS, AttemptOutcome, AttemptTracer
from llm_service.core.llm.dispatch.breaker import BreakerPolicy, Transition
from llm_service.core.llm.dispatch.deadlines import next_within
from llm_service.core.llm.dispatch.gate import Gate
from llm_service.core.llm.dispatch.health import HealthChecker
from llm_service.core.llm.dispatch.held import HeldStream
from llm_service.core.llm.dispatch.limits import estimate_tokens
from llm_service.core.llm.dispatch.pool import DeploymentPool, Slot
from llm_service.core.llm.dispatch.state import state_backend
from llm_service.core.llm.models import (
    LLMChunk,
    LLMRequest,
    LLMResponse,
    Message,
    ModelNotFoundError,
    ProviderAuthError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitError,
    Role,
    UpstreamRequestError,
)
from llm_service.core.llm.retry import (
    RetryPolicy,
    Sleep,
    close_stream,
    retry_async_generator,
    retry_delay,
    should_retry,
)
from llm_service.core.llm.streaming import Transcript

_PROVIDERS = {p.value: p for p in ProviderID}
#: The provider's code for a request too long for the model's context window (OpenAI and its family).
_CONTEXT_TOO_LONG = "context_length_exceeded"
T = TypeVar("T")


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

    def retried(self, deployment_label: str, error: ProviderError) -> None:
        """An attempt failed and another follows; the label is bounded (`metric_label`)."""
        ...

    def health_checked(self, deployment_label: str, ok: bool) -> None:
        """A health check probed a deployment out of service; `ok`: it answered."""
        ...


@dataclass(slots=True)
class UpstreamTime:
    """Seconds a request spent inside upstream calls (every attempt, up to the answer or first chunk):
    the rest of its time is the gateway's own overhead."""

    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class _Replay:
    max_replays: int
    max_buffer_chunks: int


@dataclass(frozen=True, slots=True)
class _Timeouts:
    request: float
    first_chunk: float
    stream_idle: float


class ChunkStream(Protocol):
    """A stream of chunks that can be closed before its end (ending its slot however far it got)."""

    def __aiter__(self) -> AsyncIterator[LLMChunk]: ...

    async def __anext__(self) -> LLMChunk: ...

    async def aclose(self) -> None: ...


@dataclass(slots=True, weakref_slot=True)
class RoutedStream:
    """An opened stream: the deployment serving it (the latest, after a replay) and its chunks (the
    first already received). `continuing`: the stream continues a partial answer it was given."""

    deployment: Deployment
    chunks: ChunkStream
    continuing: bool = False


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
        tracer: AttemptTracer | None = None,
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
        #: The aliases whose deployments are tried in list order (no priorities), by identity as above:
        #: known once rather than looked for in every request.
        self._in_list_order = {id(key) for key in self._usable.values() if all(d.priority is None for d in key)}
        self._ready_providers = tuple(p for p in settings.configured_providers() if p in clients)
        self._observer = observer
        #: Traces each upstream attempt (OpenTelemetry, when configured); None: no tracing work at all.
        self._tracer = tracer
        d = settings.dispatcher
        self._clock = clock
        self._timeouts = _Timeouts(
            d.request_timeout_seconds, d.first_chunk_timeout_seconds, d.stream_idle_timeout_seconds
        )
        self._budgets = Deadlines(self._timeouts.request)
        #: Rate limits, slots, breaker openings and checkpoints: in memory, or shared by replicas (Redis).
        self.state_backend = state_backend(settings, clock=clock)
        self._pool = DeploymentPool(
            {provider: BreakerPolicy(**d.breaker_settings(provider)) for provider in ProviderID},
            clock=clock,
            on_transition=observer.breaker_transition if observer is not None else None,
            backend=self.state_backend,
        )
        self._gate = Gate(
            self._pool,
            self._usable.values(),
            max_queue_size=d.max_queue_size,
            queue_timeout=d.queue_timeout_seconds,
            clock=clock,
            reject=observer.rejected if observer is not None else None,
        )
        self._pool.on_release = self._gate.capacity_freed
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
        streaming = settings.streaming
        self._replay = _Replay(
            max_replays=streaming.max_stream_replays if streaming.enable_stream_replay else 0,
            max_buffer_chunks=streaming.max_buffer_chunks,
        )
        self._health = (
            HealthChecker(
                self._pool,
                self._probe,
                interval=d.health_check_interval_seconds,
                timeout=min(d.first_chunk_timeout_seconds, d.request_timeout_seconds),
                clock=clock,
                report=observer.health_checked if observer is not None else None,
            )
            if d.health_check_interval_seconds > 0
            else None
        )
        self._health_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the background health checks (in the app's lifespan, on its event loop)."""
        if self._health is not None and self._health_task is None:
            self._health_task = asyncio.get_running_loop().create_task(self._health.run(), name="health-checks")
        self.state_backend.start()

    async def aclose(self) -> None:
        """Stop the health checks (a probe in flight is cancelled) and the budgets' timer."""
        self._budgets.close()
        task, self._health_task = self._health_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.state_backend.aclose()

    async def check_health(self) -> int:
        """Run the health checks that are due now; how many deployments were probed."""
        return await self._health.check_due() if self._health is not None else 0

    async def _probe(self, deployment: Deployment) -> None:
        await self._clients.for_deployment(deployment).generate(
            LLMRequest(model=deployment.model, messages=[Message(role=Role.USER, content="ping")], max_tokens=1)
        )

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

    # ------------------------------------------------------------------ attempts

    async def _run(
        self,
        request: LLMRequest,
        call: Callable[[BaseLLMClient, LLMRequest, Deployment], Awaitable[T]],
        upstream_time: UpstreamTime,
    ) -> tuple[Slot, T]:
        """Attempts over the model's deployments; the slot of the one that answered is returned still open
        (the caller ends it: at once, or when its stream ends).

        A round tries each deployment at most once, in order, skipping what cannot take traffic; a new
        round (after the backoff or the upstream's Retry-After) starts when every deployment was tried
        or the untried ones are all open-circuited.
        """
        deployments = self.resolve(request.model)
        tokens = estimate_tokens(request)
        attempts = max(self._policy.max_retries + 1, len(deployments))
        tried: list[Deployment] = []
        failed: tuple[Deployment, ProviderError] | None = None
        order = self._ordered(deployments)
        for attempt in range(attempts):
            untried = [d for d in order if d not in tried] if tried else order  # neither is changed
            if failed is not None and (not untried or self._pool.all_open(untried) is not None):
                await self._new_round(failed[1], attempt // len(deployments))
                tried.clear()
                untried = list(order)
            slot = await self._gate.admit(deployments, untried, tokens)
            deployment = slot.state.deployment
            if failed is not None and deployment != failed[0] and self._observer is not None:
                self._observer.failover(failed[0], deployment, failed[1])
            tried.append(deployment)
            try:
                model = deployment.model
                # The request as this deployment's upstream knows it (a copy only when the name differs:
                # `replace` re-runs the whole constructor, about 6 µs).
                upstream = request if request.model == model else request.for_model(model)
                named = None
                if self._tracer is not None:
                    trace = slot.trace = self._tracer.attempt(deployment, upstream)
                    if trace.headers:  # for the client's request (a stream's too); reset once it is made
                        named = ATTEMPT_HEADERS.set(trace.headers)
                started = time.perf_counter()
                try:
                    return slot, await call(self._clients.for_deployment(deployment), upstream, deployment)
                finally:
                    upstream_time.seconds += time.perf_counter() - started
                    if named is not None:
                        ATTEMPT_HEADERS.reset(named)
            except ProviderError as error:
                slot.failed(error)
                if isinstance(error, UpstreamRequestError):
                    error.context_fallback = deployment.context_fallback
                if attempt + 1 >= attempts or not _can_move_on(error):
                    raise
                failed = (deployment, error)
                if self._observer is not None:
                    self._observer.retried(self._pool.metric_label(deployment), error)
            except BaseException:
                slot.abandoned()
                raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _ordered(self, deployments: tuple[Deployment, ...]) -> list[Deployment]:
        """Priority order (a deployment's `priority`, else its position); among equal priorities a
        weighted random order, so that traffic splits by weight."""
        if (
            len(deployments) < 2
            or id(deployments) in self._in_list_order
            or all(d.priority is None for d in deployments)
        ):
            return list(deployments)
        ranked: dict[int, list[Deployment]] = {}
        for position, deployment in enumerate(deployments):
            rank = deployment.priority if deployment.priority is not None else position
            ranked.setdefault(rank, []).append(deployment)
        return [d for rank in sorted(ranked) for d in _weighted_order(ranked[rank], self._rand)]

    async def _new_round(self, error: ProviderError, round_index: int) -> None:
        """Coming back to deployments already tried: only for an error worth retrying, after the backoff
        or the upstream's Retry-After (given up when that is longer than the policy allows)."""
        if not should_retry(error, 0, self._policy):
            raise error
        await self._sleep(retry_delay(error, max(round_index - 1, 0), self._policy, self._rand))

    async def _within_budget(
        self,
        request: LLMRequest,
        call: Callable[[BaseLLMClient, LLMRequest, Deployment], Awaitable[T]],
        upstream_time: UpstreamTime | None,
    ) -> tuple[Slot, T]:
        """`_run` within the request's budget (a silent upstream never holds a caller longer), and when a
        deployment refuses the request as too long for its context window and names a `context_fallback`
        alias, the same request on that alias (each alias at most once). One coroutine for both: each
        level a request passes costs it at every suspension."""
        deadline = self._budgets.start()
        upstream_time = upstream_time or UpstreamTime()
        seen = {request.model}
        try:
            while True:
                try:
                    return await self._run(request, call, upstream_time)
                except UpstreamRequestError as error:
                    fallback = error.context_fallback
                    if error.code != _CONTEXT_TOO_LONG or fallback is None or fallback in seen:
                        raise
                    seen.add(fallback)
                    request = request.for_model(fallback)
        except asyncio.CancelledError:
            if deadline is None or not deadline.expired():
                raise
            raise ProviderTimeoutError(
                f"No answer within the request's budget of {self._timeouts.request:g}s.",
                provider=self.resolve(request.model)[0].provider,
                retryable=True,
                code="request_timeout",
            ) from None
        finally:
            self._budgets.finish(deadline)

    async def generate(
        self, request: LLMRequest, upstream_time: UpstreamTime | None = None
    ) -> tuple[Deployment, LLMResponse]:
        slot, response = await self._within_budget(
            request, lambda client, upstream, _: client.generate(upstream), upstream_time
        )
        slot.succeeded(response.usage, AttemptOutcome.of_response(response) if slot.trace is not None else None)
        return slot.deployment, response

    async def open_stream(self, request: LLMRequest, upstream_time: UpstreamTime | None = None) -> RoutedStream:
        """Open a stream and wait for its first chunk, failing over or retrying failures before it.

        Errors up to the first chunk raise here, so the API edge can still answer with an HTTP
        status; later errors raise from the returned iterator. The slot is held until the stream ends.
        With stream replay on, a retryable failure after the first chunk re-establishes the stream
        (`retry_async_generator`): on a deployment declared to accept an assistant prefix the partial
        answer is continued, elsewhere it is re-generated and must match what was sent.
        """
        routed = await self._open(request, upstream_time, None)
        if self._replay.max_replays == 0:
            return routed

        # By a weak reference: `routed` holds the stream that holds this, and a reference cycle a stream
        # would be left to the garbage collector.
        latest = weakref.ref(routed)

        async def reopen(sent: Transcript, error: ProviderError) -> tuple[AsyncIterator[LLMChunk], bool]:
            again = await self._open(request, None, sent)
            if (found := latest()) is not None:
                found.deployment = again.deployment
            return again.chunks, again.continuing

        routed.chunks = retry_async_generator(
            routed.chunks,
            reopen,
            max_buffer_chunks=self._replay.max_buffer_chunks,
            max_replays=self._replay.max_replays,
        )
        return routed

    async def _open(
        self, request: LLMRequest, upstream_time: UpstreamTime | None, sent: Transcript | None
    ) -> RoutedStream:
        """A stream's first attempt (`sent` None), or a new one after a break, continuing `sent` where the
        deployment it lands on accepts an assistant prefix."""
        continuing = False

        async def first_chunk(
            client: BaseLLMClient, upstream: LLMRequest, deployment: Deployment
        ) -> tuple[AsyncIterator[LLMChunk], LLMChunk | None]:
            nonlocal continuing
            continuing = sent is not None and deployment.accepts_assistant_prefix and _continuable(sent)
            if continuing:
                assert sent is not None
                upstream = client.continuation(upstream, sent.text(("content", 0)))
            stream = client.generate_stream(upstream)
            try:
                return stream, await next_within(stream, self._timeouts.first_chunk, client.provider, "first chunk")
            except StopAsyncIteration:
                return stream, None
            except BaseException:
                await close_stream(stream)
                raise

        slot, (stream, first) = await self._within_budget(request, first_chunk, upstream_time)
        if first is None:
            slot.succeeded()
        held = HeldStream(slot, first, stream, idle_timeout=self._timeouts.stream_idle)
        return RoutedStream(slot.deployment, held, continuing)

    # ------------------------------------------------------------------ state

    @property
    def in_flight(self) -> int:
        return self._pool.in_flight

    @property
    def queue_depth(self) -> int:
        return self._gate.depth

    def metric_label(self, deployment: Deployment) -> str:
        return self._pool.metric_label(deployment)

    def ready(self) -> bool:
        """Whether the service can take traffic: some provider is usable. Breaker state stays out of it on
        purpose: upstream trouble is shared by every replica, and pulling them all out of the load
        balancer would turn this service's 503-with-Retry-After into the balancer's bare errors."""
        return bool(self._ready_providers)

    def snapshot(self) -> dict[str, Any]:
        return {
            "in_flight": self.in_flight,
            "queue_depth": self.queue_depth,
            "queues": {"|".join(d.label for d in key): q.snapshot() for key, q in self._gate.waiting().items()},
            "deployments": [state.snapshot() for state in self._pool.states()],
        }


def _continuable(sent: Transcript) -> bool:
    """Whether a partial answer can be given to a provider to continue: text of one choice, no tool
    call begun (a half-written call cannot be handed back as an assistant message)."""
    return sent.choices == {0} and not sent.has_tool_calls and set(sent.channels()) == {("content", 0)}


def _can_move_on(error: ProviderError) -> bool:
    """Whether another deployment may serve after `error`: a retryable failure, and also a refusal tied
    to this deployment alone (its quota is spent, its credentials are rejected) that is not retried on it."""
    return error.retryable or isinstance(error, RateLimitError | ProviderAuthError)


def _weighted_order(deployments: list[Deployment], rand: Callable[[], float]) -> list[Deployment]:
    """A random order in which each deployment comes first with probability weight / total weight."""
    remaining = list(deployments)
    order: list[Deployment] = []
    while remaining:
        point = rand() * sum(d.weight for d in remaining)
        for index, deployment in enumerate(remaining):
            point -= deployment.weight
            if point < 0 or index == len(remaining) - 1:
                order.append(remaining.pop(index))
                break
    return order
