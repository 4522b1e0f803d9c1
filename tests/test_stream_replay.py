"""Mid-stream recovery, against the real service over HTTP with the fakes' fault injection.

A stream that breaks after its first chunk (connection cut, error event, malformed event, EOF before
the finish reason) is re-opened and joined to what the client already has: the client sees the
fault-free answer (text, tool calls with their ids, one finish reason, usage) then `[DONE]`. What
cannot be joined ends with exactly one error event then `[DONE]`: a re-generation that says
something else (`stream_interrupted`), replays used up, the replay buffer outgrown, or a re-open that
fails (the client gets the original failure, not the re-open's). A deployment declared to accept an
assistant prefix (the vLLM stand-in) is asked to continue the partial answer instead.

The main matrix shares one service per module (its breakers cannot open: `breaker_min_calls` is out
of reach); the fakes are reset after each test by conftest.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from conftest import KEYS, MODELS, QUESTION, WEATHER_TOOL, fake_settings
from harness import ServiceThread
from llm_service.core.config.constants import ProviderID
from llm_service.fakes import FakeUpstream, FakeUpstreamThread, Fault
from llm_service.fakes.continuation import PREFILL_REFUSED, PREFIX_NOT_CONTINUABLE
from llm_service.fakes.wire import VLLM_BOTH_SET, SseEvent
from sse_client import read_events

VERTEX = ProviderID.VERTEX_AI
SCENARIOS: dict[str, dict[str, Any]] = {"text": {}, "tool_call": {"tools": [WEATHER_TOOL]}}
#: Another answer of each provider, served to a re-generation so that it differs from the first.
OTHER_ANSWER = {"text": "chat_tool_result", "tool_call": "chat_text"}
#: A breaker that never opens here: the matrix breaks many streams on one service.
NO_BREAKER = {"breaker_min_calls": 1_000_000}
REPLAYS = 2  # LLM_MAX_STREAM_REPLAYS' default
BREAKS = pytest.mark.parametrize("kind", ["drop_after_chunks", "error_event_after_chunks"], ids=["cut", "error-event"])


# ------------------------------------------------------------------------------------------- reading


@dataclass
class Streamed:
    """What a client assembles from a chat stream."""

    events: list[Any]
    text: str = ""
    calls: dict[int, dict[str, str]] = field(default_factory=dict)
    finishes: list[str] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, events: list[Any]) -> Streamed:
        out = cls(events)
        for event in events:
            if not isinstance(event, dict):
                continue
            if "error" in event:
                out.errors.append(event["error"])
                continue
            out.usage = event.get("usage") or out.usage
            for choice in event.get("choices") or ():
                delta = choice.get("delta") or {}
                out.text += delta.get("content") or ""
                for fragment in delta.get("tool_calls") or ():
                    call = out.calls.setdefault(fragment["index"], {"id": "", "name": "", "arguments": ""})
                    function = fragment.get("function") or {}
                    call["id"] += fragment.get("id") or ""
                    call["name"] += function.get("name") or ""
                    call["arguments"] += function.get("arguments") or ""
                if choice.get("finish_reason"):
                    out.finishes.append(choice["finish_reason"])
        return out

    @property
    def done(self) -> bool:
        return bool(self.events) and self.events[-1] == "[DONE]"


def chat_body(provider: ProviderID, scenario: str, model: str | None = None) -> dict[str, Any]:
    return {
        "model": model or MODELS[provider],
        "messages": QUESTION,
        "stream": True,
        "stream_options": {"include_usage": True},
        **SCENARIOS[scenario],
    }


def stream(service: ServiceThread, body: dict[str, Any]) -> Streamed:
    with (
        httpx.Client(base_url=service.url, timeout=20) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200, response.read()
        return Streamed.of(read_events(response))


def assert_one_error_then_done(got: Streamed) -> dict[str, Any]:
    assert got.done, got.events[-3:]
    assert len(got.errors) == 1, got.errors
    assert "error" in got.events[-2], "the error event is the last event before [DONE]"
    assert got.finishes == [], "a stream that ends in an error has no finish reason"
    return got.errors[0]


def assert_prefix_of(got: Streamed, first: Streamed) -> None:
    """What the client got is the start of `first` and nothing else: its text, and of each tool call
    the id, the name and the start of the arguments."""
    assert first.text.startswith(got.text), (got.text, first.text)
    for index, call in got.calls.items():
        assert index in first.calls, got.calls
        expected = first.calls[index]
        assert (call["id"], call["name"]) == (expected["id"], expected["name"])
        assert expected["arguments"].startswith(call["arguments"])


def assert_same_answer(got: Streamed, expected: Streamed) -> None:
    assert got.errors == []
    assert got.done
    assert got.text == expected.text
    assert got.calls == expected.calls
    assert got.finishes == expected.finishes
    assert len(got.finishes) == 1
    assert got.usage == expected.usage


# ------------------------------------------------------------------------------------------- upstream data


def data_events(fake: Any, answer: str) -> list[SseEvent]:
    """The data events (not `[DONE]`) of an answer's stream as the fake serves it with include_usage."""
    return [e for e in fake.fixtures.streams[answer] if e.is_data and not e.is_done]


def raw_stream(fake: Any, events: list[SseEvent]) -> bytes:
    """Events rendered as the fake writes them, for `Fault(body=...)`."""
    newline = b"\r\n" if fake.crlf else b"\n"
    return b"".join(event.render(newline) for event in events)


def finish_position(events: list[SseEvent]) -> int:
    """The index of the event that carries the finish reason (OpenAI's `finish_reason`, Gemini's
    `finishReason`)."""
    for index, event in enumerate(events):
        data = json.loads(event.data or b"{}")
        choices = data.get("choices") or data.get("candidates") or ()
        if any(c.get("finish_reason") or c.get("finishReason") for c in choices):
            return index
    raise AssertionError("no finish reason in the stream")


def cut_points(fake: Any, scenario: str) -> dict[str, int]:
    count = len(data_events(fake, scenario))
    return {"first": 1, "middle": max(1, count // 2), "last": count}


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def replay_service(upstreams: dict[ProviderID, Any]) -> Iterator[ServiceThread]:
    """One service for the matrix (default streaming settings)."""
    with ServiceThread(fake_settings(upstreams, dispatcher=NO_BREAKER)) as running:
        yield running


@pytest.fixture(scope="module")
def baselines(
    replay_service: ServiceThread, upstreams: dict[ProviderID, Any]
) -> dict[tuple[ProviderID, str], Streamed]:
    """The fault-free stream of every (provider, scenario), read once."""
    out: dict[tuple[ProviderID, str], Streamed] = {}
    for provider in ProviderID:
        for scenario in SCENARIOS:
            got = stream(replay_service, chat_body(provider, scenario))
            assert got.errors == [] and got.done and len(got.finishes) == 1, (provider, scenario, got.events)
            out[provider, scenario] = got
    for fake in upstreams.values():
        fake.reset()
    return out


@pytest.fixture(params=list(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def vllm() -> Iterator[FakeUpstream]:
    """A vLLM stand-in (`remote` flavour: continues a final assistant message when asked)."""
    fake = FakeUpstream("remote", api_key=KEYS[ProviderID.REMOTE])
    with FakeUpstreamThread(fake):
        yield fake


@pytest.fixture
def fresh_vllm(vllm: FakeUpstream) -> Iterator[FakeUpstream]:
    yield vllm
    vllm.reset()


# ------------------------------------------------------------------------------------------- recovered


@BREAKS
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_a_stream_broken_once_reaches_the_client_as_the_fault_free_answer(
    replay_service, baselines, provider, fake, scenario, kind, where
) -> None:
    after = cut_points(fake, scenario)[where]
    knobs: dict[str, Any] = {kind: after}
    fake.inject(Fault(**knobs))

    got = stream(replay_service, chat_body(provider, scenario))

    assert_same_answer(got, baselines[provider, scenario])


@BREAKS
def test_a_stream_that_keeps_breaking_ends_with_one_error_event_then_done(
    replay_service, provider, fake, scenario, kind
) -> None:
    after = cut_points(fake, scenario)["middle"]
    knobs: dict[str, Any] = {kind: after, "times": 1 + REPLAYS}
    fake.inject(Fault(**knobs))

    got = stream(replay_service, chat_body(provider, scenario))

    assert_one_error_then_done(got)
    assert len(fake.requests) == 1 + REPLAYS


def test_a_regeneration_that_differs_ends_with_stream_interrupted_and_no_second_answer(
    replay_service, baselines, provider, fake, scenario
) -> None:
    first = baselines[provider, scenario]
    fake.inject(Fault(drop_after_chunks=cut_points(fake, scenario)["middle"]))
    fake.inject(Fault(fixture=OTHER_ANSWER[scenario]))

    got = stream(replay_service, chat_body(provider, scenario))

    error = assert_one_error_then_done(got)
    assert error["code"] == "stream_interrupted"
    assert_prefix_of(got, first)
    assert len(fake.requests) == 2


def test_a_cut_between_the_finish_and_the_usage_chunk_still_gives_the_client_its_usage(
    replay_service, baselines, openai_wire_provider, scenario
) -> None:
    provider, fake = openai_wire_provider  # Vertex sends its usage with the finish: no such gap
    events = data_events(fake, scenario)
    fake.inject(Fault(drop_after_chunks=finish_position(events) + 1))

    got = stream(replay_service, chat_body(provider, scenario))

    assert_same_answer(got, baselines[provider, scenario])


# ------------------------------------------------------------------------------------------- end of stream


def test_a_stream_ending_at_eof_after_its_finish_reason_is_complete_and_not_retried(
    replay_service, baselines, provider, fake, scenario
) -> None:
    events = data_events(fake, scenario)  # everything but [DONE] (Vertex streams never have one)
    fake.inject(Fault(body=raw_stream(fake, events)))

    got = stream(replay_service, chat_body(provider, scenario))

    assert_same_answer(got, baselines[provider, scenario])
    assert len(fake.requests) == 1


def test_a_stream_ending_at_eof_before_its_finish_reason_is_replayed_to_the_whole_answer(
    replay_service, baselines, provider, fake, scenario
) -> None:
    events = data_events(fake, scenario)
    fake.inject(Fault(body=raw_stream(fake, events[: finish_position(events)])))

    got = stream(replay_service, chat_body(provider, scenario))

    assert_same_answer(got, baselines[provider, scenario])
    assert len(fake.requests) == 2


def test_a_malformed_event_mid_stream_is_replayed_to_the_whole_answer(
    replay_service, baselines, provider, fake, scenario
) -> None:
    events = fake.fixtures.streams[scenario]
    middle = len(data_events(fake, scenario)) // 2
    broken = [*events[:middle], SseEvent(data=b'{"choices": [{"delta": {"content": "unfinished'), *events[middle:]]
    fake.inject(Fault(body=raw_stream(fake, broken)))

    got = stream(replay_service, chat_body(provider, scenario))

    assert_same_answer(got, baselines[provider, scenario])
    assert len(fake.requests) == 2


# ------------------------------------------------------------------------------------------- no replay


def break_past_the_buffer(service: ServiceThread, provider: ProviderID, fake: Any, scenario: str) -> Streamed:
    """A cut after two chunks, on a service that keeps one for replay."""
    # Vertex's plain tool-call stream is two events, the second with the finish: its Gemini 3 twin
    # closes with a third, so that a cut after two is still mid-answer.
    answer = "chat_tool_call_ids" if (provider, scenario) == (VERTEX, "tool_call") else None
    events = data_events(fake, answer.removeprefix("chat_") if answer else scenario)
    # Azure's first event (prompt filter results, no choices) becomes no chunk: it does not count.
    leading = next(i for i, e in enumerate(events) if json.loads(e.data or b"{}").get("choices", [{}]))
    fake.inject(Fault(drop_after_chunks=leading + 2, fixture=answer))
    return stream(service, chat_body(provider, scenario))


def test_past_the_replay_buffer_a_break_ends_with_one_error_event(
    start_service, baselines, provider, fake, scenario
) -> None:
    # Resumption (which shares the buffer size) off: this is about replay alone.
    service = start_service(streaming={"max_buffer_chunks": 1, "stream_resume_enabled": False})

    got = break_past_the_buffer(service, provider, fake, scenario)

    assert_one_error_then_done(got)
    assert len(fake.requests) == 1, "past the buffer the stream is not re-opened"
    assert got.text or got.calls, "what came before the break was delivered"
    if (provider, scenario) != (VERTEX, "tool_call"):  # that one was served the Gemini 3 twin (other ids)
        assert_prefix_of(got, baselines[provider, scenario])


def test_past_the_replay_buffer_with_resumption_on_a_break_still_ends_with_one_error_event(
    start_service, upstreams, baselines
) -> None:
    # Resumption keeps as few events as replay: a stream that outgrows them still reaches its client whole.
    service = start_service(streaming={"max_buffer_chunks": 1})
    for provider in ProviderID:
        for scenario in SCENARIOS:
            fake = upstreams[provider]
            got = break_past_the_buffer(service, provider, fake, scenario)
            fake.reset()

            assert_one_error_then_done(got)
            if (provider, scenario) != (VERTEX, "tool_call"):
                assert_prefix_of(got, baselines[provider, scenario])


# ------------------------------------------------------------------------------------------- continuation

ALIAS = "continued"
LLAMA = "llama-3.1-8b"


def continuation_alias(vllm: FakeUpstream, route: str) -> dict[str, Any]:
    """`same-deployment`: the alias is the vLLM deployment alone, so its re-open lands there again;
    `failover`: OpenAI first (cut, then refusing the re-open), the vLLM deployment second."""
    remote = {"provider": "remote", "model": LLAMA, "base_url": vllm.url, "accepts_assistant_prefix": True}
    first = [{"provider": "openai", "model": "gpt-4o-mini"}] if route == "failover" else []
    return {ALIAS: [*first, remote]}


def break_first_attempt(upstreams: dict[ProviderID, Any], vllm: FakeUpstream, route: str) -> str:
    """Cut the first attempt after the role chunk and two text chunks; the text the client then has."""
    cut = Fault(drop_after_chunks=3)
    if route == "failover":
        openai_fake = upstreams[ProviderID.OPENAI]
        openai_fake.inject(cut)
        openai_fake.inject(Fault(status=503))
        events = data_events(openai_fake, "text")
    else:
        vllm.inject(cut)
        events = data_events(vllm, "text")
    return "".join(json.loads(e.data or b"")["choices"][0]["delta"].get("content") or "" for e in events[:3])


ROUTES = pytest.mark.parametrize("route", ["same-deployment", "failover"])


@ROUTES
def test_a_deployment_accepting_an_assistant_prefix_continues_the_partial_answer(
    start_service, baselines, upstreams, fresh_vllm, route
) -> None:
    service = start_service(aliases=continuation_alias(fresh_vllm, route))
    sent = break_first_attempt(upstreams, fresh_vllm, route)
    assert sent == "The capital of France is"

    got = stream(service, chat_body(ProviderID.REMOTE, "text", model=ALIAS))

    expected = baselines[ProviderID.OPENAI, "text"]
    assert got.errors == [] and got.done
    assert got.text == expected.text
    assert got.finishes == ["stop"]
    continuation = fresh_vllm.last_request.json
    assert continuation["messages"][-1] == {"role": "assistant", "content": sent}
    assert continuation["messages"][:-1] == [{"role": "user", "content": QUESTION[0]["content"]}]
    assert continuation["continue_final_message"] is True
    assert continuation["add_generation_prompt"] is False
    assert continuation["stream"] is True


@ROUTES
def test_a_fallback_that_rejects_the_assistant_prefix_leaves_the_client_the_original_failure(
    start_service, upstreams, fresh_vllm, route
) -> None:
    service = start_service(aliases=continuation_alias(fresh_vllm, route))
    sent = break_first_attempt(upstreams, fresh_vllm, route)
    fresh_vllm.inject(Fault(reject_assistant_prefix=True, times=1 + REPLAYS))

    got = stream(service, chat_body(ProviderID.REMOTE, "text", model=ALIAS))

    error = assert_one_error_then_done(got)
    cut = "openai" if route == "failover" else "remote"
    # The cut, as a stream that breaks for good reports it; not the fallback's 400.
    assert error["code"] == "upstream_connection_error"
    assert cut in error["message"]
    assert PREFILL_REFUSED not in error["message"]
    assert got.text == sent
    refused = fresh_vllm.requests[-1].json
    assert refused["messages"][-1] == {"role": "assistant", "content": sent}, "the continuation was asked for"
    assert refused["continue_final_message"] is True
    # A refused continuation is not retried: the vLLM deployment saw the cut (if it was first) and one refusal.
    assert len(fresh_vllm.requests) == (1 if route == "failover" else 2)


# ------------------------------------------------------------------------------------------- openai SDK


def sdk_answer(client: openai.OpenAI, provider: ProviderID, scenario: str) -> tuple[str, dict[int, dict[str, str]]]:
    """The text and tool calls (id, name, arguments by index) the SDK's stream chunks add up to."""
    text = ""
    calls: dict[int, dict[str, str]] = {}
    messages = cast("list[ChatCompletionMessageParam]", QUESTION)
    for chunk in client.chat.completions.create(
        model=MODELS[provider], messages=messages, stream=True, **SCENARIOS[scenario]
    ):
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for fragment in choice.delta.tool_calls or ():
                call = calls.setdefault(fragment.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += fragment.id or ""
                function = fragment.function
                call["name"] += (function.name if function else None) or ""
                call["arguments"] += (function.arguments if function else None) or ""
    return text, calls


def test_the_openai_sdk_reads_a_stream_cut_mid_answer_as_the_fault_free_one(
    replay_service, provider, fake, scenario
) -> None:
    client = openai.OpenAI(base_url=f"{replay_service.url}/v1", api_key="unused-by-the-service", max_retries=0)
    fault_free = sdk_answer(client, provider, scenario)
    fake.inject(Fault(drop_after_chunks=cut_points(fake, scenario)["middle"]))

    assert sdk_answer(client, provider, scenario) == fault_free
    assert len(fake.requests) == 3  # the fault-free run, the cut attempt and its replay


# ------------------------------------------------------------------------------------------- the fakes
# What the tests above rely on, checked on the fakes directly.


def continue_request(prefix: str, *, stream: bool, **fields: Any) -> dict[str, Any]:
    body = {
        "model": LLAMA,
        "messages": [*QUESTION, {"role": "assistant", "content": prefix}],
        "continue_final_message": True,
        "add_generation_prompt": False,
        "stream": stream,
        **fields,
    }
    return {key: value for key, value in body.items() if value is not None}


def post(fake: Any, body: dict[str, Any], key: str = KEYS[ProviderID.REMOTE]) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(f"{fake.url}/chat/completions", json=body, headers=headers, timeout=10)


def test_the_vllm_stand_in_streams_only_the_rest_of_the_answer_it_is_asked_to_continue(fresh_vllm) -> None:
    body = continue_request("The capital of France", stream=True, stream_options={"include_usage": True})
    response = post(fresh_vllm, body)

    assert response.status_code == 200
    events: list[Any] = [
        json.loads(line[6:]) if line != "data: [DONE]" else "[DONE]" for line in response.text.splitlines() if line
    ]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    got = Streamed.of(events)
    assert got.text == " is Paris — famous for its cafés."  # the chunk the prefix cut is trimmed
    assert got.finishes == ["stop"] and got.done
    assert got.usage is not None and got.usage["total_tokens"] == 37
    assert got.usage["prompt_tokens"] > 24, "the prefix is counted as prompt"
    assert all("usage" not in e for e in events[:-2]), "vLLM leaves unset fields out"


def test_the_vllm_stand_in_answers_a_continuation_with_only_the_rest(fresh_vllm) -> None:
    response = post(fresh_vllm, continue_request("The capital of France is", stream=False))

    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == " Paris — famous for its cafés."


@pytest.mark.parametrize(
    ("prefix", "fields", "message"),
    [
        ("The capital of Spain", {}, PREFIX_NOT_CONTINUABLE),
        ("The capital of", {"add_generation_prompt": True}, VLLM_BOTH_SET),
        ("The capital of", {"add_generation_prompt": None}, "continue_final_message and add_generation_prompt"),
    ],
    ids=["other-prefix", "both-set", "generation-prompt-by-default"],
)
def test_the_vllm_stand_in_refuses_what_it_cannot_continue_as_vllm_does(fresh_vllm, prefix, fields, message) -> None:
    response = post(fresh_vllm, continue_request(prefix, stream=True, **fields))

    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error["message"]
    assert (error["type"], error["code"]) == ("BadRequestError", 400)


def test_openai_refuses_vllms_continuation_fields_as_unknown_arguments(upstreams) -> None:
    fake = upstreams[ProviderID.OPENAI]
    response = post(fake, continue_request("The capital of", stream=True), key=KEYS[ProviderID.OPENAI])

    assert response.status_code == 400
    assert response.json()["error"]["message"] == "Unrecognized request argument supplied: continue_final_message"


def test_a_fault_makes_a_fake_refuse_a_final_assistant_message_and_serve_others(upstreams) -> None:
    openai_fake, vertex = upstreams[ProviderID.OPENAI], upstreams[VERTEX]
    prefilled = {"model": "gpt-4o-mini", "messages": [*QUESTION, {"role": "assistant", "content": "The capital"}]}
    vertex_url = f"{vertex.url}/v1/projects/demo-proj/locations/us-central1/publishers/google/models/g:generateContent"
    contents = [
        {"role": "user", "parts": [{"text": QUESTION[0]["content"]}]},
        {"role": "model", "parts": [{"text": "The capital"}]},
    ]
    vertex_headers = {"Authorization": f"Bearer {KEYS[VERTEX]}"}
    for fake in (openai_fake, vertex):
        fake.inject(Fault(reject_assistant_prefix=True, times=2))

    refused = post(openai_fake, prefilled, key=KEYS[ProviderID.OPENAI])
    served = post(openai_fake, {**prefilled, "messages": QUESTION}, key=KEYS[ProviderID.OPENAI])
    vertex_refused = httpx.post(vertex_url, json={"contents": contents}, headers=vertex_headers)
    vertex_served = httpx.post(vertex_url, json={"contents": contents[:1]}, headers=vertex_headers)

    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == PREFILL_REFUSED
    assert served.status_code == 200
    assert vertex_refused.status_code == 400
    assert vertex_refused.json()["error"] == {"code": 400, "message": PREFILL_REFUSED, "status": "INVALID_ARGUMENT"}
    assert vertex_served.status_code == 200
