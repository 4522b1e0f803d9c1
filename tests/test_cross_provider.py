"""The same client request gives the same kind of answer on every provider, and a tool conversation can
move between providers.

Every case runs once per provider (the `provider` fixture); what a provider cannot take is declared in
`capabilities.py`, the only source of skips and of expected refusals. Cases marked `integration` run
against the fakes with --mock-providers and against the real APIs whose credentials are set otherwise, so
they assert structure, not text. Cases that inject faults or read what a fake received need the fakes:
they are skipped without --mock-providers.

The matrix at the end starts a tool conversation on one provider (it answers with tool calls) and sends
the tool results to another: the target must get ids it accepts, each result paired with its call.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from capabilities import CAPABILITIES, IMAGE_URLS, require
from conftest import ALL_PROVIDERS, FLAVORS, MODELS, WEATHER_TOOL, make_fake
from llm_service.core.config.constants import ProviderID
from llm_service.fakes import FakeUpstreamThread, Fault, RecordedRequest
from llm_service.fakes.vertex_wire import SKIP_SIGNATURE
from sse_client import fixture_json, fixture_text, stream_events, streamed_text

CHAT = "/v1/chat/completions"
VERTEX = ProviderID.VERTEX_AI
HELLO = [{"role": "user", "content": "Say hello in one short sentence."}]
CLIENT_CALL_ID = re.compile(r"call_[A-Za-z0-9]{24}")
FINISH_REASONS = {"stop", "length", "tool_calls", "content_filter"}
#: OpenAI's limit on `messages[].tool_calls[].id` (provider-protocols.md section 7).
MAX_OPENAI_ID = 40
TEMPERATURES = {"Oslo": 4, "Paris": 17}


# ================================================================================================ fixtures


@pytest.fixture
def live(live_service: tuple[str, str]) -> Iterator[tuple[httpx.Client, str]]:
    """(client of the service, model) for an `integration` case: the fakes or the real API."""
    url, model = live_service
    with httpx.Client(base_url=url, timeout=120) as http:
        yield http, model


@pytest.fixture
def fakes(mock_providers: bool, upstreams: dict[ProviderID, Any]) -> dict[ProviderID, Any]:
    """The fake upstreams, for a case that injects faults or reads what they received: --mock-providers only."""
    if not mock_providers:
        pytest.skip("needs the fake upstreams: run with --mock-providers")
    return upstreams


# ================================================================================================ helpers


def assert_completion_structure(body: dict[str, Any]) -> None:
    """OpenAI's `chat.completion` schema, with usage counts that add up."""
    assert isinstance(body["id"], str) and body["id"]
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int) and body["created"] > 0
    assert isinstance(body["model"], str) and body["model"]
    assert body["choices"]
    for position, choice in enumerate(body["choices"]):
        assert choice["index"] == position
        assert choice["message"]["role"] == "assistant"
        assert choice["finish_reason"] in FINISH_REASONS
    usage = body["usage"]
    counts = [usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]]
    assert all(type(n) is int and n >= 0 for n in counts), usage
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"]
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return error


def weather_request(model: str, cities: list[str], **extra: Any) -> dict[str, Any]:
    question = f"What is the weather in {' and in '.join(cities)}? Call the tool once per city."
    return {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        **extra,
    }


def ask_for_tool_calls(http: httpx.Client, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """(the tool calls of the answer, its finish reason), reassembled from the deltas for a stream."""
    if not body.get("stream"):
        response = http.post(CHAT, json=body)
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        return choice["message"].get("tool_calls") or [], choice["finish_reason"]
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    for event in stream_events(http, body)[:-1]:
        for choice in event["choices"]:
            finish = choice["finish_reason"] or finish
            for fragment in choice["delta"].get("tool_calls") or ():
                call = calls.setdefault(
                    fragment["index"], {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
                )
                call["id"] += fragment.get("id", "")
                call["function"]["name"] += fragment.get("function", {}).get("name", "")
                call["function"]["arguments"] += fragment.get("function", {}).get("arguments", "")
    return [calls[index] for index in sorted(calls)], finish


def assert_valid_tool_calls(calls: list[dict[str, Any]]) -> None:
    assert calls
    for call in calls:
        assert CLIENT_CALL_ID.fullmatch(call["id"]), call["id"]
        assert call["type"] == "function"
        assert call["function"]["name"] == "get_weather"
        assert isinstance(json.loads(call["function"]["arguments"]).get("city"), str)
    assert len({c["id"] for c in calls}) == len(calls)


def city_of(call: dict[str, Any]) -> str:
    return str(json.loads(call["function"]["arguments"])["city"])


def tool_results_request(model: str, body: dict[str, Any], calls: list[dict[str, Any]]) -> dict[str, Any]:
    """`body`'s conversation, continued with the assistant's calls and one result per call (naming its city)."""
    results = [
        {
            "role": "tool",
            "tool_call_id": call["id"],
            "content": json.dumps({"city": city_of(call), "temp_c": TEMPERATURES.get(city_of(call), 10)}),
        }
        for call in calls
    ]
    assistant = {"role": "assistant", "content": None, "tool_calls": calls}
    return {"model": model, "messages": [*body["messages"], assistant, *results], "tools": body["tools"]}


# ================================================================================================ answers


@pytest.mark.integration
def test_completion_has_the_openai_structure(live, provider) -> None:
    http, model = live
    response = http.post(CHAT, json={"model": model, "messages": HELLO})

    assert response.status_code == 200, response.text
    assert response.headers["x-llm-provider"] == provider.value
    body = response.json()
    assert_completion_structure(body)
    assert body["choices"][0]["finish_reason"] == "stop"
    assert isinstance(body["choices"][0]["message"]["content"], str) and body["choices"][0]["message"]["content"]


@pytest.mark.integration
def test_stream_is_chunks_of_one_id_then_the_finish_reason_then_done(live, provider) -> None:
    http, model = live
    events = stream_events(http, {"model": model, "messages": HELLO, "stream": True})

    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks and all(isinstance(c, dict) for c in chunks)
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finishes = [(n, ch["finish_reason"]) for n, c in enumerate(chunks) for ch in c["choices"] if ch["finish_reason"]]
    assert finishes == [(len(chunks) - 1, "stop")]  # the last chunk, and only it
    assert streamed_text(chunks)


@pytest.mark.integration
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_tool_calls_are_valid_and_their_results_accepted(live, provider, stream) -> None:
    http, model = live
    body = weather_request(model, ["Oslo"], stream=stream)
    calls, finish = ask_for_tool_calls(http, body)

    assert finish == "tool_calls"
    assert_valid_tool_calls(calls)

    follow_up = http.post(CHAT, json=tool_results_request(model, body, calls))
    assert follow_up.status_code == 200, follow_up.text
    answer = follow_up.json()
    assert_completion_structure(answer)
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["choices"][0]["message"]["content"]


@pytest.mark.integration
def test_parallel_tool_calls_come_in_one_answer_and_are_all_answered(live, provider) -> None:
    require(provider, "parallel_tool_calls")
    http, model = live
    body = weather_request(model, ["Oslo", "Paris"], parallel_tool_calls=True)
    calls, finish = ask_for_tool_calls(http, body)

    assert finish == "tool_calls"
    assert len(calls) >= 2
    assert_valid_tool_calls(calls)

    follow_up = http.post(CHAT, json=tool_results_request(model, body, calls))
    assert follow_up.status_code == 200, follow_up.text
    assert follow_up.json()["choices"][0]["message"]["content"]


# ================================================================================================ errors


@dataclass(frozen=True)
class UpstreamFailure:
    """A fault injected upstream, and the one answer the client gets for it whatever the provider."""

    fault: Fault
    status: int
    type: str
    code: str | None
    should_retry: str
    attempts: int  # upstream requests made for it
    retry_after: str | None = None


FAILURES = {
    "server-error-500": UpstreamFailure(Fault(status=500, times=3), 502, "upstream_error", "upstream_error", "true", 3),
    "rate-limited-429": UpstreamFailure(
        # Longer than LLM_RETRY_MAX_RETRY_AFTER: handed to the caller at once, not waited for.
        Fault(status=429, headers={"retry-after": "30"}),
        429,
        "rate_limit_error",
        "rate_limit_exceeded",
        "true",
        1,
        retry_after="30",
    ),
    "unauthorized-401": UpstreamFailure(Fault(status=401), 502, "upstream_error", "upstream_auth_error", "false", 1),
    # A generic 400: no reason the client could act on beyond the status, so no code.
    "bad-request-400": UpstreamFailure(Fault(status=400), 400, "invalid_request_error", None, "false", 1),
}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("failure", list(FAILURES))
def test_the_same_upstream_failure_gives_the_same_error_on_every_provider(
    fakes, client, provider, failure, stream
) -> None:
    """Mock only: the failure is injected into the fake upstream."""
    expected = FAILURES[failure]
    fake = fakes[provider]
    fake.inject(expected.fault)

    response = client.post(CHAT, json={"model": MODELS[provider], "messages": HELLO, "stream": stream})

    assert len(fake.requests) == expected.attempts
    error = assert_openai_error(response, expected.status)
    assert provider.value in error["message"]
    assert error["type"] == expected.type
    assert response.headers.get("retry-after") == expected.retry_after
    assert response.headers["x-should-retry"] == expected.should_retry
    assert error["code"] == expected.code


# ================================================================================================ images

#: How Vertex receives each image form it takes (gemini_format; provider-protocols.md 6.1).
GEMINI_IMAGE_PARTS = {
    "data": {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
    "https": {"fileData": {"mimeType": "image/png", "fileUri": IMAGE_URLS["https"]}},
}


@pytest.mark.parametrize("form", list(IMAGE_URLS))
def test_an_image_reaches_the_provider_in_its_form_or_is_refused_naming_the_field(
    fakes, client, provider, form
) -> None:
    """Mock only: reads what the fake received."""
    image = {"type": "image_url", "image_url": {"url": IMAGE_URLS[form], "detail": "low"}}
    content = [{"type": "text", "text": "What is in this picture?"}, image]
    fake = fakes[provider]

    response = client.post(CHAT, json={"model": MODELS[provider], "messages": [{"role": "user", "content": content}]})

    if form not in CAPABILITIES[provider].image_urls:
        error = assert_openai_error(response, 400)
        assert error["type"] == "invalid_request_error"
        assert error["code"] == "unsupported_for_provider"
        assert error["param"] == "messages[0].content[1].image_url.url"
        assert error["param"] in error["message"]
        assert provider.value in error["message"]
        assert fake.requests == []
        return
    assert response.status_code == 200, response.text
    sent = fake.requests[-1].json
    if provider is VERTEX:
        assert sent["contents"][0]["parts"] == [{"text": "What is in this picture?"}, GEMINI_IMAGE_PARTS[form]]
    else:
        assert sent["messages"][0]["content"] == content


# ================================================================================================ matrix


def start_tool_conversation(http: httpx.Client, provider: ProviderID) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the request, the tool calls `provider` answered it with)."""
    body = weather_request(MODELS[provider], ["Oslo", "Paris"], parallel_tool_calls=True)
    calls, finish = ask_for_tool_calls(http, body)
    assert finish == "tool_calls"
    assert_valid_tool_calls(calls)
    return body, calls


def continue_on(http: httpx.Client, provider: ProviderID, body: dict[str, Any], calls: list[dict[str, Any]]) -> None:
    """Send the tool results to `provider`, which must answer them."""
    response = http.post(CHAT, json=tool_results_request(MODELS[provider], body, calls))
    assert response.status_code == 200, response.text
    assert response.headers["x-llm-provider"] == provider.value
    assert response.json()["choices"][0]["message"]["content"] == fixture_text(FLAVORS[provider], "tool_result")


def provider_call_ids(provider: ProviderID, fixture: str = "chat_tool_call.json") -> list[str]:
    """The ids `provider`'s fake gives its tool calls (fixture `fixture`): its raw, own ids."""
    body = fixture_json(FLAVORS[provider], fixture)
    if provider is VERTEX:
        parts = body["candidates"][0]["content"]["parts"]
        return [p["functionCall"]["id"] for p in parts if "id" in p.get("functionCall", {})]
    return [c["id"] for c in body["choices"][0]["message"]["tool_calls"]]


def gemini_call_parts(fixture: str) -> list[dict[str, Any]]:
    """The functionCall parts (with any thoughtSignature) of a Vertex fixture's answer."""
    parts = fixture_json(FLAVORS[VERTEX], fixture)["candidates"][0]["content"]["parts"]
    return [p for p in parts if "functionCall" in p]


def assert_openai_tool_turn(sent: RecordedRequest, ids: list[str]) -> None:
    """The assistant's calls carry `ids`, each `tool` message answers its call by id, with that call's city."""
    messages = sent.json["messages"]
    assistants = [m for m in messages if m["role"] == "assistant"]
    assert len(assistants) == 1
    calls = assistants[0]["tool_calls"]
    results = [m for m in messages if m["role"] == "tool"]
    assert [c["id"] for c in calls] == ids
    assert [r["tool_call_id"] for r in results] == ids
    assert all(len(i) <= MAX_OPENAI_ID for i in ids)
    for call, result in zip(calls, results, strict=True):
        assert json.loads(result["content"])["city"] == city_of(call)


def assert_gemini_tool_turn(sent: RecordedRequest, calls: list[dict[str, Any]], *, foreign: bool) -> None:
    """The model turn holds exactly `calls` (functionCall parts with what they may carry); the next user
    turn answers them one functionResponse each, same order and name, with the call's id if it had one.
    A `foreign` call (issued by another provider) may carry Google's documented stand-in signature, no other."""
    contents = sent.json["contents"]
    turn = next(n for n, c in enumerate(contents) if any("functionCall" in p for p in c["parts"]))
    assert contents[turn]["role"] == "model"
    parts = contents[turn]["parts"]
    if foreign:
        parts = [{k: v for k, v in p.items() if (k, v) != ("thoughtSignature", SKIP_SIGNATURE)} for p in parts]
    assert parts == calls
    responses = [p["functionResponse"] for p in contents[turn + 1]["parts"] if "functionResponse" in p]
    assert contents[turn + 1]["role"] == "user"
    assert len(responses) == len(calls)
    for part, response in zip(calls, responses, strict=True):
        call = part["functionCall"]
        assert response["name"] == call["name"]
        assert response["response"]["city"] == call["args"]["city"]
        assert response.get("id") == call.get("id")


def foreign_gemini_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What Vertex must get for calls another provider issued: name and args only (no id, no signature)."""
    return [
        {"functionCall": {"name": c["function"]["name"], "args": json.loads(c["function"]["arguments"])}} for c in calls
    ]


PAIRS = [
    pytest.param(
        origin,
        target,
        id=f"{origin.value}->{target.value}",
        marks=[getattr(pytest.mark, f"provider_{origin.value}"), getattr(pytest.mark, f"provider_{target.value}")],
    )
    for origin in ALL_PROVIDERS
    for target in ALL_PROVIDERS
    if origin is not target
]


@pytest.mark.parametrize(("origin", "target"), PAIRS)
def test_tool_conversation_started_on_one_provider_continues_on_another(fakes, client, origin, target) -> None:
    """Mock only: reads what the target's fake received. The target gets the client's (normalised) ids,
    never the origin's raw ones, and nothing else the origin attached to its calls."""
    body, calls = start_tool_conversation(client, origin)
    continue_on(client, target, body, calls)

    assert len(fakes[origin].requests) == 1
    assert len(fakes[target].requests) == 1
    sent = fakes[target].requests[-1]
    if target is VERTEX:
        assert_gemini_tool_turn(sent, foreign_gemini_calls(calls), foreign=True)
    else:
        assert_openai_tool_turn(sent, [c["id"] for c in calls])
        assert not set(provider_call_ids(origin)) & {c["id"] for c in calls}


def test_tool_conversation_goes_back_to_its_provider_with_its_own_ids(fakes, client, provider) -> None:
    """Mock only: the provider that issued the calls gets back exactly what it issued (fixture
    chat_tool_call.json), each result paired with its call."""
    body, calls = start_tool_conversation(client, provider)
    continue_on(client, provider, body, calls)

    sent = fakes[provider].requests[-1]
    assert bool(provider_call_ids(provider)) is CAPABILITIES[provider].issues_tool_call_ids
    if provider is VERTEX:
        assert_gemini_tool_turn(sent, gemini_call_parts("chat_tool_call.json"), foreign=False)
    else:
        assert_openai_tool_turn(sent, provider_call_ids(provider))


# ------------------------------------------------------------------------ Gemini 3: ids and signatures


@pytest.fixture(scope="module")
def gemini3_fake() -> Iterator[Any]:
    """A Vertex fake answering like Gemini 3 (function-call ids and thought signatures, both enforced)."""
    fake = make_fake(VERTEX, function_call_ids=True, require_thought_signatures=True)
    thread = FakeUpstreamThread(fake).start()
    yield fake
    thread.stop()


@pytest.fixture
def gemini3(fakes, gemini3_fake, start_service) -> Iterator[tuple[httpx.Client, Any]]:
    """(client of a service whose vertex_ai is the Gemini 3 fake, that fake); the other providers are the fakes."""
    service = start_service(vertex_ai={"base_url": gemini3_fake.url})
    with httpx.Client(base_url=service.url, timeout=20) as http:
        yield http, gemini3_fake
    gemini3_fake.reset()


@pytest.mark.parametrize("target", ALL_PROVIDERS, ids=lambda p: p.value)
def test_gemini3_tool_conversation_continues_with_its_ids_and_signatures_only_on_vertex(gemini3, fakes, target) -> None:
    """Mock only. Vertex gets its function-call ids and thought signatures back; another provider gets the
    client's ids, never Gemini's."""
    http, gemini = gemini3
    body, calls = start_tool_conversation(http, VERTEX)
    own_ids = provider_call_ids(VERTEX, "chat_tool_call_ids.json")
    assert own_ids and not set(own_ids) & {c["id"] for c in calls}

    continue_on(http, target, body, calls)

    if target is VERTEX:
        assert len(gemini.requests) == 2
        assert_gemini_tool_turn(gemini.requests[-1], gemini_call_parts("chat_tool_call_ids.json"), foreign=False)
    else:
        assert len(gemini.requests) == 1
        assert_openai_tool_turn(fakes[target].requests[-1], [c["id"] for c in calls])
        signatures = [p["thoughtSignature"] for p in gemini_call_parts("chat_tool_call_ids.json")]
        sent = fakes[target].requests[-1].body.decode()
        assert not [x for x in [*own_ids, *signatures] if x in sent]


@pytest.mark.parametrize("origin", [p for p in ALL_PROVIDERS if p is not VERTEX], ids=lambda p: p.value)
def test_tool_conversation_started_elsewhere_continues_on_gemini3(gemini3, fakes, origin) -> None:
    """Mock only: the Gemini 3 fake enforces thought signatures as Gemini 3 does."""
    http, gemini = gemini3
    body, calls = start_tool_conversation(http, origin)

    continue_on(http, VERTEX, body, calls)

    assert_gemini_tool_turn(gemini.requests[-1], foreign_gemini_calls(calls), foreign=True)
