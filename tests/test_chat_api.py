"""/v1/chat/completions over HTTP against the fake upstreams, for every provider.

What reached the upstream is read through `upstream_view`, which knows each provider's wire format;
tests of one wire format's details live with that provider (test_vertex.py, test_azure_openai.py).
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from conftest import FLAVORS, KEYS, MODELS, QUESTION, WEATHER_TOOL
from llm_service.core.config.constants import ProviderID
from llm_service.core.llm.tool_ids import normalize_tool_call_id
from sse_client import fixture_json, fixture_text, read_events, stream_events, streamed_text
from upstream_view import sent_credential, sent_model, sent_tool_results, sent_user_content, upstream_model

# ---------------------------------------------------------------------------------------- success


def test_plain_completion_returns_the_upstream_answer(client: httpx.Client, provider, fake) -> None:
    response = client.post("/v1/chat/completions", json={"model": MODELS[provider], "messages": QUESTION})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == fixture_text(FLAVORS[provider], "text")
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["total_tokens"] > 0
    assert response.headers["x-llm-provider"] == provider.value
    assert response.headers["x-request-id"].startswith("req_")
    sent = fake.requests[-1]
    assert sent_credential(provider, sent) == KEYS[provider]
    assert sent_model(provider, sent) == upstream_model(provider)
    assert sent_user_content(provider, sent) == [QUESTION[0]["content"]]


def test_stream_with_include_usage_ends_with_the_usage_chunk(client: httpx.Client, provider, fake) -> None:
    request = {
        "model": MODELS[provider],
        "messages": QUESTION,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = stream_events(client, request)

    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert streamed_text(chunks) == fixture_text(FLAVORS[provider], "text")
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["finish_reason"] for c in finish] == ["stop"]
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["total_tokens"] > 0
    assert all(c["usage"] is None for c in chunks[:-1])
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_stream_without_include_usage_has_no_usage_chunk(client: httpx.Client, provider, fake) -> None:
    request = {"model": MODELS[provider], "messages": QUESTION, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=request) as response:
        events = read_events(response)

    assert events[-1] == "[DONE]"
    assert all(e["choices"] and "usage" not in e for e in events[:-1])
    assert streamed_text(events[:-1]) == fixture_text(FLAVORS[provider], "text")
    if provider is not ProviderID.VERTEX_AI:  # Gemini always reports usage
        # All but remote are always asked for usage, so tokens are accounted anyway.
        asked = fake.requests[-1].json.get("stream_options", {}).get("include_usage", False)
        assert asked is (provider is not ProviderID.REMOTE)


def test_stream_endpoint_streams_without_the_stream_flag(client: httpx.Client, provider) -> None:
    events = stream_events(client, {"model": MODELS[provider], "messages": QUESTION}, "/v1/chat/completions/stream")
    assert events[-1] == "[DONE]"
    assert streamed_text(events[:-1]) == fixture_text(FLAVORS[provider], "text")


WEATHER_QUESTION = {"role": "user", "content": "Weather in Oslo and Paris?"}


def ask_for_tools(client: httpx.Client, provider: ProviderID) -> httpx.Response:
    body = {
        "model": MODELS[provider],
        "messages": [WEATHER_QUESTION],
        "tools": [WEATHER_TOOL],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
    }
    return client.post("/v1/chat/completions", json=body)


def answer_tools(client: httpx.Client, provider: ProviderID, calls: list[dict[str, Any]]) -> httpx.Response:
    conversation = [
        WEATHER_QUESTION,
        {"role": "assistant", "content": None, "tool_calls": calls},
        *({"role": "tool", "tool_call_id": c["id"], "content": '{"temp_c": 4}'} for c in calls),
    ]
    body = {"model": MODELS[provider], "messages": conversation, "tools": [WEATHER_TOOL]}
    return client.post("/v1/chat/completions", json=body)


def test_tool_call_round_trip(client: httpx.Client, provider, fake) -> None:
    first = ask_for_tools(client, provider)
    assert first.status_code == 200, first.text
    choice = first.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    calls = choice["message"]["tool_calls"]
    assert len(calls) == 2
    assert {json.loads(c["function"]["arguments"])["city"] for c in calls} == {"Oslo", "Paris"}
    assert all(c["id"] and c["type"] == "function" and c["function"]["name"] == "get_weather" for c in calls)

    second = answer_tools(client, provider, calls)

    assert second.status_code == 200, second.text
    assert second.json()["choices"][0]["message"]["content"] == fixture_text(FLAVORS[provider], "tool_result")
    # Each result went back linked to its call (by id, or for Gemini by name and order).
    assert sent_tool_results(provider, fake.requests[-1]) == [("get_weather", '{"temp_c": 4}')] * 2


def test_openai_wire_providers_forward_tools_and_calls_unchanged(client: httpx.Client, openai_wire_provider) -> None:
    provider, fake = openai_wire_provider
    first = ask_for_tools(client, provider)
    sent_tools = fake.requests[-1].json
    assert sent_tools["tools"] == [WEATHER_TOOL]
    assert sent_tools["tool_choice"] == "auto"
    assert sent_tools["parallel_tool_calls"] is True
    calls = first.json()["choices"][0]["message"]["tool_calls"]
    answer_tools(client, provider, calls)
    forwarded = fake.requests[-1].json["messages"]
    # The client saw normalised ids; the provider gets back its own, each call still paired with its result.
    originals = [
        c["id"] for c in fixture_json(FLAVORS[provider], "chat_tool_call.json")["choices"][0]["message"]["tool_calls"]
    ]
    assert [c["id"] for c in calls] == [normalize_tool_call_id(o, provider)[0] for o in originals]
    assert [m["tool_call_id"] for m in forwarded if m["role"] == "tool"] == originals
    assert forwarded[1]["tool_calls"] == [{**c, "id": o} for c, o in zip(calls, originals, strict=True)]


def test_streamed_tool_calls_reassemble_into_valid_arguments(client: httpx.Client, provider) -> None:
    request = {
        "model": MODELS[provider],
        "messages": [{"role": "user", "content": "Weather?"}],
        "tools": [WEATHER_TOOL],
        "stream": True,
    }
    with client.stream("POST", "/v1/chat/completions", json=request) as response:
        events = read_events(response)

    calls: dict[int, dict[str, str]] = {}
    for event in events[:-1]:
        for fragment in event["choices"][0]["delta"].get("tool_calls", ()) if event["choices"] else ():
            call = calls.setdefault(fragment["index"], {"id": "", "name": "", "arguments": ""})
            call["id"] += fragment.get("id", "")
            call["name"] += fragment.get("function", {}).get("name", "")
            call["arguments"] += fragment.get("function", {}).get("arguments", "")
    assert len(calls) == 2
    assert all(c["id"] and c["name"] == "get_weather" and json.loads(c["arguments"])["city"] for c in calls.values())
    assert [
        e["choices"][0]["finish_reason"] for e in events[:-1] if e["choices"] and e["choices"][0]["finish_reason"]
    ] == ["tool_calls"]


def test_image_and_other_content_parts_are_forwarded_unchanged(client: httpx.Client, openai_wire_provider) -> None:
    provider, fake = openai_wire_provider
    parts = [
        {"type": "text", "text": "What is in these pictures?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
    ]
    response = client.post(
        "/v1/chat/completions",
        json={"model": MODELS[provider], "messages": [{"role": "user", "content": parts}]},
    )

    assert response.status_code == 200, response.text
    assert fake.requests[-1].json["messages"][0]["content"] == parts


def test_unknown_fields_pass_through_to_the_upstream(client: httpx.Client, openai_wire_provider) -> None:
    provider, fake = openai_wire_provider
    extra = {
        "logprobs": False,
        "metadata": {"team": "agents"},
        "reasoning_effort": "low",
        "seed": 7,
        "stop": ["\n\n"],
    }
    response = client.post("/v1/chat/completions", json={"model": MODELS[provider], "messages": QUESTION, **extra})

    assert response.status_code == 200, response.text
    sent = fake.requests[-1].json
    assert {k: sent[k] for k in extra} == extra


def test_alias_from_the_profile_resolves_to_its_deployment(client: httpx.Client, upstreams) -> None:
    response = client.post("/v1/chat/completions", json={"model": "claude-sonnet", "messages": QUESTION})

    assert response.status_code == 200, response.text
    assert response.headers["x-llm-provider"] == "openrouter"
    assert upstreams[ProviderID.OPENROUTER].requests[-1].json["model"] == "anthropic/claude-3.5-sonnet"


def test_a_plain_request_reaches_an_alias_upstream_as_the_client_wrote_it(client: httpx.Client, upstreams) -> None:
    # The client's body, relayed (LLMRequest.wire): only the model is the deployment's; an integer stays
    # one (written field by field, the temperature went as 1.0), fields the service does not know ride along.
    body = {"model": "claude-sonnet", "messages": QUESTION, "temperature": 1, "max_tokens": 64, "top_k": 40}
    response = client.post("/v1/chat/completions", json=body)

    assert response.status_code == 200, response.text
    sent = upstreams[ProviderID.OPENROUTER].requests[-1]
    assert sent.json == {**body, "model": "anthropic/claude-3.5-sonnet"}
    assert b'"temperature":1,' in sent.body


def test_a_plain_request_on_the_stream_route_is_sent_as_a_stream(client: httpx.Client, upstreams) -> None:
    body = {"model": "claude-sonnet", "messages": QUESTION, "stream": False}
    with client.stream("POST", "/v1/chat/completions/stream", json=body) as response:
        assert response.status_code == 200
        response.read()

    sent = upstreams[ProviderID.OPENROUTER].requests[-1].json
    assert sent["stream"] is True
    assert sent["messages"] == QUESTION


def test_models_lists_aliases_and_providers(client: httpx.Client) -> None:
    data = client.get("/v1/models").json()["data"]
    ids = {m["id"] for m in data}
    assert {"claude-sonnet", "fast", "openai/*", "openrouter/*", "azure_openai/*", "vertex_ai/*", "remote/*"} <= ids
    assert all(m["object"] == "model" for m in data)


def test_health_reports_providers(client: httpx.Client) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["demo"] is False
    assert set(body["providers"]) == {p.value for p in ProviderID}


def test_request_id_from_the_caller_is_kept(client: httpx.Client, provider) -> None:
    response = client.post(
        "/v1/chat/completions",
        json={"model": MODELS[provider], "messages": QUESTION},
        headers={"x-request-id": "trace-42"},
    )
    assert response.headers["x-request-id"] == "trace-42"


def test_openrouter_attribution_headers_are_sent(start_service, upstreams) -> None:
    service = start_service(openrouter={"http_referer": "https://agents.example", "app_title": "AgentOne"})
    with httpx.Client(base_url=service.url, timeout=20) as http:
        response = http.post(
            "/v1/chat/completions", json={"model": MODELS[ProviderID.OPENROUTER], "messages": QUESTION}
        )

    assert response.status_code == 200
    headers = upstreams[ProviderID.OPENROUTER].requests[-1].headers
    assert headers["http-referer"] == "https://agents.example"
    assert headers["x-title"] == "AgentOne"
