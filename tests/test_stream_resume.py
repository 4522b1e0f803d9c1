"""Resumable streams over HTTP: every event of a streamed completion names itself `<stream id>:<index>`,
and a client whose connection broke reconnects with `Last-Event-ID` (or `?after=`) and gets exactly
the rest, from the live stream or from an ended one kept for the resume TTL.

Everything runs against the real service and the fake upstreams; a slow fake (`delay_per_chunk`) is
what lets a client hang up mid-stream, and the injected monotonic clock is what expires a stream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, cast

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from conftest import FLAVORS, MODELS, QUESTION
from harness import ServiceThread, wait_until
from llm_service.core.config.constants import ProviderID
from llm_service.fakes import Fault
from sse_client import fixture_text, streamed_text
from test_dispatch_service import Monotonic, service_with
from test_failover import metric

STREAM_ID_HEADER = "x-llm-stream-id"
#: Far more events than any fixture stream has: a stream that never ends fails instead of hanging.
MAX_EVENTS = 100
TIMEOUT = 10.0
#: Slow enough that a client can read a few events and hang up while the upstream is mid-answer.
SLOW = Fault(delay_per_chunk=0.1)
OFF = {"stream_resume_enabled": False}
DONE = "[DONE]"


@dataclass(frozen=True)
class Event:
    """One SSE event as the client sees it: its `id:` (None when it has none) and its `data:`."""

    id: str | None
    data: str

    @property
    def payload(self) -> Any:
        return json.loads(self.data)


def sse_events(response: httpx.Response) -> Iterator[Event]:
    """The events of an SSE response as they arrive, at most MAX_EVENTS."""
    ident: str | None = None
    data: list[str] = []
    seen = 0
    for line in response.iter_lines():
        if line.startswith("id: "):
            ident = line[len("id: ") :]
        elif line.startswith("data: "):
            data.append(line[len("data: ") :])
        elif not line and data:
            seen += 1
            assert seen <= MAX_EVENTS, "the stream did not end"
            yield Event(ident, "\n".join(data))
            ident, data = None, []


def until_done(events: Iterator[Event]) -> list[Event]:
    """The events up to and including `[DONE]`, which must come."""
    got: list[Event] = []
    for event in events:
        got.append(event)
        if event.data == DONE:
            return got
    raise AssertionError(f"the stream ended without [DONE] after {len(got)} events")


def text(events: list[Event]) -> str:
    return streamed_text([e.payload for e in events if e.data != DONE])


def numbered(stream_id: str, start: int, count: int) -> list[str]:
    return [f"{stream_id}:{i}" for i in range(start, start + count)]


def assert_the_rest(events: list[Event], stream_id: str, start: int) -> None:
    """`events` are numbered `stream_id:start`, `start+1`, ... and end with an id-less `[DONE]`."""
    assert [e.id for e in events[:-1]] == numbered(stream_id, start, len(events) - 1)
    assert events[-1] == Event(None, DONE)


def chat(provider: ProviderID) -> dict[str, Any]:
    return {"model": MODELS[provider], "messages": QUESTION, "stream": True}


def stream_path(stream_id: str) -> str:
    return f"/v1/chat/completions/{stream_id}/stream"


def resume(http: httpx.Client, stream_id: str, *, last: str | None = None, after: int | None = None) -> list[Event]:
    """Reconnect to `stream_id` and read the rest to `[DONE]`."""
    headers = {"Last-Event-ID": last} if last is not None else {}
    params = {"after": after} if after is not None else {}
    with http.stream("GET", stream_path(stream_id), headers=headers, params=params) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers[STREAM_ID_HEADER] == stream_id
        return until_done(sse_events(response))


def read_then_hang_up(http: httpx.Client, provider: ProviderID, count: int) -> tuple[str, list[Event]]:
    """Start a stream, read `count` events, and close the connection: (stream id, the events read)."""
    with http.stream("POST", "/v1/chat/completions", json=chat(provider)) as response:
        assert response.status_code == 200, response.read()
        first = list(islice(sse_events(response), count))
    assert len(first) == count
    return response.headers[STREAM_ID_HEADER], first


def read_all(http: httpx.Client, provider: ProviderID) -> tuple[str | None, list[Event]]:
    """Start a stream and read it to `[DONE]`: (its x-llm-stream-id, if any; its events)."""
    with http.stream("POST", "/v1/chat/completions", json=chat(provider)) as response:
        assert response.status_code == 200, response.read()
        return response.headers.get(STREAM_ID_HEADER), until_done(sse_events(response))


def live_streams(service: ServiceThread) -> int:
    """Streams still producing. White-box on purpose: nothing on the wire tells a stream that ended
    (kept for late resumptions, under the TTL) from one whose last event was just produced."""
    sessions = service.app.state.services.stream_sessions
    return 0 if sessions is None else int(sessions.live)


def assert_openai_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["message"]
    return error


@pytest.fixture
def http(service: ServiceThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=TIMEOUT) as client:
        yield client


# ---------------------------------------------------------------------------------------- event ids


def test_every_event_is_numbered_from_zero_under_the_stream_id_and_its_payload_is_unchanged(
    start_service, provider
) -> None:
    resumable, plain = start_service(), start_service(streaming=OFF)
    with httpx.Client(base_url=resumable.url, timeout=TIMEOUT) as http:
        stream_id, events = read_all(http, provider)
    with httpx.Client(base_url=plain.url, timeout=TIMEOUT) as http:
        _, before = read_all(http, provider)

    assert stream_id
    assert_the_rest(events, stream_id, start=0)
    assert [e.data for e in events] == [e.data for e in before]  # byte for byte what a plain stream sends
    assert text(events) == fixture_text(FLAVORS[provider], "text")


# ------------------------------------------------------------------------------ resuming a live stream


@pytest.mark.parametrize("how", ["last-event-id", "after"])
def test_a_client_that_reconnects_mid_stream_gets_exactly_the_events_after_its_last(http, provider, fake, how) -> None:
    fake.inject(SLOW)
    stream_id, first = read_then_hang_up(http, provider, 2)
    assert fake.active_streams == 1  # the upstream is still answering: the reconnection below is live

    rest = resume(http, stream_id, last=first[-1].id) if how == "last-event-id" else resume(http, stream_id, after=1)

    assert_the_rest(first + rest, stream_id, start=0)  # ids go on from 2: no duplicate, no gap
    assert text(first + rest) == fixture_text(FLAVORS[provider], "text")
    assert len(fake.requests) == 1
    assert fake.stream_disconnects == 0  # generation went on while the client was away


def test_a_second_reader_of_a_live_stream_gets_the_same_rest(http, upstreams) -> None:
    fake = upstreams[ProviderID.OPENAI]
    fake.inject(SLOW)
    with http.stream("POST", "/v1/chat/completions", json=chat(ProviderID.OPENAI)) as original:
        stream_id = original.headers[STREAM_ID_HEADER]
        events = sse_events(original)
        first = next(events)
        other = resume(http, stream_id, last=first.id)  # while the original client still reads
        rest = until_done(events)

    assert other == rest
    assert_the_rest([first, *rest], stream_id, start=0)
    assert len(fake.requests) == 1


# ---------------------------------------------------------------------------- resuming an ended stream


def test_a_client_that_reconnects_after_the_end_gets_the_rest_once_and_may_reconnect_again(
    service, http, upstreams
) -> None:
    fake = upstreams[ProviderID.OPENAI]
    fake.inject(SLOW)
    stream_id, first = read_then_hang_up(http, ProviderID.OPENAI, 3)
    assert wait_until(lambda: live_streams(service) == 0)  # it ended while its client was away

    rest = resume(http, stream_id, last=first[-1].id)
    again = resume(http, stream_id, last=first[-1].id)
    everything = resume(http, stream_id)

    assert_the_rest(first + rest, stream_id, start=0)
    assert text(first + rest) == fixture_text(FLAVORS[ProviderID.OPENAI], "text")
    assert again == rest
    assert everything == first + rest
    assert len(fake.requests) == 1
    assert fake.stream_disconnects == 0


def test_after_the_ttl_an_ended_stream_is_404_stream_not_found(upstreams) -> None:
    clock = Monotonic()
    with (
        service_with(upstreams, clock, streaming={"stream_resume_ttl_seconds": 60}) as service,
        httpx.Client(base_url=service.url, timeout=TIMEOUT) as http,
    ):
        stream_id, events = read_all(http, ProviderID.OPENAI)
        assert stream_id
        assert wait_until(lambda: live_streams(service) == 0)  # ended at clock.now: kept until now + 60

        clock.now += 59
        assert resume(http, stream_id, last=events[2].id) == events[3:]
        clock.now += 2
        assert events[2].id is not None
        gone = http.get(stream_path(stream_id), headers={"Last-Event-ID": events[2].id})

    error = assert_openai_error(gone, 404, "stream_not_found")
    assert error["type"] == "invalid_request_error"


def test_ended_streams_past_the_byte_limit_are_dropped_oldest_first(start_service) -> None:
    service = start_service(streaming={"stream_resume_max_bytes": 3000})  # room for one ended stream
    with httpx.Client(base_url=service.url, timeout=TIMEOUT) as http:
        first, first_events = read_all(http, ProviderID.OPENAI)
        assert first and wait_until(lambda: live_streams(service) == 0)
        second, second_events = read_all(http, ProviderID.OPENAI)
        assert second and wait_until(lambda: live_streams(service) == 0)

        kept = resume(http, second, last=second_events[0].id)
        assert first_events[0].id is not None
        dropped = http.get(stream_path(first), headers={"Last-Event-ID": first_events[0].id})

    assert kept == second_events[1:]
    assert_openai_error(dropped, 404, "stream_not_found")


@pytest.mark.parametrize("last", [None, "never-issued:0"], ids=["no-header", "its-own-last-event-id"])
def test_an_unknown_stream_is_404_stream_not_found(http, last) -> None:
    headers = {"Last-Event-ID": last} if last else {}
    assert_openai_error(http.get(stream_path("never-issued"), headers=headers), 404, "stream_not_found")


@pytest.mark.parametrize(
    ("last", "after"),
    [
        pytest.param("{other}:1", None, id="other-stream"),
        pytest.param("{this}:x", None, id="index-not-a-number"),
        pytest.param("{this}:", None, id="no-index"),
        pytest.param("{this}:-1", None, id="negative-index"),
        pytest.param("{this}", None, id="no-colon"),
        pytest.param("3", None, id="bare-index"),
        pytest.param(None, "x", id="after-x"),
        pytest.param(None, "1.5", id="after-1.5"),
        pytest.param(None, "-2", id="after-negative"),
    ],
)
def test_a_malformed_last_event_id_is_400_invalid_last_event_id(http, last, after) -> None:
    this, _ = read_all(http, ProviderID.OPENAI)
    other, _ = read_all(http, ProviderID.OPENAI)
    assert this and other and this != other
    headers = {"Last-Event-ID": last.format(this=this, other=other)} if last else {}
    params = {"after": after} if after is not None else {}

    error = assert_openai_error(
        http.get(stream_path(this), headers=headers, params=params), 400, "invalid_last_event_id"
    )
    assert error["type"] == "invalid_request_error"


# ------------------------------------------------------------------------------------ the resume buffer


def test_past_max_buffer_chunks_a_resume_from_the_start_is_410_and_from_the_last_events_works(
    start_service, upstreams
) -> None:
    service = start_service(streaming={"max_buffer_chunks": 2})
    fake = upstreams[ProviderID.OPENAI]
    fake.inject(SLOW)  # the reader keeps up, so the stream drops what it has delivered past 2 events
    with httpx.Client(base_url=service.url, timeout=TIMEOUT) as http:
        stream_id, events = read_all(http, ProviderID.OPENAI)
        assert stream_id
        count = len(events) - 1  # without [DONE]
        assert count > 3
        assert wait_until(lambda: live_streams(service) == 0)

        from_start = http.get(stream_path(stream_id))
        one_too_early = http.get(stream_path(stream_id), headers={"Last-Event-ID": f"{stream_id}:{count - 4}"})
        last_two = resume(http, stream_id, last=f"{stream_id}:{count - 3}")

    assert_openai_error(from_start, 410, "stream_expired")
    assert_openai_error(one_too_early, 410, "stream_expired")
    assert last_two == events[-3:]


def test_with_a_small_buffer_a_fast_stream_still_reaches_its_own_client_whole(start_service) -> None:
    service = start_service(streaming={"max_buffer_chunks": 2})
    expected = fixture_text(FLAVORS[ProviderID.OPENAI], "text")
    with httpx.Client(base_url=service.url, timeout=TIMEOUT) as http:
        for _ in range(5):  # a race: each attempt loses it most of the time, so five lose it for sure
            stream_id, events = read_all(http, ProviderID.OPENAI)
            assert stream_id
            assert_the_rest(events, stream_id, start=0)
            assert text(events) == expected


# ---------------------------------------------------------------------------------------- abandonment


def test_with_no_grace_a_disconnect_cancels_the_upstream_and_a_resume_gets_stream_abandoned(
    start_service, upstreams
) -> None:
    service = start_service(streaming={"stream_resume_grace_seconds": 0})
    fake = upstreams[ProviderID.OPENAI]
    fake.inject(SLOW)
    with httpx.Client(base_url=service.url, timeout=TIMEOUT) as http:
        stream_id, first = read_then_hang_up(http, ProviderID.OPENAI, 2)
        assert fake.wait_for_disconnect(timeout=5)  # the service hung up on the upstream
        assert wait_until(lambda: metric(http.get("/metrics").text, "llm_gateway_in_flight") == 0)
        assert wait_until(lambda: live_streams(service) == 0)

        events = resume(http, stream_id)

    assert_the_rest(events, stream_id, start=0)
    *delivered, abandoned, _done = events
    assert delivered[: len(first)] == first  # the events so far: what the client read, and any produced after
    assert fixture_text(FLAVORS[ProviderID.OPENAI], "text").startswith(text(delivered))
    assert not any(c["finish_reason"] for e in delivered for c in e.payload["choices"])  # cut mid-answer
    assert abandoned.payload["error"]["code"] == "stream_abandoned"
    assert abandoned.payload["error"]["type"] == "server_error"
    assert len(fake.requests) == 1


# ------------------------------------------------------------------------------------- resumption off


def test_with_resumption_off_events_have_no_ids_and_the_route_is_404(start_service) -> None:
    service = start_service(streaming=OFF)
    with (
        httpx.Client(base_url=service.url, timeout=TIMEOUT) as http,
        http.stream("POST", "/v1/chat/completions", json=chat(ProviderID.OPENAI)) as response,
    ):
        assert STREAM_ID_HEADER not in response.headers
        lines = list(islice(response.iter_lines(), 4 * MAX_EVENTS))
        gone = http.get(stream_path("any-stream"), headers={"Last-Event-ID": "any-stream:0"})

    assert f"data: {DONE}" in lines
    assert not [line for line in lines if line.startswith("id:")]
    assert_openai_error(gone, 404, "stream_not_found")


# ------------------------------------------------------------------------------------ the openai SDK


def test_the_openai_sdk_reads_a_resumable_stream_as_before(start_service, provider) -> None:
    def sdk_chunks(service: ServiceThread) -> tuple[str | None, list[dict[str, Any]]]:
        sdk = openai.OpenAI(base_url=f"{service.url}/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)
        messages = cast("list[ChatCompletionMessageParam]", QUESTION)
        with sdk.chat.completions.create(model=MODELS[provider], messages=messages, stream=True) as stream:
            chunks = [chunk.model_dump() for chunk in islice(stream, MAX_EVENTS)]
            return stream.response.headers.get(STREAM_ID_HEADER), chunks

    stream_id, resumable = sdk_chunks(start_service())
    no_id, plain = sdk_chunks(start_service(streaming=OFF))

    assert stream_id and no_id is None  # the first one did carry id lines
    assert resumable == plain
    content = "".join(c["choices"][0]["delta"]["content"] or "" for c in resumable if c["choices"])
    assert content == fixture_text(FLAVORS[provider], "text")


# -------------------------------------------------------------------------------- concurrent streams


def test_two_concurrent_streams_have_their_own_ids_and_events(http, upstreams) -> None:
    pair = (ProviderID.OPENAI, ProviderID.VERTEX_AI)  # different answers: each event tells its stream
    for provider in pair:
        upstreams[provider].inject(SLOW)
    with (
        http.stream("POST", "/v1/chat/completions", json=chat(pair[0])) as one,
        http.stream("POST", "/v1/chat/completions", json=chat(pair[1])) as two,
    ):
        ids = (one.headers[STREAM_ID_HEADER], two.headers[STREAM_ID_HEADER])
        firsts = (next(sse_events(one)), next(sse_events(two)))
    # Both hung up mid-stream; each resumes where it left off.
    rests = [resume(http, stream_id, last=first.id) for stream_id, first in zip(ids, firsts, strict=True)]

    assert ids[0] != ids[1]
    for provider, stream_id, first, rest in zip(pair, ids, firsts, rests, strict=True):
        assert_the_rest([first, *rest], stream_id, start=0)
        assert {e.payload["id"] for e in [first, *rest[:-1]]} == {first.payload["id"]}
        assert text([first, *rest]) == fixture_text(FLAVORS[provider], "text")
    assert firsts[0].payload["id"] != firsts[1].payload["id"]
