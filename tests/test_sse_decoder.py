"""SSEDecoder: raw bytes in any chunking -> the data payload of each event, nothing else."""

from __future__ import annotations

import json

import pytest

from llm_service.core.llm.sse import MAX_EVENT_BYTES, SSEDecoder, SSEEventTooLarge

CHUNK_1 = (
    b'{"id":"chatcmpl-9a","object":"chat.completion.chunk","created":1733140800,'
    b'"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"role":"assistant","content":""},'
    b'"logprobs":null,"finish_reason":null}],"usage":null}'
)
CHUNK_2 = (
    b'{"id":"chatcmpl-9a","object":"chat.completion.chunk","created":1733140800,'
    b'"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"content":"Hi"},'
    b'"logprobs":null,"finish_reason":null}],"usage":null}'
)
CHUNK_3 = (
    b'{"id":"chatcmpl-9a","object":"chat.completion.chunk","created":1733140800,'
    b'"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{},"logprobs":null,'
    b'"finish_reason":"stop"}],"usage":null}'
)
USAGE_CHUNK = (
    b'{"id":"chatcmpl-9a","object":"chat.completion.chunk","created":1733140800,'
    b'"model":"gpt-4o-2024-08-06","choices":[],'
    b'"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}'
)
DONE = b"[DONE]"

# An OpenAI stream as it arrives on the wire, with LF line endings.
OPENAI_STREAM = b"".join(b"data: " + payload + b"\n\n" for payload in (CHUNK_1, CHUNK_2, CHUNK_3, DONE))
OPENAI_EVENTS = [CHUNK_1, CHUNK_2, CHUNK_3, DONE]

# OpenRouter interleaves keep-alive comments (each followed by a blank line).
OPENROUTER_STREAM = (
    b": OPENROUTER PROCESSING\n\n"
    b": OPENROUTER PROCESSING\n\n"
    b"data: " + CHUNK_1 + b"\n\n"
    b": OPENROUTER PROCESSING\n\n"
    b"data: " + USAGE_CHUNK + b"\n\n"
    b"data: [DONE]\n\n"
)
OPENROUTER_EVENTS = [CHUNK_1, USAGE_CHUNK, DONE]

# Exercises comments, multi-line data, ignored fields and an empty data payload in one stream.
RICH_STREAM = b": comment\nevent: message\nid: 7\nretry: 100\ndata: first\ndata:second\n\ndata: [DONE]\n\n"
RICH_EVENTS = [b"first\nsecond", DONE]

LINE_ENDINGS = [
    pytest.param(b"\n", id="LF"),
    pytest.param(b"\r\n", id="CRLF"),
    pytest.param(b"\r", id="CR"),
]
STREAMS = [
    pytest.param(OPENAI_STREAM, OPENAI_EVENTS, id="openai"),
    pytest.param(OPENROUTER_STREAM, OPENROUTER_EVENTS, id="openrouter"),
    pytest.param(RICH_STREAM, RICH_EVENTS, id="rich"),
]


def with_endings(stream: bytes, ending: bytes) -> bytes:
    """The LF-terminated `stream` with every line ending replaced by `ending`."""
    return stream.replace(b"\n", ending)


def decode(chunks: list[bytes]) -> list[bytes]:
    decoder = SSEDecoder()
    events: list[bytes] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.flush())
    return events


@pytest.mark.parametrize(("stream", "expected"), STREAMS)
@pytest.mark.parametrize("ending", LINE_ENDINGS)
def test_whole_stream_in_one_chunk_yields_every_data_payload(stream, expected, ending):
    assert decode([with_endings(stream, ending)]) == expected


@pytest.mark.parametrize(("stream", "expected"), STREAMS)
@pytest.mark.parametrize("ending", [pytest.param(b"\n", id="LF"), pytest.param(b"\r\n", id="CRLF")])
def test_events_ending_in_lf_are_delivered_by_feed_without_waiting_for_flush(stream, expected, ending):
    decoder = SSEDecoder()

    assert decoder.feed(with_endings(stream, ending)) == expected
    assert decoder.flush() == []


def test_event_ending_in_lone_cr_at_end_of_input_is_delivered_by_flush():
    decoder = SSEDecoder()

    # The final CR could still be the first half of a CRLF: the decoder must wait.
    assert decoder.feed(b"data: a\r\rdata: b\r\r") == [b"a"]
    assert decoder.flush() == [b"b"]


@pytest.mark.parametrize(("stream", "expected"), STREAMS)
@pytest.mark.parametrize("ending", LINE_ENDINGS)
def test_every_split_into_two_chunks_yields_the_same_events(stream, expected, ending):
    raw = with_endings(stream, ending)
    for cut in range(len(raw) + 1):
        assert decode([raw[:cut], raw[cut:]]) == expected, f"split at byte {cut}"


@pytest.mark.parametrize(("stream", "expected"), STREAMS)
@pytest.mark.parametrize("ending", LINE_ENDINGS)
def test_one_byte_at_a_time_yields_the_same_events(stream, expected, ending):
    raw = with_endings(stream, ending)
    assert decode([raw[i : i + 1] for i in range(len(raw))]) == expected


def test_cr_ending_one_chunk_and_lf_starting_the_next_are_one_line_ending():
    decoder = SSEDecoder()

    assert decoder.feed(b"data: a\r") == []
    # Were CR and LF counted as two endings, the blank line between them would dispatch "a" alone.
    assert decoder.feed(b"\ndata: b\r\n\r\n") == [b"a\nb"]
    assert decoder.flush() == []


def test_blank_line_split_as_cr_then_lf_dispatches_exactly_once():
    decoder = SSEDecoder()

    assert decoder.feed(b"data: a\r\n\r") == []
    assert decoder.feed(b"\ndata: b\r\n\r\n") == [b"a", b"b"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(b"data: x\n\n", [b"x"], id="space-after-colon-stripped"),
        pytest.param(b"data:x\n\n", [b"x"], id="no-space-after-colon"),
        pytest.param(b"data:  x\n\n", [b" x"], id="only-one-space-stripped"),
        pytest.param(b"data: x \n\n", [b"x "], id="trailing-space-kept"),
        pytest.param(b"data: a\ndata: b\ndata: c\n\n", [b"a\nb\nc"], id="multi-line-joined-with-lf"),
        pytest.param(b"data: a\n: keep-alive\ndata: b\n\n", [b"a\nb"], id="comment-inside-event"),
        pytest.param(b"data:\n\n", [b""], id="empty-data"),
        pytest.param(b"data: a:b: c\n\n", [b"a:b: c"], id="colons-in-value-kept"),
        pytest.param(b"event: ping\nid: 1\nretry: 5\n\n", [], id="event-without-data-not-dispatched"),
        pytest.param(b"event: update\ndata: x\nid: 9\n\n", [b"x"], id="event-and-id-fields-ignored"),
        pytest.param(b"Data: x\n\ndata : y\n\n", [], id="field-name-is-exact"),
        pytest.param(b": only a comment\n\n\n\n", [], id="comments-and-blank-lines-only"),
        pytest.param(b"data: a\n\ndata: b\n\n", [b"a", b"b"], id="two-events-in-one-chunk"),
    ],
)
def test_field_parsing(raw, expected):
    decoder = SSEDecoder()

    assert decoder.feed(raw) == expected
    assert decoder.flush() == []


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(b"data: last", id="no-line-ending"),
        pytest.param(b"data: last\n", id="lf-without-blank-line"),
        pytest.param(b"data: last\r\n", id="crlf-without-blank-line"),
        pytest.param(b"data: last\r", id="lone-cr"),
    ],
)
def test_flush_dispatches_a_final_event_without_trailing_blank_line(tail):
    decoder = SSEDecoder()

    assert decoder.feed(b"data: first\n\n" + tail) == [b"first"]
    assert decoder.flush() == [b"last"]


def test_flush_resets_the_decoder_for_reuse():
    decoder = SSEDecoder()
    decoder.feed(b"data: partial")

    assert decoder.flush() == [b"partial"]
    assert decoder.flush() == []
    assert decoder.feed(b"data: next\n\n") == [b"next"]


def test_flush_of_an_empty_decoder_yields_nothing():
    assert SSEDecoder().flush() == []


def test_utf8_character_split_across_chunks_keeps_payload_bytes_intact():
    payload = json.dumps({"content": "héllo 😀 日本語"}, ensure_ascii=False).encode()
    raw = b"data: " + payload + b"\n\n"
    start = raw.index("😀".encode())
    for cut in range(start + 1, start + 4):  # inside the 4-byte emoji
        events = decode([raw[:cut], raw[cut:]])

        assert events == [payload], f"split at byte {cut}"
        assert json.loads(events[0].decode())["content"] == "héllo 😀 日本語"


def test_raw_json_lines_mid_stream_come_out_joined_at_the_end() -> None:
    """Vertex reports a mid-stream failure as bare JSON lines, not as a data event."""
    wire = b'data: {"a":1}\n\n{\n  "error": {\n    "code": 500,\n    "message": "Internal error"\n  }\n}\n'
    decoder = SSEDecoder()
    events = decoder.feed(wire[:20]) + decoder.feed(wire[20:])
    assert events == [b'{"a":1}']
    (stray,) = decoder.flush()
    assert json.loads(stray) == {"error": {"code": 500, "message": "Internal error"}}


def test_stray_text_is_bounded() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"{" + b"x" * 1000 + b"\n" * 2)
    for _ in range(200):
        decoder.feed(b"  " + b"y" * 1000 + b"\n")
    (stray,) = decoder.flush()
    assert len(stray) <= 64 * 1024 + 100


@pytest.mark.parametrize("ending", LINE_ENDINGS)
def test_a_long_event_in_many_pieces_comes_out_whole(ending) -> None:
    # 2 MB of data in 4 KB pieces (an image in base64, a large tool call): one event, byte for byte,
    # whatever the line ending (a CR at the end of one piece, its LF at the start of the next).
    payload = b'{"content":"' + bytes(range(65, 91)) * 80_000 + b'"}'
    raw = with_endings(b"data: " + payload + b"\n\ndata: [DONE]\n\n", ending)
    pieces = [raw[i : i + 4096] for i in range(0, len(raw), 4096)]

    assert decode(pieces) == [payload, DONE]
    assert decode([raw[:-1], raw[-1:]]) == [payload, DONE]


def feed_until_refused(decoder: SSEDecoder, piece: bytes, most: int) -> int:
    """Bytes fed before `decoder` refused `piece` (at most `most` pieces; -1: never refused)."""
    fed = 0
    for _ in range(most):
        try:
            decoder.feed(piece)
        except SSEEventTooLarge:
            return fed
        fed += len(piece)
    return -1


def test_a_line_that_never_ends_is_refused_as_it_goes_past_the_event_limit() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: ")
    piece = b"x" * (1024 * 1024)
    fed = feed_until_refused(decoder, piece, MAX_EVENT_BYTES // len(piece) + 4)
    assert MAX_EVENT_BYTES - 2 * len(piece) <= fed <= MAX_EVENT_BYTES


def test_data_lines_that_never_end_their_event_are_refused_past_the_event_limit() -> None:
    line = b"data: " + b"y" * (1024 * 1024) + b"\n"
    fed = feed_until_refused(SSEDecoder(), line, MAX_EVENT_BYTES // len(line) + 4)
    assert MAX_EVENT_BYTES - 2 * len(line) <= fed <= MAX_EVENT_BYTES


def test_a_whole_event_in_one_piece_is_refused_past_the_event_limit() -> None:
    with pytest.raises(SSEEventTooLarge):
        SSEDecoder().feed(b"data: " + b"z" * (MAX_EVENT_BYTES + 1) + b"\n\n")


def test_a_long_line_ended_by_a_cr_at_the_end_of_a_piece_ends_there() -> None:
    # The CR ends the line whatever comes next: the next piece starts a line of its own (two data lines
    # of one event, which the blank line then ends).
    big = b"x" * 70_000
    assert decode([b"data: " + big + b"\r", b"data: y", b"\r\r"]) == [big + b"\ny"]
    decoder = SSEDecoder()
    decoder.feed(b"data: " + big + b"\r")
    decoder.feed(b"data: y")
    assert decoder.flush() == [big + b"\ny"]  # at EOF: two data lines of one event, as in one piece
    assert decode([b"data: " + big + b"\rdata: y"]) == [big + b"\ny"]


@pytest.mark.parametrize("size", [MAX_EVENT_BYTES, MAX_EVENT_BYTES + 1])
def test_the_event_limit_is_the_same_however_the_event_arrives(size) -> None:
    payload = b"p" * size
    raw = b"data: " + payload + b"\n\n"
    ways = {
        "whole": [raw],
        "halves": [raw[: len(raw) // 2], raw[len(raw) // 2 :]],
        "pieces": [raw[i : i + 1024 * 1024] for i in range(0, len(raw), 1024 * 1024)],
    }
    for name, pieces in ways.items():
        if size <= MAX_EVENT_BYTES:
            assert decode(pieces) == [payload], name
        else:
            with pytest.raises(SSEEventTooLarge):
                decode(pieces)


@pytest.mark.parametrize(
    "burst",
    [
        pytest.param(b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n', id="three-events"),
        pytest.param(b'data: {"t":"data: x"}\n\ndata: \n\n', id="payload-saying-data-and-an-empty-one"),
        pytest.param(b"data: A\n\n\ndata: B\n\n", id="a-stray-blank-line"),
        pytest.param(b"data: A\ndata: B\n\ndata: C\n\n", id="a-two-line-event"),
        pytest.param(b"data: A\n\n: comment\n\ndata: B\n\n", id="a-comment-between"),
        pytest.param(b"data: A\n\nevent: x\ndata: B\n\n", id="another-field"),
        pytest.param(b"data: A\n\ndata:B\n\n", id="no-space-after-the-colon"),
        pytest.param(b"data: A\n\ndata: B\n", id="the-last-event-unfinished"),
    ],
)
def test_a_burst_of_events_in_one_read_decodes_as_line_by_line(burst: bytes) -> None:
    byte_by_byte = decode([burst[i : i + 1] for i in range(len(burst))])
    assert decode([burst]) == byte_by_byte
    decoder = SSEDecoder()
    assert decoder.feed(b"data: 0\n\n") == [b"0"]  # after an event taken whole, the burst still decodes alike
    assert [*decoder.feed(burst), *decoder.flush()] == byte_by_byte


def test_whole_one_line_events_in_one_read_are_not_read_line_by_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """The usual stream arriving faster than it is read: its events are cut out at once (a read of one
    event, or of many, never goes through the line reader)."""

    def line_by_line(*_: object) -> None:
        raise AssertionError("read line by line")

    monkeypatch.setattr(SSEDecoder, "_line", line_by_line)
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"a":1}\n\n') == [b'{"a":1}']
    assert decoder.feed(b'data: {"b":2}\n\ndata: {"c":3}\n\ndata: [DONE]\n\n') == [b'{"b":2}', b'{"c":3}', b"[DONE]"]
