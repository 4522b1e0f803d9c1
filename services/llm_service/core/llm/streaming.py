"""What a stream has delivered, and how a replacement stream is joined to it without a seam.

- `Transcript`: the content a stream has delivered so far, per choice and channel (text, refusal,
  string delta extras such as `reasoning`, each tool call's arguments), plus each tool call's id and
  name. Kept as string pieces, so its cost is one list append per delta.
- `Splice`: feeds the chunks of a new attempt at the same answer (re-generated from the start) past
  a transcript: what was already delivered is checked character by character against it and dropped,
  only what is new comes out, and only once everything delivered has been reproduced (until then it is
  held back). A new attempt that says something else raises `SpliceMismatch`: two different answers
  are never joined, and nothing of the second reaches the client. A tool call already begun keeps the
  id the client saw.
- `StreamCheckpoint` / `CheckpointStore`: the chunks a client was sent, taken every N chunks and at
  the end, kept in memory with a TTL and a size cap so that a stream can be resumed
  (`BaseLLMClient.resume_from_checkpoint`, and the API's resume route). In memory mode a checkpoint
  lives only as long as the process: a restart loses it.

The choice of how a broken stream is re-established (the same request again, or a continuation of
the partial answer where a deployment is declared to accept one) is the dispatcher's; this module
only knows transcripts.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from llm_service.core.llm.models import ChunkChoice, LLMChunk, ToolCallDelta

Clock = Callable[[], float]
V = TypeVar("V")

#: A channel of one choice: ("content" | "refusal" | "extra:<name>" | "tool:<index>", choice index).
Channel = tuple[str, int]


class SpliceMismatch(Exception):
    """A new attempt's answer differs from what the client already received."""


@dataclass(slots=True)
class _Call:
    id: str | None
    name: str | None


class Transcript:
    """The content delivered so far; `add()` every chunk the client is sent."""

    __slots__ = ("_calls", "_pieces", "begun", "chunks", "finished", "usage_sent")

    def __init__(self) -> None:
        self._pieces: dict[Channel, list[str]] = {}
        self._calls: dict[tuple[int, int], _Call] = {}
        #: How many chunks were added.
        self.chunks = 0
        #: Choices announced (a role, text or a tool call), and those that have their finish reason.
        self.begun: set[int] = set()
        self.finished: set[int] = set()
        self.usage_sent = False

    def add(self, chunk: LLMChunk) -> None:
        self.chunks += 1
        if chunk.usage is not None:
            self.usage_sent = True
        for choice in chunk.choices:
            index = choice.index
            self.begun.add(index)
            if choice.finish_reason is not None:
                self.finished.add(index)
            if choice.refusal or choice.extra or choice.tool_calls:
                for channel, text in _channels(choice):
                    self._pieces.setdefault(channel, []).append(text)
                for delta in choice.tool_calls:
                    call = self._calls.setdefault((index, delta.index), _Call(None, None))
                    call.id = call.id or delta.id
                    call.name = call.name or delta.name
            elif choice.content:  # the usual chunk: no generator, and no new list but for the first
                pieces = self._pieces.get(("content", index))
                if pieces is None:
                    pieces = self._pieces[("content", index)] = []
                pieces.append(choice.content)

    def text(self, channel: Channel) -> str:
        return "".join(self._pieces.get(channel, ()))

    def channels(self) -> dict[Channel, str]:
        return {channel: "".join(pieces) for channel, pieces in self._pieces.items()}

    def call(self, choice: int, index: int) -> _Call | None:
        return self._calls.get((choice, index))

    @property
    def choices(self) -> set[int]:
        """Choices that said something (text or a tool call)."""
        return {choice for _, choice in self._pieces} | {choice for choice, _ in self._calls}

    @property
    def calls(self) -> set[tuple[int, int]]:
        """(choice, index) of every tool call begun."""
        return set(self._calls)

    @property
    def has_tool_calls(self) -> bool:
        return bool(self._calls)

    @classmethod
    def of(cls, chunks: Iterable[LLMChunk]) -> Transcript:
        transcript = cls()
        for chunk in chunks:
            transcript.add(chunk)
        return transcript


def _channels(choice: ChunkChoice) -> Iterable[tuple[Channel, str]]:
    if choice.content:
        yield ("content", choice.index), choice.content
    if choice.refusal:
        yield ("refusal", choice.index), choice.refusal
    for name, value in choice.extra.items():
        if isinstance(value, str) and value:
            yield (f"extra:{name}", choice.index), value
    for delta in choice.tool_calls:
        if delta.arguments:
            yield (f"tool:{delta.index}", choice.index), delta.arguments


class Splice:
    """Joins a new attempt's stream to what `sent` holds: `feed()` each of its chunks; what it returns
    (None: nothing new yet) goes to the client.

    A re-generated attempt starts from the beginning and must reproduce `sent`; a `continuing` one
    (the provider was given the partial answer to continue) starts where `sent` ends, and only loses
    the role its first chunk announces again.
    """

    def __init__(self, sent: Transcript, *, continuing: bool = False) -> None:
        self._sent = sent.channels()
        self._begun = set(sent.begun)
        self._finished = set(sent.finished)
        self._usage_sent = sent.usage_sent
        self._transcript = sent
        self._calls_due = sent.calls if not continuing else set()
        self._seen: dict[Channel, int] = {c: len(text) for c, text in self._sent.items()} if continuing else {}
        #: What the new attempt says beyond `sent` before it has reproduced all of `sent`: held back, so
        #: that an attempt that turns out different has leaked nothing.
        self._pending: list[LLMChunk] = []
        #: Everything delivered reproduced (and the first chunk seen): from here on chunks pass through
        #: untouched. Never, once a finish reason or the usage went out: whatever comes after repeats them.
        self.caught_up = False

    def feed(self, chunk: LLMChunk) -> list[LLMChunk]:
        """What of `chunk` (and of the chunks held back before it) goes to the client now."""
        if self.caught_up:
            return [chunk]
        choices = [c for c in (self._choice(choice) for choice in chunk.choices) if c is not None]
        usage = None if self._usage_sent else chunk.usage
        if choices or usage is not None:
            self._pending.append(dataclasses.replace(chunk, choices=choices, usage=usage, wire=None))
        reproduced = not self._calls_due and all(
            self._seen.get(channel, 0) >= len(text) for channel, text in self._sent.items()
        )
        if not reproduced:
            return []
        self.caught_up = not self._finished and not self._usage_sent
        ready, self._pending = self._pending, []
        return ready

    def _choice(self, choice: ChunkChoice) -> ChunkChoice | None:
        new = dataclasses.replace(choice, extra=dict(choice.extra), tool_calls=[])
        if choice.index in self._begun:
            new.role = None
        if choice.index in self._finished:
            new.finish_reason = None  # the client has this choice's end already
        new.content = self._new_text(("content", choice.index), choice.content)
        new.refusal = self._new_text(("refusal", choice.index), choice.refusal)
        for name, value in choice.extra.items():
            if isinstance(value, str) and value:
                rest = self._new_text((f"extra:{name}", choice.index), value)
                if rest:
                    new.extra[name] = rest
                else:
                    del new.extra[name]
        for delta in choice.tool_calls:
            fragment = self._tool_fragment(choice.index, delta)
            if fragment is not None:
                new.tool_calls.append(fragment)
        if new.finish_reason is not None:
            self._check_complete(choice.index)
        elif choice.logprobs is not None and not (new.content or new.refusal):
            new.logprobs = None  # the log-probabilities of text the client already has
        says = new.role or new.content or new.refusal or new.tool_calls or new.finish_reason or new.extra
        return new if says else None

    def _new_text(self, channel: Channel, text: str | None) -> str | None:
        """The part of `text` (the next piece of `channel` in the new attempt) not yet delivered."""
        if not text:
            return text
        seen = self._seen.get(channel, 0)
        self._seen[channel] = seen + len(text)
        sent = self._sent.get(channel, "")
        overlap = max(0, min(len(text), len(sent) - seen))
        if text[:overlap] != sent[seen : seen + overlap]:
            raise SpliceMismatch(f"the new attempt's {_describe(channel)} differs from what was already sent")
        return text[overlap:] or None

    def _tool_fragment(self, choice: int, delta: ToolCallDelta) -> ToolCallDelta | None:
        self._calls_due.discard((choice, delta.index))
        call = self._transcript.call(choice, delta.index)
        arguments = self._new_text((f"tool:{delta.index}", choice), delta.arguments)
        if call is None:
            return dataclasses.replace(delta, arguments=arguments)
        if delta.name is not None and call.name is not None and delta.name != call.name:
            raise SpliceMismatch(f"the new attempt calls {delta.name!r} where {call.name!r} was already sent")
        # The client has this call's id and name from its first fragment: only new arguments go out.
        return ToolCallDelta(index=delta.index, arguments=arguments) if arguments else None

    def _check_complete(self, choice: int) -> None:
        short = [c for c, text in self._sent.items() if c[1] == choice and self._seen.get(c, 0) < len(text)]
        if short:
            raise SpliceMismatch(f"the new attempt's {_describe(short[0])} ended before what was already sent")


def _describe(channel: Channel) -> str:
    kind, choice = channel
    what = f"arguments of tool call {kind[5:]}" if kind.startswith("tool:") else kind.removeprefix("extra:")
    return f"{what} (choice {choice})"


# ---------------------------------------------------------------------------------------- checkpoints


@dataclass(slots=True)
class StreamCheckpoint:
    """The chunks of a stream as sent, from its start; `last_token_index` is the index of the last one
    (-1: none yet). `done`: the stream ended (with its finish, or with an error event)."""

    chunks: list[LLMChunk] = field(default_factory=list)
    last_token_index: int = -1
    done: bool = False


#: Called with the stream's checkpoint every N chunks and at its end.
CheckpointCallback = Callable[[StreamCheckpoint], None]


class Checkpointer:
    """Keeps the chunks of one stream and hands a checkpoint to `callback` every `every` chunks and at
    the end (`finish()`)."""

    __slots__ = ("_callback", "_checkpoint", "_every")

    def __init__(self, callback: CheckpointCallback, every: int) -> None:
        if every < 1:
            raise ValueError(f"checkpoint interval must be at least 1 chunk, got {every}")
        self._callback = callback
        self._every = every
        self._checkpoint = StreamCheckpoint()

    def add(self, chunk: LLMChunk) -> None:
        checkpoint = self._checkpoint
        checkpoint.chunks.append(chunk)
        checkpoint.last_token_index += 1
        if (checkpoint.last_token_index + 1) % self._every == 0:
            self._callback(_copy(checkpoint))

    def finish(self) -> None:
        self._checkpoint.done = True
        self._callback(_copy(self._checkpoint))


def _copy(checkpoint: StreamCheckpoint) -> StreamCheckpoint:
    return StreamCheckpoint(list(checkpoint.chunks), checkpoint.last_token_index, checkpoint.done)


class CheckpointStore(Protocol):
    """Where checkpoints live between a stream and its resumption (memory now; Redis later)."""

    def put(self, key: str, checkpoint: StreamCheckpoint) -> None: ...

    def get(self, key: str) -> StreamCheckpoint | None: ...


class TTLStore(Generic[V]):
    """Values by key, each kept `ttl` seconds after it was last written, at most `max_entries` of them
    and, with a `weigh` function, at most `max_weight` in all (the least recently written dropped first,
    so memory stays bounded whatever the values' sizes). In memory: lost when the process restarts."""

    def __init__(
        self,
        *,
        ttl: float,
        max_entries: int,
        clock: Clock = time.monotonic,
        weigh: Callable[[V], int] | None = None,
        max_weight: int | None = None,
    ) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._weigh = weigh
        self._max_weight = max_weight
        self._weight = 0
        self._entries: OrderedDict[str, tuple[float, V, int]] = OrderedDict()

    def put(self, key: str, value: V) -> None:
        self._drop(key)
        weight = self._weigh(value) if self._weigh is not None else 0
        self._entries[key] = (self._clock() + self._ttl, value, weight)
        self._weight += weight
        self._expire()
        limit = self._max_weight
        while len(self._entries) > self._max or (limit is not None and self._weight > limit and self._entries):
            self._drop(next(iter(self._entries)))

    def get(self, key: str) -> V | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] <= self._clock():
            return None
        return entry[1]

    @property
    def weight(self) -> int:
        """What the kept values weigh in all (0 without a `weigh` function)."""
        return self._weight

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._weight -= entry[2]

    def _expire(self) -> None:
        now = self._clock()
        while self._entries:
            key, (until, _, _) = next(iter(self._entries.items()))
            if until > now:
                break
            self._drop(key)


class MemoryCheckpointStore(TTLStore[StreamCheckpoint]):
    """The in-memory `CheckpointStore`: checkpoints by stream key, with a TTL and a size cap."""
