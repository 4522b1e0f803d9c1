"""What the benchmark's upstream answers and what its load client expects, in one place.

A scenario is chosen per request by the model name, `bench-n<chunks>-f<first byte ms>-i<interval ms>`,
so one upstream serves every run and the gateway's aliases can carry the same names. The bodies
follow OpenAI's Chat Completions format byte for byte in shape: a pretty-printed `chat.completion`
JSON object, or `data: {...}\\n\\n` chunk events (the role, the content, the finish reason, the usage
chunk when `stream_options.include_usage` asks for it) and `data: [DONE]\\n\\n`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

CREATED = 1730000000
COMPLETION_ID = "chatcmpl-AbCdEfGhIjKlMnOpQrStUvWxYz012"
FINGERPRINT = "fp_0ba0d124f1"
#: The content of a non-streaming answer: this many pieces of `piece(i)`.
JSON_PIECES = 60
PROMPT_TOKENS = 148

# Pieces of text with what a codec must get right: non-ASCII, quotes, escapes, an astral character.
_WORDS = ("Hello", " wörld", ' "quoted"', " line\n", " émoji 🙂", " tab\t", " back\\slash", " ünïcode", " 42", " <tag>")
_MODEL = re.compile(r"^bench-n(\d+)-f(\d+)-i(\d+)$")


@dataclass(frozen=True, slots=True)
class Scenario:
    """How the upstream answers: `chunks` content chunks (a stream), the first byte after
    `first_byte_ms`, then one chunk every `interval_ms` (0: the whole body at once)."""

    chunks: int = 100
    first_byte_ms: int = 0
    interval_ms: int = 0

    @property
    def model(self) -> str:
        return f"bench-n{self.chunks}-f{self.first_byte_ms}-i{self.interval_ms}"

    @classmethod
    def of(cls, model: str) -> Scenario:
        found = _MODEL.match(model)
        if found is None:
            return cls()
        chunks, first, interval = (int(g) for g in found.groups())
        return cls(chunks=chunks, first_byte_ms=first, interval_ms=interval)


def piece(i: int) -> str:
    """The text of content chunk `i` (its index in it, so a dropped, doubled or reordered chunk shows)."""
    return f"{_WORDS[i % len(_WORDS)]}{i}"


def expected_text(pieces: int) -> str:
    return "".join(piece(i) for i in range(pieces))


def request_body(model: str, *, stream: bool) -> bytes:
    """A typical client request: a system prompt, a user turn of some 500 characters, a few options."""
    question = (
        "Summarise the following incident report in three bullet points, then propose one follow-up "
        "action for the on-call engineer. Report: at 02:14 UTC the checkout service began returning "
        "HTTP 503 for roughly 4% of requests; the error rate rose to 11% by 02:31 when an automated "
        "rollback of the 02:05 deployment completed. Latency at p99 went from 380 ms to 2.9 s. The "
        "root cause was a connection-pool limit lowered from 200 to 20 in the new configuration."
    )
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a concise assistant for site reliability engineers."},
            {"role": "user", "content": question},
        ],
        "temperature": 0.2,
        "max_tokens": 512,
        "user": "bench-user-42",
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


def _usage(completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion_tokens,
        "total_tokens": PROMPT_TOKENS + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def completion_body(model: str) -> bytes:
    """A non-streaming answer, pretty-printed as OpenAI sends it."""
    body = {
        "id": COMPLETION_ID,
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": expected_text(JSON_PIECES),
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(JSON_PIECES),
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
    }
    return orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n"


def stream_events(model: str, chunks: int, *, include_usage: bool) -> list[bytes]:
    """The SSE events of a streamed answer: the role chunk (empty content), one event per content
    chunk, the finish reason, the usage chunk if asked for, and `[DONE]`."""

    def event(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": COMPLETION_ID,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        }
        if include_usage:
            chunk["usage"] = usage
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def delta(content: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": content, "logprobs": None, "finish_reason": finish}]

    events = [event(delta({"role": "assistant", "content": "", "refusal": None}))]
    events += [event(delta({"content": piece(i)})) for i in range(chunks)]
    events.append(event(delta({}, "stop")))
    if include_usage:
        events.append(event([], _usage(chunks)))
    events.append(b"data: [DONE]\n\n")
    return events
