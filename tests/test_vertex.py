"""Vertex AI Gemini through the service: the translation checked on what the fake received, Gemini 3's
function-call ids and thought signatures kept for the next turn, Google's error shapes, and GCP
service-account tokens fetched by the real google-auth from a fake token endpoint."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import MODELS, QUESTION, VERTEX_LOCATION, VERTEX_PROJECT, WEATHER_TOOL, fake_settings
from harness import ManualClock, ServiceThread, burst
from llm_service.core.config.constants import ProviderID
from llm_service.core.llm.gemini_format import FOREIGN_CALL_SIGNATURE
from llm_service.fakes import FakeUpstreamThread, FakeVertex, Fault, ServerThread
from llm_service.fakes.token_endpoints import FakeGoogleOAuth
from llm_service.main import create_app
from sse_client import read_events, stream_events

VERTEX = ProviderID.VERTEX_AI
MODEL = MODELS[VERTEX]
ASK = {"role": "user", "content": "Weather in Oslo and Paris?"}


def post(http: httpx.Client, messages: list[dict[str, Any]], **extra: Any) -> httpx.Response:
    return http.post("/v1/chat/completions", json={"model": MODEL, "messages": messages, **extra})


def tool_turns(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The assistant's calls as the client echoes them, then one result per call (Oslo 4 °C, Paris 18 °C)."""
    results = {"Oslo": '{"temp_c": 4}', "Paris": '{"temp_c": 18}'}
    return [
        {"role": "assistant", "content": None, "tool_calls": calls},
        *(
            {
                "role": "tool",
                "tool_call_id": c["id"],
                "content": results[json.loads(c["function"]["arguments"])["city"]],
            }
            for c in calls
        ),
    ]


def model_and_result_contents(sent: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    contents = sent.json["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    return contents[1]["parts"], contents[2]["parts"]


# ------------------------------------------------------------------------------------- translation


def test_two_parallel_tool_calls_round_trip_as_gemini_function_calls(client: httpx.Client, upstreams) -> None:
    fake = upstreams[VERTEX]
    first = post(client, [{"role": "system", "content": "Be brief."}, ASK], tools=[WEATHER_TOOL], tool_choice="auto")

    assert first.status_code == 200, first.text
    sent = fake.requests[-1].json
    assert sent["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    declaration = sent["tools"][0]["functionDeclarations"][0]
    assert declaration["name"] == "get_weather"
    assert declaration["parameters"]["type"] == "OBJECT"
    assert declaration["parameters"]["properties"]["city"]["type"] == "STRING"
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}
    choice = first.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    calls = choice["message"]["tool_calls"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Oslo"}, {"city": "Paris"}]
    assert len({c["id"] for c in calls}) == 2
    assert all(c["id"].startswith("call_") for c in calls)

    second = post(client, [ASK, *tool_turns(calls)], tools=[WEATHER_TOOL])

    assert second.status_code == 200, second.text
    assert "18 °C" in second.json()["choices"][0]["message"]["content"]
    model_parts, result_parts = model_and_result_contents(fake.requests[-1])
    assert model_parts == [
        {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}},
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
    ]
    assert result_parts == [
        {"functionResponse": {"name": "get_weather", "response": {"temp_c": 4}}},
        {"functionResponse": {"name": "get_weather", "response": {"temp_c": 18}}},
    ]


def test_tool_results_sent_out_of_order_go_back_in_call_order(client: httpx.Client, upstreams) -> None:
    calls = post(client, [ASK], tools=[WEATHER_TOOL]).json()["choices"][0]["message"]["tool_calls"]
    assistant, *results = tool_turns(calls)
    response = post(client, [ASK, assistant, *reversed(results)], tools=[WEATHER_TOOL])

    assert response.status_code == 200, response.text
    _, result_parts = model_and_result_contents(upstreams[VERTEX].requests[-1])
    assert [p["functionResponse"]["response"] for p in result_parts] == [{"temp_c": 4}, {"temp_c": 18}]


def test_a_completion_blocked_before_any_text_is_a_400_content_filter_error(client: httpx.Client, upstreams) -> None:
    blocked = {
        "candidates": [{"content": {"role": "model", "parts": []}, "finishReason": "SAFETY", "index": 0}],
        "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "blocked-1",
    }
    upstreams[VERTEX].inject(Fault(status=200, body=json.dumps(blocked).encode()))
    response = post(client, QUESTION)

    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "content_filter"


def test_a_stream_blocked_before_any_text_is_a_400_content_filter_error(client: httpx.Client, upstreams) -> None:
    blocked = {
        "candidates": [{"content": {"role": "model", "parts": [{"text": ""}]}, "finishReason": "PROHIBITED_CONTENT"}],
        "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "blocked-2",
    }
    upstreams[VERTEX].inject(Fault(status=200, body=b"data: " + json.dumps(blocked).encode() + b"\r\n\r\n"))
    response = client.post("/v1/chat/completions", json={"model": MODEL, "messages": QUESTION, "stream": True})

    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "content_filter"


def test_generated_tool_call_ids_are_the_same_streamed_and_plain(client: httpx.Client) -> None:
    plain = post(client, [ASK], tools=[WEATHER_TOOL]).json()["choices"][0]["message"]["tool_calls"]
    events = stream_events(client, {"model": MODEL, "messages": [ASK], "tools": [WEATHER_TOOL], "stream": True})

    fragments = [f for e in events[:-1] if e["choices"] for f in e["choices"][0]["delta"].get("tool_calls", ())]
    assert [(f["index"], f["id"]) for f in fragments] == [(0, plain[0]["id"]), (1, plain[1]["id"])]
    assert [json.loads(f["function"]["arguments"]) for f in fragments] == [{"city": "Oslo"}, {"city": "Paris"}]
    finishes = [e["choices"][0]["finish_reason"] for e in events[:-1] if e["choices"]]
    assert finishes[-1] == "tool_calls"


def test_images_become_inline_data_and_file_data(client: httpx.Client, upstreams) -> None:
    parts = [
        {"type": "text", "text": "What is in these pictures?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "gs://bucket/cat.jpeg"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/dog.webp"}},
    ]
    response = post(client, [{"role": "user", "content": parts}])

    assert response.status_code == 200, response.text
    assert upstreams[VERTEX].requests[-1].json["contents"][0]["parts"] == [
        {"text": "What is in these pictures?"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "gs://bucket/cat.jpeg"}},
        {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/dog.webp"}},
    ]


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/cat.png"}}]}],
            "messages[0].content[0]",
        ),
        ([ASK, {"role": "tool", "tool_call_id": "call_unknown", "content": "4"}], "messages[1].tool_call_id"),
    ],
    ids=["unsupported-image-scheme", "result-without-its-call"],
)
def test_what_gemini_cannot_take_is_a_400_that_never_reaches_it(
    client: httpx.Client, upstreams, messages, param
) -> None:
    response = post(client, messages)

    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith(param)
    assert upstreams[VERTEX].requests == []


def test_generation_settings_map_to_generation_config(client: httpx.Client, upstreams) -> None:
    schema = {"type": "object", "properties": {"capital": {"type": "string"}}, "required": ["capital"]}
    response = post(
        client,
        QUESTION,
        temperature=0.2,
        top_p=0.9,
        max_completion_tokens=64,
        stop=["END"],
        seed=7,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
    )

    assert response.status_code == 200, response.text
    config = upstreams[VERTEX].requests[-1].json["generationConfig"]
    assert config["temperature"] == 0.2
    assert config["topP"] == 0.9
    assert config["maxOutputTokens"] == 64
    assert config["stopSequences"] == ["END"]
    assert config["seed"] == 7
    assert config["responseMimeType"] == "application/json"
    assert config["responseSchema"]["properties"]["capital"]["type"] == "STRING"


def test_stream_usage_maps_from_usage_metadata(client: httpx.Client) -> None:
    events = stream_events(
        client, {"model": MODEL, "messages": QUESTION, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert events[-2]["choices"] == []
    assert events[-2]["usage"]["prompt_tokens"] == 24
    assert events[-2]["usage"]["completion_tokens"] == 13
    assert events[-2]["usage"]["total_tokens"] == 37


# ------------------------------------------------------------------------------------- Gemini 3


def new_gemini3() -> FakeVertex:
    """A fake Vertex AI answering as Gemini 3 does: function calls with ids and thought signatures, which
    it requires back on the next turn."""
    return FakeVertex(
        access_token="gemini3-token",
        project=VERTEX_PROJECT,
        location=VERTEX_LOCATION,
        function_call_ids=True,
        require_thought_signatures=True,
    )


@pytest.fixture
def gemini3() -> Iterator[FakeVertex]:
    fake = new_gemini3()
    with FakeUpstreamThread(fake):
        yield fake


def gemini3_service(upstreams, fake: FakeVertex) -> ServiceThread:
    group = {"base_url": fake.url, "api_key": "gemini3-token", "project": VERTEX_PROJECT}
    return ServiceThread(fake_settings(upstreams, vertex_ai=group))


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_function_call_ids_and_thought_signatures_go_back_on_the_next_turn(upstreams, gemini3, stream) -> None:
    with gemini3_service(upstreams, gemini3) as service, httpx.Client(base_url=service.url, timeout=20) as http:
        calls = ask_for_tool_calls(http, stream=stream)
        second = post(http, [ASK, *tool_turns(calls)], tools=[WEATHER_TOOL])

    assert second.status_code == 200, second.text
    assert_the_issued_calls_went_back(gemini3, calls, stream=stream)


def ask_for_tool_calls(http: httpx.Client, *, stream: bool) -> list[dict[str, Any]]:
    """The tool calls of the first turn, as the client echoes them on the next (plain or streamed)."""
    if not stream:
        response = post(http, [ASK], tools=[WEATHER_TOOL])
        assert response.status_code == 200, response.text
        calls: list[dict[str, Any]] = response.json()["choices"][0]["message"]["tool_calls"]
        return calls
    body = {"model": MODEL, "messages": [ASK], "tools": [WEATHER_TOOL], "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        events = read_events(r)
    fragments = [f for e in events[:-1] if e["choices"] for f in e["choices"][0]["delta"].get("tool_calls", ())]
    return [{"id": f["id"], "type": "function", "function": f["function"]} for f in fragments]


def assert_the_issued_calls_went_back(fake: FakeVertex, calls: list[dict[str, Any]], *, stream: bool) -> None:
    """The fake's last request carried each call it issued with its own id and thought signature, and
    each result under that id; the client never saw either."""
    issued = gemini3_parts(fake, stream)
    assert all("thoughtSignature" not in json.dumps(c) for c in calls)  # the client never carries them
    model_parts, result_parts = model_and_result_contents(fake.requests[-1])
    assert [(p["functionCall"]["id"], p["thoughtSignature"]) for p in model_parts] == [
        (p["functionCall"]["id"], p["thoughtSignature"]) for p in issued
    ]
    assert [p["functionResponse"]["id"] for p in result_parts] == [p["functionCall"]["id"] for p in issued]


def gemini3_parts(fake: FakeVertex, stream: bool) -> list[dict[str, Any]]:
    """The functionCall parts the fake issued in its tool-call answer."""
    name = "chat_tool_call_ids"
    text = (fake.fixtures_dir / "vertex_ai" / f"{name}.{'sse' if stream else 'json'}").read_text()
    bodies = (
        [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
        if stream
        else [json.loads(text)]
    )
    return [p for b in bodies for c in b.get("candidates", ()) for p in c["content"]["parts"] if "functionCall" in p]


def test_a_call_gemini3_did_not_issue_goes_with_googles_placeholder_signature_and_is_accepted(
    upstreams, gemini3
) -> None:
    calls = [
        {
            "id": "call_from_elsewhere",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
        }
    ]
    with gemini3_service(upstreams, gemini3) as service, httpx.Client(base_url=service.url, timeout=20) as http:
        response = post(http, [ASK, *tool_turns(calls)], tools=[WEATHER_TOOL])

    assert response.status_code == 200, response.text
    model_parts, _ = model_and_result_contents(gemini3.requests[-1])
    assert [p["thoughtSignature"] for p in model_parts if "functionCall" in p] == [FOREIGN_CALL_SIGNATURE]


# ------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "body",
    [
        b'[{"error": {"code": 429, "message": "Resource exhausted.", "status": "RESOURCE_EXHAUSTED"}}]',
        b'{"error": {"code": 429, "errors": [{"message": "Resource exhausted.", "reason": "rateLimitExceeded"}]}}',
    ],
    ids=["array-wrapped", "legacy-errors-list"],
)
def test_every_google_error_shape_is_understood(client: httpx.Client, upstreams, body) -> None:
    upstreams[VERTEX].inject(Fault(status=429, body=body, headers={"retry-after": "30"}))
    response = post(client, QUESTION)

    assert response.status_code == 429
    assert response.headers["retry-after"] == "30"


def test_a_blocked_prompt_is_a_400_content_filter_error(client: httpx.Client, upstreams) -> None:
    blocked = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 9}}
    upstreams[VERTEX].inject(Fault(status=200, body=json.dumps(blocked).encode()))
    response = post(client, QUESTION)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "content_filter"


# ------------------------------------------------------------------------------------- GCP credentials


@pytest.fixture
def google() -> Iterator[FakeGoogleOAuth]:
    fake = FakeGoogleOAuth(access_token="ya29.from-the-service-account")
    with ServerThread(fake):
        yield fake


@pytest.fixture
def sa_vertex() -> Iterator[FakeVertex]:
    fake = FakeVertex(access_token="ya29.from-the-service-account", project=VERTEX_PROJECT, location=VERTEX_LOCATION)
    with FakeUpstreamThread(fake):
        yield fake


def sa_service(upstreams, vertex: FakeVertex, key_file: Path, clock: Any = time.time) -> ServiceThread:
    group = {"base_url": vertex.url, "api_key": None, "project": VERTEX_PROJECT, "credentials_file": str(key_file)}
    settings = fake_settings(upstreams, vertex_ai=group)
    return ServiceThread(app=create_app(settings, clock=clock))


def test_fifty_concurrent_requests_on_a_cold_service_fetch_one_gcp_token(
    upstreams, google, sa_vertex, tmp_path
) -> None:
    google.delay = 0.3
    key_file = google.write_service_account_file(tmp_path / "sa.json")
    with sa_service(upstreams, sa_vertex, key_file) as service:
        statuses = asyncio.run(burst(service.url, {"model": MODEL, "messages": QUESTION}, 50))

    assert statuses == [200] * 50
    assert google.tokens_issued == 1


def test_the_gcp_token_is_refreshed_after_it_expires(upstreams, google, sa_vertex, tmp_path) -> None:
    clock = ManualClock()
    key_file = google.write_service_account_file(tmp_path / "sa.json")
    with sa_service(upstreams, sa_vertex, key_file, clock) as service, httpx.Client(base_url=service.url) as http:
        assert post(http, QUESTION).status_code == 200
        assert post(http, QUESTION).status_code == 200
        assert google.tokens_issued == 1
        clock.now += google.expires_in + 1
        assert post(http, QUESTION).status_code == 200

    assert google.tokens_issued == 2


def test_a_dead_gcp_token_endpoint_is_a_clear_503_that_leaks_nothing(
    upstreams, google, sa_vertex, tmp_path, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    key_file = google.write_service_account_file(tmp_path / "sa.json")
    key = json.loads(key_file.read_text())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        key["token_uri"] = f"http://127.0.0.1:{probe.getsockname()[1]}/token"
    key_file.write_text(json.dumps(key))
    with sa_service(upstreams, sa_vertex, key_file) as service, httpx.Client(base_url=service.url, timeout=30) as http:
        response = post(http, QUESTION)

    assert response.status_code == 503, response.text
    message = response.json()["error"]["message"]
    assert "vertex_ai" in message and "GCP" in message
    pem_body = key["private_key"].splitlines()[1]
    assert pem_body not in response.text and pem_body not in caplog.text
    assert sa_vertex.requests == []
