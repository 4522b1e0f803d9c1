"""Hostile input the Gemini translation meets after the request checks: JSON inside tool arguments and
results nested past what a Gemini body can carry, and schemas that explode once their $refs are inlined.
Each was a 500 (the JSON encoder's recursion limit, Python's) or unbounded work; now a 400 naming the
field before anything is sent, or, for a tool result, the text itself."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from llm_service.core.config.constants import ProviderID
from test_hostile_input import (
    MAX_ERROR_BYTES,
    USER,
    VERTEX,
    answered,
    assert_openai_error,
    called,
    chat,
    post,
    sent_upstream,
    tool,
)


def nested_text(depth: int) -> str:
    """JSON objects nested `depth` deep, past what orjson writes (254)."""
    return '{"a":' * depth + "1" + "}" * depth


def test_vertex_refuses_tool_arguments_nested_too_deeply_for_its_body(
    client: httpx.Client, upstreams: dict[ProviderID, Any]
) -> None:
    """Gemini takes arguments as an object, not text: one nested past what the upstream body can carry
    is a 400 (was a 500 from the JSON encoder)."""
    deep = nested_text(300)
    response = post(client, chat(model=VERTEX, messages=[*USER, called(arguments=deep), answered()]))

    error = assert_openai_error(response, 400, "invalid_value")
    assert error["param"] == "messages[1].tool_calls[0].function.arguments"
    assert sent_upstream(upstreams) == 0


def test_vertex_sends_a_tool_result_nested_too_deeply_as_text(
    client: httpx.Client, upstreams: dict[ProviderID, Any]
) -> None:
    deep = nested_text(300)
    response = post(client, chat(model=VERTEX, messages=[*USER, called(), answered(content=deep)]))

    assert response.status_code == 200, response.text[:MAX_ERROR_BYTES]
    (sent,) = upstreams[ProviderID.VERTEX_AI].requests
    results = [p["functionResponse"] for c in sent.json["contents"] for p in c["parts"] if "functionResponse" in p]
    assert results == [{"name": "get_weather", "response": {"output": deep}}]


def _chained_refs(length: int, fan_out: int) -> dict[str, Any]:
    """A schema whose definitions each refer to the next `fan_out` times: small, but a chain `length`
    long once inlined, and fan_out ** length schemas."""
    defs: dict[str, Any] = {
        f"d{i}": {"type": "object", "properties": {f"p{k}": {"$ref": f"#/$defs/d{i + 1}"} for k in range(fan_out)}}
        for i in range(length)
    }
    defs[f"d{length}"] = {"type": "string"}
    return {"type": "object", "properties": {"root": {"$ref": "#/$defs/d0"}}, "$defs": defs}


@pytest.mark.parametrize(("length", "fan_out"), [(300, 1), (40, 2)], ids=["long-chain", "doubling"])
def test_vertex_refuses_a_schema_that_explodes_once_its_refs_are_inlined(
    client: httpx.Client, upstreams: dict[ProviderID, Any], length: int, fan_out: int
) -> None:
    """A chain of $refs was a RecursionError (500); references doubling at each level, unbounded work."""
    response = post(client, chat(model=VERTEX, tools=[tool(parameters=_chained_refs(length, fan_out))]))

    error = assert_openai_error(response, 400, "unsupported_for_provider")
    assert error["param"].startswith("tools[0].function.parameters.properties.root")
    assert len(response.content) <= 2 * MAX_ERROR_BYTES
    assert sent_upstream(upstreams) == 0
