"""The Redis state backend and its Lua scripts against a real redis-server: replicas together admit no
more than a deployment's RPM, TPM or concurrency, leases come back when a replica dies, breaker openings
and pauses are seen by all, checkpoints keep their TTL, and an unreachable Redis degrades to local
limits and back. The scripts count in an injected clock; nothing waits on real time but the reconnection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
from redis.asyncio import Redis

from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import Deployment
from llm_service.core.llm.dispatch.breaker import (
    REASON_FAILURE_RATIO,
    REASON_HEALTH_CHECK_PASSED,
    REASON_OPENED_ELSEWHERE,
    BreakerState,
    Transition,
)
from llm_service.core.llm.dispatch.redis_state import RedisState
from llm_service.core.llm.dispatch.shared_limiter import SharedLimiter
from llm_service.core.llm.dispatch.state import Acquired, MemoryCheckpoints, StateUnavailable
from redis_server import RedisServer

LEASE = 10.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def server(shared_redis: RedisServer) -> RedisServer:
    """The module's redis-server, emptied for each test."""
    with redis.Redis.from_url(shared_redis.url) as client:
        client.flushall()
    return shared_redis


def deployment(model: str = "gpt-4o-mini", **limits: Any) -> Deployment:
    return Deployment(provider=ProviderID.OPENAI, model=model, **limits)


def backend(url: str, clock: FakeClock, **options: Any) -> RedisState:
    options = {"lease_seconds": LEASE, "retry_seconds": 0.05, "timeout": 0.5, **options}
    return RedisState(
        Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5),
        checkpoints=MemoryCheckpoints(max_entries=100, max_bytes=1 << 20, clock=clock),
        clock=clock,
        server_clock=clock,
        **options,
    )


@contextlib.asynccontextmanager
async def replicas(url: str, clock: FakeClock, count: int = 2, **options: Any) -> AsyncIterator[list[RedisState]]:
    states = [backend(url, clock, **options) for _ in range(count)]
    try:
        yield states
    finally:
        for state in states:
            await state.aclose()


def on_replicas(url: str, scenario: Any, count: int | None = None, **options: Any) -> Any:
    """Run `scenario(clock, *replicas)`: replicas on one Redis (as many as it takes after the clock, unless
    `count` says), sharing a fake clock; closed after it."""
    clock = FakeClock()
    count = count if count is not None else scenario.__code__.co_argcount - 1

    async def run_it() -> Any:
        async with replicas(url, clock, count, **options) as states:
            return await scenario(clock, *states)

    return asyncio.run(run_it())


def shared(state: RedisState, d: Deployment) -> SharedLimiter:
    limiter = state.limiter(d)
    assert isinstance(limiter, SharedLimiter)
    return limiter


async def settled(*states: RedisState) -> None:
    """What the replicas sent in the background has been answered."""
    for state in states:
        await state._link.drain(5.0)


def test_two_replicas_together_admit_no_more_than_the_rpm_and_say_when_the_window_frees(server) -> None:
    async def scenario(clock: FakeClock, a: RedisState, b: RedisState) -> None:
        d = deployment(rpm=30)
        la, lb = shared(a, d), shared(b, d)
        asks = [a.acquire([la], 1) for _ in range(50)] + [b.acquire([lb], 1) for _ in range(50)]
        results: list[Acquired] = await asyncio.gather(*asks)
        assert sum(r.index == 0 for r in results) == 30
        assert la.room_in(1) == pytest.approx(60.0) and lb.room_in(1) == pytest.approx(60.0)
        assert (await b.acquire([lb], 1)).index is None
        clock.advance(60.0)
        assert (await b.acquire([lb], 1)).index == 0  # the first admissions left the window

    on_replicas(server.url, scenario)


def test_tokens_per_minute_count_the_estimate_until_the_usage_corrects_it(server) -> None:
    async def scenario(clock: FakeClock, a: RedisState, b: RedisState) -> None:
        d = deployment(tpm=100)
        la, lb = shared(a, d), shared(b, d)
        first = await a.acquire([la], 60)
        assert first.permit is not None
        assert (await b.acquire([lb], 60)).index is None
        assert lb.room_in(60) == pytest.approx(60.0)
        first.permit.release(10)  # the provider reported 10 tokens
        await settled(a)
        assert (await b.acquire([lb], 60)).index == 0
        assert (await b.acquire([lb], 40)).index is None  # 10 + 60 + 40 > 100

    on_replicas(server.url, scenario)


def test_the_tpm_wait_is_found_past_the_first_batch_of_admissions(server) -> None:
    async def scenario(clock: FakeClock, a: RedisState, b: RedisState) -> None:
        d = deployment(tpm=300)
        start = clock.now
        for _ in range(250):
            assert (await a.acquire([shared(a, d)], 1)).index == 0
            clock.advance(0.01)
        lb = shared(b, d)
        assert (await b.acquire([lb], 280)).index is None
        # 250 + 280 - 300 = 230 tokens must leave: the 230th admission's, at start + 2.29 s
        assert lb.room_in(280) == pytest.approx(start + 2.29 + 60 - clock.now, abs=1e-6)

    on_replicas(server.url, scenario)


def test_concurrency_is_shared_and_a_release_frees_a_slot_for_any_replica(server) -> None:
    async def scenario(clock: FakeClock, a: RedisState, b: RedisState) -> None:
        d = deployment(max_concurrency=2)
        la, lb = shared(a, d), shared(b, d)
        held = [await a.acquire([la], 1), await b.acquire([lb], 1)]
        assert [h.index for h in held] == [0, 0]
        assert (await b.acquire([lb], 1)).index is None
        assert lb.room_in(1) == math.inf  # only a release can help
        assert held[0].permit is not None
        held[0].permit.release()
        await settled(a)
        assert (await b.acquire([lb], 1)).index == 0
        assert a.status()["leases_held"] == 0 and b.status()["leases_held"] == 2

    on_replicas(server.url, scenario)


def test_the_slots_of_a_replica_that_died_come_back_when_their_leases_expire(server) -> None:
    async def scenario(clock: FakeClock, b: RedisState) -> None:
        d = deployment(max_concurrency=2)
        dead = backend(server.url, clock)
        assert [(await dead.acquire([shared(dead, d)], 1)).index for _ in range(2)] == [0, 0]
        await dead.aclose()  # gone without releasing: no renewal, no release
        lb = shared(b, d)
        assert (await b.acquire([lb], 1)).index is None
        clock.advance(LEASE - 0.5)
        assert (await b.acquire([lb], 1)).index is None
        clock.advance(1.0)
        assert [(await b.acquire([lb], 1)).index for _ in range(3)] == [0, 0, None]

    on_replicas(server.url, scenario)


def test_a_renewed_lease_outlives_its_first_expiry(server) -> None:
    async def scenario(clock: FakeClock, a: RedisState, b: RedisState) -> None:
        d = deployment(max_concurrency=1)
        assert (await a.acquire([shared(a, d)], 1)).index == 0
        clock.advance(8.0)
        await a._renew()  # what the background loop does every third of the lease
        clock.advance(8.0)
        lb = shared(b, d)
        assert (await b.acquire([lb], 1)).index is None
        clock.advance(2.5)
        assert (await b.acquire([lb], 1)).index == 0

    on_replicas(server.url, scenario)


def test_the_first_candidate_with_room_is_taken_and_the_others_report_why_not(server) -> None:
    async def scenario(clock: FakeClock, a: RedisState, b: RedisState) -> None:
        busy, free = deployment("busy", max_concurrency=1), deployment("free", rpm=5)
        assert (await a.acquire([shared(a, busy)], 1)).index == 0
        lb_busy, lb_free = shared(b, busy), shared(b, free)
        acquired = await b.acquire([lb_busy, lb_free], 1)
        assert acquired.index == 1 and acquired.opened_elsewhere == {}
        assert lb_busy.room_in(1) == math.inf

    on_replicas(server.url, scenario)


def transition(d: Deployment, to_state: BreakerState, reason: str, open_for: float = 0.0) -> Transition:
    return Transition(d.label, BreakerState.CLOSED, to_state, reason, 1.0, 2, 0.0, open_for=open_for)


def test_a_breaker_opened_on_one_replica_holds_the_deployment_open_for_all(server) -> None:
    async def scenario(clock: FakeClock, a: RedisState, b: RedisState) -> None:
        d, other = deployment("primary"), deployment("other")
        a.breaker_moved(d, transition(d, BreakerState.OPEN, REASON_FAILURE_RATIO, 30.0))
        b.breaker_moved(other, transition(other, BreakerState.OPEN, REASON_OPENED_ELSEWHERE, 30.0))
        await settled(a, b)
        refused = await b.acquire([shared(b, d)], 1)
        assert refused.index is None and refused.opened_elsewhere == {0: pytest.approx(30.0)}
        assert (await a.acquire([shared(a, other)], 1)).index == 0  # a follower does not republish
        clock.advance(10.0)
        assert (await b.acquire([shared(b, d)], 1)).opened_elsewhere == {0: pytest.approx(20.0)}
        a.breaker_moved(d, transition(d, BreakerState.HALF_OPEN, REASON_HEALTH_CHECK_PASSED))
        await settled(a)
        assert (await b.acquire([shared(b, d)], 1)).index == 0  # probes may go through everywhere

    on_replicas(server.url, scenario)


def test_an_upstream_429_pauses_the_deployment_on_every_replica(server) -> None:
    async def scenario(clock: FakeClock, a: RedisState, b: RedisState) -> None:
        d = deployment()
        shared(a, d).pause(5.0)
        await settled(a)
        lb = shared(b, d)
        assert (await b.acquire([lb], 1)).index is None
        assert lb.room_in(1) == pytest.approx(5.0)
        clock.advance(5.0)
        assert (await b.acquire([lb], 1)).index == 0

    on_replicas(server.url, scenario)


def test_checkpoints_are_shared_with_their_ttl(server) -> None:
    async def scenario(clock: FakeClock, a: RedisState, b: RedisState) -> None:
        a.put_checkpoint("stream-1", b"chunks so far", 30.0)
        await settled(a)
        assert await b.get_checkpoint("stream-1") == b"chunks so far"
        assert await b.get_checkpoint("stream-2") is None

    on_replicas(server.url, scenario)
    with redis.Redis.from_url(server.url) as client:
        assert 0 < client.pttl("llm:checkpoint:stream-1") <= 30_000


def test_a_burst_of_admissions_is_one_pipeline_and_exact(server, monkeypatch) -> None:
    async def scenario(clock: FakeClock, a: RedisState) -> int:
        pipelines = 0
        send = a._link._pipeline

        async def counted(commands: list[Any]) -> list[Any]:
            nonlocal pipelines
            pipelines += 1
            return await send(commands)

        monkeypatch.setattr(a._link, "_pipeline", counted)
        limiter = shared(a, deployment(rpm=150, max_concurrency=1000))
        results = await asyncio.gather(*(a.acquire([limiter], 1) for _ in range(200)))
        assert sum(r.index == 0 for r in results) == 150
        return pipelines

    assert on_replicas(server.url, scenario) == 1


def test_a_caller_cancelled_while_asking_gives_its_slot_back(server) -> None:
    async def scenario(clock: FakeClock, a: RedisState, b: RedisState) -> None:
        d = deployment(max_concurrency=1)
        asking = asyncio.ensure_future(a.acquire([shared(a, d)], 1))
        await asyncio.sleep(0)  # the request is on its way
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking
        await settled(a)
        assert (await b.acquire([shared(b, d)], 1)).index == 0
        assert a.status()["leases_held"] == 0

    on_replicas(server.url, scenario)


async def eventually(predicate: Any, seconds: float = 5.0) -> bool:
    for _ in range(int(seconds / 0.02)):
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())


def test_an_unreachable_redis_degrades_to_local_limits_once_and_comes_back(redis_server, caplog) -> None:
    caplog.set_level(logging.INFO, logger="llm_service.state")

    async def scenario(clock: FakeClock, a: RedisState) -> None:
        d = deployment(max_concurrency=4)
        limiter = shared(a, d)
        assert (await a.acquire([limiter], 1)).index == 0 and not a.degraded
        redis_server.stop()
        for _ in range(3):
            with pytest.raises(StateUnavailable):
                await a.acquire([limiter], 1)
        assert a.degraded and a.local and a.status()["degraded"] and a.poll_interval == math.inf
        assert a.degraded_reason == "unreachable" and a.status()["reason"] == "unreachable"
        with pytest.raises(StateUnavailable, match=r"^shared state unreachable$"):
            await a.admit_caller("key", 10)
        a.put_checkpoint("s", b"kept here meanwhile", 30.0)
        assert await a.get_checkpoint("s") == b"kept here meanwhile"
        redis_server.start()
        assert await eventually(lambda: not a.degraded)
        assert a.degraded_reason is None and a.status()["reason"] is None
        assert (await a.acquire([limiter], 1)).index == 0  # the scripts are loaded again
        assert await a.get_checkpoint("s") == b"kept here meanwhile"  # found locally

    on_replicas(redis_server.url, scenario)
    messages = [r.getMessage() for r in caplog.records if r.name == "llm_service.state"]
    assert messages == [
        "shared state unreachable: serving on this replica's share of the limits",
        "shared state reachable again: limits shared",
    ]
    assert "redis://" not in caplog.text


def test_leases_held_across_a_redis_restart_are_renewed_back_into_it(redis_server) -> None:
    async def scenario(clock: FakeClock, a: RedisState, b: RedisState) -> None:
        d = deployment(max_concurrency=1)
        assert (await a.acquire([shared(a, d)], 1)).index == 0
        redis_server.stop()
        redis_server.start()  # empty: the lease is gone, until a's renewal puts it back
        with redis.Redis.from_url(redis_server.url) as client:
            assert await eventually(lambda: client.zcard("llm:slots:openai/gpt-4o-mini") == 1)
        lb = shared(b, d)
        assert (await b.acquire([lb], 1)).index is None

    on_replicas(redis_server.url, scenario, lease_seconds=0.3)
