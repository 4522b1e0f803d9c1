"""Tool-call IDs: one format from every provider, and the provider's own ID never lost.

Every tool call a provider answers with gets the ID the client sees from `normalize_tool_call_id()`:
`call_` + 24 base62 characters (OpenAI's look, 29 characters), a hash of the provider and the
provider's own ID, so one original always gives one normalised ID. A call without an ID (Gemini before
3-class models) is named by its position (response id, candidate, index), which is the same in a plain
and a streamed answer.

`issue_tool_call_id()` does that and remembers, in the `ToolCallStore` under the normalised ID, what
must go back with the call on the next turn: the provider, its original ID, Gemini's
`thoughtSignature`. The client never carries any of it.

On the way out, `outbound_tool_call_id()` gives each ID of a conversation what the target provider
needs: its own original ID for a call it issued; otherwise the normalised ID, or, for a provider with
stricter rules (`alnum9`: Mistral's exactly 9 alphanumerics), a 9-character hash of it. The same
mapping is applied to an assistant message's calls and to the `tool` messages answering them, so each
call and its result stay paired, on whichever provider the conversation continues.
"""

from __future__ import annotations

import dataclasses
import hashlib
import string
from collections.abc import Callable

from llm_service.core.config.constants import ProviderID, ToolCallIdFormat
from llm_service.core.llm.models import LLMRequest, Message, Role
from llm_service.core.llm.tool_call_store import ProviderCallData

_BASE62 = string.digits + string.ascii_letters
Remember = Callable[[str, ProviderCallData], None]
Lookup = Callable[[str], ProviderCallData | None]


def _base62(text: str, length: int) -> str:
    number = int.from_bytes(hashlib.sha256(text.encode()).digest(), "big")
    chars = []
    for _ in range(length):
        number, rest = divmod(number, 62)
        chars.append(_BASE62[rest])
    return "".join(chars)


def normalize_tool_call_id(raw_id: str | None, provider: ProviderID, *, position: str = "") -> tuple[str, str | None]:
    """(normalised ID, original ID or None). Without an original, `position` names the call."""
    original = raw_id or None
    basis = f"{provider.value}:id:{original}" if original else f"{provider.value}:at:{position}"
    return "call_" + _base62(basis, 24), original


def issue_tool_call_id(
    raw_id: str | None,
    provider: ProviderID,
    remember: Remember | None,
    *,
    position: str = "",
    thought_signature: str | None = None,
    always: bool = False,
) -> tuple[str, str | None]:
    """`normalize_tool_call_id()`, remembering what must go back with the call (when there is any, or
    `always`: that the call is this provider's own is worth knowing too)."""
    normalized, original = normalize_tool_call_id(raw_id, provider, position=position)
    if remember is not None and (original or thought_signature or always):
        remember(
            normalized, ProviderCallData(provider=provider, provider_id=original, thought_signature=thought_signature)
        )
    return normalized, original


def alnum9(call_id: str) -> str:
    """A deterministic 9-character alphanumeric stand-in for `call_id`."""
    return _base62(f"alnum9:{call_id}", 9)


def outbound_tool_call_id(call_id: str, provider: ProviderID, lookup: Lookup, id_format: ToolCallIdFormat) -> str:
    """The ID to send `provider` for the call the client names `call_id`."""
    known = lookup(call_id)
    if known is not None and known.provider is provider and known.provider_id:
        return known.provider_id
    return alnum9(call_id) if id_format == "alnum9" else call_id


def tool_call_ids(request: LLMRequest) -> list[str]:
    """Ids of every assistant tool call in the conversation, to fetch their ProviderCallData first."""
    return [call.id for m in request.messages if m.role is Role.ASSISTANT for call in m.tool_calls]


def with_outbound_ids(request: LLMRequest, translate: Callable[[str], str]) -> LLMRequest:
    """`request` with every tool-call ID of its conversation translated (itself when it has none)."""
    for m in request.messages:  # a loop, not any() over a generator: a call less per message
        if m.tool_calls or m.tool_call_id:
            break
    else:
        return request
    messages = [_translated(m, translate) for m in request.messages]
    return dataclasses.replace(request, messages=messages)


def _translated(message: Message, translate: Callable[[str], str]) -> Message:
    if not (message.tool_calls or message.tool_call_id):
        return message
    return dataclasses.replace(
        message,
        tool_calls=[dataclasses.replace(c, id=translate(c.id)) for c in message.tool_calls],
        tool_call_id=translate(message.tool_call_id) if message.tool_call_id else message.tool_call_id,
    )
