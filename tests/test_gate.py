"""The dispatcher's admission gate (`dispatch/gate.py`) on its own: which waiting request a released slot
goes to. The rest of its behaviour (429s, 503s, rechecks, shared state) is shown through the service in
test_dispatch_service.py and test_redis_replicas.py. The clock is injected; nothing waits on real time."""

from __future__ import annotations

import asyncio

from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import Deployment
from llm_service.core.llm.dispatch.breaker import BreakerPolicy
from llm_service.core.llm.dispatch.gate import Gate
from llm_service.core.llm.dispatch.pool import DeploymentPool, Slot

ALIASES = 8


def test_a_released_slot_goes_to_the_lines_in_the_profiles_order() -> None:
    """Aliases that share a deployment each have a request waiting for it: the release wakes the lines in
    the order the profile lists the aliases (not an order that moves with the process's hash seed), so the
    first alias's request is served, on every run."""
    shared = Deployment(provider=ProviderID.OPENAI, model="shared", max_concurrency=1)
    own = [Deployment(provider=ProviderID.OPENAI, model=f"own-{i}", max_concurrency=1) for i in range(ALIASES)]
    aliases = [(shared, d) for d in own]

    async def scenario() -> None:
        pool = DeploymentPool(dict.fromkeys(ProviderID, BreakerPolicy()), clock=lambda: 1000.0)
        gate = Gate(pool, aliases, max_queue_size=10, queue_timeout=60.0, clock=lambda: 1000.0)
        pool.on_release = gate.capacity_freed
        for deployment in (shared, *own):
            pool.register(deployment)
        held = [pool.try_take([d], 1) for d in (shared, *own)]  # every deployment busy
        waiting = [asyncio.ensure_future(gate.admit(alias, alias, 1)) for alias in aliases]
        await asyncio.sleep(0)
        assert list(gate.waiting()) == aliases and gate.depth == ALIASES

        first = held[0]
        assert isinstance(first, Slot)
        first.succeeded()  # the shared deployment is free again
        await asyncio.sleep(0)

        assert [task.done() for task in waiting] == [True] + [False] * (ALIASES - 1)
        assert waiting[0].result().deployment is shared
        for task in waiting[1:]:
            task.cancel()
        await asyncio.gather(*waiting[1:], return_exceptions=True)

    asyncio.run(scenario())


def test_aliases_with_the_same_deployments_each_keep_their_line() -> None:
    """Two aliases listing the same deployments (equal tuples, not the same object) are one model: one line,
    kept while empty, found by either's tuple without hashing its deployments."""
    d = Deployment(provider=ProviderID.OPENAI, model="m", max_concurrency=1)
    a, b = (d,), (Deployment(provider=ProviderID.OPENAI, model="m", max_concurrency=1),)
    pool = DeploymentPool(dict.fromkeys(ProviderID, BreakerPolicy()), clock=lambda: 1000.0)
    gate = Gate(pool, [a, b], max_queue_size=10, queue_timeout=60.0, clock=lambda: 1000.0)

    assert gate._queue(a) is gate._queue(b)
    assert {id(a), id(b)} <= set(gate._alias_queues)
