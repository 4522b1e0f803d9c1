"""ToolCallStore: provider tool-call data kept by client id, bounded and expiring (injected clock)."""

from __future__ import annotations

import pytest

from llm_service.core.llm.tool_call_store import ProviderCallData, ToolCallStore

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
