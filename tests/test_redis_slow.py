"""A Redis that is up but slow, on a real redis-server: shared admissions that take longer than
`redis_slow_seconds`, five in a row, turn the replica to its own share of the limits (a slow Redis would
otherwise add its delay to every request), and it comes back once the probe's admission is fast again.
Round trips are timed on an injected timer: nothing waits on real time."""

from __future__ import annotations

import logging

from llm_service.core.llm.dispatch.redis_state import SLOW_IN_A_ROW, RedisState
from test_redis_state import FakeClock, deployment, on_replicas, shared

SLOW = "shared state slow: serving on this replica's share of the limits"
BACK = "shared state reachable again: limits shared"
LIMIT = 0.1


class StepTimer:
    """Each reading `step` seconds after the one before: every round trip it times takes `step`."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.now = 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_a_slow_redis_turns_the_replica_to_its_share_until_it_answers_fast_again(redis_server, caplog) -> None:
    caplog.set_level(logging.INFO, logger="llm_service.state")
    timer = StepTimer(2 * LIMIT)

    async def scenario(clock: FakeClock, a: RedisState) -> None:
        la = shared(a, deployment(rpm=100))
        for _ in range(SLOW_IN_A_ROW - 1):
            assert (await a.acquire([la], 1)).index == 0
        timer.step = LIMIT / 10  # a fast one: the count starts again
        assert (await a.acquire([la], 1)).index == 0
        timer.step = 2 * LIMIT
        for _ in range(SLOW_IN_A_ROW - 1):
            assert (await a.acquire([la], 1)).index == 0
        assert not a.degraded

        assert (await a.acquire([la], 1)).index == 0  # the last slow one in a row is served, shared
        assert a.degraded and a.local  # the next are admitted on this replica's share
        assert not await a._recover()  # the probe's admission is as slow: not back yet
        timer.step = LIMIT / 10
        assert await a._recover() and not a.degraded and not a.local

    # The reconnection loop is left asleep: the test asks `_recover()` itself.
    on_replicas(redis_server.url, scenario, retry_seconds=3600.0, lease_seconds=3600.0, timer=timer, slow_seconds=LIMIT)
    said = [r for r in caplog.records if r.name == "llm_service.state"]
    assert [r.getMessage() for r in said] == [SLOW, BACK]
    assert said[0].fields["round_trip_ms"] == 200.0 and said[0].fields["slow_ms"] == 100.0  # type: ignore[attr-defined]
