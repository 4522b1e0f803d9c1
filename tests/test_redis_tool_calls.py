"""Tool-call data across replicas on a real redis-server: Gemini 3 function calls answered on replica A go
back with their own ids and thought signatures when the conversation goes on at replica B (plain and
streamed first turns); with Redis stopped, B sends Google's placeholder signature instead and the turn
still succeeds, as a replica without Redis does.

Replicas run in this process on their own loopback ports against the fake Vertex AI of `test_vertex.py`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from conftest import VERTEX_PROJECT, WEATHER_TOOL, fake_settings
from harness import ServiceThread, wait_until
from llm_service.core.config.settings import Settings
from llm_service.core.llm.gemini_format import FOREIGN_CALL_SIGNATURE
from llm_service.fakes import FakeUpstreamThread, FakeVertex
from redis_server import RedisServer
from test_vertex import (
    ASK,
    ask_for_tool_calls,
    assert_the_issued_calls_went_back,
    model_and_result_contents,
    new_gemini3,
    post,
    tool_turns,
)


@pytest.fixture
def gemini3() -> Iterator[FakeVertex]:
    fake = new_gemini3()
    with FakeUpstreamThread(fake):
        yield fake


def gemini3_replica_settings(upstreams: dict[Any, Any], fake: FakeVertex, server: RedisServer) -> Settings:
    vertex = {"base_url": fake.url, "api_key": "gemini3-token", "project": VERTEX_PROJECT}
    # A refused connection is seen at once; the generous timeout only spares a loaded machine a false outage.
    scale_out = {"redis_url": server.url, "replicas": 2, "redis_retry_seconds": 0.1, "redis_timeout_seconds": 5.0}
    return fake_settings(upstreams, vertex_ai=vertex, scale_out=scale_out)


@pytest.fixture
def replicas(upstreams, gemini3: FakeVertex, redis_server: RedisServer) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    settings = gemini3_replica_settings(upstreams, gemini3, redis_server)
    with (
        ServiceThread(settings) as a,
        ServiceThread(settings) as b,
        httpx.Client(base_url=a.url, timeout=20) as on_a,
        httpx.Client(base_url=b.url, timeout=20) as on_b,
    ):
        yield on_a, on_b


def kept_in_redis(server: RedisServer, calls: list[dict[str, Any]]) -> bool:
    """Whether every call's data is in the shared state (`tool_call_store`: a checkpoint value per call)."""
    with redis.Redis.from_url(server.url) as client:
        return all(client.exists(f"llm:checkpoint:toolcall:{call['id']}") for call in calls)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_conversation_begun_on_one_replica_goes_on_at_another_with_the_calls_own_ids_and_signatures(
    replicas,
    gemini3: FakeVertex,
    redis_server: RedisServer,
    stream: bool,
) -> None:
    on_a, on_b = replicas
    calls = ask_for_tool_calls(on_a, stream=stream)
    # A writes the calls' data in the background as it answers (fire and forget); a client's next turn comes
    # once its tools ran. Asked at once, B could look before the write landed (and send Google's placeholder,
    # as the last test shows): this seldom did, on a loaded machine, with a stream.
    assert wait_until(lambda: kept_in_redis(redis_server, calls), timeout=10)

    second = post(on_b, [ASK, *tool_turns(calls)], tools=[WEATHER_TOOL])

    assert second.status_code == 200, second.text
    assert len(gemini3.requests) == 2  # the second turn was B's
    assert_the_issued_calls_went_back(gemini3, calls, stream=stream)


def test_with_redis_gone_the_other_replica_sends_googles_placeholder_and_the_turn_succeeds(
    replicas,
    gemini3: FakeVertex,
    redis_server: RedisServer,
) -> None:
    on_a, on_b = replicas
    calls = ask_for_tool_calls(on_a, stream=False)
    redis_server.stop()

    second = post(on_b, [ASK, *tool_turns(calls)], tools=[WEATHER_TOOL])

    assert second.status_code == 200, second.text
    model_parts, _ = model_and_result_contents(gemini3.requests[-1])
    assert [p["thoughtSignature"] for p in model_parts] == [FOREIGN_CALL_SIGNATURE] * len(calls)
