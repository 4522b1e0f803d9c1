"""Health checks of deployments out of service: which are probed and when (on a fake clock), and what a
probe's verdict does to the breaker. The service-level walk (a primary down, then back) is in
test_dispatch_service.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import Deployment
from llm_service.core.llm.dispatch.breaker import BreakerPolicy, BreakerState, CircuitBreaker, Transition
from llm_service.core.llm.dispatch.health import HealthChecker
from llm_service.core.llm.dispatch.pool import DeploymentPool
from llm_service.core.llm.models import ProviderError, RateLimitError, UpstreamRequestError

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
PRIMARY = Deployment(provider=ProviderID.OPENAI, model="gpt-4o-mini")
OTHER = Deployment(provider=ProviderID.OPENROUTER, model="openai/gpt-4o-mini")
DOWN = ProviderError("upstream 503", provider=ProviderID.OPENAI, status=503, retryable=True)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Rig:
    """A pool of two deployments on a fake clock, a checker every 5 s, and a probe whose answer the
    test sets (None: answers; an exception: raised)."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.transitions: list[Transition] = []
        policy = BreakerPolicy(min_calls=1, failure_ratio=1.0, cooldown_seconds=30.0)
        self.pool = DeploymentPool(
            dict.fromkeys(ProviderID, policy), clock=self.clock, on_transition=self.transitions.append
        )
        for deployment in (PRIMARY, OTHER):
            self.pool.register(deployment)
        self.answer: BaseException | None = None
        self.probed: list[Deployment] = []
        self.reports: list[tuple[str, bool]] = []
        self.checker = HealthChecker(
            self.pool,
            self.probe,
            interval=5.0,
            timeout=0.05,
            clock=self.clock,
            report=lambda label, ok: self.reports.append((label, ok)),
        )

    async def probe(self, deployment: Deployment) -> None:
        self.probed.append(deployment)
        if self.answer is not None:
            raise self.answer

    def breaker(self, deployment: Deployment = PRIMARY) -> CircuitBreaker:
        return self.pool.state(deployment).breaker

    def open_primary(self) -> None:
        self.breaker().record_failure()
        assert self.breaker().state is OPEN

    def check(self) -> int:
        return asyncio.run(self.checker.check_due())


@pytest.fixture
def rig() -> Rig:
    return Rig()


def test_closed_deployments_are_never_probed(rig: Rig) -> None:
    rig.clock.now += 3600
    assert rig.check() == 0
    assert rig.probed == []


def test_an_open_deployment_is_probed_one_interval_after_it_opened_and_not_before(rig: Rig) -> None:
    rig.open_primary()
    rig.clock.now += 4.9
    assert rig.check() == 0
    rig.clock.now += 0.1
    rig.answer = DOWN
    assert rig.check() == 1
    assert rig.probed == [PRIMARY]  # the closed one is left alone


def test_an_answer_turns_an_open_breaker_half_open_before_its_cooldown_ends(rig: Rig) -> None:
    rig.open_primary()
    rig.clock.now += 5
    rig.check()
    assert rig.breaker().state is HALF_OPEN
    assert (rig.transitions[-1].from_state, rig.transitions[-1].reason) == (OPEN, "health_check_passed")
    assert rig.reports == [("openai/gpt-4o-mini", True)]


def test_a_failed_check_keeps_the_breaker_open_for_a_new_cooldown(rig: Rig) -> None:
    rig.open_primary()
    rig.clock.now += 20
    rig.answer = DOWN
    rig.check()
    assert rig.breaker().state is OPEN
    assert rig.breaker().open_for() == pytest.approx(30.0)  # from the check, not from the opening
    rig.clock.now += 15  # past the first cooldown's end: still open, no caller let through
    assert rig.breaker().state is OPEN
    assert rig.reports == [("openai/gpt-4o-mini", False)]


def test_checks_are_one_per_interval_however_often_it_is_asked(rig: Rig) -> None:
    rig.open_primary()
    rig.answer = DOWN
    counts = []
    for _ in range(6):
        rig.clock.now += 2.5
        counts.append(rig.check())
    assert counts == [0, 1, 0, 1, 0, 1]


@pytest.mark.parametrize(
    ("answer", "state", "reason"),
    [(None, CLOSED, "probe_succeeded"), (DOWN, OPEN, "probe_failed")],
    ids=["answers: closed", "fails: open again"],
)
def test_a_check_of_a_half_open_breaker_nobody_probes_is_its_probe(
    rig: Rig, answer: BaseException | None, state: BreakerState, reason: str
) -> None:
    rig.open_primary()
    rig.clock.now += 30  # cooldown over: half-open ...
    assert rig.breaker().state is HALF_OPEN
    rig.clock.now += 5  # ... and no caller came for an interval
    rig.answer = answer
    rig.check()
    assert rig.breaker().state is state
    assert rig.transitions[-1].reason == reason


def test_no_check_while_a_callers_probe_is_in_flight(rig: Rig) -> None:
    rig.open_primary()
    rig.clock.now += 35
    slot = rig.pool.try_take([PRIMARY], 10)  # a caller's request is the half-open probe
    assert slot is not None and slot.probe
    rig.check()
    assert rig.probed == []
    slot.succeeded()
    assert rig.breaker().state is CLOSED


@pytest.mark.parametrize(
    "answer",
    [
        UpstreamRequestError("max_tokens is not supported", provider=ProviderID.OPENAI, status=400),
        RateLimitError("slow down", provider=ProviderID.OPENAI, status=429, retryable=True),
    ],
    ids=["a 400 refusal", "a 429"],
)
def test_a_refusal_of_the_probe_is_an_answer(rig: Rig, answer: ProviderError) -> None:
    rig.open_primary()
    rig.clock.now += 5
    rig.answer = answer
    rig.check()
    assert rig.breaker().state is HALF_OPEN


def test_a_probe_that_never_answers_fails_at_its_timeout(rig: Rig) -> None:
    async def silent(deployment: Deployment) -> None:
        await asyncio.Event().wait()

    rig.checker = HealthChecker(rig.pool, silent, interval=5.0, timeout=0.01, clock=rig.clock)
    rig.open_primary()
    rig.clock.now += 5
    rig.check()
    assert rig.breaker().state is OPEN
    assert rig.breaker().open_for() == pytest.approx(30.0)


def test_a_check_cancelled_mid_probe_frees_the_half_open_probe_slot(rig: Rig) -> None:
    started = asyncio.Event()

    async def slow(deployment: Deployment) -> None:
        started.set()
        await asyncio.Event().wait()

    async def cancel_mid_check(checker: HealthChecker) -> None:
        task = asyncio.ensure_future(checker.check_due())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    rig.open_primary()
    rig.clock.now += 30
    assert rig.breaker().state is HALF_OPEN
    rig.clock.now += 5
    asyncio.run(cancel_mid_check(HealthChecker(rig.pool, slow, interval=5.0, timeout=60, clock=rig.clock)))
    assert rig.pool.try_take([PRIMARY], 10) is not None  # the probe slot is free for a caller


@pytest.mark.parametrize("interval", [0.0, -1.0, float("inf")])
def test_the_interval_must_be_positive_and_finite(rig: Rig, interval: float) -> None:
    probe: Callable[[Deployment], asyncio.Future[None]] = lambda d: asyncio.Future()  # noqa: E731
    with pytest.raises(ValueError, match="interval"):
        HealthChecker(rig.pool, probe, interval=interval, timeout=1.0, clock=rig.clock)
