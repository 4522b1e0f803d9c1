"""The soak's random plans (seeded, so a run can be repeated) and what each request may end in.

Two plans: for each fake upstream, the faults its next requests meet (a no-op `Fault()` for a healthy
answer); for the client, the calls it makes (model, stream or not, tools or not, and whether it hangs up
early). Then the checks: an answer is the scripted one of the fakes, or OpenAI's error body; a stream
is complete and ends in [DONE], or ends in one error event and [DONE], never cut short without one.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from conftest import QUESTION, WEATHER_TOOL
from llm_service.fakes import Fault

#: What the fakes answer, whatever the provider (tests/fixtures/README.md).
TEXT = "The capital of France is Paris — famous for its cafés."
TOOL_CALLS = [("get_weather", {"city": "Oslo"}), ("get_weather", {"city": "Paris"})]
#: Statuses a request may end in besides 200 under these faults: rate limited or queue full (429),
#: the upstream failed (502), every deployment open-circuited (503), the upstream timed out (504).
ERROR_STATUSES = frozenset({429, 502, 503, 504})
#: And for a resumption: the stream is not kept (404) or its events are no longer (410).
RESUME_ERROR_STATUSES = frozenset({404, 410})
#: Bodies a broken upstream sends with a 200 (or a 500): cut JSON, HTML, the wrong JSON, broken SSE.
MALFORMED_BODIES = (
    b'{"id": "chatcmpl-cut", "object": "chat.completion", "choices": [{"index": 0, "mess',
    b"<html><body><h1>502 Bad Gateway</h1></body></html>",
    b"{}",
    b"null",
    b'data: {"id": "chatcmpl-cut", "choices": [{"delta": {"content": "Th\n\n',
    b"data: not json at all\n\n",
    b"\x00\xff\xfe garbage \xc3\x28",
)


def upstream_faults(rng: random.Random, count: int, *, timeout: float) -> list[Fault]:
    """`count` faults for one upstream's next requests, about half of them healthy answers.
    `timeout` is the read timeout the service uses: a timeout fault waits past it."""
    faults: list[Fault] = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.50:
            fault = Fault()
        elif roll < 0.60:
            fault = Fault(status=rng.choice((500, 502, 503)))
        elif roll < 0.66:
            retry_after = rng.choice(({"retry-after": "1"}, {"retry-after-ms": "300"}, {"retry-after": "0"}))
            fault = Fault(status=429, headers=retry_after)
        elif roll < 0.70:
            fault = Fault(delay_before_headers=timeout * 1.6)
        elif roll < 0.73:
            fault = Fault(delay_per_chunk=timeout * 1.4)  # a stream that stalls mid-answer
        elif roll < 0.81:
            fault = Fault(drop_after_chunks=rng.randint(0, 4))
        elif roll < 0.86:
            fault = Fault(error_event_after_chunks=rng.randint(0, 3))
        elif roll < 0.92:
            fault = Fault(body=rng.choice(MALFORMED_BODIES))
        elif roll < 0.94:
            fault = Fault(status=500, body=rng.choice(MALFORMED_BODIES))
        elif roll < 0.97:
            fault = Fault(delay_per_chunk=0.02)  # slow but healthy
        else:
            fault = Fault(delay_per_chunk=0.1, drop_after_chunks=rng.randint(1, 4))  # slow, then cut
        faults.append(fault)
    return faults


@dataclass(frozen=True)
class Call:
    """One client request of the plan."""

    index: int
    model: str
    stream: bool
    tools: bool
    #: Non-stream: hang up after this many seconds unless answered by then.
    leave_after_seconds: float | None = None
    #: Stream: hang up after reading this many events.
    leave_after_events: int | None = None
    #: Stream: after hanging up, reconnect with Last-Event-ID for the rest.
    resume: bool = False

    @property
    def leaves(self) -> bool:
        return self.leave_after_seconds is not None or self.leave_after_events is not None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": QUESTION, "stream": self.stream}
        if self.tools:
            body["tools"] = [WEATHER_TOOL]
        if self.stream and self.index % 2:
            body["stream_options"] = {"include_usage": True}
        return body


def client_calls(rng: random.Random, count: int, models: list[str]) -> list[Call]:
    calls = []
    for index in range(count):
        stream = rng.random() < 0.5
        leave = rng.random() < 0.08
        resume = rng.random() < 0.5
        calls.append(
            Call(
                index=index,
                model=rng.choice(models),
                stream=stream,
                tools=rng.random() < 0.2,
                leave_after_seconds=rng.uniform(0.0, 1.0) if leave and not stream else None,
                leave_after_events=rng.randint(0, 4) if leave and stream else None,
                resume=leave and stream and resume,
            )
        )
    return calls


# --------------------------------------------------------------------------- checks


def error_problem(status: int, headers: dict[str, str], body: bytes, also: frozenset[int] = frozenset()) -> str | None:
    """What is wrong with an error answer, or None: an expected status (`ERROR_STATUSES`, or `also`),
    Retry-After where the client must wait, and OpenAI's error body."""
    if status not in ERROR_STATUSES | also:
        return f"unexpected status {status}: {body[:200]!r}"
    if status in (429, 503) and "retry-after" not in headers:
        return f"{status} without Retry-After: {body[:200]!r}"
    try:
        parsed = json.loads(body)
    except ValueError:
        return f"{status} with a body that is not JSON: {body[:200]!r}"
    return error_body_problem(parsed)


def error_body_problem(parsed: Any) -> str | None:
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict) or set(parsed) != {"error"}:
        return f"not OpenAI's error body: {parsed!r:.200}"
    if not isinstance(error.get("message"), str) or not isinstance(error.get("type"), str):
        return f"error without message or type: {parsed!r:.200}"
    return None


def completion_problem(call: Call, body: bytes) -> str | None:
    """What is wrong with a 200 answer to a non-stream call, or None."""
    try:
        parsed = json.loads(body)
        choice = parsed["choices"][0]
        message = choice["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        return f"200 but not a completion: {body[:200]!r}"
    if call.tools:
        calls = [
            (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message.get("tool_calls") or ()
        ]
        if calls != TOOL_CALLS or choice.get("finish_reason") != "tool_calls":
            return f"wrong tool calls {calls!r} ({choice.get('finish_reason')})"
        return None
    if message.get("content") != TEXT or choice.get("finish_reason") != "stop":
        return f"wrong answer {message.get('content')!r} ({choice.get('finish_reason')})"
    return None


def stream_problem(call: Call, events: list[Any]) -> str | None:
    """What is wrong with a finished stream (every `data:` payload, [DONE] as a string), or None."""
    if not events or events[-1] != "[DONE]":
        return f"stream cut short without an error event: {len(events)} events, last {events[-1:]!r:.200}"
    body = events[:-1]
    if "[DONE]" in body:
        return "[DONE] before the end"
    errors = [i for i, event in enumerate(body) if isinstance(event, dict) and "error" in event]
    if errors:
        if errors != [len(body) - 1]:
            return f"error event(s) at {errors} of {len(body)}: not one, last"
        problem = error_body_problem(body[-1])
        if problem is not None:
            return problem
        body = body[:-1]
    ids = {event.get("id") for event in body if isinstance(event, dict)}
    if len(ids) > 1:
        return f"several completion ids in one stream: {ids}"
    text, calls, finishes = _streamed(body)
    if errors:
        return None if TEXT.startswith(text) else f"text before the error event is not the answer's start: {text!r}"
    if call.tools:
        parsed = [(name, json.loads(arguments)) for name, arguments in calls]
        return None if parsed == TOOL_CALLS and finishes == ["tool_calls"] else f"wrong tool calls {calls} {finishes}"
    return None if text == TEXT and finishes == ["stop"] else f"wrong streamed answer {text!r} {finishes}"


def _streamed(events: list[Any]) -> tuple[str, list[tuple[str, str]], list[str]]:
    """(text, tool calls as (name, arguments) in index order, finish reasons) of a stream's chunks."""
    text: list[str] = []
    calls: dict[int, list[str]] = {}
    finishes: list[str] = []
    for event in events:
        for choice in event.get("choices") or ():
            delta = choice.get("delta") or {}
            text.append(delta.get("content") or "")
            for call in delta.get("tool_calls") or ():
                entry = calls.setdefault(call["index"], ["", ""])
                function = call.get("function") or {}
                entry[0] += function.get("name") or ""
                entry[1] += function.get("arguments") or ""
            if choice.get("finish_reason"):
                finishes.append(choice["finish_reason"])
    return "".join(text), [(name, arguments) for _, (name, arguments) in sorted(calls.items())], finishes
