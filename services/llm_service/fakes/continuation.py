"""What the fake upstreams answer to a request that gives them the start of the answer.

vLLM continues a final assistant message when asked with ``continue_final_message: true`` (and
``add_generation_prompt: false``): its stream then opens with the role chunk and carries only the
text after that prefix; a non-stream answer's ``message.content`` is only the rest (without
``echo``). A fake has no model: it continues its canned answer when the prefix starts it, and
refuses any other prefix. Pure functions over fixture events and bodies, as in :mod:`.wire`.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from .wire import Flavor, SseEvent, bad_request

# The fake's own limit (a real model continues any prefix): it can only continue its canned answer.
PREFIX_NOT_CONTINUABLE = "The fake upstream can only continue its own answer; the assistant prefix does not start it."
# [U] Wording of a model that refuses an assistant prefill (Anthropic's newest models answer so).
PREFILL_REFUSED = (
    "This model does not support assistant message prefill. The conversation must end with a user message."
)


def prefill_refused(flavor: Flavor) -> bytes:
    """The 400 of a model that does not take a final assistant message (``Fault(reject_assistant_prefix)``)."""
    return bad_request(flavor, PREFILL_REFUSED, "messages")


def continue_events(events: list[SseEvent], prefix: str) -> list[SseEvent] | None:
    """The stream of an answer continued after ``prefix`` as vLLM sends it: the role chunk, then only the
    text after the prefix (a chunk the prefix covers is not sent, one it cuts is trimmed), the finish and
    usage chunks (the prefix's tokens counted as prompt). None when the answer does not start with it."""
    texts = [_delta_text(event) for event in events]
    full = "".join(text or "" for text in texts)
    if not full.startswith(prefix):
        return None
    tokens = _prefix_tokens(events, full, prefix)
    out: list[SseEvent] = []
    left = len(prefix)
    for event, text in zip(events, texts, strict=True):
        if not text:
            out.append(_moved_usage(event, tokens) if tokens else event)
            continue
        if left >= len(text):
            left -= len(text)
            continue
        if left:
            event = _with_delta_text(event, text[left:])
            left = 0
        out.append(event)
    return out


def continue_completion(body: bytes, prefix: str) -> bytes | None:
    """A non-stream answer continued after ``prefix``: ``message.content`` holds only the rest (vLLM
    without ``echo``), the usage counts the prefix as prompt. None when the answer does not start with it."""
    obj = orjson.loads(body)
    message = obj["choices"][0]["message"]
    content = message.get("content") or ""
    if not content.startswith(prefix):
        return None
    completion = _dict(obj.get("usage")).get("completion_tokens")
    tokens = _share(completion, len(prefix), len(content))
    message["content"] = content[len(prefix) :]
    if tokens:
        _move_tokens(obj["usage"], tokens)
    return _relayout(body, obj)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _chunk(event: SseEvent) -> dict[str, Any]:
    if event.data is None or event.is_done:
        return {}
    return _dict(orjson.loads(event.data))


def _delta_text(event: SseEvent) -> str | None:
    choices = _chunk(event).get("choices")
    delta = _dict(choices[0]).get("delta") if isinstance(choices, list) and choices else None
    content = _dict(delta).get("content")
    return content if isinstance(content, str) else None


def _with_delta_text(event: SseEvent, text: str) -> SseEvent:
    chunk = _chunk(event)
    chunk["choices"][0]["delta"]["content"] = text
    return SseEvent(data=orjson.dumps(chunk))


def _prefix_tokens(events: list[SseEvent], full: str, prefix: str) -> int:
    """The prefix's share of the answer's completion tokens (the fake has no tokenizer) [U]."""
    for event in events:
        usage = _chunk(event).get("usage")
        if isinstance(usage, dict):
            return _share(usage.get("completion_tokens"), len(prefix), len(full))
    return 0


def _share(tokens: Any, part: int, whole: int) -> int:
    return round(tokens * part / whole) if isinstance(tokens, int) and whole else 0


def _moved_usage(event: SseEvent, tokens: int) -> SseEvent:
    chunk = _chunk(event)
    usage = chunk.get("usage")
    if not isinstance(usage, dict):
        return event
    _move_tokens(usage, tokens)
    return SseEvent(data=orjson.dumps(chunk))


def _move_tokens(usage: dict[str, Any], tokens: int) -> None:
    usage["prompt_tokens"] += tokens
    usage["completion_tokens"] -= tokens


def _relayout(original: bytes, obj: Any) -> bytes:
    """``obj`` in the JSON layout of ``original``: OpenAI's pretty one (2-space indents, trailing
    newline), or compact."""
    if original.startswith(b"{\n"):
        return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode()
    return orjson.dumps(obj)
