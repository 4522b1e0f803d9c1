"""A stream's text chunks read from the bytes they share (`text_chunks.py`) are read exactly as the whole
decoder reads them: the same chunk, the same wire form, or not read at all (then the whole decoder reads
them, or refuses them, as before). Over OpenAI's recorded stream and over generated events one change
away from a text chunk."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import OpenAISettings
from llm_service.core.llm.base import StreamState
from llm_service.core.llm.credentials import APIKeyCredentialProvider
from llm_service.core.llm.models import LLMChunk, LLMRequest, Message, Role
from llm_service.core.llm.openai_client import OpenAIClient
from llm_service.core.llm.openai_format import decode_chat_chunk
from llm_service.core.llm.text_chunks import TextChunkTemplate
from llm_service.fakes.wire import parse_sse, strip_usage

PROVIDER = ProviderID.OPENAI
FIXTURES = Path(__file__).parent / "fixtures"


def whole(include_usage: bool) -> Callable[[bytes], LLMChunk]:
    """The whole decoder, as the OpenAI-compatible client runs it."""
    return lambda event: decode_chat_chunk(
        orjson.loads(event), PROVIDER, None, event=event, include_usage=include_usage
    )


def template_of(event: bytes, include_usage: bool) -> TextChunkTemplate | None:
    decode = whole(include_usage)
    return TextChunkTemplate.of(decode(event), event, decode)


def recorded(include_usage: bool, *, obfuscated: bool = False) -> list[bytes]:
    """OpenAI's recorded text stream; `obfuscated`: each chunk ending with an `obfuscation` string of its own
    length, as OpenAI sends them unless the client turns it off."""
    events = parse_sse((FIXTURES / "openai" / "chat_text.sse").read_bytes())
    kept = events if include_usage else strip_usage(events)
    data = [e.data for e in kept if e.data is not None and not e.is_done]
    if obfuscated:
        data = [orjson.dumps({**orjson.loads(d), "obfuscation": "x\\y"[: i % 5] + "Qz"}) for i, d in enumerate(data)]
    return data


STREAMS = [
    pytest.param(True, False, id="usage asked"),
    pytest.param(False, False, id="usage not asked"),
    pytest.param(True, True, id="usage asked, obfuscated"),
    pytest.param(False, True, id="usage not asked, obfuscated"),
]


@pytest.mark.parametrize(("include_usage", "obfuscated"), STREAMS)
def test_openais_text_chunks_are_read_from_the_template_of_the_first_as_the_decoder_reads_them(
    include_usage: bool, obfuscated: bool
) -> None:
    events = recorded(include_usage, obfuscated=obfuscated)
    texts = [e for e in events if b'"delta":{"content"' in e]
    template = template_of(texts[0], include_usage)
    assert template is not None

    for event in events:
        read = template.read(event)
        if event in texts:
            assert read is not None, event  # every text chunk of the stream is read the short way
        if read is not None:
            expected = whole(include_usage)(event)
            assert read == expected and read.wire == expected.wire


@pytest.mark.parametrize(
    "delta",
    [
        {"role": "tool", "content": "hi"},
        {"content": "hi", "refusal": "no"},
        {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]},
        {"content": "hi", "reasoning": "because"},
    ],
    ids=["another role", "refusal", "tool call", "an unknown field"],
)
def test_no_template_is_made_from_a_chunk_that_says_more_than_text(delta: dict[str, Any]) -> None:
    chunk = {**_CHUNK, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]}
    assert template_of(orjson.dumps(chunk), include_usage=True) is None


def test_no_template_is_made_from_a_chunk_the_client_does_not_get_as_it_came() -> None:
    spaced = orjson.dumps(_CHUNK, option=orjson.OPT_INDENT_2)  # not one line: re-encoded for the client
    assert template_of(spaced, include_usage=True) is None
    usage_twice = orjson.dumps({**_CHUNK, "x": {"usage": None}})
    assert template_of(usage_twice, include_usage=False) is None


_CHUNK: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1750000000,
    "model": "gpt-4o-mini-2024-07-18",
    "service_tier": "default",
    "system_fingerprint": "fp_1",
    "choices": [{"index": 0, "delta": {"content": "The capital"}, "logprobs": None, "finish_reason": None}],
    "usage": None,
}

texts = st.text(max_size=20) | st.sampled_from(['"', "\\", '\\"', "\u2603", "\n", '"},"x":"', "\x00"])
odd: st.SearchStrategy[Any] = (
    st.none() | st.booleans() | st.integers(-2, 2) | st.text(max_size=5) | st.just([]) | st.just({})
)
# One change to the template's chunk: (where, key, value); None as the value under "drop" takes the key out.
changes = (
    st.tuples(st.just("top"), st.sampled_from([*_CHUNK, "obfuscation", "error"]), odd)
    | st.tuples(st.just("choice"), st.sampled_from(["index", "logprobs", "finish_reason", "x"]), odd | st.just("stop"))
    | st.tuples(st.just("delta"), st.sampled_from(["role", "refusal", "tool_calls", "x"]), odd)
    | st.tuples(st.just("drop"), st.sampled_from([*_CHUNK, "delta", "index", "content"]), st.none())
    | st.tuples(st.just("choices"), st.sampled_from(["none", "two"]), st.none())
)


def _changed(chunk: dict[str, Any], change: tuple[str, str, Any]) -> dict[str, Any]:
    """`chunk` with `change` made, where the places it names still are (an earlier change may have taken
    them away)."""
    where, key, value = change
    choices = chunk.get("choices")
    choice: dict[str, Any] = (
        choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    )
    delta: dict[str, Any] = choice["delta"] if isinstance(choice.get("delta"), dict) else {}
    if where == "choices":
        chunk["choices"] = [] if key == "none" or not choice else [choice, {**choice, "index": 1}]
    elif where == "drop":
        for place in (chunk, choice, delta):
            place.pop(key, None)
    else:
        {"top": chunk, "choice": choice, "delta": delta}[where][key] = value
    return chunk


@settings(max_examples=300, deadline=None)
@given(
    texts,
    st.lists(changes, max_size=2),
    st.booleans(),
    st.sampled_from([b"", b"x", b'"', b"\\", b"\xff", b"\x01"]),
    st.none() | texts,
)
def test_an_event_is_read_from_the_template_exactly_as_the_decoder_reads_it_or_not_at_all(
    text: str, made: list[tuple[str, str, Any]], include_usage: bool, garbage: bytes, padding: str | None
) -> None:
    base = _CHUNK if padding is None else {**_CHUNK, "obfuscation": "abc"}  # OpenAI's last field
    template = template_of(orjson.dumps(base), include_usage)
    assert template is not None
    chunk = orjson.loads(orjson.dumps(base))
    chunk["choices"][0]["delta"]["content"] = text
    if padding is not None:
        chunk["obfuscation"] = padding
    for change in made:
        chunk = _changed(chunk, change)
    event = orjson.dumps(chunk)
    if garbage and b'"content":"' in event:  # bytes no JSON writer would put in a text
        at = event.index(b'"content":"') + len(b'"content":"')
        event = event[:at] + garbage + event[at:]

    read = template.read(event)

    try:
        expected: LLMChunk | None = whole(include_usage)(event)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        expected = None  # malformed: the client refuses it, so the template must not read it
    if read is not None:
        assert expected is not None
        assert read == expected and read.wire == expected.wire
    elif not made and not garbage:
        pytest.fail(f"a text chunk of the template was not read by it: {event!r}")


@pytest.mark.parametrize(("include_usage", "obfuscated"), STREAMS)
def test_the_openai_client_reads_a_streams_text_chunks_by_its_template(include_usage: bool, obfuscated: bool) -> None:
    """The client's stream decoding (`_decode_stream_event`), over OpenAI's recorded stream: the same chunks
    as the whole decoder's, and after the first text chunk every text chunk read by the template."""
    events = recorded(include_usage, obfuscated=obfuscated)
    chunks, read_by_template = client_decodes(events, include_usage)

    expected = [whole(include_usage)(event) for event in events]
    assert chunks == expected and [c.wire for c in chunks if c] == [c.wire for c in expected]
    texts = [e for e in events if b'"delta":{"content"' in e]
    assert read_by_template == texts[1:]  # the first made the template


def client_decodes(events: list[bytes], include_usage: bool) -> tuple[list[LLMChunk | None], list[bytes]]:
    """The OpenAI client's stream decoding of `events` (`_decode_stream_event`, one stream): its chunks, and
    the events a template read."""
    client = OpenAIClient(
        settings=OpenAISettings(api_key=SecretStr("k")),
        credentials=APIKeyCredentialProvider(SecretStr("k"), env_var="OPENAI_API_KEY"),
        session=None,  # type: ignore[arg-type]  # decoding does not touch the session
    )
    request = LLMRequest(model="gpt-4o-mini", messages=[Message(role=Role.USER, content="hi")], stream=True)
    request.include_usage = include_usage
    state = StreamState(request)
    read_by_template = []
    real_read = TextChunkTemplate.read

    def spied(template: TextChunkTemplate, event: bytes) -> LLMChunk | None:
        chunk = real_read(template, event)
        if chunk is not None and event in events:  # not the probe the template is checked with
            read_by_template.append(event)
        return chunk

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TextChunkTemplate, "read", spied)
        chunks = [client._decode_stream_event(event, state) for event in events]
    return chunks, read_by_template


def text_event(text: str, **top: Any) -> bytes:
    """A text chunk of `_CHUNK`'s stream with `text`, and top-level fields `top` (changed or added)."""
    choice = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
    return orjson.dumps({**_CHUNK, **top, "choices": [choice]})


def test_a_template_its_text_chunks_do_not_match_is_made_again_from_one_that_does_not() -> None:
    """An upstream whose first text chunk says something the later ones do not (here a field of its own):
    the template of the first reads none of the others, so the next one makes the stream's template, which
    reads the rest."""
    rest = [text_event(f" word {i}") for i in range(5)]
    events = [text_event("The", x_first="yes"), *rest]

    chunks, read_by_template = client_decodes(events, include_usage=True)

    assert chunks == [whole(True)(event) for event in events]
    assert read_by_template == rest[1:]


def test_a_template_that_reads_is_kept_when_a_chunk_unlike_the_others_comes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Text chunks that differ now and then (a field that changes on two of them) are decoded the whole way,
    and the template that read the others goes on reading them: it is not replaced by one made from them."""
    made = []
    real_of = TextChunkTemplate.of.__func__  # type: ignore[attr-defined]

    def counted(cls: type[TextChunkTemplate], *args: Any) -> TextChunkTemplate | None:
        made.append(args[1])
        return real_of(cls, *args)

    monkeypatch.setattr(TextChunkTemplate, "of", classmethod(counted))
    plain = [text_event(f" word {i}") for i in range(12)]
    events = [*plain[:2], text_event(" odd", service_tier="x"), text_event(" odder", service_tier="y"), *plain[2:]]

    chunks, read_by_template = client_decodes(events, include_usage=True)

    assert chunks == [whole(True)(event) for event in events]
    assert read_by_template == plain[1:]
    assert made == [plain[0]]


def test_a_trailing_field_cut_off_at_its_opening_quote_is_not_read() -> None:
    """The middle part's last quote must not double as the one that closes the event: that event is not JSON."""
    template = template_of(orjson.dumps({**_CHUNK, "obfuscation": "abc"}), include_usage=True)
    assert template is not None
    cut = orjson.dumps({**_CHUNK, "obfuscation": "abc"}).replace(b'"obfuscation":"abc"}', b'"obfuscation":"}')

    assert template.read(cut) is None
    with pytest.raises(orjson.JSONDecodeError):
        whole(True)(cut)


def test_no_template_is_made_where_a_duplicate_key_hides_what_the_decoder_reads() -> None:
    """orjson keeps the last of two equal keys: a delta with a second `content` (written so that it does not
    look like the first) decodes to that one, whatever the first says. Were both the text of a probe, that
    probe would pass; the other probe does not."""
    first_probe = '\u2603 probe \\ "'  # text_chunks._PROBES[0][0]
    probe = orjson.dumps(first_probe)
    delta = b'"delta":{"content":' + probe + b',"content" :' + probe + b"}"
    event = orjson.dumps(_CHUNK).replace(b'"delta":{"content":"The capital"}', delta)
    assert whole(True)(event).choices[0].content == first_probe

    assert template_of(event, include_usage=True) is None


def test_no_template_is_made_from_a_chunk_with_a_field_its_chunks_would_share_and_could_change() -> None:
    event = orjson.dumps({**_CHUNK, "x_groq": {"id": "q"}})
    assert template_of(event, include_usage=True) is None


@pytest.mark.parametrize("include_usage", [True, False], ids=["usage asked", "usage not asked"])
def test_openrouters_text_chunks_with_their_role_and_own_choice_fields_are_read_from_the_template(
    include_usage: bool,
) -> None:
    """OpenRouter writes `"role":"assistant"` in every delta and a `native_finish_reason` in every choice: its
    text chunks take a template too, and read as the whole decoder reads them (recorded stream). A client
    that asked for usage gets the `"usage":null` OpenRouter leaves out, as OpenAI writes it."""
    events = [
        e.data
        for e in parse_sse((FIXTURES / "openrouter" / "chat_text.sse").read_bytes())
        if e.data is not None and not e.is_done
    ]
    decode = whole(include_usage)
    texts = [e for e in events if (c := decode(e)).choices and c.choices[0].content and c.usage is None]
    texts = [e for e in texts if decode(e).choices[0].finish_reason is None]
    assert len(texts) > 2 and all(b'"role":"assistant"' in e and b'"native_finish_reason":null' in e for e in texts)
    template = template_of(texts[0], include_usage)
    assert template is not None

    for event in events:
        read = template.read(event)
        if event in texts:
            assert read is not None, event
        if read is not None:
            expected = decode(event)
            assert read == expected and read.wire == expected.wire
            assert read.wire == (event[:-1] + b',"usage":null}' if include_usage else event)
