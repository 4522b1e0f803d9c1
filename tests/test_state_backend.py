"""The state backend protocol without Redis: the memory backend (the default, local and synchronous),
replicas' shares of the limits, a shared limiter's view of the shared state, the pool's shared
admission with a fake backend, the admission queue's line for awaited admissions, and the settings."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

import pytest
from pydantic import ValidationError

from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import Deployment, Settings
from llm_service.core.config.validation import effective_configuration
from llm_service.core.llm.dispatch.admission import AdmissionQueue, QueueFullError, QueueTimeoutError
from llm_service.core.llm.dispatch.breaker import (
    REASON_OPENED_ELSEWHERE,
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    Transition,
)
from llm_service.core.llm.dispatch.limits import DeploymentLimiter, Limits
from llm_service.core.llm.dispatch.pool import DeploymentPool
from llm_service.core.llm.dispatch.shared_limiter import HINT_SECONDS, SharedLimiter
from llm_service.core.llm.dispatch.state import (
    Acquired,
    MemoryCheckpoints,
    MemoryState,
    StateBackend,
    StateUnavailable,
    StreamLog,
    state_backend,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def deployment(model: str = "m", **limits: Any) -> Deployment:
    return Deployment(provider=ProviderID.OPENAI, model=model, **limits)


# --------------------------------------------------------------------------------------------------
# The memory backend
# --------------------------------------------------------------------------------------------------


def test_without_redis_the_backend_is_memory_local_and_never_degraded() -> None:
    backend = state_backend(Settings(demo_mode="off"))
    assert isinstance(backend, MemoryState)
    assert backend.local and not backend.degraded and backend.poll_interval == math.inf
    assert backend.degraded_reason is None
    assert backend.status() == {"backend": "memory", "shared": False, "degraded": False, "reason": None}
    limiter = backend.limiter(deployment(rpm=3))
    assert type(limiter) is DeploymentLimiter and limiter.limits == Limits(rpm=3)


def test_without_redis_each_of_several_replicas_admits_its_share() -> None:
    backend = state_backend(Settings(demo_mode="off", scale_out={"replicas": 4}))
    assert backend.limiter(deployment(rpm=100, max_concurrency=8)).limits == Limits(max_concurrency=2, rpm=25)


def test_memory_acquire_takes_the_first_limiter_with_room() -> None:
    backend = MemoryState(clock=Clock())
    full, free = backend.limiter(deployment(max_concurrency=1)), backend.limiter(deployment("n"))
    assert full.try_acquire(1) is not None
    acquired = asyncio.run(backend.acquire([full, free], 1))
    assert acquired.index == 1 and acquired.permit is not None and acquired.opened_elsewhere == {}
    assert asyncio.run(backend.acquire([full], 1)) == Acquired()


def test_memory_checkpoints_keep_each_its_ttl_and_stay_within_their_bounds() -> None:
    clock = Clock()
    checkpoints = MemoryCheckpoints(max_entries=2, max_bytes=10, clock=clock)
    backend = MemoryState(clock=clock, checkpoints=checkpoints)
    backend.put_checkpoint("short", b"a", 5.0)
    backend.put_checkpoint("long", b"b", 50.0)
    clock.now += 10
    assert asyncio.run(backend.get_checkpoint("short")) is None
    assert asyncio.run(backend.get_checkpoint("long")) == b"b"
    backend.put_checkpoint("big", b"123456789", 50.0)  # 10 bytes in all: "long" still fits
    backend.put_checkpoint("more", b"x", 50.0)  # 11 bytes: the oldest goes
    assert asyncio.run(backend.get_checkpoint("long")) is None
    assert len(checkpoints) == 2


@pytest.mark.parametrize(
    ("limits", "replicas", "share"),
    [
        (Limits(rpm=30, tpm=1000, max_concurrency=4), 1, Limits(rpm=30, tpm=1000, max_concurrency=4)),
        (Limits(rpm=30, tpm=1000, max_concurrency=4), 2, Limits(rpm=15, tpm=500, max_concurrency=2)),
        (Limits(rpm=31, tpm=None, max_concurrency=1), 3, Limits(rpm=10, tpm=None, max_concurrency=1)),
        (Limits(), 5, Limits()),
    ],
)
def test_each_replica_s_share_keeps_them_within_the_limits(limits: Limits, replicas: int, share: Limits) -> None:
    assert limits.share(replicas) == share


# --------------------------------------------------------------------------------------------------
# A shared limiter
# --------------------------------------------------------------------------------------------------


class FakeLink:
    def __init__(self) -> None:
        self.local = False
        self.pauses: list[float] = []
        self.settled: list[tuple[str, bool, int | None]] = []

    def publish_pause(self, limiter: SharedLimiter, seconds: float) -> None:
        self.pauses.append(seconds)

    def settle(self, limiter: SharedLimiter, lease: str, *, free: bool, used_tokens: int | None) -> None:
        self.settled.append((lease, free, used_tokens))


def shared_limiter(clock: Clock, link: FakeLink, **limits: Any) -> SharedLimiter:
    return SharedLimiter(Limits(**limits), keys=("k",) * 5, replicas=2, link=link, clock=clock)


def test_a_shared_limiter_says_what_the_shared_state_said_for_a_moment_then_asks_again() -> None:
    clock, link = Clock(), FakeLink()
    limiter = shared_limiter(clock, link, rpm=30)
    assert limiter.room_in(1) == 0.0  # nothing known: ask
    limiter.learn(40.0)
    clock.now += 0.5
    assert limiter.room_in(1) == pytest.approx(39.5)
    clock.now += HINT_SECONDS
    assert limiter.room_in(1) == 0.0
    limiter.learn(math.inf)
    assert limiter.room_in(1) == math.inf


def test_unreachable_shared_state_leaves_a_shared_limiter_to_its_share() -> None:
    clock, link = Clock(), FakeLink()
    limiter = shared_limiter(clock, link, rpm=30, tpm=100)
    assert limiter.try_acquire(1) is None  # while the shared state answers, only it admits
    link.local = True
    assert [limiter.try_acquire(1) is not None for _ in range(16)] == [True] * 15 + [False]
    assert limiter.room_in(1) == pytest.approx(60.0)
    assert limiter.fits(100) and not limiter.fits(101)  # the whole TPM, not the share
    snapshot = limiter.snapshot()
    assert snapshot["limits"]["rpm"] == 30 and snapshot["replica_limits"]["rpm"] == 15


def test_a_shared_permit_frees_its_lease_once_and_corrects_its_tokens_once() -> None:
    clock, link = Clock(), FakeLink()
    limiter = shared_limiter(clock, link, tpm=1000)
    permit = limiter.granted(50, "lease-1")
    assert limiter.in_flight == 1
    permit.release()
    permit.release(20)
    permit.release(30)
    permit.release()
    assert link.settled == [("lease-1", True, None), ("lease-1", False, 20)]
    assert limiter.in_flight == 0 and permit.tokens == 20


def test_a_pause_is_published_to_the_other_replicas() -> None:
    clock, link = Clock(), FakeLink()
    limiter = shared_limiter(clock, link)
    limiter.pause(7.0)
    limiter.pause(0.0)
    assert link.pauses == [7.0]
    assert limiter.paused_for() == 7.0


# --------------------------------------------------------------------------------------------------
# The pool through a shared backend
# --------------------------------------------------------------------------------------------------


class FakeShared:
    """A backend that is not local: `acquire` answers what the test queued. The whole `StateBackend`
    protocol (test_the_fake_shared_state_has_every_member_of_the_protocol), the rest doing nothing."""

    replicated = True

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.local = False
        self.degraded = False
        self.degraded_reason: str | None = None
        self.poll_interval = 0.1
        self.error_replies: dict[str, int] = {}
        self.answers: list[Acquired | Exception] = []
        self.asked: list[int] = []
        self.moved: list[Transition] = []

    def limiter(self, d: Deployment) -> DeploymentLimiter:
        return DeploymentLimiter(Limits.of(d), clock=self.clock)

    async def acquire(self, limiters: Sequence[DeploymentLimiter], tokens: int) -> Acquired:
        self.asked.append(len(limiters))
        await asyncio.sleep(0)  # a round trip
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            self.local = True
            raise answer
        if answer.index is not None:
            answer.permit = limiters[answer.index].record(tokens)
        return answer

    def breaker_moved(self, d: Deployment, transition: Transition) -> None:
        self.moved.append(transition)

    async def admit_caller(self, caller: str, rpm: int) -> float | None:
        raise StateUnavailable("not shared here")  # as MemoryState: the caller counts on its own

    def put_checkpoint(self, key: str, data: bytes, ttl: float) -> None: ...

    async def get_checkpoint(self, key: str) -> bytes | None:
        return None

    def stream_log(self, *, keep: int, ttl: float) -> StreamLog | None:
        return None

    def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def status(self) -> dict[str, Any]:
        return {}


def test_the_fake_shared_state_has_every_member_of_the_protocol() -> None:
    """Tests are not type-checked: this is the check that the fake stands in for the whole protocol."""
    members = {name for name in vars(StateBackend) if not name.startswith("_")} | set(StateBackend.__annotations__)
    fake = FakeShared(Clock())
    assert {name for name in members if not hasattr(fake, name)} == set()


def shared_pool(clock: Clock) -> tuple[DeploymentPool, FakeShared, list[Deployment]]:
    backend = FakeShared(clock)
    _: StateBackend = backend
    policy = BreakerPolicy(min_calls=1, failure_ratio=1.0, cooldown_seconds=30.0)
    pool = DeploymentPool(dict.fromkeys(ProviderID, policy), clock=clock, backend=backend)
    deployments = [deployment("a"), deployment("b")]
    return pool, backend, deployments


def test_the_pool_asks_the_shared_state_once_for_every_deployment_whose_breaker_admits() -> None:
    clock = Clock()
    pool, backend, (a, b) = shared_pool(clock)
    assert not pool.local and pool.poll_interval == 0.1
    pool.state(a).breaker.trip("test")
    backend.answers.append(Acquired(index=0))
    slot = asyncio.run(pool.take([a, b], 10))
    assert slot is not None and slot.deployment == b and backend.asked == [1]
    assert pool.state(b).limiter.in_flight == 1
    slot.succeeded()
    assert pool.state(b).limiter.in_flight == 0


def test_a_deployment_another_replica_holds_open_is_opened_here_too() -> None:
    clock = Clock()
    pool, backend, (a, b) = shared_pool(clock)
    backend.answers.append(Acquired(index=1, opened_elsewhere={0: 25.0}))
    slot = asyncio.run(pool.take([a, b], 10))
    assert slot is not None and slot.deployment == b
    breaker = pool.state(a).breaker
    assert breaker.state is BreakerState.OPEN and breaker.open_for() == pytest.approx(25.0)
    assert [(t.to_state, t.reason) for t in backend.moved] == [(BreakerState.OPEN, REASON_OPENED_ELSEWHERE)]


def test_shared_state_gone_mid_request_falls_back_to_the_local_limits_at_once() -> None:
    clock = Clock()
    pool, backend, (a, b) = shared_pool(clock)
    backend.answers.append(StateUnavailable("gone"))
    slot = asyncio.run(pool.take([a, b], 10))
    assert slot is not None and slot.deployment == a and pool.local


def test_a_half_open_probe_taken_meanwhile_gives_the_shared_admission_back() -> None:
    clock = Clock()
    pool, backend, (a, _) = shared_pool(clock)
    breaker = pool.state(a).breaker
    breaker.trip("test")
    clock.now += 31
    assert breaker.admits()

    async def scenario() -> Any:
        backend.answers.append(Acquired(index=0))
        asking = asyncio.ensure_future(pool.take([a], 10))
        await asyncio.sleep(0)
        assert breaker.allow()  # another caller took the only probe while this one asked
        return await asking

    assert asyncio.run(scenario()) is None
    assert not breaker.admits() and pool.state(a).limiter.in_flight == 0


def test_breaker_admits_says_what_allow_would_without_taking_a_probe() -> None:
    clock = Clock()
    breaker = CircuitBreaker("d", BreakerPolicy(min_calls=1, cooldown_seconds=10.0), clock=clock)
    assert breaker.admits()
    breaker.record_failure()
    assert not breaker.admits()
    clock.now += 10
    assert breaker.admits() and breaker.admits()
    assert breaker.allow()
    assert not breaker.admits()


# --------------------------------------------------------------------------------------------------
# The line for awaited admissions
# --------------------------------------------------------------------------------------------------


class Remote:
    """Capacity whose releases the queue does not hear of; each try is counted."""

    def __init__(self, free: int = 0) -> None:
        self.free = free
        self.tries = 0

    async def try_take(self) -> int | None:
        self.tries += 1
        await asyncio.sleep(0)
        if self.free == 0:
            return None
        self.free -= 1
        return self.tries


def in_line(scenario: Any, max_size: int = 5, timeout: float = 5.0) -> None:
    """Run `scenario(queue, remote)`: an admission queue, and capacity it does not hear released."""

    async def run_it() -> None:
        await scenario(AdmissionQueue(max_size=max_size, timeout=timeout), Remote())

    asyncio.run(run_it())


def waiting(queue: AdmissionQueue[int], remote: Remote, retry_in: float = 3600.0) -> asyncio.Future[int]:
    """A caller in line for `remote`'s capacity (the head asking again every `retry_in` seconds)."""
    return asyncio.ensure_future(queue.admit_async(remote.try_take, retry_in=lambda: retry_in))


async def lined_up(queue: AdmissionQueue[int], depth: int) -> None:
    """Let the waiters started run until `depth` of them wait in line."""
    for _ in range(1000):
        if queue.depth >= depth:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{queue.depth} waiting, not {depth}")


def test_an_awaited_admission_with_room_does_not_wait_in_line() -> None:
    queue: AdmissionQueue[int] = AdmissionQueue(max_size=2, timeout=5.0)
    remote = Remote(free=1)
    assert asyncio.run(queue.admit_async(remote.try_take, retry_in=lambda: 1.0)) == 1
    assert queue.depth == 0 and queue.admission_rate() > 0


def test_the_head_of_the_line_asks_again_after_retry_in_and_the_others_keep_their_turn() -> None:
    async def scenario(queue: AdmissionQueue[int], remote: Remote) -> None:
        waiters = [waiting(queue, remote, retry_in=0.01) for _ in range(3)]
        for _ in range(100):
            if queue.depth == 3 and remote.tries >= 6:
                break
            await asyncio.sleep(0.01)
        assert queue.depth == 3
        tries = remote.tries
        await asyncio.sleep(0.05)
        assert remote.tries - tries <= 7  # only the head asks, about once per retry_in
        remote.free = 3
        assert len(set(await asyncio.gather(*waiters))) == 3
        assert queue.depth == 0

    in_line(scenario)


def test_a_notify_wakes_the_head_at_once() -> None:
    async def scenario(queue: AdmissionQueue[int], remote: Remote) -> None:
        waiter = waiting(queue, remote)
        await lined_up(queue, 1)
        remote.free = 1
        queue.notify()
        assert await asyncio.wait_for(waiter, 1.0) >= 2

    in_line(scenario)


def test_awaited_admissions_time_out_refuse_when_full_and_may_be_refused_before_waiting() -> None:
    async def scenario(queue: AdmissionQueue[int], remote: Remote) -> None:
        first = waiting(queue, remote)
        await lined_up(queue, 1)
        with pytest.raises(QueueFullError):
            await queue.admit_async(remote.try_take, retry_in=lambda: 3600.0)
        with pytest.raises(QueueTimeoutError):
            await first
        assert queue.depth == 0

        def refuse() -> None:
            raise RuntimeError("not worth waiting")

        with pytest.raises(RuntimeError):
            await queue.admit_async(remote.try_take, retry_in=lambda: 1.0, before_waiting=refuse)
        assert queue.depth == 0

    in_line(scenario, max_size=1, timeout=0.05)


def test_a_cancelled_head_hands_its_turn_to_the_next() -> None:
    async def scenario(queue: AdmissionQueue[int], remote: Remote) -> None:
        head = waiting(queue, remote)
        second = waiting(queue, remote)
        await lined_up(queue, 2)
        remote.free = 1
        head.cancel()
        assert await asyncio.wait_for(second, 1.0) >= 1
        assert head.cancelled() and queue.depth == 0

    in_line(scenario)


def test_sync_and_awaited_waiters_share_one_line_in_order() -> None:
    async def scenario(queue: AdmissionQueue[int], remote: Remote) -> None:
        awaited = waiting(queue, remote)
        await lined_up(queue, 1)
        local_free = [1]

        def take_local() -> int | None:
            return local_free.pop() if local_free else None

        synced = asyncio.ensure_future(queue.admit(take_local))
        await asyncio.sleep(0)
        assert queue.depth == 2
        queue.notify()  # the awaited head is asked first; it finds no room and stays the head
        await asyncio.sleep(0.01)
        assert not synced.done()
        remote.free = 1
        queue.notify()
        assert await asyncio.wait_for(awaited, 1.0) >= 1
        assert await asyncio.wait_for(synced, 1.0) == 1  # served as the next head

    in_line(scenario)


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------


def test_the_redis_url_is_a_secret_never_echoed_by_its_errors(monkeypatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@redis:6379/0")
    monkeypatch.setenv("LLM_REPLICAS", "3")
    settings = Settings(demo_mode="off")
    assert settings.scale_out.redis_url is not None and settings.scale_out.replicas == 3
    assert "hunter2" not in repr(settings) and "hunter2" not in str(effective_configuration(settings))
    with pytest.raises(ValidationError) as caught:
        Settings(demo_mode="off", scale_out={"redis_url": "http://:hunter2@redis:6379"})
    assert "hunter2" not in str(caught.value) and "redis://" in str(caught.value)
    monkeypatch.setenv("REDIS_URL", "")
    assert Settings(demo_mode="off").scale_out.redis_url is None


def test_replicas_must_be_at_least_one() -> None:
    with pytest.raises(ValidationError):
        Settings(demo_mode="off", scale_out={"replicas": 0})
