"""The Azure OpenAI flavour of FakeUpstream and the Vertex Gemini fake, talked to directly.

These pin the fakes' wire behaviour (auth, routing, stream framing, faults, request checks) so
the service tests that rely on them test the gateway, not the fakes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_service.fakes import FakeUpstream, FakeUpstreamThread, FakeVertex, Fault
from llm_service.fakes import vertex_wire as vw
from llm_service.fakes.wire import (
    AZURE_ACCESS_DENIED,
    AZURE_DEPLOYMENT_NOT_FOUND,
    AZURE_RESOURCE_NOT_FOUND,
    AZURE_TOKEN_REJECTED,
)

FIXTURES = Path(__file__).parent / "fixtures"
AZURE_KEY = "azure-key-0123456789"
ENTRA_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.entra.token"
API_VERSION = {"api-version": "2024-10-21"}
TOKEN = "ya29.test-token"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
GEMINI_QUESTION = [{"role": "user", "parts": [{"text": "What is the capital of France?"}]}]
NO_CALLS = {"mode": "NONE"}
GEMINI_TOOLS = [
    {
        "functionDeclarations": [
            {"name": "get_weather", "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}}}
        ]
    }
]


def fixture_bytes(provider: str, name: str) -> bytes:
    return (FIXTURES / provider / name).read_bytes()


def openai_text(scenario: str) -> str:
    body = json.loads(fixture_bytes("openai", f"chat_{scenario}.json"))
    return str(body["choices"][0]["message"]["content"])


def data_events(raw: bytes) -> list[Any]:
    """The `data:` payloads of an SSE body ([DONE] kept as a string), any line terminator."""
    events: list[Any] = []
    for line in raw.decode().splitlines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def bare_json_segments(raw: bytes) -> list[Any]:
    """Non-`data:` JSON spread over lines, reassembled by brace counting (as google-genai does)."""
    segments: list[Any] = []
    chunk, balance = "", 0
    for line in raw.decode().splitlines():
        if not line or line.startswith("data: "):
            continue
        balance += line.count("{") - line.count("}")
        chunk += line
        if balance == 0:
            segments.append(json.loads(chunk))
            chunk = ""
    return segments


# --------------------------------------------------------------------------- Azure OpenAI


@pytest.fixture(scope="module")
def azure() -> Iterator[FakeUpstream]:
    fake = FakeUpstream("azure_openai", api_key=AZURE_KEY, bearer_token=ENTRA_TOKEN, deployments=("gpt-4o-mini",))
    with FakeUpstreamThread(fake):
        yield fake


@pytest.fixture
def az(azure: FakeUpstream) -> Iterator[FakeUpstream]:
    yield azure
    azure.reset()


def azure_post(fake: FakeUpstream, body: dict[str, Any], *, deployment: str = "gpt-4o-mini", **kwargs: Any) -> Any:
    headers = kwargs.pop("headers", {"api-key": AZURE_KEY})
    params = kwargs.pop("params", API_VERSION)
    url = f"{fake.url}/openai/deployments/{deployment}/chat/completions"
    return httpx.post(url, json=body, headers=headers, params=params, timeout=10, **kwargs)


def test_azure_url_is_the_endpoint_without_openai(az: FakeUpstream) -> None:
    assert az.url == f"http://127.0.0.1:{az.port}"
    with FakeUpstreamThread(FakeUpstream("azure_openai", api_key="k", path_prefix="tenant-a/")) as prefixed:
        assert prefixed.url == f"http://127.0.0.1:{prefixed.upstream.port}/tenant-a"  # type: ignore[attr-defined]
        response = httpx.post(
            f"{prefixed.url}/openai/deployments/gpt-4o-mini/chat/completions",
            params=API_VERSION,
            headers={"api-key": "k"},
            json={"messages": QUESTION},
        )
    assert response.status_code == 200


def test_azure_answers_with_its_fixture_bytes_and_headers(az: FakeUpstream) -> None:
    response = azure_post(az, {"messages": QUESTION})

    assert response.status_code == 200
    assert response.content == fixture_bytes("azure_openai", "chat_text.json")
    assert response.headers["content-type"] == "application/json"
    for name in ("apim-request-id", "x-request-id", "x-ms-region", "x-ratelimit-remaining-tokens"):
        assert response.headers[name]
    assert response.headers["x-ms-deployment-name"] == "gpt-4o-mini"
    sent = az.last_request
    assert sent.path == "/openai/deployments/gpt-4o-mini/chat/completions"
    assert sent.query == API_VERSION
    assert sent.headers["api-key"] == AZURE_KEY


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({}, AZURE_ACCESS_DENIED),
        ({"api-key": "wrong"}, AZURE_ACCESS_DENIED),
        ({"api-key": "wrong", "Authorization": f"Bearer {ENTRA_TOKEN}"}, AZURE_ACCESS_DENIED),
        ({"Authorization": "Bearer not-a-token"}, AZURE_TOKEN_REJECTED),
        ({"Authorization": f"Bearer {AZURE_KEY}"}, AZURE_TOKEN_REJECTED),
    ],
    ids=["missing", "wrong-key", "wrong-key-wins-over-token", "wrong-token", "key-as-bearer"],
)
def test_azure_refuses_bad_credentials(az: FakeUpstream, headers: dict[str, str], body: bytes) -> None:
    response = azure_post(az, {"messages": QUESTION}, headers=headers)

    assert response.status_code == 401
    assert response.content == body


def test_azure_accepts_an_entra_token(az: FakeUpstream) -> None:
    response = azure_post(az, {"messages": QUESTION}, headers={"Authorization": f"Bearer {ENTRA_TOKEN}"})

    assert response.status_code == 200


def test_azure_requires_api_version_and_no_fault_is_spent_on_it(az: FakeUpstream) -> None:
    az.inject(Fault(status=500))
    response = azure_post(az, {"messages": QUESTION}, params={})

    assert response.status_code == 404
    assert response.content == AZURE_RESOURCE_NOT_FOUND
    assert az.pending_faults == 1


def test_azure_unknown_path_is_resource_not_found(az: FakeUpstream) -> None:
    response = httpx.post(f"{az.url}/openai/v1/chat/completions", json={}, headers={"api-key": AZURE_KEY})

    assert response.status_code == 404
    assert response.json() == {"error": {"code": "404", "message": "Resource not found"}}


def test_azure_unknown_deployment(az: FakeUpstream) -> None:
    response = azure_post(az, {"messages": QUESTION}, deployment="gpt-9")

    assert response.status_code == 404
    assert response.content == AZURE_DEPLOYMENT_NOT_FOUND
    assert response.json()["error"]["code"] == "DeploymentNotFound"


def test_azure_gateway_bodies_equal_their_fixtures() -> None:
    assert fixture_bytes("azure_openai", "error_401.json") == AZURE_ACCESS_DENIED
    assert fixture_bytes("azure_openai", "error_404.json") == AZURE_DEPLOYMENT_NOT_FOUND


@pytest.mark.parametrize("include_usage", [False, True])
def test_azure_stream_starts_with_the_annotation_chunk(az: FakeUpstream, include_usage: bool) -> None:
    body: dict[str, Any] = {"messages": QUESTION, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    response = azure_post(az, body)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = data_events(response.content)
    annotation = events[0]
    assert annotation["id"] == "" and annotation["object"] == "" and annotation["created"] == 0
    assert annotation["choices"] == []
    assert annotation["prompt_filter_results"][0]["content_filter_results"]["jailbreak"] == {
        "detected": False,
        "filtered": False,
    }
    assert events[-1] == "[DONE]"
    chunks = events[1:-1]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == openai_text("text")
    assert all("content_filter_results" in c["choices"][0] for c in chunks if c["choices"])
    if include_usage:
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"]["total_tokens"] == 37
        assert all("usage" in c for c in chunks)
    else:
        assert all("usage" not in c for c in events[:-1])
        assert all(c["choices"] for c in chunks)


def test_azure_fixtures_carry_the_openai_answers() -> None:
    for scenario in ("text", "tool_call", "tool_result"):
        azure = json.loads(fixture_bytes("azure_openai", f"chat_{scenario}.json"))
        openai = json.loads(fixture_bytes("openai", f"chat_{scenario}.json"))
        assert azure["choices"][0]["message"]["content"] == openai["choices"][0]["message"]["content"]
        assert azure["choices"][0]["message"].get("tool_calls") == openai["choices"][0]["message"].get("tool_calls")
        assert azure["usage"] == openai["usage"]
        assert "prompt_filter_results" in azure and "content_filter_results" in azure["choices"][0]


def test_azure_tool_call_stream_rebuilds_the_openai_calls(az: FakeUpstream) -> None:
    response = azure_post(az, {"messages": QUESTION, "tools": [WEATHER_TOOL], "stream": True})

    calls: dict[int, dict[str, str]] = {}
    for chunk in data_events(response.content)[1:-1]:
        for fragment in chunk["choices"][0]["delta"].get("tool_calls", []):
            call = calls.setdefault(fragment["index"], {"id": "", "arguments": ""})
            call["id"] += fragment.get("id", "")
            call["arguments"] += fragment["function"]["arguments"]
    openai = json.loads(fixture_bytes("openai", "chat_tool_call.json"))["choices"][0]["message"]["tool_calls"]
    assert [calls[0], calls[1]] == [{"id": c["id"], "arguments": c["function"]["arguments"]} for c in openai]


def test_azure_content_filter_answer_is_chosen_by_a_fault(az: FakeUpstream) -> None:
    az.inject(Fault(fixture="chat_content_filter", times=2))
    plain = azure_post(az, {"messages": QUESTION})
    streamed = azure_post(az, {"messages": QUESTION, "stream": True})

    choice = plain.json()["choices"][0]
    assert choice["finish_reason"] == "content_filter"
    assert choice["message"]["content"] is None
    assert choice["content_filter_results"]["violence"] == {"filtered": True, "severity": "medium"}
    events = data_events(streamed.content)
    assert events[-1] == "[DONE]"
    finish = [c for c in events[1:-1] if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish[0]["choices"][0]["finish_reason"] == "content_filter"
    assert az.pending_faults == 0


def test_a_fault_naming_a_missing_fixture_is_refused(az: FakeUpstream) -> None:
    with pytest.raises(ValueError, match="chat_nonexistent"):
        az.inject(Fault(fixture="chat_nonexistent"))
    assert az.pending_faults == 0


@pytest.mark.parametrize(
    ("fault", "check"),
    [
        (Fault(status=400, fixture="error_400_content_filter"), lambda e: e["innererror"]["content_filter_result"]),
        (Fault(status=429), lambda e: e["code"] == "429" and "Please retry after 6 seconds" in e["message"]),
        (Fault(status=500), lambda e: e["type"] == "server_error"),
        (Fault(status=503), lambda e: set(e) == {"code", "message"}),
        (Fault(status=418), lambda e: e == {"code": "418", "message": "I'm a Teapot"}),
    ],
    ids=["content-filter", "429", "500", "503-generic", "418-generic"],
)
def test_azure_error_bodies(az: FakeUpstream, fault: Fault, check: Any) -> None:
    az.inject(fault)
    response = azure_post(az, {"messages": QUESTION})

    assert response.status_code == fault.status
    assert check(response.json()["error"])


def test_azure_mid_stream_error_event(az: FakeUpstream) -> None:
    az.inject(Fault(error_event_after_chunks=2))
    response = azure_post(az, {"messages": QUESTION, "stream": True})

    events = data_events(response.content)
    assert len(events) == 3
    assert events[-1]["error"]["type"] == "server_error"


def test_azure_validates_the_body_in_openai_shape(az: FakeUpstream) -> None:
    response = azure_post(az, {"messages": []})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "empty_array"


# --------------------------------------------------------------------------- Vertex Gemini


@pytest.fixture(scope="module")
def vertex_thread() -> Iterator[FakeUpstreamThread]:
    with FakeUpstreamThread(FakeVertex()) as thread:
        yield thread


def vertex_of(thread: FakeUpstreamThread) -> Iterator[FakeVertex]:
    """The thread's FakeVertex for one test, forgetting its requests and faults afterwards."""
    fake = thread.upstream
    assert isinstance(fake, FakeVertex)
    yield fake
    fake.reset()


@pytest.fixture
def vertex(vertex_thread: FakeUpstreamThread) -> Iterator[FakeVertex]:
    yield from vertex_of(vertex_thread)


def gemini_url(fake: FakeVertex, method: str = "generateContent", *, project: str = "demo-proj") -> str:
    path = f"/v1/projects/{project}/locations/us-central1/publishers/google/models/gemini-2.5-flash:{method}"
    return fake.url + path


def gemini_post(fake: FakeVertex, body: dict[str, Any], method: str = "generateContent", **kwargs: Any) -> Any:
    headers = kwargs.pop("headers", {"Authorization": f"Bearer {TOKEN}"})
    url = kwargs.pop("url", None) or gemini_url(fake, method)
    return httpx.post(url, json=body, headers=headers, timeout=10, **kwargs)


def stream_text(events: list[Any]) -> str:
    return "".join(part.get("text", "") for e in events for part in e["candidates"][0]["content"]["parts"])


def test_vertex_url_and_path_prefix(vertex: FakeVertex) -> None:
    assert vertex.url == f"http://127.0.0.1:{vertex.port}"
    with FakeUpstreamThread(FakeVertex(path_prefix="/vertex")) as prefixed:
        assert prefixed.url.endswith("/vertex")
        response = gemini_post(prefixed.upstream, {"contents": GEMINI_QUESTION})  # type: ignore[arg-type]
    assert response.status_code == 200


def test_vertex_plain_answer_is_the_fixture(vertex: FakeVertex) -> None:
    response = gemini_post(vertex, {"contents": GEMINI_QUESTION})

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=UTF-8"
    assert response.content == fixture_bytes("vertex_ai", "chat_text.json")
    assert vertex.last_request.path.endswith("/models/gemini-2.5-flash:generateContent")


@pytest.mark.parametrize(
    ("headers", "reason"),
    [({}, "CREDENTIALS_MISSING"), ({"Authorization": "Bearer ya29.other"}, "ACCESS_TOKEN_TYPE_UNSUPPORTED")],
)
def test_vertex_refuses_a_missing_or_wrong_token(vertex: FakeVertex, headers: dict[str, str], reason: str) -> None:
    response = gemini_post(vertex, {"contents": GEMINI_QUESTION}, headers=headers)

    assert response.status_code == 401
    error = response.json()["error"]
    assert error["status"] == "UNAUTHENTICATED"
    assert error["details"][0]["reason"] == reason
    assert response.text.startswith('{\n  "error": {\n    "code": 401,')


def test_vertex_wrong_project_is_permission_denied(vertex: FakeVertex) -> None:
    response = gemini_post(vertex, {"contents": GEMINI_QUESTION}, url=gemini_url(vertex, project="other-proj"))

    assert response.status_code == 403
    error = response.json()["error"]
    assert error["status"] == "PERMISSION_DENIED"
    assert "projects/other-proj/locations/us-central1" in error["message"]


def test_vertex_unknown_path_is_googles_html_404(vertex: FakeVertex) -> None:
    vertex.inject(Fault(status=500))
    response = httpx.post(f"{vertex.url}/v1/models/gemini:generateContent", json={}, timeout=10)

    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "/v1/models/gemini:generateContent</code> was not found" in response.text
    assert vertex.pending_faults == 1


@pytest.mark.parametrize(
    ("body", "scenario"),
    [
        ({"contents": GEMINI_QUESTION}, "text"),
        ({"contents": GEMINI_QUESTION, "tools": GEMINI_TOOLS}, "tool_call"),
        (
            {
                "contents": GEMINI_QUESTION,
                "tools": GEMINI_TOOLS,
                "toolConfig": {"functionCallingConfig": {"mode": "NONE"}},
            },
            "text",
        ),
    ],
    ids=["text", "tools", "tools-mode-none"],
)
def test_vertex_chooses_the_scenario(vertex: FakeVertex, body: dict[str, Any], scenario: str) -> None:
    response = gemini_post(vertex, body)

    assert response.content == fixture_bytes("vertex_ai", f"chat_{scenario}.json")


@pytest.mark.parametrize("crlf", [True, False])
def test_vertex_sse_stream_has_no_terminator_and_usage_only_at_the_end(crlf: bool) -> None:
    vertex = FakeVertex(crlf=crlf)
    with FakeUpstreamThread(vertex):
        response = gemini_post(vertex, {"contents": GEMINI_QUESTION}, "streamGenerateContent", params={"alt": "sse"})

    assert response.headers["content-type"] == "text/event-stream"
    terminator = b"\r\n\r\n" if crlf else b"\n\n"
    assert response.content.endswith(b"}" + terminator)
    assert response.content.count(terminator) == 5
    assert b"[DONE]" not in response.content
    events = data_events(response.content)
    assert stream_text(events) == openai_text("text")
    assert [e["usageMetadata"] for e in events[:-1]] == [{"trafficType": "ON_DEMAND"}] * 4
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"
    assert events[-1]["usageMetadata"]["totalTokenCount"] == 37


def test_vertex_stream_without_alt_sse_is_one_json_array(vertex: FakeVertex) -> None:
    response = gemini_post(vertex, {"contents": GEMINI_QUESTION}, "streamGenerateContent")
    sse = gemini_post(vertex, {"contents": GEMINI_QUESTION}, "streamGenerateContent", params={"alt": "sse"})

    assert response.headers["content-type"] == "application/json; charset=UTF-8"
    assert response.content.startswith(b"[{\n") and response.content.endswith(b"}\n]")
    assert response.json() == data_events(sse.content)


def test_vertex_fixtures_carry_the_openai_answers() -> None:
    for scenario in ("text", "tool_call", "tool_result"):
        body = json.loads(fixture_bytes("vertex_ai", f"chat_{scenario}.json"))
        openai = json.loads(fixture_bytes("openai", f"chat_{scenario}.json"))
        usage = openai["usage"]
        assert body["usageMetadata"]["promptTokenCount"] == usage["prompt_tokens"]
        assert body["usageMetadata"]["candidatesTokenCount"] == usage["completion_tokens"]
        assert body["usageMetadata"]["totalTokenCount"] == usage["total_tokens"]
        parts = body["candidates"][0]["content"]["parts"]
        if scenario == "tool_call":
            calls = openai["choices"][0]["message"]["tool_calls"]
            assert [p["functionCall"]["args"] for p in parts] == [json.loads(c["function"]["arguments"]) for c in calls]
        else:
            assert parts == [{"text": openai_text(scenario)}]
            pieces = [e["candidates"][0]["content"]["parts"][0]["text"] for e in data_events(_sse(scenario))]
            openai_pieces = [
                c["choices"][0]["delta"]["content"]
                for c in data_events(fixture_bytes("openai", f"chat_{scenario}.sse"))[1:-3]
            ]
            assert pieces == openai_pieces


def _sse(scenario: str) -> bytes:
    return fixture_bytes("vertex_ai", f"chat_{scenario}.sse")


def test_vertex_fixtures_are_in_googles_layouts() -> None:
    """What the fake re-serialises (ids, signatures, the JSON array) must match the files."""
    for path in sorted((FIXTURES / "vertex_ai").glob("*.json")):
        assert path.read_bytes() == vw.pretty(json.loads(path.read_bytes())), path.name
    for path in sorted((FIXTURES / "vertex_ai").glob("*.sse")):
        lines = path.read_bytes().split(b"\n\n")
        assert lines[-1] == b""
        assert all(line == b"data: " + vw.one_line(json.loads(line[6:])) for line in lines[:-1]), path.name


@pytest.mark.parametrize(("fixture", "status"), [(None, "INTERNAL"), ("error_429", "RESOURCE_EXHAUSTED")])
def test_vertex_mid_stream_error_is_bare_json_lines(vertex: FakeVertex, fixture: str | None, status: str) -> None:
    vertex.inject(Fault(error_event_after_chunks=2, fixture=fixture))
    response = gemini_post(vertex, {"contents": GEMINI_QUESTION}, "streamGenerateContent", params={"alt": "sse"})

    assert response.status_code == 200
    assert len(data_events(response.content)) == 2
    assert b'\r\n{\r\n  "error": {\r\n' in response.content
    assert [segment["error"]["status"] for segment in bare_json_segments(response.content)] == [status]


def test_vertex_error_fixture_for_a_mid_stream_error_must_exist(vertex: FakeVertex) -> None:
    with pytest.raises(ValueError, match="error_999"):
        vertex.inject(Fault(error_event_after_chunks=1, fixture="error_999"))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 429, 500, 503])
def test_vertex_status_faults_send_the_error_fixtures(vertex: FakeVertex, status: int) -> None:
    vertex.inject(Fault(status=status, headers={"retry-after": "3"}))
    response = gemini_post(vertex, {"contents": GEMINI_QUESTION})

    assert response.status_code == status
    assert response.content == fixture_bytes("vertex_ai", f"error_{status}.json")
    assert response.json()["error"]["code"] == status
    assert response.headers["retry-after"] == "3"


def test_vertex_generic_error_for_a_status_without_fixture(vertex: FakeVertex) -> None:
    vertex.inject(Fault(status=504))
    response = gemini_post(vertex, {"contents": GEMINI_QUESTION})

    assert response.json()["error"]["status"] == "DEADLINE_EXCEEDED"


@contextmanager
def vertex_sse(fake: FakeVertex) -> Iterator[httpx.Response]:
    """An open alt=sse stream of the text answer, read as the test likes."""
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST",
            gemini_url(fake, "streamGenerateContent"),
            params={"alt": "sse"},
            json={"contents": GEMINI_QUESTION},
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as response,
    ):
        yield response


def test_vertex_drop_after_chunks_cuts_the_stream(vertex: FakeVertex) -> None:
    vertex.inject(Fault(drop_after_chunks=2))
    with vertex_sse(vertex) as response, pytest.raises(httpx.RemoteProtocolError):
        response.read()


def test_vertex_counts_a_client_leaving_mid_stream(vertex: FakeVertex) -> None:
    vertex.inject(Fault(delay_per_chunk=0.3))
    with vertex_sse(vertex) as response:
        next(response.iter_bytes())
    assert vertex.wait_for_disconnect(5)
    assert vertex.stream_disconnects == 1


# ----------------------------------------------------------------- Vertex request checks


def issued_parts(name: str = "chat_tool_call_ids") -> list[dict[str, Any]]:
    """The functionCall parts of a Vertex tool-call fixture."""
    body = json.loads(fixture_bytes("vertex_ai", f"{name}.json"))
    return [p for p in body["candidates"][0]["content"]["parts"] if "functionCall" in p]


ISSUED = issued_parts()
CALL_IDS = [p["functionCall"]["id"] for p in ISSUED]
SIGNATURES = [p["thoughtSignature"] for p in ISSUED]


def call_turn(*, ids: bool = False, signatures: list[str | None] | None = None, count: int = 2) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    for index, city in enumerate(["Oslo", "Paris"][:count]):
        call: dict[str, Any] = {"name": "get_weather", "args": {"city": city}}
        if ids:
            call["id"] = CALL_IDS[index]
        part: dict[str, Any] = {"functionCall": call}
        signature = signatures[index] if signatures is not None else None
        if signature is not None:
            part["thoughtSignature"] = signature
        parts.append(part)
    return {"role": "model", "parts": parts}


def response_turn(count: int = 2, *, ids: bool = False) -> dict[str, Any]:
    parts = []
    for index in range(count):
        response: dict[str, Any] = {"name": "get_weather", "response": {"temp_c": 4}}
        if ids:
            response["id"] = CALL_IDS[index]
        parts.append({"functionResponse": response})
    return {"role": "user", "parts": parts}


def test_vertex_tool_result_round_trip(vertex: FakeVertex) -> None:
    contents = [*GEMINI_QUESTION, call_turn(), response_turn()]
    response = gemini_post(vertex, {"contents": contents, "tools": GEMINI_TOOLS})

    assert response.status_code == 200, response.text
    assert response.content == fixture_bytes("vertex_ai", "chat_tool_result.json")


@pytest.mark.parametrize(
    ("contents", "message"),
    [
        (
            [*GEMINI_QUESTION, call_turn(ids=True), response_turn()],
            "Invalid JSON payload received. Unknown name \"id\" at 'contents[1].parts[0].function_call': "
            "Cannot find field.",
        ),
        (
            [*GEMINI_QUESTION, call_turn(), response_turn(ids=True)],
            "Invalid JSON payload received. Unknown name \"id\" at 'contents[2].parts[0].function_response': "
            "Cannot find field.",
        ),
        ([*GEMINI_QUESTION, call_turn(), response_turn(1)], vw.CALL_COUNT_MISMATCH),
        ([*GEMINI_QUESTION, call_turn(), *GEMINI_QUESTION], vw.CALL_COUNT_MISMATCH),
        ([response_turn(1)], vw.CALL_COUNT_MISMATCH),
        ([{"role": "assistant", "parts": [{"text": "hi"}]}], vw.INVALID_ROLE),
        ([{"role": "user", "parts": []}], vw.EMPTY_PARTS),
        ([{"role": "user", "parts": [{"text": ""}]}], vw.EMPTY_TEXT),
        ([], vw.EMPTY_PARTS),
    ],
    ids=["call-id", "response-id", "count", "unanswered", "orphan", "role", "no-parts", "empty-text", "no-contents"],
)
def test_vertex_rejects_what_the_real_service_rejects(vertex: FakeVertex, contents: list[Any], message: str) -> None:
    response = gemini_post(vertex, {"contents": contents, "tools": GEMINI_TOOLS})

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["status"], error["message"]) == ("INVALID_ARGUMENT", message)


def test_vertex_invalid_json_body(vertex: FakeVertex) -> None:
    response = httpx.post(
        gemini_url(vertex), content=b"{not json", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )

    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("Invalid JSON payload received.")


@pytest.fixture(scope="module")
def gemini3_thread() -> Iterator[FakeUpstreamThread]:
    with FakeUpstreamThread(FakeVertex(function_call_ids=True, require_thought_signatures=True)) as thread:
        yield thread


@pytest.fixture
def gemini3(gemini3_thread: FakeUpstreamThread) -> Iterator[FakeVertex]:
    yield from vertex_of(gemini3_thread)


def test_function_call_ids_mode_issues_ids_and_signatures(gemini3: FakeVertex) -> None:
    plain = gemini_post(gemini3, {"contents": GEMINI_QUESTION, "tools": GEMINI_TOOLS})
    streamed = gemini_post(
        gemini3, {"contents": GEMINI_QUESTION, "tools": GEMINI_TOOLS}, "streamGenerateContent", params={"alt": "sse"}
    )

    assert plain.content == fixture_bytes("vertex_ai", "chat_tool_call_ids.json")
    parts = plain.json()["candidates"][0]["content"]["parts"]
    assert CALL_IDS == ["q7hx2m4d", "w3ks9p1t"]
    assert [p["functionCall"]["args"] for p in parts] == [{"city": "Oslo"}, {"city": "Paris"}]
    assert all(p["thoughtSignature"] for p in parts) and len(set(SIGNATURES)) == 2
    events = data_events(streamed.content)
    assert [p for e in events for p in e["candidates"][0]["content"]["parts"] if "functionCall" in p] == parts
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"
    assert gemini3.fixtures_dir == FIXTURES


def test_signatures_without_ids_come_from_the_signed_fixture() -> None:
    with FakeUpstreamThread(FakeVertex(require_thought_signatures=True)) as thread:
        fake = thread.upstream
        assert isinstance(fake, FakeVertex)
        first = gemini_post(fake, {"contents": GEMINI_QUESTION, "tools": GEMINI_TOOLS})
        signed = [p["thoughtSignature"] for p in issued_parts("chat_tool_call_signed")]
        contents = [*GEMINI_QUESTION, call_turn(signatures=list(signed)), response_turn()]
        second = gemini_post(fake, {"contents": contents, "tools": GEMINI_TOOLS})

    assert first.content == fixture_bytes("vertex_ai", "chat_tool_call_signed.json")
    assert all("id" not in p["functionCall"] for p in first.json()["candidates"][0]["content"]["parts"])
    assert second.status_code == 200, second.text


@pytest.mark.parametrize(
    ("signatures", "status"),
    [
        (SIGNATURES, 200),
        ([vw.SKIP_SIGNATURE] * 2, 200),
        ([SIGNATURES[0], None], 400),
        (None, 400),
        ([SIGNATURES[0], "Zm9yZ2Vk"], 400),
    ],
    ids=["echoed", "skip-validator", "second-missing", "missing", "corrupted"],
)
def test_thought_signatures_must_be_echoed(gemini3: FakeVertex, signatures: list[Any] | None, status: int) -> None:
    contents = [*GEMINI_QUESTION, call_turn(ids=True, signatures=signatures), response_turn(ids=True)]
    response = gemini_post(gemini3, {"contents": contents, "tools": GEMINI_TOOLS})

    assert response.status_code == status, response.text
    if status == 200:
        return
    message = response.json()["error"]["message"]
    if signatures is not None and signatures[1] is not None:
        assert message == vw.CORRUPTED_SIGNATURE
    else:
        assert message.startswith(
            "Unable to submit request because function call `get_weather` in the 2. content block is missing a "
            "`thought_signature`."
        )


def test_signatures_of_earlier_turns_are_not_checked(gemini3: FakeVertex) -> None:
    answer = {"role": "model", "parts": [{"text": "ok"}]}
    earlier = [*GEMINI_QUESTION, call_turn(ids=True), response_turn(ids=True), answer]
    response = gemini_post(gemini3, {"contents": [*earlier, *GEMINI_QUESTION]})

    assert response.status_code == 200, response.text
