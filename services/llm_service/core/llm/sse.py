"""Incremental Server-Sent Events decoder: bytes in any chunking -> the `data` of each event.

Accepts LF, CR and CRLF line endings (a CR at the end of one chunk may pair with an LF at the start of
the next), skips comment lines (`: OPENROUTER PROCESSING`), strips one space after `data:`, and joins
several `data:` lines of one event with `\\n`. Other fields (`event:`, `id:`, `retry:`) are ignored:
no chat API here uses them.

Lines of bare JSON, which are not SSE at all (Vertex sends an error that happens mid-stream as raw, possibly
pretty-printed JSON lines, protocol reference 4.5) are kept, up to `MAX_STRAY_BYTES`, and handed out
joined as one last payload by `flush()` at the end of the stream, so the client can report them.

An event larger than `MAX_EVENT_BYTES` (a line that never ends, data lines that never end their event:
a broken upstream) raises `SSEEventTooLarge` rather than grow without bound; a long line arriving in
many pieces is kept as its pieces and joined once, when it ends, not copied again at every piece.
"""

from __future__ import annotations

_LF = b"\n"
_CR = b"\r"
#: Where one whole one-line event ends and the next begins.
_NEXT_EVENT = b"\n\ndata: "
#: First bytes of a line of bare JSON (or its indentation); an SSE field name never starts so.
_JSON_LINE_START = frozenset(b'{}[] \t"')
#: The most non-SSE text kept for `flush()`; a body that is not SSE at all is not held whole.
MAX_STRAY_BYTES = 64 * 1024
#: The largest event taken (its data lines together): far above any chat chunk, images in base64 included.
MAX_EVENT_BYTES = 16 * 1024 * 1024
#: What a one-line event carries besides its payload (`data: `, the blank line after it): the payload
#: is what `MAX_EVENT_BYTES` limits, however the event arrives.
_FRAMING = len(b"data: \r\n\r\n")
#: An unfinished line longer than this waits as a list of pieces rather than one growing bytes object.
_PIECES_FROM = 64 * 1024


class SSEEventTooLarge(ValueError):
    """An event (or a line of one) longer than `MAX_EVENT_BYTES`."""


class SSEDecoder:
    __slots__ = ("_buf", "_data", "_data_size", "_pieces", "_pieces_size", "_stray", "_stray_size")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._data_size = 0
        # A long unfinished line, in the pieces it came in (then `_buf` is empty).
        self._pieces: list[bytes] = []
        self._pieces_size = 0
        self._stray: list[bytes] = []
        self._stray_size = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        """Consume `chunk`; return the data payloads of the events it completed."""
        if self._pieces:
            # A line end in the chunk, or a CR that ended the last piece (a line end whatever follows):
            # the pieces are joined and read; else the line goes on.
            ends = _LF in chunk or _CR in chunk or self._pieces[-1].endswith(_CR)
            self._pieces.append(chunk)
            self._pieces_size += len(chunk)
            if not ends:
                self._check(self._pieces_size)
                return []
            buf = b"".join(self._pieces)
            self._pieces, self._pieces_size = [], 0
        else:
            buf = self._buf + chunk if self._buf else chunk
        # What arrives nearly every time: whole events of one data line each, without CR: one event, or
        # several when the upstream writes faster than the service reads (a fast model, a busy loop).
        # Every LF then belongs to an event's end, and each event after the first follows `\n\ndata: `:
        # the payloads are cut out in C rather than line by line (~15 bytecodes a line in `_line`).
        if (
            not self._data
            and buf.startswith(b"data: ")
            and buf.endswith(b"\n\n")
            and len(buf) <= MAX_EVENT_BYTES + 8  # `data: ` and `\n\n` around a payload: none is too long
            and _CR not in buf
        ):
            later = buf.count(_NEXT_EVENT)
            if buf.count(_LF) == 2 * later + 2:
                self._buf = b""
                return [buf[6:-2]] if not later else buf[6:-2].split(_NEXT_EVENT)
        events: list[bytes] = []
        if _CR not in buf:
            # Fast path for the usual LF-only stream.
            *lines, rest = buf.split(_LF)
            for line in lines:
                self._line(line, events)
            self._hold(rest)
            return events
        pos = 0
        size = len(buf)
        while pos < size:
            lf = buf.find(_LF, pos)
            cr = buf.find(_CR, pos, lf if lf != -1 else size)
            if cr == -1 and lf == -1:
                break
            if cr == -1:
                end, nxt = lf, lf + 1
            elif cr == size - 1:
                break  # a lone CR at the end: wait to see whether an LF follows
            else:
                end, nxt = cr, (cr + 2 if buf[cr + 1 : cr + 2] == _LF else cr + 1)
            self._line(buf[pos:end], events)
            pos = nxt
        self._hold(buf[pos:])
        return events

    def _hold(self, rest: bytes) -> None:
        """Keep what follows the last line end until its line ends."""
        if len(rest) <= _PIECES_FROM:
            self._buf = rest
            return
        self._check(len(rest))
        self._buf = b""
        self._pieces, self._pieces_size = [rest], len(rest)

    def _check(self, line_size: int) -> None:
        """Refuse an unfinished line that already holds more than an event may (its framing allowed)."""
        if line_size + self._data_size > MAX_EVENT_BYTES + _FRAMING:
            self._too_large()

    @staticmethod
    def _too_large() -> None:
        raise SSEEventTooLarge(f"an event of more than {MAX_EVENT_BYTES} bytes")

    def flush(self) -> list[bytes]:
        """At end of input: treat what is left as a last line and dispatch any pending event, then
        the stray non-SSE lines seen, joined, as one more payload."""
        events: list[bytes] = []
        rest = (b"".join(self._pieces) if self._pieces else self._buf).rstrip(b"\r")
        self._buf, self._pieces, self._pieces_size = b"", [], 0
        if rest:
            self._line(rest, events)
        self._line(b"", events)
        if self._stray:
            events.append(_LF.join(self._stray))
            self._stray, self._stray_size = [], 0
        return events

    def _line(self, line: bytes, events: list[bytes]) -> None:
        if not line:
            if self._data:
                events.append(self._data[0] if len(self._data) == 1 else _LF.join(self._data))
                self._data, self._data_size = [], 0
            return
        if line[0] == 0x3A:  # ':' comment
            return
        name, _, value = line.partition(b":")
        if name == b"data":
            value = value[1:] if value[:1] == b" " else value
            # The event's payload as it will be handed out: its data lines joined by LFs.
            self._data_size += len(value) + 1 if self._data else len(value)
            if self._data_size > MAX_EVENT_BYTES:
                self._too_large()
            self._data.append(value)
        elif line[0] in _JSON_LINE_START and self._stray_size + len(line) <= MAX_STRAY_BYTES:
            self._stray.append(line)
            self._stray_size += len(line)
