"""Reading the service's SSE output in tests: events as parsed JSON, `[DONE]` kept as a string."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

FIXTURES = Path(__file__).parent / "fixtures"


def read_events(response: httpx.Response) -> list[Any]:
    """Every `data:` payload of a finished SSE response, in order."""
    events: list[Any] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def streamed_text(events: list[Any]) -> str:
    return "".join(
        choice["delta"].get("content") or ""
        for event in events
        if isinstance(event, dict)
        for choice in event.get("choices", ())
    )


def fixture_json(flavor: str, name: str) -> Any:
    return json.loads((FIXTURES / flavor / name).read_text(encoding="utf-8"))


def fixture_text(flavor: str, scenario: str) -> str:
    """The assistant text of a scenario; every flavour's fixtures tell the same answer (fixtures/README.md)."""
    body = fixture_json(flavor, f"chat_{scenario}.json")
    if "candidates" in body:  # Gemini
        return "".join(p.get("text", "") for p in body["candidates"][0]["content"]["parts"])
    return str(body["choices"][0]["message"]["content"])


def stream_events(client: httpx.Client, body: dict[str, Any], path: str = "/v1/chat/completions") -> list[Any]:
    """POST `body`, check that an SSE stream started, and return all its events."""
    with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return read_events(response)
