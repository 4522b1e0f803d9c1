"""Tool-call IDs: one normalised format from every provider, deterministic, the original kept; and each
ID sent back in the form the target provider needs, calls and their results still paired."""

from __future__ import annotations

import re

import pytest

from llm_service.core.config.constants import ProviderID
from llm_service.core.llm.models import LLMRequest, Message, Role, ToolCall
from llm_service.core.llm.tool_call_store import ProviderCallData, ToolCallStore
from llm_service.core.llm.tool_ids import (
    alnum9,
    issue_tool_call_id,
    normalize_tool_call_id,
    outbound_tool_call_id,
    with_outbound_ids,
)

OPENAI, VERTEX, OPENROUTER, REMOTE = ProviderID.OPENAI, ProviderID.VERTEX_AI, ProviderID.OPENROUTER, ProviderID.REMOTE
NORMALISED = re.compile(r"^call_[0-9A-Za-z]{24}$")

#: IDs as providers issue them (reference section 7).
ORIGINALS = [
    (OPENAI, "call_Q8ZkP1xV3mT6nB0rL2sW9yHc"),
    (ProviderID.AZURE_OPENAI, "call_d4Hn7RtY2uKb9LmX5pQw3EzA"),
    (OPENROUTER, "toolu_01A09q90qw90lq917835lq9"),
    (REMOTE, "chatcmpl-tool-9f8e7d6c5b4a4f3e8d2c1b0a9f8e7d6c"),
    (REMOTE, "Ab3De6Gh9"),
    (VERTEX, "fc-9"),
    (OPENAI, "fc_68a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6071829"),  # Responses API: over 40 chars
]


@pytest.mark.parametrize(("provider", "raw"), ORIGINALS)
def test_every_original_id_becomes_one_openai_style_id_and_is_kept(provider: ProviderID, raw: str) -> None:
    normalised, original = normalize_tool_call_id(raw, provider)
    assert NORMALISED.match(normalised)
    assert len(normalised) == 29 <= 40  # OpenAI's limit on ids it receives
    assert original == raw
    assert normalize_tool_call_id(raw, provider) == (normalised, original)  # deterministic


def test_different_originals_and_the_same_original_from_different_providers_differ() -> None:
    ids = {normalize_tool_call_id(raw, provider)[0] for provider, raw in ORIGINALS}
    assert len(ids) == len(ORIGINALS)
    assert normalize_tool_call_id("call_1", OPENAI)[0] != normalize_tool_call_id("call_1", OPENROUTER)[0]


def test_a_call_without_an_id_is_named_by_its_position() -> None:
    first, original = normalize_tool_call_id(None, VERTEX, position="resp-1:0:0")
    assert original is None and NORMALISED.match(first)
    assert normalize_tool_call_id("", VERTEX, position="resp-1:0:0")[0] == first
    assert normalize_tool_call_id(None, VERTEX, position="resp-1:0:1")[0] != first


def test_issuing_remembers_the_provider_and_its_original_and_only_what_exists() -> None:
    store = ToolCallStore()
    with_id, _ = issue_tool_call_id("fc-9", VERTEX, store.put, thought_signature="U0lH")
    without, _ = issue_tool_call_id(None, VERTEX, store.put, position="r:0:0")
    signed_only, _ = issue_tool_call_id(None, VERTEX, store.put, position="r:0:1", thought_signature="c2ln")

    assert store.get(with_id) == ProviderCallData(provider_id="fc-9", thought_signature="U0lH", provider=VERTEX)
    assert store.get(without) is None  # nothing to send back
    assert store.get(signed_only) == ProviderCallData(thought_signature="c2ln", provider=VERTEX)


def test_alnum9_is_nine_letters_and_digits_and_deterministic() -> None:
    ids = {alnum9(normalize_tool_call_id(raw, p)[0]) for p, raw in ORIGINALS}
    assert len(ids) == len(ORIGINALS)
    assert all(re.fullmatch(r"[A-Za-z0-9]{9}", i) for i in ids)
    assert alnum9("call_x") == alnum9("call_x")


@pytest.fixture
def store() -> ToolCallStore:
    store = ToolCallStore()
    issue_tool_call_id("call_Q8ZkP1xV3mT6nB0rL2sW9yHc", OPENAI, store.put)
    return store


CLIENT_ID = normalize_tool_call_id("call_Q8ZkP1xV3mT6nB0rL2sW9yHc", OPENAI)[0]


@pytest.mark.parametrize(
    ("target", "id_format", "expected"),
    [
        (OPENAI, "any", "call_Q8ZkP1xV3mT6nB0rL2sW9yHc"),  # the issuer gets its own id back
        (OPENROUTER, "any", CLIENT_ID),  # another provider: the normalised id
        (REMOTE, "alnum9", alnum9(CLIENT_ID)),  # a stricter one: 9 alphanumerics
        (OPENAI, "alnum9", "call_Q8ZkP1xV3mT6nB0rL2sW9yHc"),  # its own id fits it by definition
    ],
)
def test_an_id_goes_out_as_the_target_needs(store: ToolCallStore, target, id_format, expected) -> None:
    assert outbound_tool_call_id(CLIENT_ID, target, store.get, id_format) == expected


def test_an_unknown_id_goes_out_as_the_client_sent_it_or_as_alnum9(store: ToolCallStore) -> None:
    assert outbound_tool_call_id("my-own-id", OPENAI, store.get, "any") == "my-own-id"
    assert outbound_tool_call_id("my-own-id", OPENAI, store.get, "alnum9") == alnum9("my-own-id")


def conversation(*call_ids: str) -> LLMRequest:
    calls = [ToolCall(id=i, name="get_weather", arguments="{}") for i in call_ids]
    results = [Message(role=Role.TOOL, content="4", tool_call_id=i) for i in call_ids]
    return LLMRequest(
        model="m",
        messages=[
            Message(role=Role.USER, content="Weather?"),
            Message(role=Role.ASSISTANT, tool_calls=calls),
            *results,
        ],
    )


def test_calls_and_their_results_are_translated_alike_and_stay_paired(store: ToolCallStore) -> None:
    other = normalize_tool_call_id(None, VERTEX, position="r:0:0")[0]
    request = conversation(CLIENT_ID, other)

    sent = with_outbound_ids(request, lambda i: outbound_tool_call_id(i, REMOTE, store.get, "alnum9"))

    call_ids = [c.id for c in sent.messages[1].tool_calls]
    assert call_ids == [alnum9(CLIENT_ID), alnum9(other)]
    assert [m.tool_call_id for m in sent.messages[2:]] == call_ids
    assert [c.id for c in request.messages[1].tool_calls] == [CLIENT_ID, other]  # the client's request untouched


def test_a_conversation_without_tool_calls_is_passed_as_it_is() -> None:
    request = LLMRequest(model="m", messages=[Message(role=Role.USER, content="Hi")])
    assert with_outbound_ids(request, lambda i: "x") is request
