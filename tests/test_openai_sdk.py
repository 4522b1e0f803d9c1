"""The official openai SDK, pointed at the service, works unchanged.

Marked `integration`: with --mock-providers it runs against the fakes; without, against the real
provider APIs whose credentials are set (skipped otherwise), so it asserts structure, not text.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from conftest import WEATHER_TOOL

pytestmark = pytest.mark.integration


@pytest.fixture
def sdk(live_service) -> tuple[openai.OpenAI, str]:
    url, model = live_service
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused-by-the-service", max_retries=0), model


def test_sdk_plain_completion(sdk) -> None:
    client, model = sdk
    completion = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello."}])

    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.total_tokens > 0


def test_sdk_streaming_with_usage(sdk) -> None:
    client, model = sdk
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say hello."}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens > 0


def test_sdk_tool_calls_round_trip(sdk) -> None:
    client, model = sdk
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "What is the weather in Oslo and in Paris? Use the tool."}
    ]
    first = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL], tool_choice="required")
    calls = first.choices[0].message.tool_calls
    assert calls
    assert all(c.function.name == "get_weather" for c in calls)
    assert all("city" in json.loads(c.function.arguments) for c in calls)

    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages += [{"role": "tool", "tool_call_id": c.id, "content": '{"temp_c": 4}'} for c in calls]
    second = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].message.content


def test_sdk_streamed_tool_calls(sdk) -> None:
    client, model = sdk
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the weather in Oslo? Use the tool."}],
        tools=[WEATHER_TOOL],
        tool_choice="required",
        stream=True,
    )
    arguments: dict[int, str] = {}
    for chunk in stream:
        for fragment in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            arguments[fragment.index] = arguments.get(fragment.index, "") + (fragment.function.arguments or "")
    assert arguments
    assert all("city" in json.loads(a) for a in arguments.values())


def test_sdk_sees_upstream_errors_as_api_errors(sdk) -> None:
    client, _ = sdk
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nosuch/model", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_found"
