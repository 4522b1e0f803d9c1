"""Properties of the Gemini codec (`gemini_format.py`): OpenAI wire -> domain -> Gemini, and back.

What the module docstring claims, over generated conversations: every user and assistant text reaches
`contents` in order, consecutive turns of one role merged; system texts go to `systemInstruction` in
order; every tool call and tool result arrives with its name and arguments, the results of one turn in
the order of its calls; the generation settings and tool declarations keep their values. On the way
back: an answer's text (thoughts skipped), calls, finish reason and usage reach the client, a streamed
answer says what the plain one says with the same call ids, and what Gemini attached to a call (its id,
its thoughtSignature) goes back with it on the next turn.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from llm_service.core.config.constants import ProviderID
from llm_service.core.llm.gemini_format import (
    FOREIGN_CALL_SIGNATURE,
    GeminiStreamTranslator,
    decode_gemini_response,
    encode_gemini_request,
    stable_call_id,
)
from llm_service.core.llm.models import LLMChunk, LLMRequest, Message, Role
from llm_service.core.llm.openai_format import encode_chat_response, parse_chat_request
from llm_service.core.llm.tool_call_store import ProviderCallData
from llm_service.core.llm.tool_ids import normalize_tool_call_id

PROPERTIES = settings(max_examples=120, deadline=None)
VERTEX = ProviderID.VERTEX_AI
MODEL = "gemini-2.5-flash"
_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

text = st.text(max_size=10)
names = st.text(_ALNUM + "_", min_size=1, max_size=12).map("f_".__add__)  # what Gemini takes as a function name
json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | text
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=6
)
json_objects = st.dictionaries(text, json_values, max_size=3)
images = st.sampled_from(["data:image/png;base64,iVBORw0K", "gs://bucket/cat.jpg", "https://example.com/a/dog.webp"])
user_contents = text | st.lists(
    text.map(lambda t: {"type": "text", "text": t})
    | images.map(lambda url: {"type": "image_url", "image_url": {"url": url}}),
    max_size=3,
)


system_contents = text | st.lists(text.map(lambda t: {"type": "text", "text": t}), max_size=2)


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A user turn first, then any roles; an assistant's calls answered (some of them) by the tool messages
    that follow it, in any order, each result distinct, system messages between them (they do not end a
    run of results)."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": draw(st.text(min_size=1, max_size=10))}]
    for turn in range(draw(st.integers(0, 4))):
        role = draw(st.sampled_from(["system", "developer", "user", "assistant", "assistant"]))
        if role == "user":
            messages.append({"role": "user", "content": draw(user_contents)})
            continue
        if role != "assistant":
            messages.append({"role": role, "content": draw(system_contents)})
            continue
        arguments = draw(st.lists(json_objects.map(json.dumps) | st.just(""), max_size=3))
        calls = [
            {"id": f"call_{turn}_{k}", "type": "function", "function": {"name": draw(names), "arguments": a}}
            for k, a in enumerate(arguments)
        ]
        messages.append(
            {"role": "assistant", "content": draw(st.none() | text), **({"tool_calls": calls} if calls else {})}
        )
        answered = draw(st.permutations([c["id"] for c in calls]))
        for k, call_id in enumerate(answered[: draw(st.integers(0, len(answered)))]):
            if draw(st.booleans()):
                messages.append({"role": "developer", "content": draw(system_contents)})
            label = f"result {turn}.{k}: "
            result = draw(json_objects.map(json.dumps) | text.map(label.__add__))
            messages.append({"role": "tool", "tool_call_id": call_id, "content": result})
    return messages


generation = st.fixed_dictionaries(
    {},
    optional={
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "max_tokens": st.integers(1, 10**6),
        "max_completion_tokens": st.integers(1, 10**6),
        "stop": st.lists(st.text(min_size=1, max_size=5), max_size=4),
        "seed": st.integers(0, 2**31),
        "n": st.integers(1, 8),
        "presence_penalty": st.floats(-2, 2),
        "frequency_penalty": st.floats(-2, 2),
        "response_format": st.just({"type": "json_object"}),
    },
)
GENERATION_NAMES = {
    "temperature": "temperature", "top_p": "topP", "seed": "seed", "n": "candidateCount",
    "presence_penalty": "presencePenalty", "frequency_penalty": "frequencyPenalty",
}  # fmt: skip


def _tool_definition(name: str, description: dict[str, str], props: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            **description,
            "parameters": {"type": "object", "properties": {p: {"type": "string"} for p in props}},
        },
    }


tool_definitions = st.lists(
    st.builds(
        _tool_definition,
        names,
        st.just({}) | text.map(lambda d: {"description": d}),
        st.lists(st.text(_ALNUM, min_size=1, max_size=6), min_size=1, max_size=3, unique=True),
    ),
    max_size=3,
    unique_by=lambda tool: tool["function"]["name"],
)


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [part["text"] for part in content or () if part.get("type") == "text"]


def _gemini_texts(parts: list[dict[str, Any]]) -> list[str]:
    return [part["text"] for part in parts if "text" in part]


def _expected_results(messages: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """(name, response) of each tool result: a run of them in the order of the calls it answers."""
    out: list[tuple[str, Any]] = []
    calls: list[dict[str, Any]] = []
    run: list[dict[str, Any]] = []
    for message in [*messages, {"role": "user"}]:
        if message["role"] == "tool":
            run.append(message)
            continue
        if message["role"] in ("system", "developer"):
            continue
        order = [c["id"] for c in calls]
        for result in sorted(run, key=lambda r: order.index(r["tool_call_id"])):
            call = calls[order.index(result["tool_call_id"])]
            parsed = json.loads(result["content"]) if result["content"].startswith("{") else None
            out.append(
                (call["function"]["name"], parsed if isinstance(parsed, dict) else {"output": result["content"]})
            )
        run = []
        if message["role"] == "assistant":
            calls = message.get("tool_calls", [])
    return out


@PROPERTIES
@given(conversations(), generation, tool_definitions, st.sampled_from([None, "none", "auto", "required"]))
def test_a_client_request_reaches_gemini_with_every_text_call_result_and_setting(
    messages: list[dict[str, Any]], fields: dict[str, Any], tools: list[dict[str, Any]], tool_choice: str | None
) -> None:
    body = {"model": MODEL, "messages": messages, **fields, **({"tools": tools} if tools else {})}
    if tool_choice and tools:
        body["tool_choice"] = tool_choice
    sent = encode_gemini_request(parse_chat_request(body), {})

    contents = sent["contents"]
    conversation = [m for m in messages if m["role"] in ("user", "assistant")]
    assert [t for c in contents for t in _gemini_texts(c["parts"])] == [
        t for m in conversation for t in _texts(m["content"]) if t
    ]
    assert all(c["role"] in ("user", "model") for c in contents)
    assert all(a["role"] != b["role"] for a, b in itertools.pairwise(contents))
    system = [t for m in messages if m["role"] in ("system", "developer") if (t := "".join(_texts(m["content"])))]
    assert sent.get("systemInstruction", {"parts": []}) == {"parts": [{"text": t} for t in system]}

    parts = [p for c in contents for p in c["parts"]]
    called = [c["function"] for m in conversation for c in m.get("tool_calls", ())]
    assert [p["functionCall"] for p in parts if "functionCall" in p] == [
        {"name": c["name"], "args": json.loads(c["arguments"] or "{}")} for c in called
    ]
    assert all(p["thoughtSignature"] == FOREIGN_CALL_SIGNATURE for p in parts if "functionCall" in p)
    results = [
        (p["functionResponse"]["name"], p["functionResponse"]["response"]) for p in parts if "functionResponse" in p
    ]
    assert results == _expected_results(messages)

    config = sent.get("generationConfig", {})
    for wire, gemini in GENERATION_NAMES.items():
        assert config.get(gemini) == fields.get(wire)
    assert config.get("maxOutputTokens") == fields.get("max_completion_tokens", fields.get("max_tokens"))
    assert config.get("stopSequences") == (fields.get("stop") or None)
    assert ("responseMimeType" in config) == ("response_format" in fields)
    declarations = sent["tools"][0]["functionDeclarations"] if tools else []
    assert [(d["name"], d.get("description")) for d in declarations] == [
        (t["function"]["name"], t["function"].get("description")) for t in tools
    ]
    modes = {"none": "NONE", "auto": "AUTO", "required": "ANY"}
    assert sent.get("toolConfig") == (
        {"functionCallingConfig": {"mode": modes[tool_choice]}} if tool_choice and tools else None
    )


# ---------------------------------------------------------------------------------- the answer

FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter", "RECITATION": "content_filter",
          "IMAGE_SAFETY": "content_filter", "MALFORMED_FUNCTION_CALL": "stop", "OTHER": "stop"}  # fmt: skip
answer_parts = st.lists(
    st.one_of(
        text.map(lambda t: {"text": t}),
        text.map(lambda t: {"text": t, "thought": True}),
        st.builds(
            lambda name, args, upstream_id, signature: {
                "functionCall": {"name": name, "args": args, **({"id": upstream_id} if upstream_id else {})},
                **({"thoughtSignature": signature} if signature else {}),
            },
            names,
            json_objects,
            st.none() | st.text(_ALNUM, min_size=1, max_size=8),
            st.none() | st.text(_ALNUM, min_size=1, max_size=8),
        ),
    ),
    max_size=5,
)


def _candidates(drawn: list[tuple[list[dict[str, Any]], str]]) -> list[dict[str, Any]]:
    """Candidates with explicit indexes; Gemini's call ids made unique, as Gemini's are."""
    for i, (parts, _) in enumerate(drawn):
        for k, part in enumerate(parts):
            if "id" in part.get("functionCall", {}):
                part["functionCall"]["id"] += f"-{i}-{k}"
    return [{"index": i, "content": {"role": "model", "parts": p}, "finishReason": f} for i, (p, f) in enumerate(drawn)]


candidates = st.lists(st.tuples(answer_parts, st.sampled_from(sorted(FINISH))), min_size=1, max_size=2).map(_candidates)
usage_metadata = st.builds(
    lambda prompt, answer, thoughts: {
        "promptTokenCount": prompt,
        "candidatesTokenCount": answer,
        **({"thoughtsTokenCount": thoughts} if thoughts else {}),
    },
    st.integers(0, 10**5),
    st.integers(0, 10**5),
    st.none() | st.integers(1, 10**4),
)  # fmt: skip


def _response(candidate_list: list[dict[str, Any]], usage: dict[str, Any]) -> dict[str, Any]:
    return {"candidates": candidate_list, "usageMetadata": usage, "modelVersion": MODEL, "responseId": "resp-1"}


def _calls(candidate: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in candidate["content"]["parts"] if "functionCall" in p]


@PROPERTIES
@given(candidates, usage_metadata)
def test_a_gemini_answer_reaches_the_client_with_its_text_calls_finish_and_usage(
    candidate_list: list[dict[str, Any]], usage: dict[str, Any]
) -> None:
    remembered: dict[str, ProviderCallData] = {}
    body = encode_chat_response(
        decode_gemini_response(_response(candidate_list, usage), VERTEX, model=MODEL, remember=remembered.__setitem__)
    )

    assert body["id"] == "chatcmpl-resp-1"
    assert body["model"] == MODEL
    for choice, candidate in zip(body["choices"], candidate_list, strict=True):
        parts = candidate["content"]["parts"]
        said = [p["text"] for p in parts if "text" in p and not p.get("thought")]
        assert choice["message"]["content"] == ("".join(said) if said else None)
        calls = _calls(candidate)
        finish = FINISH[candidate["finishReason"]]
        assert choice["finish_reason"] == ("tool_calls" if finish == "stop" and calls else finish)
        sent = choice["message"].get("tool_calls", [])
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in sent] == [
            (p["functionCall"]["name"], p["functionCall"]["args"]) for p in calls
        ]
        for k, (call, part) in enumerate(zip(sent, calls, strict=True)):
            upstream_id = part["functionCall"].get("id")
            own = (
                normalize_tool_call_id(upstream_id, VERTEX)[0]
                if upstream_id
                else stable_call_id("resp-1", choice["index"], k)
            )
            assert call["id"] == own
            kept = remembered[own]
            assert (kept.provider_id, kept.thought_signature) == (upstream_id, part.get("thoughtSignature"))
    thoughts = usage.get("thoughtsTokenCount", 0)
    prompt, completion = usage["promptTokenCount"], usage["candidatesTokenCount"] + thoughts
    assert body["usage"]["prompt_tokens"] == prompt
    assert body["usage"]["completion_tokens"] == completion
    assert body["usage"]["total_tokens"] == prompt + completion


def _streamed(candidate_list: list[dict[str, Any]], usage: dict[str, Any], cuts: list[int]) -> list[LLMChunk]:
    """The answer as `streamGenerateContent` sends it: each candidate's parts cut into events, its finish
    reason on its last event, the usage on the stream's last."""
    events: list[dict[str, Any]] = []
    for candidate in candidate_list:
        parts = candidate["content"]["parts"]
        bounds = sorted({min(c, len(parts)) for c in cuts} | {0, len(parts)})
        for start, end in zip(bounds, bounds[1:] or [0], strict=False):
            piece = {"index": candidate["index"], "content": {"role": "model", "parts": parts[start:end]}}
            events.append({"candidates": [piece]})
        events.append({"candidates": [{"index": candidate["index"], "finishReason": candidate["finishReason"]}]})
    for event in events:
        event |= {"modelVersion": MODEL, "responseId": "resp-1"}
    events[-1]["usageMetadata"] = usage
    translator = GeminiStreamTranslator(VERTEX, model=MODEL, remember=lambda *_: None)
    return [chunk for event in events for chunk in translator.feed(event)]


@PROPERTIES
@given(candidates, usage_metadata, st.lists(st.integers(0, 5), max_size=3))
def test_a_streamed_gemini_answer_says_what_the_plain_one_says_with_the_same_call_ids(
    candidate_list: list[dict[str, Any]], usage: dict[str, Any], cuts: list[int]
) -> None:
    plain = decode_gemini_response(_response(candidate_list, usage), VERTEX, model=MODEL, remember=lambda *_: None)
    chunks = _streamed(candidate_list, usage, cuts)

    for choice in plain.choices:
        streamed = [c for chunk in chunks for c in chunk.choices if c.index == choice.index]
        assert "".join(c.content or "" for c in streamed) == (choice.message.content or "")
        deltas = [d for c in streamed for d in c.tool_calls]
        assert [(d.id, d.name, d.arguments) for d in deltas] == [
            (call.id, call.name, call.arguments) for call in choice.message.tool_calls
        ]
        assert [c.finish_reason for c in streamed if c.finish_reason] == [choice.finish_reason]
    assert [chunk.usage for chunk in chunks if chunk.usage] == [plain.usage]


@PROPERTIES
@given(candidates.map(lambda cs: cs[:1]))
def test_what_gemini_attached_to_its_calls_goes_back_with_them_on_the_next_turn(
    candidate_list: list[dict[str, Any]],
) -> None:
    remembered: dict[str, ProviderCallData] = {}
    answer = decode_gemini_response(_response(candidate_list, {}), VERTEX, model=MODEL, remember=remembered.__setitem__)
    reply = answer.choices[0].message
    results = [Message(role=Role.TOOL, content="done", tool_call_id=call.id) for call in reply.tool_calls]
    request = LLMRequest(model=MODEL, messages=[Message(role=Role.USER, content="go"), reply, *results])

    sent = encode_gemini_request(request, remembered)

    parts = [p for c in sent["contents"] for p in c["parts"]]
    calls = _calls(candidate_list[0])
    assert [(p["functionCall"].get("id"), p.get("thoughtSignature")) for p in parts if "functionCall" in p] == [
        (p["functionCall"].get("id"), p.get("thoughtSignature")) for p in calls
    ]
    assert [p["functionResponse"].get("id") for p in parts if "functionResponse" in p] == [
        p["functionCall"].get("id") for p in calls
    ]
