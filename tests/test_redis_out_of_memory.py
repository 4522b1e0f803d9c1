"""A Redis at its `maxmemory` under `noeviction`, on a real redis-server: it answers writes with an error
while the link is fine. A background write so refused (a checkpoint or tool call's data, a stream event, a
breaker hold) is lost, counted and warned of once, not per write, and the limits stay shared; an
admission so refused serves on the replica's share until Redis takes writes again, without coming back
in between; once memory is freed, writes go through. The clock is injected; nothing waits on real time."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis

from llm_service.core.llm.dispatch.breaker import REASON_FAILURE_RATIO, BreakerState
from llm_service.core.llm.dispatch.redis_link import link_down
from llm_service.core.llm.dispatch.redis_state import ERROR_LOG_SECONDS, MAX_RETRY_SECONDS, RedisState
from llm_service.core.llm.dispatch.state import MemoryCheckpoints, StateUnavailable
from redis_server import RedisServer
from test_redis_state import FakeClock, deployment, on_replicas, settled, shared, transition

REFUSED = "shared state answered a command with an error: its data is lost, limits stay shared"
DEGRADED = "shared state refuses the limits' writes: serving on this replica's share of the limits"
FILLER = 32  # values of 64 KB: 2 MB


class FullRedis(RedisServer):
    """A redis-server that can be made full: `fill()` holds 2 MB of filler with `maxmemory` 1 MB under what
    it then uses (`noeviction`: every write that needs memory is refused); `free()` deletes the filler."""

    def fill(self) -> None:
        with redis.Redis.from_url(self.url) as client:
            client.config_set("maxmemory-policy", "noeviction")
            for i in range(FILLER):
                client.set(f"filler:{i}", b"x" * 65536)
            client.config_set("maxmemory", client.info("memory")["used_memory"] - (1 << 20))
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                client.set("one-more", b"x")

    def free(self) -> None:
        with redis.Redis.from_url(self.url) as client:
            client.delete(*(f"filler:{i}" for i in range(FILLER)))
            client.set("one-more", b"x")  # taken again


@pytest.fixture
def full_redis(tmp_path: Path) -> Iterator[FullRedis]:
    with FullRedis(tmp_path) as server:
        yield server


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "llm_service.state"]


@pytest.mark.parametrize(
    ("error", "down"),
    [
        (redis.exceptions.ConnectionError("Connection refused"), True),
        (redis.exceptions.TimeoutError("Timeout reading from socket"), True),
        (OSError("Network is unreachable"), True),
        (ConnectionError("the link to Redis is closed"), True),
        (TimeoutError(), True),
        (redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), False),
        (redis.exceptions.ResponseError("Error running script: -OOM command not allowed"), False),  # Redis 6
        (redis.exceptions.ReadOnlyError("You can't write against a read only replica."), False),
    ],
)
def test_only_a_failing_link_counts_as_redis_down_not_an_error_answer(error: Exception, down: bool) -> None:
    assert link_down(error) is down


def test_error_answers_are_counted_warned_of_once_a_minute_per_class_and_leave_the_state_shared(caplog) -> None:
    caplog.set_level(logging.INFO, logger="llm_service.state")
    clock = FakeClock()
    client = Redis.from_url("redis://127.0.0.1:1/0")  # never connected: only the reports are looked at
    state = RedisState(client, checkpoints=MemoryCheckpoints(max_entries=1, max_bytes=1, clock=clock), clock=clock)
    full = redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
    for _ in range(100):
        state._failed(full)
    state._failed(redis.exceptions.ReadOnlyError("You can't write against a read only replica."))
    clock.advance(ERROR_LOG_SECONDS - 1)
    state._failed(full)
    assert messages(caplog) == [REFUSED, REFUSED] and not state.degraded and not state.local
    clock.advance(1)
    state._failed(full)
    assert messages(caplog) == [REFUSED] * 3 and not state.degraded
    assert [r.fields["error"] for r in caplog.records] == ["OutOfMemoryError", "ReadOnlyError", "OutOfMemoryError"]
    assert caplog.records[-1].fields["error_replies"] == 102
    assert state.error_replies == {"OutOfMemoryError": 102, "ReadOnlyError": 1}
    state._failed(redis.exceptions.ConnectionError("Connection refused"))
    assert state.degraded and state.error_replies == {"OutOfMemoryError": 102, "ReadOnlyError": 1}
    asyncio.run(state.aclose())


def test_background_writes_refused_by_a_full_redis_are_lost_and_warned_of_once_while_limits_stay_shared(
    full_redis, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="llm_service.state")

    async def scenario(clock: FakeClock, a: RedisState, b: RedisState) -> None:
        d = deployment(max_concurrency=1)
        assert (await a.acquire([shared(a, d)], 1)).index == 0
        streams = a.stream_log(keep=10, ttl=30.0)
        full_redis.fill()
        for i in range(20):  # in 20 batches
            a.put_checkpoint(f"toolcall:call-{i}", b"provider data", 30.0)
            streams.append(f"stream-{i}", 0, b"data: event\n\n")
            await settled(a)
            await streams.drain(5.0)
        a.breaker_moved(d, transition(d, BreakerState.OPEN, REASON_FAILURE_RATIO, 30.0))
        await settled(a)
        assert not a.degraded and not b.degraded
        assert sum(a.error_replies.values()) == 41
        assert (await b.acquire([shared(b, d)], 1)).index is None  # a's slot counts for b: shared
        refusals = [r for r in caplog.records if r.getMessage() == REFUSED]
        assert set(Counter(r.fields["error"] for r in refusals).values()) == {1}  # one per error class
        assert {r.fields["error"] for r in refusals} == set(a.error_replies)
        assert await b.get_checkpoint("toolcall:call-0") is None  # lost

        clock.advance(ERROR_LOG_SECONDS)
        a.put_checkpoint("toolcall:again", b"provider data", 30.0)
        await settled(a)
        assert messages(caplog)[-1] == REFUSED and len(messages(caplog)) == len(refusals) + 1

        full_redis.free()
        a.put_checkpoint("toolcall:after", b"provider data", 30.0)
        streams.append("stream-after", 0, b"data: event\n\n")
        await settled(a)
        await streams.drain(5.0)
        assert await b.get_checkpoint("toolcall:after") == b"provider data"
        page = await b.stream_log(keep=10, ttl=30.0).read("stream-after", -1, wait=0)
        assert page is not None and page.events == [(0, b"data: event\n\n")]
        assert not a.degraded and not b.degraded

    # Lease renewal left asleep: RENEW writes, and a refused renewal degrades as a refused admission does.
    on_replicas(full_redis.url, scenario, lease_seconds=3600.0)
    assert all(message == REFUSED for message in messages(caplog))  # never "unreachable"


def test_an_admission_refused_by_a_full_redis_serves_on_the_share_until_redis_takes_writes_again(
    full_redis, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="llm_service.state")

    async def scenario(clock: FakeClock, a: RedisState, b: RedisState) -> None:
        d = deployment(rpm=2)
        la = shared(a, d)
        full_redis.fill()
        with pytest.raises(StateUnavailable, match="refuses"):  # the script's first write, the window's, is refused
            await a.acquire([la], 1)
        assert a.degraded and a.local
        assert a.degraded_reason == "refused" and a.status()["reason"] == "refused"  # not "unreachable"
        assert la.try_acquire(1) is not None  # served on a's share (1 of 2), not left waiting
        assert not await a._answers()  # Redis answers the script but takes no write: a stays degraded
        full_redis.free()
        assert await a._recover()
        assert not a.degraded and a.degraded_reason is None
        # The refused admission took nothing: b has the whole RPM.
        assert [(await b.acquire([shared(b, d)], 1)).index for _ in range(3)] == [0, 0, None]

    # The reconnection loop is left asleep: the test asks `_answers()` itself.
    on_replicas(full_redis.url, scenario, retry_seconds=3600.0, lease_seconds=3600.0)
    assert messages(caplog) == [DEGRADED, "shared state takes the limits' writes again: limits shared"]
    back = [r for r in caplog.records if r.name == "llm_service.state"][-1]
    assert back.fields == {"backend": "redis", "after": "refused"}


def test_the_reason_follows_the_latest_failure_while_degraded(full_redis, caplog) -> None:
    """Down, then back but full: the replica stays degraded, and says it is now refused, not unreachable; once
    Redis takes writes, it is back, after a refusal."""
    caplog.set_level(logging.INFO, logger="llm_service.state")

    async def scenario(clock: FakeClock, a: RedisState) -> None:
        la = shared(a, deployment(rpm=10))
        assert (await a.acquire([la], 1)).index == 0
        full_redis.stop()
        with pytest.raises(StateUnavailable, match="unreachable"):
            await a.acquire([la], 1)
        assert a.degraded_reason == "unreachable"
        assert not await a._recover()  # still down: the same reason, nothing more said
        full_redis.start()
        full_redis.fill()
        assert not await a._recover()  # it answers the script, but refuses the probe's write
        assert a.degraded and a.degraded_reason == "refused" and a.status()["reason"] == "refused"
        with pytest.raises(StateUnavailable, match="refuses"):
            await a.admit_caller("key", 10)
        full_redis.free()
        assert await a._recover() and not a.degraded and a.degraded_reason is None

    on_replicas(full_redis.url, scenario, retry_seconds=3600.0, lease_seconds=3600.0)
    assert messages(caplog) == [
        "shared state unreachable: serving on this replica's share of the limits",
        DEGRADED,
        "shared state takes the limits' writes again: limits shared",
    ]


def test_a_redis_that_refuses_every_admission_again_is_tried_less_and_less_often(redis_server, caplog) -> None:
    """A refusal that is no outage and does not go away (here the limit's keys hold values of another type:
    WRONGTYPE) would flap the replica between shared and local at every retry. Each refusal soon after it
    came back doubles the wait before Redis is tried again, up to MAX_RETRY_SECONDS, even when admissions
    on another deployment go through between them; shared that long, the count starts again. The clock is
    injected: the waits are read, and passed, on it."""
    caplog.set_level(logging.INFO, logger="llm_service.state")
    retry = 10.0
    sync = redis.Redis.from_url(redis_server.url)

    async def scenario(clock: FakeClock, a: RedisState) -> None:
        la, fine = shared(a, deployment(rpm=100)), shared(a, deployment("gpt-4o", rpm=100))
        spoil = {key: "not what the script keeps" for key in la.keys}
        sync.mset(spoil)
        waits = []
        for _ in range(7):
            with pytest.raises(StateUnavailable):
                await a.acquire([la], 1)
            assert a.degraded and a.local
            waits.append(a._retry_at - clock())
            if waits[-1] > 0:
                clock.advance(waits[-1] - 1)
                assert not await a._recover() and a.degraded  # not before its time
                clock.advance(1)
            assert await a._recover() and not a.degraded  # the probe's own writes go through
            assert (await a.acquire([fine], 1)).index == 0  # another deployment's admission goes through
        assert waits == [0, 2 * retry, 4 * retry, 8 * retry, 16 * retry, MAX_RETRY_SECONDS, MAX_RETRY_SECONDS]

        clock.advance(MAX_RETRY_SECONDS)  # shared that long: the next refusal is a new one
        with pytest.raises(StateUnavailable):
            await a.acquire([la], 1)
        assert a._retry_at == clock()

        a._refused_in_a_row = 5000  # no overflow however long it goes on
        assert await a._recover()
        with pytest.raises(StateUnavailable):
            await a.acquire([la], 1)
        assert a._retry_at == clock() + MAX_RETRY_SECONDS

    on_replicas(redis_server.url, scenario, retry_seconds=retry, lease_seconds=3600.0)
    sync.close()
    warnings = [r for r in caplog.records if r.getMessage() == DEGRADED]
    assert [r.fields["refused_in_a_row"] for r in warnings] == [1, 2, 3, 4, 5, 6, 7, 1, 5001]
    assert [r.fields.get("retry_in_s") for r in warnings] == [None, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0, None, 300.0]
