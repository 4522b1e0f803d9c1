"""Health checks: deployments out of service are re-checked by a probe request, so that a recovered one
comes back without a caller's request as the test, and a still-broken one stays out without one.

Every `interval` seconds (on the injected clock) after its breaker last changed state or was last
checked, each deployment whose breaker is not closed gets one probe:

- open: a probe that gets an answer turns the breaker half-open at once (`health_check_passed`), before
  its cooldown ends; a probe that finds the deployment still failing keeps it open for a new cooldown,
  so no caller is let through as a half-open probe onto a deployment known to be down;
- half-open with no probe in flight: the check is that probe, and closes or reopens the breaker like
  a caller's would. Callers' requests probe too; the check only fills in when none arrive.

So a deployment out of service gets at most one probe request per interval. The probe is the cheapest
request that exercises the same path as traffic (one user word, a few output tokens): a model-listing
endpoint would show that the host answers, not that this deployment serves. What counts as an answer
is what counts for the breaker (`deployment_at_fault`): a 4xx refusal of the probe is an answer, a
5xx, timeout or dropped connection is not.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable

from llm_service.core.config.settings import Deployment
from llm_service.core.llm.dispatch.breaker import REASON_HEALTH_CHECK_FAILED, BreakerState
from llm_service.core.llm.dispatch.pool import DeploymentPool, DeploymentState, deployment_at_fault
from llm_service.core.llm.models import ProviderError

log = logging.getLogger("llm_service.health")

Clock = Callable[[], float]
#: Sends one probe request to a deployment; raises the provider's error when it does not answer.
Probe = Callable[[Deployment], Awaitable[object]]
#: Called with each check's deployment label and verdict (metrics).
Report = Callable[[str, bool], None]
#: Longest real-time pause between looks at which checks are due.
_POLL_CEILING = 1.0


class HealthChecker:
    def __init__(
        self,
        pool: DeploymentPool,
        probe: Probe,
        *,
        interval: float,
        timeout: float,
        clock: Clock,
        report: Report | None = None,
    ) -> None:
        if not 0.0 < interval < math.inf:
            raise ValueError(f"health check interval must be positive and finite, got {interval!r}")
        self._pool = pool
        self._probe = probe
        self._interval = interval
        self._timeout = timeout
        self._clock = clock
        self._report = report
        self._checked: dict[Deployment, float] = {}

    async def run(self) -> None:
        """Check what is due, forever (cancel to stop). The pause between looks is real time, at most a
        second, so that a test's clock moved forward is noticed soon; the checks themselves follow the
        clock."""
        pause = min(self._interval, _POLL_CEILING)
        while True:
            await asyncio.sleep(pause)
            await self.check_due()

    async def check_due(self) -> int:
        """Probe, concurrently, every deployment whose check is due; the number probed."""
        now = self._clock()
        due = [state for state in self._pool.states() if self._due(state, now)]
        for state in due:
            self._checked[state.deployment] = now
        await asyncio.gather(*(self._check(state) for state in due))
        self._forget_closed()
        return len(due)

    def _due(self, state: DeploymentState, now: float) -> bool:
        breaker = state.breaker
        if breaker.state is BreakerState.CLOSED:
            return False
        last = max(breaker.since, self._checked.get(state.deployment, -math.inf))
        return now >= last + self._interval

    async def _check(self, state: DeploymentState) -> None:
        breaker = state.breaker
        half_open = breaker.state is BreakerState.HALF_OPEN
        if half_open and not breaker.allow():
            return  # a caller's request is the probe now
        error: BaseException | None = None
        try:
            async with asyncio.timeout(self._timeout):
                await self._probe(state.deployment)
        except asyncio.CancelledError:
            if half_open:
                breaker.record_cancelled()
            raise
        except Exception as exc:  # whatever the probe met, the deployment did not answer
            error = exc
        ok = error is None or (isinstance(error, ProviderError) and not deployment_at_fault(error))
        if half_open:
            breaker.record_success() if ok else breaker.record_failure()
        elif ok:
            breaker.health_check_passed()
        elif breaker.state is BreakerState.OPEN:
            breaker.trip(REASON_HEALTH_CHECK_FAILED)
        label = self._pool.metric_label(state.deployment)
        if not ok:
            log.warning(
                "health check failed",
                extra={"fields": {"deployment": state.deployment.label, "error": _describe(error)}},
            )
        if self._report is not None:
            self._report(label, ok)

    def _forget_closed(self) -> None:
        """Keep check times only of deployments still out of service (and still known to the pool)."""
        out = {s.deployment for s in self._pool.states() if s.breaker.state is not BreakerState.CLOSED}
        self._checked = {d: at for d, at in self._checked.items() if d in out}


def _describe(error: BaseException | None) -> str:
    if isinstance(error, ProviderError):
        return f"{type(error).__name__} {error.status or ''}".strip()
    return "timeout" if isinstance(error, TimeoutError) else type(error).__name__
