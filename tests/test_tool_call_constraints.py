"""Tool-call ids that each provider accepts: the fakes refuse what the real providers refuse, and the
service, continuing a conversation on another provider, sends ids the next one takes.

The fakes' rules first (OpenAI's 40-character limit and call/result pairing, Mistral's 9 alphanumerics,
an older Vertex API that knows no `id` in a functionCall), each checked straight against a fake. Then
the service over HTTP: tool calls issued by one provider continue on another that holds that rule, and
succeed, while the same conversation with the first provider's own ids is refused, so each test fails
without the id normalisation. Last, the request log line names both ids of every call answered.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from conftest import KEYS, MODELS, QUESTION, WEATHER_TOOL, make_fake
from harness import ServiceThread, wait_until
from llm_service.core.config.constants import ProviderID
from llm_service.core.llm.tool_ids import alnum9, normalize_tool_call_id
from llm_service.fakes import FakeUpstream, FakeUpstreamThread, FakeVertex, Fault
from llm_service.fakes.tool_call_rules import (
    MISTRAL_CALL_COUNT,
    ORPHAN_TOOL_MESSAGE,
    UNANSWERED_CALLS,
    mistral_bad_id,
)
from log_records import fields_of
from sse_client import FIXTURES, fixture_json, read_events

OPENAI, REMOTE, VERTEX = ProviderID.OPENAI, ProviderID.REMOTE, ProviderID.VERTEX_AI
ASK = {"role": "user", "content": "Weather in Oslo and Paris?"}
RESULTS = {"Oslo": '{"temp_c": 4}', "Paris": '{"temp_c": 18}'}
#: The ids of the OpenAI fixture's two calls (Oslo, Paris).
OPENAI_IDS = [c["id"] for c in fixture_json("openai", "chat_tool_call.json")["choices"][0]["message"]["tool_calls"]]
#: Ids as OpenAI's Responses API writes them (`fc_` + 50 hex: 53 characters), past Chat Completions' 40.
LONG_IDS = [
    "fc_68a1c0ffee5b9d2a7e31f4c6b8d0e2a4c6e8f0a2b4c6d8e0f2",
    "fc_68a1c0ffee5b9d2a7e31f4c6b8d0e2a4c6e8f0a2b4c6d8e0f3",
]
ALNUM9 = re.compile(r"[A-Za-z0-9]{9}")
ISSUER, MISTRAL = "responses-issuer", "mistral-small"
# The providers each case exercises, for `-m provider_<name>` (tests/integration/README.md).
ON_OPENAI, ON_AZURE = pytest.mark.provider_openai, pytest.mark.provider_azure_openai
ON_OPENROUTER, ON_REMOTE, ON_VERTEX = (
    pytest.mark.provider_openrouter,
    pytest.mark.provider_remote,
    pytest.mark.provider_vertex_ai,
)


# ------------------------------------------------------------------------------------------- helpers


def call(call_id: str, city: str = "Oslo") -> dict[str, Any]:
    arguments = json.dumps({"city": city})
    return {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}


def tool_turns(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The assistant's calls as the client echoes them, then one result per call, in order."""
    results = [
        {"role": "tool", "tool_call_id": c["id"], "content": RESULTS[json.loads(c["function"]["arguments"])["city"]]}
        for c in calls
    ]
    return [{"role": "assistant", "content": None, "tool_calls": calls}, *results]


def post_to_fake(fake: FakeUpstream, messages: list[dict[str, Any]], key: str) -> httpx.Response:
    """A chat request straight to an OpenAI-compatible fake (`/v1` flavours)."""
    body = {"model": "gpt-4o-mini", "messages": messages, "tools": [WEATHER_TOOL]}
    return httpx.post(f"{fake.url}/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def post_to_azure(fake: FakeUpstream, messages: list[dict[str, Any]]) -> httpx.Response:
    url = f"{fake.url}/openai/deployments/gpt-4o-mini/chat/completions"
    return httpx.post(
        url,
        params={"api-version": "2024-10-21"},
        json={"messages": messages},
        headers={"api-key": KEYS[ProviderID.AZURE_OPENAI]},
        timeout=10,
    )


def openai_error(response: httpx.Response) -> tuple[str, str | None, str | None]:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    return error["message"], error["param"], error["code"]


def chat(service: ServiceThread, model: str, messages: list[dict[str, Any]], *, stream: bool = False) -> Any:
    """The service's answer: the response (a plain answer, or any refusal), or a stream's events."""
    body = {"model": model, "messages": messages, "tools": [WEATHER_TOOL], "stream": stream}
    with (
        httpx.Client(base_url=service.url, timeout=20) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        if not stream or response.status_code != 200:
            response.read()
            return response
        return read_events(response)


def calls_of(answer: Any) -> list[dict[str, Any]]:
    """The tool calls of a plain answer (a response) or of a stream (its events), as the client echoes them."""
    if isinstance(answer, httpx.Response):
        assert answer.status_code == 200, answer.text
        return answer.json()["choices"][0]["message"]["tool_calls"]
    assert answer[-1] == "[DONE]" and not any("error" in event for event in answer[:-1]), answer[-2:]
    fragments: dict[int, dict[str, str]] = {}
    for event in answer[:-1]:
        for choice in event["choices"]:
            for fragment in choice["delta"].get("tool_calls") or ():
                entry = fragments.setdefault(fragment["index"], {"id": "", "name": "", "arguments": ""})
                function = fragment.get("function") or {}
                entry["id"] += fragment.get("id") or ""
                entry["name"] += function.get("name") or ""
                entry["arguments"] += function.get("arguments") or ""
    return [
        {"id": f["id"], "type": "function", "function": {"name": f["name"], "arguments": f["arguments"]}}
        for _, f in sorted(fragments.items())
    ]


def sent_ids(sent: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(the ids of the assistant's calls, the tool_call_id of each tool message) a fake received."""
    messages = sent["messages"]
    return (
        [c["id"] for m in messages for c in m.get("tool_calls") or ()],
        [m["tool_call_id"] for m in messages if m["role"] == "tool"],
    )


def with_ids(fixture: bytes, ids: list[str]) -> bytes:
    """A fixture body with the OpenAI fixture's call ids replaced by `ids`."""
    for old, new in zip(OPENAI_IDS, ids, strict=True):
        fixture = fixture.replace(old.encode(), new.encode())
    return fixture


# ------------------------------------------------------------------------------------------- the fakes


@pytest.fixture(scope="module")
def strict_fakes() -> Iterator[dict[str, FakeUpstream]]:
    """Fakes of their own for the rules that are not a flavour's default. `remote-mistral` is the remote
    provider's server for a Mistral model that holds mistral-common's rule as it stands (a real vLLM in
    `--tokenizer-mode mistral` would first cut longer ids to their last 9 characters)."""
    fakes = {
        "mistral-api": FakeUpstream("openai", api_key=KEYS[REMOTE], tool_call_ids="alnum9"),
        "remote-mistral": FakeUpstream("remote", api_key=KEYS[REMOTE], tool_call_ids="alnum9"),
        "vllm": FakeUpstream("remote", api_key=KEYS[REMOTE]),
        "openrouter": FakeUpstream("openrouter", api_key=KEYS[REMOTE]),
        "issuer": FakeUpstream("remote", api_key=KEYS[REMOTE]),
    }
    threads = [FakeUpstreamThread(fake).start() for fake in fakes.values()]
    yield fakes
    for thread in threads:
        thread.stop()


@pytest.fixture
def fakes(strict_fakes: dict[str, FakeUpstream]) -> Iterator[dict[str, FakeUpstream]]:
    yield strict_fakes
    for fake in strict_fakes.values():
        fake.reset()


@ON_OPENAI
def test_openai_refuses_a_tool_call_id_over_40_characters_in_its_own_words(upstreams) -> None:
    fake = upstreams[OPENAI]
    in_call = post_to_fake(fake, [ASK, *tool_turns([call(LONG_IDS[0])])], KEYS[OPENAI])
    in_result = post_to_fake(
        fake,
        [ASK, {"role": "assistant", "content": "ok"}, {"role": "tool", "tool_call_id": "x" * 41, "content": "4"}],
        KEYS[OPENAI],
    )

    assert openai_error(in_call) == (
        "Invalid 'messages[1].tool_calls[0].id': string too long. Expected a string with maximum length 40, "
        "but got a string with length 53 instead.",
        "messages[1].tool_calls[0].id",
        "string_above_max_length",
    )
    message, param, code = openai_error(in_result)
    assert (param, code) == ("messages[2].tool_call_id", "string_above_max_length")
    assert message.endswith("but got a string with length 41 instead.")


@ON_OPENAI
def test_openai_refuses_calls_left_unanswered(upstreams) -> None:
    fake = upstreams[OPENAI]
    paris = call("call_paris", "Paris")
    half = [ASK, *tool_turns([call("call_oslo"), paris])[:2], {"role": "user", "content": "And?"}]
    at_the_end: list[dict[str, Any]] = [ASK, {"role": "assistant", "content": None, "tool_calls": [paris]}]

    assert openai_error(post_to_fake(fake, half, KEYS[OPENAI])) == (
        UNANSWERED_CALLS + "call_paris",
        "messages.[3].role",
        None,
    )
    assert openai_error(post_to_fake(fake, at_the_end, KEYS[OPENAI]))[:2] == (
        UNANSWERED_CALLS + "call_paris",
        "messages",
    )


@ON_OPENAI
def test_openai_refuses_a_tool_message_that_answers_no_call(upstreams) -> None:
    fake = upstreams[OPENAI]
    orphan = [ASK, {"role": "tool", "tool_call_id": "call_oslo", "content": "4"}]
    unknown = [ASK, *tool_turns([call("call_oslo")]), {"role": "tool", "tool_call_id": "call_nobody", "content": "4"}]

    assert openai_error(post_to_fake(fake, orphan, KEYS[OPENAI])) == (ORPHAN_TOOL_MESSAGE, "messages.[1].role", None)
    assert openai_error(post_to_fake(fake, unknown, KEYS[OPENAI]))[:2] == (
        "Invalid parameter: 'tool_call_id' of 'call_nobody' not found in 'tool_calls' of previous message.",
        "messages.[3].tool_call_id",
    )


@ON_OPENAI
@ON_AZURE
def test_openai_takes_calls_each_answered_and_azure_holds_the_same_rules(upstreams) -> None:
    paired = [ASK, *tool_turns([call("call_oslo"), call("call_paris", "Paris")])]
    too_long = [ASK, *tool_turns([call(LONG_IDS[0])])]

    assert post_to_fake(upstreams[OPENAI], paired, KEYS[OPENAI]).status_code == 200
    assert post_to_azure(upstreams[ProviderID.AZURE_OPENAI], paired).status_code == 200
    refused = post_to_azure(upstreams[ProviderID.AZURE_OPENAI], too_long)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "string_above_max_length"  # OpenAI's fields, Azure's layout


@pytest.mark.parametrize(
    "name", [pytest.param("vllm", marks=ON_REMOTE), pytest.param("openrouter", marks=ON_OPENROUTER)]
)
def test_vllm_and_openrouter_fakes_hold_no_id_rule_by_default(fakes, name: str) -> None:
    response = post_to_fake(fakes[name], [ASK, *tool_turns([call(LONG_IDS[0])])], KEYS[REMOTE])

    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("mistral-api", {"object": "error", "type": "invalid_function_call", "param": None, "code": "3280"}),
        ("remote-mistral", {"type": "BadRequestError", "param": None, "code": 400}),
    ],
)
@ON_REMOTE
def test_the_alnum9_rule_refuses_any_other_id_as_mistral_does(fakes, name: str, shape: dict[str, Any]) -> None:
    fake = fakes[name]
    refused = post_to_fake(fake, [ASK, *tool_turns([call("call_Q8ZkP1xV3")])], KEYS[REMOTE])
    accepted = post_to_fake(fake, [ASK, *tool_turns([call("Q8ZkP1xV3"), call("d4Hn7RtY2", "Paris")])], KEYS[REMOTE])

    assert refused.status_code == 400
    error = refused.json().get("error", refused.json())
    assert error["message"] == mistral_bad_id("call_Q8ZkP1xV3")
    assert error["message"] == "Tool call id was call_Q8ZkP1xV3 but must be a-z, A-Z, 0-9, with a length of 9."
    assert {key: error[key] for key in shape} == shape
    assert accepted.status_code == 200, accepted.text


@ON_REMOTE
def test_the_alnum9_rule_counts_results_before_it_reads_ids(fakes) -> None:
    short = [ASK, *tool_turns([call("call_oslo"), call("Q8ZkP1xV3", "Paris")])[:2]]

    refused = post_to_fake(fakes["mistral-api"], short, KEYS[REMOTE])

    assert refused.status_code == 400
    assert refused.json()["message"] == MISTRAL_CALL_COUNT


def gemini_turns(*, ids: bool) -> list[dict[str, Any]]:
    function_call: dict[str, Any] = {"name": "get_weather", "args": {"city": "Oslo"}}
    function_response: dict[str, Any] = {"name": "get_weather", "response": {"temp_c": 4}}
    if ids:
        function_call["id"] = function_response["id"] = "call_Q8ZkP1xV3mT6nB0rL2sW9yHc"
    return [
        {"role": "user", "parts": [{"text": "Weather in Oslo?"}]},
        {"role": "model", "parts": [{"functionCall": function_call}]},
        {"role": "user", "parts": [{"functionResponse": function_response}]},
    ]


def post_to_gemini(fake: FakeVertex, contents: list[dict[str, Any]]) -> httpx.Response:
    path = f"/v1/projects/{fake.project}/locations/{fake.location}/publishers/google/models/gemini-2.5-flash"
    return httpx.post(
        f"{fake.url}{path}:generateContent",
        json={"contents": contents},
        headers={"Authorization": f"Bearer {fake.access_token}"},
        timeout=10,
    )


@ON_VERTEX
def test_an_older_vertex_refuses_id_fields_and_a_newer_one_takes_them() -> None:
    older, newer = make_fake(VERTEX, reject_id_fields=True), make_fake(VERTEX, reject_id_fields=False)
    with FakeUpstreamThread(older), FakeUpstreamThread(newer):
        refused = post_to_gemini(older, gemini_turns(ids=True))
        taken = post_to_gemini(newer, gemini_turns(ids=True))
        without = post_to_gemini(older, gemini_turns(ids=False))

    assert refused.status_code == 400
    error = refused.json()["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    assert error["message"] == (
        "Invalid JSON payload received. Unknown name \"id\" at 'contents[1].parts[0].function_call': Cannot find field."
    )
    assert taken.status_code == 200, taken.text
    assert without.status_code == 200, without.text
    with pytest.raises(ValueError, match="reject_id_fields"):
        FakeVertex(function_call_ids=True, reject_id_fields=True)


# ------------------------------------------------------------------------------------------- the service

STREAMS = pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])


def issue_long_ids(issuer: FakeUpstream, *, stream: bool) -> None:
    """The issuer's next answer: the two weather calls under ids of 53 characters."""
    name = "chat_tool_call.sse" if stream else "chat_tool_call.json"
    issuer.inject(Fault(body=with_ids((FIXTURES / "openai" / name).read_bytes(), LONG_IDS)))


def issuer_alias(issuer: FakeUpstream) -> dict[str, Any]:
    return {ISSUER: [{"provider": "remote", "model": "gpt-4o-mini", "base_url": issuer.url}]}


@STREAMS
@ON_OPENAI
@ON_REMOTE
def test_calls_issued_with_ids_over_40_characters_continue_on_openai(start_service, upstreams, fakes, stream) -> None:
    issuer, openai_fake = fakes["issuer"], upstreams[OPENAI]
    service = start_service(aliases=issuer_alias(issuer))
    issue_long_ids(issuer, stream=stream)

    calls = calls_of(chat(service, ISSUER, [ASK], stream=stream))
    follow_up = chat(service, MODELS[OPENAI], [ASK, *tool_turns(calls)])
    sent = openai_fake.last_request.json
    raw_calls = [call(i, city) for i, city in zip(LONG_IDS, RESULTS, strict=True)]
    raw = post_to_fake(openai_fake, [ASK, *tool_turns(raw_calls)], KEYS[OPENAI])

    assert [c["id"] for c in calls] == [normalize_tool_call_id(i, REMOTE)[0] for i in LONG_IDS]
    assert follow_up.status_code == 200, follow_up.text
    assert follow_up.json()["choices"][0]["finish_reason"] == "stop"
    call_ids, result_ids = sent_ids(sent)
    assert call_ids == result_ids == [c["id"] for c in calls]
    assert all(len(i) <= 40 for i in call_ids)
    # The same conversation with the issuer's own ids is what OpenAI refuses.
    assert openai_error(raw)[1:] == ("messages[1].tool_calls[0].id", "string_above_max_length")


def mistral_alias(fake: FakeUpstream) -> dict[str, Any]:
    return {MISTRAL: [{"provider": "remote", "model": MISTRAL, "base_url": fake.url}]}


@STREAMS
@ON_OPENAI
@ON_REMOTE
def test_calls_issued_by_openai_continue_on_a_remote_mistral_as_9_alphanumerics(
    start_service, upstreams, fakes, stream
) -> None:
    mistral = fakes["remote-mistral"]
    service = start_service(remote={"tool_call_id_format": "alnum9"}, aliases=mistral_alias(mistral))

    calls = calls_of(chat(service, MODELS[OPENAI], [ASK]))
    follow_up = chat(service, MISTRAL, [ASK, *tool_turns(calls)], stream=stream)

    if stream:
        assert follow_up[-1] == "[DONE]" and not any("error" in e for e in follow_up[:-1])
    else:
        assert follow_up.status_code == 200, follow_up.text
    call_ids, result_ids = sent_ids(mistral.last_request.json)
    assert all(ALNUM9.fullmatch(i) for i in call_ids)
    assert call_ids == result_ids, "each call paired with its result"
    assert len(set(call_ids)) == len(calls) == 2
    assert call_ids == [alnum9(c["id"]) for c in calls]


@ON_OPENAI
@ON_REMOTE
def test_without_the_alnum9_setting_the_remote_mistral_refuses_the_conversation(start_service, fakes) -> None:
    mistral = fakes["remote-mistral"]
    service = start_service(aliases=mistral_alias(mistral))

    calls = calls_of(chat(service, MODELS[OPENAI], [ASK]))
    refused = chat(service, MISTRAL, [ASK, *tool_turns(calls)])

    assert refused.status_code == 400, refused.text
    assert "must be a-z, A-Z, 0-9, with a length of 9" in refused.json()["error"]["message"]
    assert sent_ids(mistral.last_request.json)[0] == [c["id"] for c in calls]


@pytest.fixture
def older_vertex() -> Iterator[FakeVertex]:
    fake = make_fake(VERTEX, reject_id_fields=True)
    with FakeUpstreamThread(fake):
        yield fake


@STREAMS
@ON_OPENAI
@ON_VERTEX
def test_calls_issued_by_openai_continue_on_a_vertex_that_knows_no_id_field(
    start_service, older_vertex, stream
) -> None:
    service = start_service(vertex_ai={"base_url": older_vertex.url})

    calls = calls_of(chat(service, MODELS[OPENAI], [ASK], stream=stream))
    follow_up = chat(service, MODELS[VERTEX], [ASK, *tool_turns(calls)])

    assert follow_up.status_code == 200, follow_up.text
    contents = older_vertex.last_request.json["contents"]
    parts = [p for c in contents for p in c["parts"]]
    calls_sent = [p["functionCall"] for p in parts if "functionCall" in p]
    results_sent = [p["functionResponse"] for p in parts if "functionResponse" in p]
    assert [(c["name"], c["args"]) for c in calls_sent] == [
        ("get_weather", {"city": "Oslo"}),
        ("get_weather", {"city": "Paris"}),
    ]
    assert [r["name"] for r in results_sent] == ["get_weather", "get_weather"]
    assert all("id" not in p for p in [*calls_sent, *results_sent])


# ------------------------------------------------------------------------------------------- the log line


def access_fields(caplog: pytest.LogCaptureFixture, request_id: str) -> list[dict[str, Any]]:
    return [
        fields_of(r)
        for r in caplog.records
        if r.name == "llm_service.access" and fields_of(r).get("request_id") == request_id
    ]


@STREAMS
@pytest.mark.parametrize("issuer", ["openai", pytest.param("long-ids", marks=ON_REMOTE)])
@ON_OPENAI
def test_the_request_log_line_names_both_ids_of_every_call(
    start_service, fakes, caplog: pytest.LogCaptureFixture, stream: bool, issuer: str
) -> None:
    caplog.set_level(logging.INFO, logger="llm_service.access")
    service = start_service(aliases=issuer_alias(fakes["issuer"]))
    model, provider, originals = MODELS[OPENAI], OPENAI, OPENAI_IDS
    if issuer == "long-ids":
        model, provider, originals = ISSUER, REMOTE, LONG_IDS
        issue_long_ids(fakes["issuer"], stream=stream)
    request_id = f"tool-ids-{issuer}-{stream}"
    body = {"model": model, "messages": QUESTION, "tools": [WEATHER_TOOL], "stream": stream}

    with (
        httpx.Client(base_url=service.url, timeout=20) as http,
        http.stream("POST", "/v1/chat/completions", json=body, headers={"x-request-id": request_id}) as response,
    ):
        if not stream:
            response.read()
        calls = calls_of(read_events(response) if stream else response)

    assert wait_until(lambda: len(access_fields(caplog, request_id)) == 1)
    logged = access_fields(caplog, request_id)[0]["tool_calls"]
    assert logged == [{"id": c["id"], "provider_id": o} for c, o in zip(calls, originals, strict=True)]
    assert [entry["id"] for entry in logged] == [normalize_tool_call_id(o, provider)[0] for o in originals]
    assert orjson.loads(orjson.dumps(logged)) == logged  # one JSON object per line: plain values only
