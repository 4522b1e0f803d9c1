"""Hostile input, over HTTP against the real service: every class of bad request is a 400 (413 for its size)
in OpenAI's error shape with the field named in `param`, never a 5xx, never sent upstream, and its error
message quotes nothing long or secret; the logs carry no prompt text and no key."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import orjson
import pytest

from conftest import KEYS, MODELS, WEATHER_TOOL
from llm_service.core.config.constants import ProviderID
from llm_service.core.config.limits import RequestLimitSettings
from llm_service.core.llm.models import InvalidRequestError
from llm_service.core.llm.openai_format import parse_chat_request
from llm_service.logs import JSONFormatter

MODEL = MODELS[ProviderID.OPENAI]
VERTEX = MODELS[ProviderID.VERTEX_AI]
USER = [{"role": "user", "content": "hi"}]
SECRET_PROMPT = "the launch code is 0000-hostile-prompt"
LIMITS = RequestLimitSettings()
HUGE = "x" * 100_000
#: No error body needs more: one that is longer echoes what the caller sent.
MAX_ERROR_BYTES = 600


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": USER, **fields}


def tool(name: str = "get_weather", **function: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, **function}}


def nested(depth: int) -> Any:
    """Objects nested `depth` deep: {"a": {"a": ... 1}}."""
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def called(call_id: str = "call_1", arguments: str = "{}", name: str = "get_weather") -> dict[str, Any]:
    """An assistant message calling one tool."""
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def answered(call_id: str = "call_1", content: str = "4 degrees") -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def image(url: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]


def raw(text: bytes) -> bytes:
    return text


_IMAGE_URL = "messages[0].content[0].image_url.url"

# (id, body: a JSON value or raw bytes, param, code)
CASES: list[tuple[str, Any, str | None, str]] = [
    # limits
    ("messages-over-limit", chat(messages=USER * (LIMITS.max_messages + 1)), "messages", "array_above_max_length"),
    (
        "content-parts-over-limit",
        chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}] * (LIMITS.max_content_parts + 1)}]),
        "messages[0].content",
        "array_above_max_length",
    ),
    (
        "tools-over-limit",
        chat(tools=[tool(f"t{i}") for i in range(LIMITS.max_tools + 1)]),
        "tools",
        "array_above_max_length",
    ),
    ("max-tokens-over-limit", chat(max_tokens=LIMITS.max_output_tokens + 1), "max_tokens", "integer_above_max_value"),
    (
        "max-completion-tokens-over-limit",
        chat(max_completion_tokens=LIMITS.max_output_tokens + 1),
        "max_completion_tokens",
        "integer_above_max_value",
    ),
    ("n-over-128", chat(n=129), "n", "integer_above_max_value"),
    ("max-tokens-zero", chat(max_tokens=0), "max_tokens", "invalid_value"),
    # deeply nested JSON
    ("nested-extra-field", chat(metadata=nested(LIMITS.max_json_depth + 1)), "metadata", "nesting_above_max_depth"),
    (
        "nested-tool-parameters",
        chat(tools=[tool(parameters=nested(LIMITS.max_json_depth + 1))]),
        "tools[0].function.parameters",
        "nesting_above_max_depth",
    ),
    (
        "nested-response-schema",
        chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": nested(100)}}),
        "response_format.json_schema.schema",
        "nesting_above_max_depth",
    ),
    (
        "nested-message-field",
        chat(messages=[{"role": "user", "content": "hi", "cache": nested(100)}]),
        "messages[0].cache",
        "nesting_above_max_depth",
    ),
    (
        "nested-content-part",
        chat(messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": nested(100)}]}]),
        "messages[0].content[0]",
        "nesting_above_max_depth",
    ),
    (
        "nested-past-the-json-parser",
        raw(b'{"model": "x", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
        None,
        "invalid_json",
    ),
    # bytes that are not JSON text
    (
        "invalid-utf8",
        raw(b'{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "\xff\xfe"}]}'),
        None,
        "invalid_json",
    ),
    (
        "lone-surrogate",
        raw(b'{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "\\ud800"}]}'),
        None,
        "invalid_json",
    ),
    ("nan", raw(b'{"model": "openai/gpt-4o-mini", "messages": [], "temperature": NaN}'), None, "invalid_json"),
    ("empty-body", raw(b""), None, "invalid_json"),
    ("not-an-object", raw(b"[1, 2]"), None, "invalid_json"),
    # wrong types
    ("model-not-a-string", chat(model=5), "model", "invalid_value"),
    ("messages-not-an-array", chat(messages="hi"), "messages", "invalid_value"),
    ("message-not-an-object", chat(messages=["hi"]), "messages[0]", "invalid_value"),
    ("content-a-number", chat(messages=[{"role": "user", "content": 5}]), "messages[0].content", "invalid_value"),
    (
        "text-part-not-a-string",
        chat(messages=[{"role": "user", "content": [{"type": "text", "text": ["a"]}]}]),
        "messages[0].content[0].text",
        "invalid_value",
    ),
    ("max-tokens-a-string", chat(max_tokens="5"), "max_tokens", "invalid_value"),
    ("max-tokens-a-boolean", chat(max_tokens=True), "max_tokens", "invalid_value"),
    (
        "max-tokens-past-64-bits",
        raw(
            b'{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1'
            + b"0" * 30
            + b"}"
        ),
        "max_tokens",
        "invalid_value",
    ),
    ("temperature-a-string", chat(temperature="hot"), "temperature", "invalid_value"),
    ("stream-a-string", chat(stream="yes"), "stream", "invalid_value"),
    ("stop-numbers", chat(stop=[1, 2]), "stop", "invalid_value"),
    ("tools-an-object", chat(tools={"a": 1}), "tools", "invalid_value"),
    ("tool-parameters-an-array", chat(tools=[tool(parameters=[1])]), "tools[0].function.parameters", "invalid_value"),
    (
        "tool-calls-an-object",
        chat(messages=[*USER, {"role": "assistant", "tool_calls": {"id": "x"}}]),
        "messages[1].tool_calls",
        "invalid_value",
    ),
    (
        "arguments-an-object",
        chat(messages=[*USER, {**called(), "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {}}}]}]),
        "messages[1].tool_calls[0].function.arguments",
        "invalid_value",
    ),
    # huge strings where a name goes
    ("huge-model-name", chat(model="openai/" + HUGE), "model", "string_above_max_length"),
    ("huge-alias", chat(model=HUGE), "model", "string_above_max_length"),
    ("huge-function-name", chat(tools=[tool(HUGE)]), "tools[0].function.name", "string_above_max_length"),
    (
        "huge-tool-call-id",
        chat(messages=[*USER, called(HUGE)]),
        "messages[1].tool_calls[0].id",
        "string_above_max_length",
    ),
    (
        "huge-tool-result-id",
        chat(messages=[*USER, answered(HUGE)]),
        "messages[1].tool_call_id",
        "string_above_max_length",
    ),
    (
        "huge-participant-name",
        chat(messages=[{"role": "user", "content": "hi", "name": HUGE}]),
        "messages[0].name",
        "string_above_max_length",
    ),
    (
        "huge-part-type",
        chat(messages=[{"role": "user", "content": [{"type": HUGE}]}]),
        "messages[0].content[0].type",
        "string_above_max_length",
    ),
    ("huge-field-name", chat(**{HUGE: 1}), "x" * 40 + "...", "string_above_max_length"),
    (
        "huge-tool-choice-name",
        chat(tools=[WEATHER_TOOL], tool_choice=tool(HUGE)),
        "tool_choice",
        "string_above_max_length",
    ),
    # roles
    ("unknown-role", chat(messages=[{"role": "wizard", "content": "hi"}]), "messages[0].role", "invalid_value"),
    (
        "legacy-function-role",
        chat(messages=[{"role": "function", "content": "hi"}]),
        "messages[0].role",
        "invalid_value",
    ),
    ("huge-unknown-role", chat(messages=[{"role": HUGE, "content": "hi"}]), "messages[0].role", "invalid_value"),
    ("role-a-number", chat(messages=[{"role": 1, "content": "hi"}]), "messages[0].role", "invalid_value"),
    # tool results that answer no tool call
    ("tool-result-without-a-call", chat(messages=[*USER, answered()]), "messages[1].tool_call_id", "invalid_value"),
    (
        "tool-result-for-another-call",
        chat(messages=[*USER, called("call_1"), answered("call_2")]),
        "messages[2].tool_call_id",
        "invalid_value",
    ),
    (
        "tool-result-before-its-call",
        chat(messages=[*USER, answered("call_1"), called("call_1")]),
        "messages[1].tool_call_id",
        "invalid_value",
    ),
    (
        "tool-result-without-an-id",
        chat(messages=[*USER, called(), {"role": "tool", "content": "4"}]),
        "messages[2].tool_call_id",
        "missing_required_parameter",
    ),
    # image URLs no provider can fetch
    ("image-ftp", chat(messages=image("ftp://example.com/a.png")), _IMAGE_URL, "invalid_image_url"),
    ("image-file", chat(messages=image("file:///etc/passwd")), _IMAGE_URL, "invalid_image_url"),
    ("image-javascript", chat(messages=image("javascript:alert(1)")), _IMAGE_URL, "invalid_image_url"),
    ("image-no-scheme", chat(messages=image("cat.png")), _IMAGE_URL, "invalid_image_url"),
    ("image-scheme-relative", chat(messages=image("//example.com/a.png")), _IMAGE_URL, "invalid_image_url"),
    ("image-empty", chat(messages=image("")), _IMAGE_URL, "invalid_image_url"),
    ("image-huge-scheme", chat(messages=image(HUGE + ":x")), _IMAGE_URL, "invalid_image_url"),
]


def post(client: httpx.Client, payload: Any) -> httpx.Response:
    content = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return client.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})


def assert_openai_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text[:MAX_ERROR_BYTES]
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert error["message"]
    return error


def sent_upstream(upstreams: dict[ProviderID, Any]) -> int:
    return sum(len(fake.requests) for fake in upstreams.values())


def logged(caplog: pytest.LogCaptureFixture) -> str:
    formatter = JSONFormatter()
    return "\n".join(formatter.format(record) for record in caplog.records)


@pytest.mark.parametrize(("payload", "param", "code"), [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_hostile_request_is_a_400_naming_the_field_never_sent_upstream(
    client: httpx.Client,
    upstreams: dict[ProviderID, Any],
    caplog: pytest.LogCaptureFixture,
    payload: Any,
    param: str | None,
    code: str,
) -> None:
    caplog.set_level(logging.INFO)
    response = post(client, payload)

    error = assert_openai_error(response, 400, code)
    assert error["param"] == param
    if param is not None:
        assert f"'{param}'" in error["message"]
    assert len(response.content) <= MAX_ERROR_BYTES, "the error echoes what the caller sent"
    assert sent_upstream(upstreams) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a hostile request is not a bug"


def test_a_body_over_the_size_limit_is_413_and_never_sent_upstream(start_service, upstreams) -> None:
    service = start_service(server={"max_body_bytes": 4096})
    with httpx.Client(base_url=service.url, timeout=20) as http:
        declared = post(http, chat(messages=[{"role": "user", "content": "x" * 5000}]))
        chunked = http.post("/v1/chat/completions", content=iter([b'{"model": "' + b"x" * 5000 + b'"}']))
    for response in (declared, chunked):
        error = assert_openai_error(response, 413, "request_too_large")
        assert error["param"] is None
        assert "4096" in error["message"]
    assert sent_upstream(upstreams) == 0


def test_what_the_caller_sent_is_quoted_short_and_the_prompt_never(
    client: httpx.Client, upstreams: dict[ProviderID, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A secret in a refused field is cut to a short prefix; the prompt of a refused request appears in
    neither the answer nor the log; no provider key appears anywhere."""
    caplog.set_level(logging.DEBUG)
    secret = "sk-live-" + "0123456789abcdef" * 4
    refused = [
        chat(messages=[{"role": secret, "content": SECRET_PROMPT}]),
        chat(messages=[{"role": "user", "content": SECRET_PROMPT}, answered(secret)]),
        chat(messages=[{"role": "user", "content": SECRET_PROMPT}], tools=[tool(f"t{i}") for i in range(513)]),
        chat(messages=[{"role": "user", "content": SECRET_PROMPT}, *image(secret + "://x")]),
    ]
    for payload in refused:
        response = post(client, payload)
        assert response.status_code == 400
        assert secret not in response.text
        assert secret[:41] not in response.text
        assert SECRET_PROMPT not in response.text
    lines = logged(caplog)
    assert SECRET_PROMPT not in lines
    assert secret not in lines
    assert all(key not in lines for key in KEYS.values())
    assert sent_upstream(upstreams) == 0


def test_a_large_but_legitimate_request_goes_through(client: httpx.Client, upstreams: dict[ProviderID, Any]) -> None:
    """What real agents send stays well inside the defaults: 128 tools with nested schemas, thousands of
    turns with tool calls, many images, OpenAI's largest output budget."""
    schema: dict[str, Any] = {"type": "object", "properties": {"leaf": {"type": "string"}}}
    for level in range(12):
        schema = {"type": "object", "properties": {f"level{level}": schema}, "required": [f"level{level}"]}
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are an agent."}]
    for turn in range(1_000):
        messages += [{"role": "user", "content": f"step {turn}"}, called(f"call_{turn}"), answered(f"call_{turn}")]
    pictures = [{"type": "image_url", "image_url": {"url": f"https://example.com/{i}.png"}} for i in range(500)]
    messages.append({"role": "user", "content": [{"type": "text", "text": "and these?"}, *pictures]})
    body = chat(
        messages=messages,
        tools=[tool(f"tool_{i}", parameters=schema) for i in range(128)],
        max_completion_tokens=128_000,
        n=2,
        metadata={"trace": {"a": {"b": {"c": [1, 2, 3]}}}},
    )

    response = post(client, body)

    assert response.status_code == 200, response.text[:MAX_ERROR_BYTES]
    assert len(upstreams[ProviderID.OPENAI].requests) == 1


# ------------------------------------------------------------------------------ the limits as settings


def test_the_limits_are_settings() -> None:
    """parse_chat_request applies the limits it is handed (the defaults without)."""
    tight = RequestLimitSettings(max_messages=2, max_tools=1, max_output_tokens=100, max_json_depth=3)
    cases = [
        (chat(messages=USER * 3), "messages"),
        (chat(tools=[WEATHER_TOOL, tool("other")]), "tools"),
        (chat(max_tokens=101), "max_tokens"),
        (chat(metadata=nested(4)), "metadata"),
    ]
    for body, param in cases:
        parse_chat_request(body)
        with pytest.raises(InvalidRequestError) as refused:
            parse_chat_request(body, tight)
        assert refused.value.param == param
    parse_chat_request(chat(messages=USER * 2, max_tokens=100, metadata=nested(3)), tight)


def test_configured_limits_apply_over_http(start_service, upstreams) -> None:
    service = start_service(request_limits={"max_messages": 2})
    with httpx.Client(base_url=service.url, timeout=20) as http:
        response = post(http, chat(messages=USER * 3))
    assert assert_openai_error(response, 400, "array_above_max_length")["param"] == "messages"
    assert sent_upstream(upstreams) == 0
