"""ToolCallStore: provider tool-call data kept by client id, bounded and expiring (injected clock)."""

from __future__ import annotations

import asyncio

import pytest

from llm_service.core.config.constants import ProviderID
from llm_service.core.llm.tool_call_store import MAX_FETCHED_CALLS, ProviderCallData, ToolCallStore
from llm_service.core.llm.tool_ids import normalize_tool_call_id

SIGNED = ProviderCallData(thought_signature="U0lH")
WITH_ID = ProviderCallData(provider_id="fc-1", thought_signature="U0lH")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_put_then_get_returns_the_data_and_unknown_ids_return_none():
    store = ToolCallStore(clock=Clock())
    store.put("call_1", WITH_ID)
    assert store.get("call_1") == WITH_ID
    assert store.get("call_2") is None
    assert len(store) == 1


def test_entries_expire_after_the_ttl():
    clock = Clock()
    store = ToolCallStore(ttl_seconds=60, clock=clock)
    store.put("a", SIGNED)
    clock.now += 30
    store.put("b", WITH_ID)
    clock.now += 29.9
    assert (store.get("a"), store.get("b"), len(store)) == (SIGNED, WITH_ID, 2)
    clock.now += 0.1  # a is 60 s old
    assert (store.get("a"), store.get("b"), len(store)) == (None, WITH_ID, 1)
    clock.now += 30
    assert (store.get("b"), len(store)) == (None, 0)


def test_putting_again_replaces_the_data_and_restarts_the_ttl():
    clock = Clock()
    store = ToolCallStore(ttl_seconds=10, clock=clock)
    store.put("a", SIGNED)
    store.put("b", SIGNED)
    clock.now += 8
    store.put("a", WITH_ID)
    clock.now += 5
    assert (store.get("a"), store.get("b"), len(store)) == (WITH_ID, None, 1)


def test_oldest_entries_are_evicted_beyond_max_entries():
    store = ToolCallStore(max_entries=2, clock=Clock())
    store.put("a", SIGNED)
    store.put("b", SIGNED)
    store.put("a", WITH_ID)  # a is now the newest
    store.put("c", SIGNED)
    assert (store.get("a"), store.get("b"), store.get("c"), len(store)) == (WITH_ID, None, SIGNED, 2)


@pytest.mark.parametrize(("ttl", "size"), [(0, 10), (-1, 10), (10, 0)])
def test_limits_must_be_positive(ttl, size):
    with pytest.raises(ValueError, match="must be"):
        ToolCallStore(ttl_seconds=ttl, max_entries=size)


def test_provider_call_data_is_immutable_and_defaults_to_nothing():
    assert ProviderCallData() == ProviderCallData(provider_id=None, thought_signature=None)
    with pytest.raises(AttributeError):
        WITH_ID.provider_id = "other"  # type: ignore[misc]


class SharedStandIn:
    """The state backend's store of values, as the store sees it (Redis in `test_redis_tool_calls.py`)."""

    def __init__(self) -> None:
        self.values: dict[str, tuple[bytes, float]] = {}
        self.local = False
        self.reads: list[str] = []
        self.failing = False

    def put_checkpoint(self, key: str, data: bytes, ttl: float) -> None:
        self.values[key] = (data, ttl)

    async def get_checkpoint(self, key: str) -> bytes | None:
        self.reads.append(key)
        if self.failing:
            raise ConnectionError("the shared state did not answer")
        kept = self.values.get(key)
        return kept[0] if kept is not None else None


GEMINI = ProviderCallData(provider_id="fc-1", thought_signature="U0lH", provider=ProviderID.VERTEX_AI)
OPENAI = ProviderCallData(provider_id="call_abc", provider=ProviderID.OPENAI)


def call_id(n: int) -> str:
    """A client-visible id, as the service makes them."""
    return normalize_tool_call_id(f"fc-{n}", ProviderID.VERTEX_AI)[0]


def stores(shared: SharedStandIn, *, ttl: float = 600) -> tuple[ToolCallStore, ToolCallStore, Clock, Clock]:
    """Two replicas' stores sharing `shared`, on their own clocks, and their shared wall clock."""
    clock, wall = Clock(), Clock()
    a = ToolCallStore(ttl_seconds=ttl, clock=Clock(), wall_clock=wall)
    b = ToolCallStore(ttl_seconds=ttl, clock=clock, wall_clock=wall)
    a.share(shared)
    b.share(shared)
    return a, b, clock, wall


def test_a_shared_store_keeps_each_call_there_too_and_another_store_fetches_what_it_does_not_know():
    shared = SharedStandIn()
    a, b, _, _ = stores(shared)
    a.put(call_id(1), GEMINI)
    a.put(call_id(2), OPENAI)
    assert {ttl for _, ttl in shared.values.values()} == {600}

    asyncio.run(b.fetch([call_id(1), call_id(2), call_id(1), call_id(3)]))

    assert (b.get(call_id(1)), b.get(call_id(2)), b.get(call_id(3))) == (GEMINI, OPENAI, None)
    assert sorted(shared.reads) == sorted(f"toolcall:{call_id(n)}" for n in (1, 2, 3))  # each once
    shared.reads.clear()
    asyncio.run(b.fetch([call_id(1), call_id(2)]))
    assert shared.reads == []  # known here now: no lookup


def test_a_fetched_call_lives_only_the_rest_of_its_ttl():
    shared = SharedStandIn()
    a, b, clock, wall = stores(shared, ttl=600)
    a.put(call_id(1), GEMINI)
    wall.now += 400  # the conversation goes on elsewhere 400 s later
    clock.now += 400
    asyncio.run(b.fetch([call_id(1)]))
    assert b.get(call_id(1)) == GEMINI
    b.put(call_id(2), OPENAI)  # a later entry with a whole TTL: the fetched one is not behind it
    clock.now += 199.9
    assert b.get(call_id(1)) == GEMINI
    clock.now += 0.1
    assert (b.get(call_id(1)), b.get(call_id(2))) == (None, OPENAI)

    wall.now += 200  # past its time in the shared store too: not taken
    late = ToolCallStore(clock=Clock(), wall_clock=wall)
    late.share(shared)
    asyncio.run(late.fetch([call_id(1)]))
    assert late.get(call_id(1)) is None


def test_only_ids_of_the_services_own_form_are_looked_up_and_at_most_the_latest_128():
    shared = SharedStandIn()
    _, b, _, _ = stores(shared)
    invented = ["call_1", "x" * 29, "call_" + "!" * 24, "call_" + "é" * 24, "call_" + "A" * 25]
    asyncio.run(b.fetch(invented))
    assert shared.reads == []

    ids = [call_id(n) for n in range(MAX_FETCHED_CALLS + 72)]
    asyncio.run(b.fetch(ids))
    assert shared.reads == [f"toolcall:{c}" for c in ids[-MAX_FETCHED_CALLS:]]


def test_nothing_is_shared_or_fetched_while_the_shared_state_is_local_and_what_fails_or_is_garbage_finds_nothing():
    shared = SharedStandIn()
    _, store, _, _ = stores(shared)
    shared.local = True  # Redis unreachable: the replica is on its own
    store.put(call_id(1), GEMINI)
    asyncio.run(store.fetch([call_id(2)]))
    assert (shared.values, shared.reads) == ({}, [])

    shared.local = False
    shared.values[f"toolcall:{call_id(3)}"] = (b"not json", 60)
    shared.values[f"toolcall:{call_id(4)}"] = (
        b'{"provider": "nobody", "id": null, "signature": null, "expires": 9e9}',
        60,
    )
    shared.values[f"toolcall:{call_id(5)}"] = (b'{"provider": null, "id": 7, "signature": null, "expires": 9e9}', 60)
    shared.values[f"toolcall:{call_id(6)}"] = (b'{"provider": null, "id": null, "signature": "U0lH"}', 60)
    asyncio.run(store.fetch([call_id(n) for n in (3, 4, 5, 6)]))
    assert [store.get(call_id(n)) for n in (3, 4, 5, 6)] == [None] * 4

    shared.failing = True
    asyncio.run(store.fetch([call_id(7)]))  # no exception reaches the request
    assert store.get(call_id(7)) is None


def test_an_unshared_store_fetches_nothing():
    store = ToolCallStore(clock=Clock())
    asyncio.run(store.fetch([call_id(1)]))
    assert store.get(call_id(1)) is None
