"""The deployments' admission state: a circuit breaker and a limiter each, and the slot an attempt holds.

`DeploymentPool.try_take()` hands out a `Slot` on the first deployment (in the order asked, from a
given start) whose breaker admits traffic and whose limits have room; it never blocks (the dispatcher
queues when it gets None). A slot ends exactly once, which records the outcome in the breaker and
frees the limiter's permit:

- `succeeded(usage)`: the deployment answered (a request error such as a context-length 400 is an
  answer too); the TPM window is corrected from the reported usage;
- `failed(error)`: an upstream failure. Failures of the deployment (5xx, connection, timeout, rejected
  credentials) count against its breaker; a 429 does not, it pauses the deployment for the upstream's
  Retry-After instead;
- `abandoned()`: the caller went away; nothing is recorded, the half-open probe slot is freed.

Deployments addressed directly (`<provider>/<model>`) get their state on first use, kept for the most
recently used `max_ad_hoc` of them so that callers cannot grow it without bound.

The limiters come from the `StateBackend` (memory unless replicas share state), which also hears every
breaker transition. While the backend is `local`, `try_take()` decides alone and at once; otherwise
`take()` asks the shared state, in one round trip, and the breakers follow what it says other replicas'
breakers hold open.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import Deployment
from llm_service.core.llm.dispatch.attempt_trace import Attempt, AttemptOutcome
from llm_service.core.llm.dispatch.breaker import (
    REASON_OPENED_ELSEWHERE,
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    Transition,
)
from llm_service.core.llm.dispatch.limits import DeploymentLimiter, Permit, tokens_used
from llm_service.core.llm.dispatch.state import MemoryState, StateBackend, StateUnavailable
from llm_service.core.llm.models import (
    ContentFilterError,
    ProviderAuthError,
    ProviderError,
    RateLimitError,
    UpstreamRequestError,
    Usage,
)

Clock = Callable[[], float]


@dataclass(slots=True)
class DeploymentState:
    deployment: Deployment
    breaker: CircuitBreaker
    limiter: DeploymentLimiter
    #: Its name in metrics: the profile's label, or a bounded one for an ad-hoc deployment.
    metric_label: str

    def snapshot(self) -> dict[str, Any]:
        return {"deployment": self.deployment.label, "breaker": self.breaker.snapshot(), **self.limiter.snapshot()}


@dataclass(slots=True)
class Slot:
    """One admitted attempt on one deployment; ends once (later calls do nothing)."""

    state: DeploymentState
    permit: Permit
    on_end: Callable[[], None]
    #: Let through by a half-open breaker: only probes may close or reopen it.
    probe: bool = False
    ended: bool = field(default=False)
    #: The attempt's trace (when the dispatcher has a tracer), ended with the slot.
    trace: Attempt | None = None

    @property
    def deployment(self) -> Deployment:
        return self.state.deployment

    def succeeded(self, usage: Usage | None = None, outcome: AttemptOutcome | None = None) -> None:
        """The deployment answered; `outcome` describes the answer for the trace (default: the usage)."""
        if self._end():
            self._verdict(ok=True)
            self._release(tokens_used(usage))
            if self.trace is not None:
                self.trace.end(outcome if outcome is not None else AttemptOutcome(usage=usage))

    def failed(self, error: BaseException) -> None:
        if not self._end():
            return
        if isinstance(error, RateLimitError):
            self._verdict(ok=None)  # the deployment is busy (or out of quota), not broken
            if error.retry_after:
                self.state.limiter.pause(error.retry_after)
        else:
            self._verdict(ok=not deployment_at_fault(error))
        self._release(None)
        if self.trace is not None:
            self.trace.end(AttemptOutcome(error=error))

    def abandoned(self) -> None:
        if self._end():
            self._verdict(ok=None)
            self._release(None)
            if self.trace is not None:
                self.trace.end(AttemptOutcome(abandoned=True))

    def _verdict(self, *, ok: bool | None) -> None:
        """Record the outcome; a call let through before its breaker opened says nothing about the
        deployment's recovery, so only probes count while the breaker is not closed."""
        breaker = self.state.breaker
        if not self.probe and breaker.state is not BreakerState.CLOSED:
            return
        if ok is None:
            breaker.record_cancelled()
        elif ok:
            breaker.record_success()
        else:
            breaker.record_failure()

    def _end(self) -> bool:
        if self.ended:
            return False
        self.ended = True
        return True

    def _release(self, used_tokens: int | None) -> None:
        self.permit.release(used_tokens)
        self.on_end()


class DeploymentPool:
    def __init__(
        self,
        policies: Mapping[ProviderID, BreakerPolicy],
        *,
        clock: Clock = time.monotonic,
        on_transition: Callable[[Transition], None] | None = None,
        on_release: Callable[[], None] = lambda: None,
        max_ad_hoc: int = 1024,
        backend: StateBackend | None = None,
    ) -> None:
        self._policies = policies
        self._backend = backend if backend is not None else MemoryState(clock=clock)
        self._clock = clock
        self._on_transition = on_transition
        #: Told when a slot is released (the dispatcher's admission gate, which wakes its lines).
        self.on_release = on_release
        self._max_ad_hoc = max_ad_hoc
        self._known: dict[Deployment, DeploymentState] = {}
        #: The same, by the identity of the profile's own deployment objects (the ones requests are routed
        #: to): found without hashing a deployment, a Python call each time. They live as long as the pool.
        self._known_ids: dict[int, DeploymentState] = {}
        self._ad_hoc: OrderedDict[Deployment, DeploymentState] = OrderedDict()

    def register(self, deployment: Deployment) -> DeploymentState:
        """A deployment from the profile: its state lives as long as the pool."""
        state = self._known.get(deployment)
        if state is None:
            state = self._known[deployment] = self._new(deployment)
            self._known_ids[id(deployment)] = state
        return state

    def state(self, deployment: Deployment) -> DeploymentState:
        known = self._known_ids.get(id(deployment))
        if known is not None and known.deployment is deployment:
            return known
        known = self._known.get(deployment)
        if known is not None:
            return known
        state = self._ad_hoc.get(deployment)
        if state is None:
            state = self._ad_hoc[deployment] = self._new(deployment, ad_hoc=True)
            if len(self._ad_hoc) > self._max_ad_hoc:
                self._evict_one()
        else:
            self._ad_hoc.move_to_end(deployment)
        return state

    def try_take(self, deployments: Sequence[Deployment], tokens: int) -> Slot | None:
        """A slot on the first of `deployments` that admits traffic and has room."""
        for deployment in deployments:
            state = self.state(deployment)
            if state.limiter.room_in(tokens) > 0:
                continue
            admitted = state.breaker.admit()
            if admitted is None:
                continue
            # Counted without asking the limiter again: room_in just said yes, and nothing awaited since.
            return Slot(state, state.limiter.record(tokens), self.on_release, probe=admitted is BreakerState.HALF_OPEN)
        return None

    async def take(self, deployments: Sequence[Deployment], tokens: int) -> Slot | None:
        """`try_take` through the shared state: one round trip for all of `deployments` (their breakers
        asked here first); at once, when the backend is local."""
        if self._backend.local:
            return self.try_take(deployments, tokens)
        states = [state for d in deployments if (state := self.state(d)).breaker.admits()]
        if not states:
            return None
        try:
            acquired = await self._backend.acquire([state.limiter for state in states], tokens)
        except StateUnavailable:
            return self.try_take(deployments, tokens)
        for index, seconds in acquired.opened_elsewhere.items():
            states[index].breaker.trip(REASON_OPENED_ELSEWHERE, seconds)
        if acquired.index is None or acquired.permit is None:
            return None
        state = states[acquired.index]
        admitted = state.breaker.admit()
        if admitted is None:  # its probe slot was taken while this request asked
            acquired.permit.release()
            return None
        return Slot(state, acquired.permit, self.on_release, probe=admitted is BreakerState.HALF_OPEN)

    @property
    def local(self) -> bool:
        """Whether `try_take` decides admission (else `take`, which awaits the shared state)."""
        return self._backend.local

    @property
    def poll_interval(self) -> float:
        """How often a waiting request asks the shared state again (inf: releases here say it all)."""
        return self._backend.poll_interval

    def next_change(self, deployments: Sequence[Deployment], tokens: int) -> float:
        """Seconds until some deployment may take the request without a release: its time-based limits
        have room and its breaker no longer refuses (0: now; inf: only a release can help)."""
        waits = []
        for deployment in deployments:
            state = self.state(deployment)
            room = state.limiter.room_in(tokens)
            if room < float("inf"):
                waits.append(max(room, state.breaker.open_for()))
        return min(waits, default=float("inf"))

    def all_open(self, deployments: Sequence[Deployment]) -> float | None:
        """Seconds until the first of `deployments` half-opens, when every one's breaker is open."""
        waits = []
        for deployment in deployments:
            breaker = self.state(deployment).breaker
            if breaker.state is not BreakerState.OPEN:
                return None
            waits.append(breaker.open_for())
        return min(waits) if waits else None

    def too_large(self, deployments: Sequence[Deployment], tokens: int) -> bool:
        """Whether no deployment's tokens-per-minute limit could ever take `tokens`."""
        return not any(self.state(d).limiter.fits(tokens) for d in deployments)

    def room_in(self, deployments: Sequence[Deployment], tokens: int) -> float:
        """Seconds until a time-based limit of some deployment has room (inf: only a release helps)."""
        return min((self.state(d).limiter.room_in(tokens) for d in deployments), default=float("inf"))

    @property
    def in_flight(self) -> int:
        return sum(s.limiter.in_flight for s in (*self._known.values(), *self._ad_hoc.values()))

    def metric_label(self, deployment: Deployment) -> str:
        """The deployment's name for metrics: its label when the profile names it, else a bounded one."""
        known = self._known_ids.get(id(deployment))
        if known is not None and known.deployment is deployment:
            return known.metric_label
        return deployment.label if deployment in self._known else ad_hoc_label(deployment)

    def states(self) -> list[DeploymentState]:
        return [*self._known.values(), *self._ad_hoc.values()]

    def _new(self, deployment: Deployment, *, ad_hoc: bool = False) -> DeploymentState:
        label = ad_hoc_label(deployment) if ad_hoc else deployment.label
        report = self._on_transition
        if report is not None and ad_hoc:
            report = _renamed(report, label)
        breaker = CircuitBreaker(
            deployment.label,
            self._policies[deployment.provider],
            clock=self._clock,
            on_transition=_told(self._backend, deployment, report),
        )
        return DeploymentState(deployment, breaker, self._backend.limiter(deployment), label)

    def _evict_one(self) -> None:
        """Forget the least recently used ad-hoc deployment that has nothing in flight."""
        for deployment, state in self._ad_hoc.items():
            if state.limiter.in_flight == 0:
                del self._ad_hoc[deployment]
                return


def deployment_at_fault(error: BaseException) -> bool:
    """A failure of the deployment itself (5xx or none at all, a timeout, a dropped connection, rejected
    credentials), as opposed to a refusal of this one request, which is an answer."""
    if not isinstance(error, ProviderError) or isinstance(error, UpstreamRequestError | ContentFilterError):
        return False
    if isinstance(error, ProviderAuthError):
        return True
    return error.status is None or error.status >= HTTPStatus.INTERNAL_SERVER_ERROR


def ad_hoc_label(deployment: Deployment) -> str:
    """How metrics name a deployment addressed directly as `<provider>/<model>`: callers choose those."""
    return f"{deployment.provider.value}/_direct"


def _told(
    backend: StateBackend, deployment: Deployment, report: Callable[[Transition], None] | None
) -> Callable[[Transition], None]:
    """Transitions reported to the state backend, then to `report`."""

    def tell(transition: Transition) -> None:
        backend.breaker_moved(deployment, transition)
        if report is not None:
            report(transition)

    return tell


def _renamed(report: Callable[[Transition], None], name: str) -> Callable[[Transition], None]:
    """Transitions reported under `name` (logs keep the breaker's own, full name)."""
    return lambda transition: report(dataclasses.replace(transition, name=name))
