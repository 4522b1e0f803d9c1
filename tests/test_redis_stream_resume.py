"""Resumable streams across replicas on a real redis-server: a stream started on replica A is resumed
through replica B with `Last-Event-ID`, live (its client hung up mid-stream) or after its end, and B gets
exactly the events after the client's last, then `[DONE]`; an id no replica issued is 404 on B; with
Redis gone, B answers 404 for A's stream (saying so in the log once) while A still resumes its own.

Replicas run in this process on their own loopback ports against the fake upstreams; a slow fake
(`delay_per_chunk`) is what lets a client hang up mid-stream.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import FLAVORS
from harness import ServiceThread, wait_until
from llm_service.core.config.constants import ProviderID
from redis_server import RedisServer
from sse_client import fixture_text
from test_redis_replicas import replica_settings
from test_stream_resume import (
    SLOW,
    TIMEOUT,
    assert_openai_error,
    assert_the_rest,
    live_streams,
    read_all,
    read_then_hang_up,
    resume,
    stream_path,
    text,
)

OPENAI = ProviderID.OPENAI


@pytest.fixture
def replicas(
    upstreams: dict[ProviderID, Any], redis_server: RedisServer
) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """Clients of two replicas, A and B, sharing one Redis."""
    settings = replica_settings(upstreams, redis_server, {})
    with (
        ServiceThread(settings) as a,
        ServiceThread(settings) as b,
        httpx.Client(base_url=a.url, timeout=TIMEOUT) as on_a,
        httpx.Client(base_url=b.url, timeout=TIMEOUT) as on_b,
    ):
        on_a.service = a  # type: ignore[attr-defined]
        yield on_a, on_b


def test_a_stream_whose_client_left_mid_stream_on_a_is_resumed_live_through_b(replicas, upstreams) -> None:
    on_a, on_b = replicas
    fake = upstreams[OPENAI]
    fake.inject(SLOW)
    stream_id, first = read_then_hang_up(on_a, OPENAI, 2)
    assert fake.active_streams == 1  # still answering on A: B follows it live

    rest = resume(on_b, stream_id, last=first[-1].id)

    assert_the_rest(first + rest, stream_id, start=0)  # from 2 on: no duplicate, no gap, then [DONE]
    assert text(first + rest) == fixture_text(FLAVORS[OPENAI], "text")
    assert len(fake.requests) == 1  # B generated nothing itself
    assert fake.stream_disconnects == 0


def test_a_stream_that_ended_on_a_is_resumed_through_b_after_its_end(replicas, upstreams) -> None:
    on_a, on_b = replicas
    upstreams[OPENAI].inject(SLOW)
    stream_id, first = read_then_hang_up(on_a, OPENAI, 3)
    assert wait_until(lambda: live_streams(on_a.service) == 0, timeout=TIMEOUT)  # ended while its client was away

    rest = resume(on_b, stream_id, last=first[-1].id)
    everything = resume(on_b, stream_id)
    by_index = resume(on_b, stream_id, after=0)

    assert_the_rest(first + rest, stream_id, start=0)
    assert everything == first + rest
    assert by_index == everything[1:]
    assert resume(on_a, stream_id, last=first[-1].id) == rest  # A serves it from its own memory alike


def test_a_stream_read_to_its_end_on_a_is_the_same_through_b(replicas) -> None:
    on_a, on_b = replicas
    stream_id, events = read_all(on_a, OPENAI)
    assert stream_id

    assert resume(on_b, stream_id) == events
    assert resume(on_b, stream_id, last=events[-2].id) == events[-1:]  # after its last event: only [DONE]


@pytest.mark.parametrize("last", [None, "never-issued:0"], ids=["no-header", "its-own-last-event-id"])
def test_an_id_no_replica_issued_is_404_on_b(replicas, last) -> None:
    _, on_b = replicas
    headers = {"Last-Event-ID": last} if last else {}
    assert_openai_error(on_b.get(stream_path("never-issued"), headers=headers), 404, "stream_not_found")


def test_without_redis_b_answers_404_for_a_stream_of_a_and_a_still_resumes_it(replicas, redis_server, caplog) -> None:
    on_a, on_b = replicas
    stream_id, events = read_all(on_a, OPENAI)
    assert stream_id
    assert resume(on_b, stream_id, last=events[0].id) == events[1:]  # shared while Redis runs

    redis_server.stop()
    with caplog.at_level(logging.INFO, logger="llm_service.state"):
        gone = on_b.get(stream_path(stream_id), headers={"Last-Event-ID": events[0].id})
        warned = [r for r in caplog.records if r.name == "llm_service.state" and r.levelname == "WARNING"]
        again = [on_b.get(stream_path(stream_id)) for _ in range(3)]
        warned_after = [r for r in caplog.records if r.name == "llm_service.state" and r.levelname == "WARNING"]
        own = resume(on_a, stream_id, last=events[0].id)

    assert_openai_error(gone, 404, "stream_not_found")
    assert all(r.status_code == 404 for r in again)
    assert len(warned) == 1 and warned_after == warned  # said once, not per request
    assert own == events[1:]
    assert redis_server.url not in caplog.text
