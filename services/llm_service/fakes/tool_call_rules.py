"""The tool-call id rules the OpenAI-compatible fakes enforce (protocol reference sections 7 and 8).

Providers disagree on what a tool-call id may be and on how calls and results must pair up, and a
gateway that forwards a conversation from one provider to another breaks those rules easily. The fakes
refuse what the real service refuses, in its words, so such a bug fails a test instead of a user.
A :class:`~llm_service.fakes.FakeUpstream` applies one rule, picked with ``tool_call_ids``:

``openai``
    OpenAI, and Azure OpenAI in front of it (their fakes' default). Schema first: an id in
    ``messages[].tool_calls[].id`` or ``messages[].tool_call_id`` longer than 40 characters is
    ``string_above_max_length``. Then the conversation, message by message: the ``tool`` messages right
    after an assistant message with ``tool_calls`` must answer each of its calls, and a ``tool`` message
    must answer a call of the assistant message before its run.
``alnum9``
    Mistral, whose validator (mistral-common) checks the conversation's structure first (as many ``tool``
    messages after an assistant message as it made calls), then every id: exactly 9 of ``[a-zA-Z0-9]``.
    A vLLM serving a Mistral model with ``--tokenizer-mode mistral`` runs the same validator, but only
    after cutting every longer id down to its last 9 characters (vLLM's ``truncate_tool_call_ids``), so
    ``call_`` + 24 alphanumerics passes there: this rule is Mistral's own API, or a server without that
    truncation.
``none``
    No rule: vLLM with most models, and OpenRouter, whose limits are those of whichever provider
    serves the model (their fakes' default).

Pure functions over the parsed request body, as in :mod:`.wire`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Literal

import orjson

from .wire import Flavor, bad_request, vllm_error

ToolCallIdRule = Literal["openai", "alnum9", "none"]
TOOL_CALL_ID_RULES: tuple[ToolCallIdRule, ...] = ("openai", "alnum9", "none")
#: The rule each flavour's fake applies unless told otherwise.
DEFAULT_RULES: dict[Flavor, ToolCallIdRule] = {
    "openai": "openai",
    "azure_openai": "openai",
    "openrouter": "none",
    "remote": "none",
}

# OpenAI rejects longer ids in messages[].tool_calls[].id and messages[].tool_call_id.
MAX_TOOL_CALL_ID_LENGTH = 40
# OpenAI's wording, spelling ("preceeding") included, as its 400s carry it.
UNANSWERED_CALLS = (
    "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. "
    "The following tool_call_ids did not have response messages: "
)
ORPHAN_TOOL_MESSAGE = (
    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'."
)
MISSING_TOOL_CALL_ID = "Missing parameter 'tool_call_id': messages with role 'tool' must have a 'tool_call_id'."

_ALNUM9 = re.compile(r"[a-zA-Z0-9]{9}")
# mistral-common's messages (InvalidMessageStructureException, InvalidFunctionCallException,
# InvalidToolMessageException, InvalidRequestException).
MISTRAL_CALL_COUNT = "Not the same number of function calls and responses"
MISTRAL_ID_UNDEFINED = "Tool call id has to be defined."


def mistral_bad_id(call_id: object) -> str:
    return f"Tool call id was {call_id} but must be a-z, A-Z, 0-9, with a length of 9."


def check_tool_call_ids(flavor: Flavor, rule: ToolCallIdRule, messages: list[Any]) -> bytes | None:
    """The 400 body for a conversation ``rule`` refuses, in the flavour's error shape; None when it passes."""
    if rule == "openai":
        return _too_long(flavor, messages) or _unpaired(flavor, messages)
    if rule == "alnum9":
        return _mistral(flavor, messages)
    return None


# --------------------------------------------------------------------------- openai


def _too_long(flavor: Flavor, messages: list[Any]) -> bytes | None:
    for param, call_id in _ids_with_params(messages):
        if isinstance(call_id, str) and len(call_id) > MAX_TOOL_CALL_ID_LENGTH:
            return bad_request(
                flavor,
                f"Invalid '{param}': string too long. Expected a string with maximum length "
                f"{MAX_TOOL_CALL_ID_LENGTH}, but got a string with length {len(call_id)} instead.",
                param,
                "string_above_max_length",
            )
    return None


def _ids_with_params(messages: list[Any]) -> Iterator[tuple[str, Any]]:
    """Every tool-call id of the conversation with the ``param`` OpenAI names it by, in order."""
    for m_index, message in enumerate(messages):
        for c_index, call in enumerate(_calls(message)):
            yield f"messages[{m_index}].tool_calls[{c_index}].id", call.get("id")
        if _role(message) == "tool":
            yield f"messages[{m_index}].tool_call_id", message.get("tool_call_id")


def _unpaired(flavor: Flavor, messages: list[Any]) -> bytes | None:
    """OpenAI's pairing checks, in message order. The ``param`` of the unanswered-calls error names the
    first message after the tool messages (``messages`` when the conversation ends there), as observed in
    OpenAI's answers; that of the unknown-``tool_call_id`` error is inferred from its sibling errors [U]."""
    open_calls: list[str] | None = None  # the calls the current run of tool messages answers
    answered: set[str] = set()
    for index, message in enumerate(messages):
        if _role(message) == "tool":
            call_id = message.get("tool_call_id")
            if open_calls is None:
                return bad_request(flavor, ORPHAN_TOOL_MESSAGE, f"messages.[{index}].role")
            if not isinstance(call_id, str) or not call_id:
                return bad_request(flavor, MISSING_TOOL_CALL_ID, f"messages.[{index}].tool_call_id")
            if call_id not in open_calls:
                return bad_request(
                    flavor,
                    f"Invalid parameter: 'tool_call_id' of '{call_id}' not found in 'tool_calls' of previous message.",
                    f"messages.[{index}].tool_call_id",
                )
            answered.add(call_id)
            continue
        refusal = _unanswered(flavor, open_calls, answered, f"messages.[{index}].role")
        if refusal is not None:
            return refusal
        ids = [call.get("id") for call in _calls(message)] if _role(message) == "assistant" else []
        open_calls = [str(call_id) for call_id in ids] or None
        answered = set()
    return _unanswered(flavor, open_calls, answered, "messages")


def _unanswered(flavor: Flavor, open_calls: list[str] | None, answered: set[str], param: str) -> bytes | None:
    missing = [call_id for call_id in open_calls or () if call_id not in answered]
    return bad_request(flavor, UNANSWERED_CALLS + ", ".join(missing), param) if missing else None


# --------------------------------------------------------------------------- alnum9 (Mistral)


def _mistral(flavor: Flavor, messages: list[Any]) -> bytes | None:
    if not _counts_match(messages):
        # [U] type: only the message and the code (3230) were seen in Mistral's answers.
        return _mistral_error(flavor, MISTRAL_CALL_COUNT, "invalid_request_error", "3230")
    for message in messages:
        for call in _calls(message):
            if not _ALNUM9.fullmatch(str(call.get("id"))):
                return _mistral_error(flavor, mistral_bad_id(call.get("id")), "invalid_function_call", "3280")
        if _role(message) == "tool":
            call_id = message.get("tool_call_id")
            if call_id is None:
                return _mistral_error(flavor, MISTRAL_ID_UNDEFINED, "invalid_request_error", None)
            if not _ALNUM9.fullmatch(str(call_id)):
                # [U] type and code: Mistral's answers seen carry this message for the calls' ids.
                return _mistral_error(flavor, mistral_bad_id(call_id), "invalid_function_call", "3280")
    return None


def _counts_match(messages: list[Any]) -> bool:
    """Each run of ``tool`` messages is as long as the calls of the message before it (none: no run)."""
    expected = 0
    for message in messages:
        if _role(message) == "tool":
            expected -= 1
            continue
        if expected != 0:
            return False
        expected = len(_calls(message)) if _role(message) == "assistant" else 0
    return expected == 0


def _mistral_error(flavor: Flavor, message: str, type_: str, code: str | None) -> bytes:
    if flavor == "remote":
        # vLLM answers a request its tokenizer refuses with its own 400 body [U for this validator].
        return vllm_error(400, message)
    # Mistral's API: its own envelope, as its 400s show it.
    body = {"object": "error", "message": message, "type": type_, "param": None, "code": code, "raw_status_code": 400}
    return orjson.dumps(body)


# --------------------------------------------------------------------------- helpers


def _role(message: Any) -> Any:
    return message.get("role") if isinstance(message, dict) else None


def _calls(message: Any) -> list[dict[str, Any]]:
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    return [call for call in calls if isinstance(call, dict)] if isinstance(calls, list) else []
