"""A stream's text chunks read without parsing each whole: the bytes they share around their text.

An OpenAI-compatible upstream writes every text chunk of a stream the same way but for the text: the same
`id`, `created`, `model`, fingerprint and field order, one choice whose delta is `{"content": "..."}` (with
`"role":"assistant"` too, as OpenRouter writes every delta; and the choice's own fields, as its
`native_finish_reason`, when their values are scalars), and
most of a stream's chunks are such chunks. Once one has been decoded the whole way (`decode_chat_chunk`),
`TextChunkTemplate.of` keeps the bytes before its text and after it; a later event made of the same bytes
around another text is that chunk with the other text, and `read` makes its LLMChunk from the kept fields
and the text alone: one JSON string parsed instead of the event, and none of the decoder's look at every
field (the profile's largest item per chunk, with `orjson.loads` of the event). OpenAI's chunks also end
with an `obfuscation` string of random length (padding against traffic analysis, on unless the client
turns it off): a string field that ends the chunk is read as a second variable part.

It reads nothing the decoder would read otherwise: the template is made only from a chunk that goes to the
client as the upstream sent it (its `wire` form), it is checked once by decoding a probe event made from
it the whole way, and an event is taken only when what lies between the kept parts are valid JSON strings
(orjson decides: an unescaped quote or a control character sends the event the whole way, where it is
read, or refused, as before). Anything else, an event of another shape or an upstream that changes its
fields mid-stream, is decoded the whole way.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType

import orjson

from llm_service.core.llm.models import NO_FIELDS, ChunkChoice, LLMChunk, Role
from llm_service.core.llm.openai_format import NULL_USAGE_END, NULL_USAGE_FORMS

_CONTENT_KEY = b'"content":"'
#: The end of a chunk whose last field is a string: its closing quote and brace.
_STRING_END = b'"}'
#: Pairs of texts (the text, a trailing field's value) for the probe events: none as an escaping form writes
#: it, and two of them, so that no fixed value hidden in the event (a duplicate key, which the decoder reads
#: last) can pass for the text in both.
_PROBES = (('\u2603 probe \\ "', 'p\\"x'), ("\u00e9\t\\u", "q/"))
#: The values a field the domain does not model may have for the template to be made: its chunks share
#: them with the template, so none may be changed through one of them.
_IMMUTABLE = (str, int, float, bool, type(None))


class TextChunkTemplate:
    """The bytes around the text of one stream's text chunks, with the fields they all have."""

    __slots__ = (
        "_choice_extra", "_created", "_extra", "_fingerprint", "_id", "_index", "_last", "_middle", "_model",
        "_prefix", "_provider", "_role", "_start", "_tail", "_wire", "reads",
    )  # fmt: skip

    def __init__(self, chunk: LLMChunk, parts: tuple[bytes, bytes, bytes], last: str | None) -> None:
        prefix, middle, tail = parts
        self._prefix, self._middle, self._tail = prefix, middle, tail
        self._start = len(prefix)
        #: The chunk's last field, a string that varies too (`extra`), or None: then `tail` is empty.
        self._last = last
        choice = chunk.choices[0]
        # Shared by every chunk it reads, so read only (the decoder gives each chunk a dict of its own).
        self._index, self._role = choice.index, choice.role
        self._choice_extra = MappingProxyType(dict(choice.choice_extra)) if choice.choice_extra else NO_FIELDS
        #: Events it has read (the client keeps a template that has read any: `openai_compat`).
        self.reads = 0
        self._id, self._created, self._model = chunk.id, chunk.created, chunk.model
        self._provider, self._fingerprint, self._extra = chunk.provider, chunk.system_fingerprint, chunk.extra
        #: The client's chunk's parts when it is not the event itself (`"usage":null` taken out).
        self._wire: tuple[bytes, bytes, bytes] | None = None

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
            or (choice.role is not None and choice.role is not Role.ASSISTANT)  # OpenRouter's in every delta
            or choice.refusal is not None
            or choice.tool_calls
            or choice.finish_reason is not None
            or choice.extra
            or choice.logprobs is not None
            or event.count(_CONTENT_KEY) != 1
            or not all(isinstance(value, _IMMUTABLE) for value in chunk.extra.values())
            or not all(isinstance(value, _IMMUTABLE) for value in choice.choice_extra.values())
        ):
            return None
        start = event.index(_CONTENT_KEY) + len(_CONTENT_KEY)
        end = _string_end(event, start)
        if end is None or orjson.loads(event[start - 1 : end + 1]) != text:
            return None
        prefix, suffix = event[:start], event[end:]
        parts, last = (prefix, suffix, b""), None
        trailing = _trailing_string(chunk, suffix)
        if trailing is not None:
            last, value_at = trailing
            parts = (prefix, suffix[:value_at], _STRING_END)
        template = cls(chunk, parts, last)
        if chunk.wire != event:
            template._wire = _wire_parts(
                chunk.wire, parts, event[start:end], suffix[len(parts[1]) : -2] if last else b""
            )
            if template._wire is None:
                return None
        # Checked once: probe texts put where the variable parts were are read the whole way as the
        # template reads them.
        for text_probe, last_probe in _PROBES:
            written = orjson.dumps(text_probe)[1:-1]
            probe = prefix + written + parts[1] + (orjson.dumps(last_probe)[1:-1] + parts[2] if last else b"")
            try:
                expected = decode(probe)
            except Exception:
                return None
            found = template.read(probe)
            if found is None or found != expected or found.wire != expected.wire:
                return None
        template.reads = 0  # the probes are not the stream's
        return template

    def read(self, event: bytes) -> LLMChunk | None:
        """The chunk `event` is, when it is a text chunk of this template; None when it is not."""
        # Once per chunk of most streams: written for few bytecodes (lengths kept, no tuple unpacking).
        if not event.startswith(self._prefix):
            return None
        start, middle, extra = self._start, self._middle, self._extra
        if self._last is None:
            if not event.endswith(middle):
                return None
            end = len(event) - len(middle)
            if end < start:
                return None  # the two parts overlap in it
            value = b""
        else:
            if not event.endswith(_STRING_END):
                return None
            end = event.find(middle, start)  # the text holds no unescaped quote: a match inside it fails below
            if end < 0 or end + len(middle) > len(event) - 2:
                return None  # not found; or found at the end, its last quote the closing one (a cut field)
            value = event[end + len(middle) : -2]
            try:
                extra = {**extra, self._last: orjson.loads(b'"%b"' % value)}  # in its place among them
            except orjson.JSONDecodeError:
                return None
        body = event[start:end]
        try:
            text = orjson.loads(b'"%b"' % body)  # one string (it begins with a quote), escapes, no control chars
        except orjson.JSONDecodeError:
            return None
        chunk = LLMChunk(
            self._id,
            self._created,
            self._model,
            self._provider,
            [ChunkChoice(self._index, self._role, text, None, [], None, None, {}, self._choice_extra)],
            None,
            self._fingerprint,
            dict(extra) if extra is self._extra else extra,  # a chunk's own: it may be changed
        )
        wire = self._wire
        chunk.wire = event if wire is None else wire[0] + body + wire[1] + value + wire[2]
        self.reads += 1
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


def _trailing_string(chunk: LLMChunk, suffix: bytes) -> tuple[str, int] | None:
    """The chunk's last field when it is a string field the domain does not model (OpenAI's `obfuscation`),
    with where its value begins in `suffix`; None when the chunk ends otherwise."""
    if not chunk.extra or not suffix.endswith(_STRING_END):
        return None
    key = next(reversed(chunk.extra))
    value = chunk.extra[key]
    if type(value) is not str:
        return None
    opening = b"," + orjson.dumps(key) + b':"'
    at = suffix.rfind(opening)
    if at < 0 or suffix.count(opening) != 1:
        return None
    value_at = at + len(opening)
    try:
        if orjson.loads(suffix[value_at - 1 : -1]) != value:
            return None
    except orjson.JSONDecodeError:
        return None
    return key, value_at


def _wire_parts(
    wire: bytes, parts: tuple[bytes, bytes, bytes], text: bytes, value: bytes
) -> tuple[bytes, bytes, bytes] | None:
    """The client's chunk's fixed parts, when it is the event with a `"usage":null` taken out of one of them,
    or added at its end, as `decode_chat_chunk` does it (the variable parts the same)."""
    candidates = []
    for index, part in enumerate(parts):
        for form in NULL_USAGE_FORMS:
            if form in part:
                candidates.append((index, part.replace(form, b"", 1)))
    last = 2 if parts[2] else 1  # the part that ends the event
    if parts[last].endswith(b"}"):
        candidates.append((last, parts[last][:-1] + NULL_USAGE_END))
    for index, changed_part in candidates:
        changed = list(parts)
        changed[index] = changed_part
        if changed[0] + text + changed[1] + value + changed[2] == wire:
            return changed[0], changed[1], changed[2]
    return None
