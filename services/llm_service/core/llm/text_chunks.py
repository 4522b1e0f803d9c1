"""A stream's text chunks read without parsing each whole: the bytes they share around their text.

An OpenAI-compatible upstream writes every text chunk of a stream the same way but for the text: the same
`id`, `created`, `model`, fingerprint and field order, one choice whose delta is `{"content": "..."}`, and
most of a stream's chunks are such chunks. Once one has been decoded the whole way (`decode_chat_chunk`),
`TextChunkTemplate.of` keeps the bytes before its text and after it; a later event that starts and ends
with those bytes is that chunk with another text, and `read` makes its LLMChunk from the kept fields and
the text alone: one JSON string parsed instead of the event, and none of the decoder's look at every field
(the profile's largest item per chunk, with `orjson.loads` of the event).

It reads nothing the decoder would read otherwise: the template is made only from a chunk that will go to
the client as the upstream sent it (its `wire` form), it is checked once by decoding a probe event made
from it the whole way, and an event is taken only when the bytes between the two parts are one valid
JSON string (orjson decides: an unescaped quote or a control character sends the event the whole way,
where it is read, or refused, as before). Anything else, an event of another shape or an upstream that
changes its fields mid-stream, is decoded the whole way.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from llm_service.core.llm.models import ChunkChoice, LLMChunk

_CONTENT_KEY = b'"content":"'
#: A text that no escaping form of the upstream's writes as it stands, for the probe event.
_PROBE = '\u2603 probe \\ "'


class TextChunkTemplate:
    """The bytes around the text of one stream's text chunks, with the fields they all have."""

    __slots__ = (
        "_created", "_extra", "_fingerprint", "_id", "_index", "_model", "_prefix", "_provider", "_start", "_suffix",
        "_tail", "_wire",
    )  # fmt: skip

    def __init__(self, chunk: LLMChunk, prefix: bytes, suffix: bytes, wire: tuple[bytes, bytes] | None) -> None:
        self._prefix, self._suffix = prefix, suffix
        self._start, self._tail = len(prefix), len(suffix)
        self._index = chunk.choices[0].index
        self._id, self._created, self._model = chunk.id, chunk.created, chunk.model
        self._provider, self._fingerprint, self._extra = chunk.provider, chunk.system_fingerprint, chunk.extra
        #: The client's chunk around the text when it is not the event itself (`"usage":null` taken out).
        self._wire = wire

    @classmethod
    def of(cls, chunk: LLMChunk, event: bytes, decode: Callable[[bytes], LLMChunk]) -> TextChunkTemplate | None:
        """The template of `chunk`, decoded the whole way from `event`, when it is a text chunk that goes to
        the client as it came; `decode(event)` decodes another event the whole way (to check the template)."""
        if chunk.wire is None or chunk.usage is not None or len(chunk.choices) != 1:
            return None
        choice = chunk.choices[0]
        text = choice.content
        if (
            text is None
            or choice.role is not None
            or choice.refusal is not None
            or choice.tool_calls
            or choice.finish_reason is not None
            or choice.extra
            or choice.logprobs is not None
            or event.count(_CONTENT_KEY) != 1
        ):
            return None
        start = event.index(_CONTENT_KEY) + len(_CONTENT_KEY)
        end = _string_end(event, start)
        if end is None or orjson.loads(event[start - 1 : end + 1]) != text:
            return None
        prefix, suffix = event[:start], event[end:]
        wire: tuple[bytes, bytes] | None = None
        if chunk.wire != event:
            wire = _around(chunk.wire, prefix, event[start:end], suffix)
            if wire is None:
                return None
        template = cls(chunk, prefix, suffix, wire)
        # Checked once: a probe text put where this one was is read the whole way as the template reads it.
        probe = prefix + orjson.dumps(_PROBE)[1:-1] + suffix
        try:
            expected = decode(probe)
        except Exception:
            return None
        found = template.read(probe)
        if found is None or found != expected or found.wire != expected.wire:
            return None
        return template

    def read(self, event: bytes) -> LLMChunk | None:
        """The chunk `event` is, when it is a text chunk of this template; None when it is not."""
        # Once per chunk of most streams: written for few bytecodes (lengths kept, no tuple unpacking).
        if not event.startswith(self._prefix) or not event.endswith(self._suffix):
            return None
        start, end = self._start, len(event) - self._tail
        if end < start:
            return None  # the two parts overlap in it
        body = event[start:end]
        try:
            text = orjson.loads(b'"%b"' % body)  # one string (it begins with a quote), escapes, no control chars
        except orjson.JSONDecodeError:
            return None
        extra = self._extra
        chunk = LLMChunk(
            self._id,
            self._created,
            self._model,
            self._provider,
            [ChunkChoice(self._index, None, text, None, [], None, None, {})],
            None,
            self._fingerprint,
            dict(extra) if extra else {},
        )
        wire = self._wire
        chunk.wire = event if wire is None else wire[0] + body + wire[1]
        return chunk


def _string_end(event: bytes, start: int) -> int | None:
    """The position of the quote that closes the JSON string whose text begins at `start`."""
    at = start
    while True:
        at = event.find(b'"', at)
        if at < 0:
            return None
        backslashes = 0
        while event[at - 1 - backslashes] == 0x5C:  # \
            backslashes += 1
        if backslashes % 2 == 0:
            return at
        at += 1


def _around(wire: bytes, prefix: bytes, text: bytes, suffix: bytes) -> tuple[bytes, bytes] | None:
    """The client's chunk before the text and after it, when it is the event with something taken out of
    one side of the text (`"usage":null`: `decode_chat_chunk`)."""
    if wire.startswith(prefix + text):
        return prefix, wire[len(prefix) + len(text) :]
    if wire.endswith(text + suffix):
        return wire[: len(wire) - len(text) - len(suffix)], suffix
    return None
