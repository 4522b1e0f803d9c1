"""Stream recovery: `Transcript`, `Splice`, checkpoints (`streaming.py`), `ReplayingStream` (`retry.py`)
and the base client's checkpointed, resumable streams and end-of-stream rule (`base.py`).

The units are driven with hand-built chunks and small async fakes; the base client runs against the
loopback fake upstream of `conftest.py`, with faults to cut or truncate its stream.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from conftest import fake_settings
from harness import ManualClock
from llm_service.core.config.constants import ProviderID
from llm_service.core.llm.credentials import APIKeyCredentialProvider
from llm_service.core.llm.models import (
    ChunkChoice,
    DeploymentsUnavailableError,
    FinishReason,
    LLMChunk,
    LLMRequest,
    LLMServiceError,
    Message,
    ProviderConnectionError,
    ProviderError,
    Role,
    StreamInterruptedError,
    ToolCallDelta,
    UpstreamRequestError,
    Usage,
)
from llm_service.core.llm.openai_client import OpenAIClient
from llm_service.core.llm.retry import ReplayingStream, retry_async_generator
from llm_service.core.llm.streaming import (
    Channel,
    Checkpointer,
    MemoryCheckpointStore,
    Splice,
    SpliceMismatch,
    StreamCheckpoint,
    Transcript,
    TTLStore,
)
from llm_service.fakes import Fault

pytestmark = pytest.mark.anyio

P = ProviderID.OPENAI
CONTENT: Channel = ("content", 0)
STOP = FinishReason.STOP


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ==================================================================================================
# Chunk builders
# ==================================================================================================


def chunk(*choices: ChunkChoice, usage: Usage | None = None, id: str = "chatcmpl-1", created: int = 1) -> LLMChunk:
    return LLMChunk(id=id, created=created, model="gpt-test", provider=P, choices=list(choices), usage=usage)


def say(text: str, *, choice: int = 0) -> LLMChunk:
    return chunk(ChunkChoice(index=choice, content=text))


def role(*, choice: int = 0) -> LLMChunk:
    return chunk(ChunkChoice(index=choice, role=Role.ASSISTANT, content=""))


def finish(reason: FinishReason = STOP, *, choice: int = 0) -> LLMChunk:
    return chunk(ChunkChoice(index=choice, finish_reason=reason))


def call(
    index: int = 0, *, id: str | None = None, name: str | None = None, args: str | None = None, choice: int = 0
) -> LLMChunk:
    delta = ToolCallDelta(index=index, id=id, name=name, arguments=args)
    return chunk(ChunkChoice(index=choice, tool_calls=[delta]))


def usage(prompt: int, completion: int) -> LLMChunk:
    return chunk(usage=Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion))


def text_of(chunks: Iterable[LLMChunk], channel: Channel = CONTENT) -> str:
    return Transcript.of(chunks).text(channel)


def finishes(chunks: Iterable[LLMChunk]) -> list[tuple[int, FinishReason]]:
    return [(c.index, c.finish_reason) for ch in chunks for c in ch.choices if c.finish_reason is not None]


def roles(chunks: Iterable[LLMChunk]) -> list[int]:
    return [c.index for ch in chunks for c in ch.choices if c.role is not None]


def deltas(chunks: Iterable[LLMChunk]) -> list[ToolCallDelta]:
    return [d for ch in chunks for c in ch.choices for d in c.tool_calls]


def usages(chunks: Iterable[LLMChunk]) -> list[Usage]:
    return [ch.usage for ch in chunks if ch.usage is not None]


def spliced(sent: Iterable[LLMChunk], attempt: Iterable[LLMChunk], *, continuing: bool = False) -> list[LLMChunk]:
    """What the client receives of `attempt` after `sent`."""
    splice = Splice(Transcript.of(sent), continuing=continuing)
    return [out for chunk in attempt for out in splice.feed(chunk)]


# ==================================================================================================
# Transcript
# ==================================================================================================


def test_transcript_keeps_each_channel_of_each_choice_apart() -> None:
    transcript = Transcript.of(
        [
            role(),
            say("Hel"),
            say("Bon", choice=1),
            chunk(ChunkChoice(index=0, content="lo", extra={"reasoning": "think", "audio": {"id": "a"}})),
            chunk(ChunkChoice(index=1, refusal="No.")),
            call(0, id="call_A", name="f", args='{"a"', choice=1),
            call(0, args=": 1}", choice=1),
            finish(),
            usage(3, 4),
        ]
    )

    assert transcript.channels() == {
        ("content", 0): "Hello",
        ("extra:reasoning", 0): "think",
        ("content", 1): "Bon",
        ("refusal", 1): "No.",
        ("tool:0", 1): '{"a": 1}',
    }
    assert transcript.text(("content", 1)) == "Bon"
    assert transcript.text(("refusal", 0)) == ""
    assert transcript.choices == {0, 1}
    assert transcript.chunks == 9


def test_transcript_takes_a_tool_calls_id_and_name_from_its_first_fragment() -> None:
    transcript = Transcript.of(
        [
            call(0, id="call_A", name="get_weather", args=""),
            call(0, args='{"city": '),
            call(0, id="call_B", name="other", args='"Paris"}'),  # a later id or name does not replace them
            call(1, id="call_C", name="get_time"),
        ]
    )

    first, second = transcript.call(0, 0), transcript.call(0, 1)
    assert first is not None and (first.id, first.name) == ("call_A", "get_weather")
    assert second is not None and (second.id, second.name) == ("call_C", "get_time")
    assert transcript.call(0, 2) is None and transcript.call(1, 0) is None
    assert transcript.text(("tool:0", 0)) == '{"city": "Paris"}'
    assert transcript.has_tool_calls


def test_an_empty_transcript_has_no_choices_and_no_calls() -> None:
    transcript = Transcript.of([role(), usage(1, 1)])

    assert transcript.channels() == {}
    assert transcript.choices == set()
    assert not transcript.has_tool_calls
    assert transcript.chunks == 2


# ==================================================================================================
# Splice: a re-generated attempt joined to what was sent
# ==================================================================================================

#: How each text channel is written into a choice, and the field it is read back from.
CHANNEL_KINDS: dict[str, tuple[Callable[[str], ChunkChoice], Callable[[ChunkChoice], Any]]] = {
    "content": (lambda t: ChunkChoice(index=0, content=t), lambda c: c.content),
    "refusal": (lambda t: ChunkChoice(index=0, refusal=t), lambda c: c.refusal),
    "reasoning": (lambda t: ChunkChoice(index=0, extra={"reasoning": t}), lambda c: c.extra.get("reasoning")),
}


@pytest.mark.parametrize("kind", list(CHANNEL_KINDS))
@pytest.mark.parametrize(
    ("sent", "attempt", "expected"),
    [
        pytest.param(["Hel", "lo wor"], ["H", "ello", " world!"], ["ld!"], id="straddling-chunk"),
        pytest.param(["Hel", "lo wor"], ["Hello wor", "ld!"], ["ld!"], id="same-boundary"),
        pytest.param(["Hello wor"], ["He", "l", "lo", " ", "wo", "rld", "!"], ["ld", "!"], id="finer-chunks"),
        pytest.param(["H", "e", "l", "l", "o"], ["Hello world!"], [" world!"], id="coarser-chunk"),
        pytest.param(["Hello wor"], ["Hello world!"], ["ld!"], id="one-chunk"),
    ],
)
def test_a_regenerated_channel_passes_only_its_new_text(
    kind: str, sent: list[str], attempt: list[str], expected: list[str]
) -> None:
    write, read = CHANNEL_KINDS[kind]

    out = spliced([role(), *(chunk(write(t)) for t in sent)], [role(), *(chunk(write(t)) for t in attempt)])

    assert [read(ch.choices[0]) for ch in out] == expected
    assert roles(out) == []


def test_a_straddling_chunk_keeps_its_other_channels_whole() -> None:
    sent = [role(), chunk(ChunkChoice(index=0, content="Hel", extra={"reasoning": "ab"}))]
    attempt = [chunk(ChunkChoice(index=0, content="Hello", extra={"reasoning": "abc", "audio": {"id": "x"}}))]

    (out,) = spliced(sent, attempt)

    assert out.choices[0].content == "lo"
    assert out.choices[0].extra == {"reasoning": "c", "audio": {"id": "x"}}


def test_a_fully_repeated_chunk_is_dropped_and_its_logprobs_with_it() -> None:
    sent = [say("Hello")]
    attempt = [chunk(ChunkChoice(index=0, content="Hello", logprobs={"content": [{"token": "Hello"}]}))]

    assert spliced(sent, attempt) == []


@pytest.mark.parametrize(
    ("sent_args", "attempt_args", "expected"),
    [
        pytest.param(['{"ci'], ["", '{"city"', ': "Paris"}'], ['ty"', ': "Paris"}'], id="cut-mid-fragment"),
        pytest.param(
            [""],
            ['{"city": ', '"Paris"}'],
            ['{"city": ', '"Paris"}'],
            id="cut-after-the-name",
        ),
        pytest.param(['{"city": ', '"Par'], ['{"city": "Paris"}'], ['is"}'], id="new-attempt-in-one-fragment"),
    ],
)
def test_a_begun_tool_call_keeps_the_sent_id_and_passes_only_the_remaining_arguments(
    sent_args: list[str], attempt_args: list[str], expected: list[str]
) -> None:
    first, *rest = sent_args
    sent = [role(), call(0, id="call_A", name="get_weather", args=first), *(call(0, args=a) for a in rest)]
    head, *tail = attempt_args
    attempt = [
        role(),
        call(0, id="call_NEW", name="get_weather", args=head),
        *(call(0, args=a) for a in tail),
        finish(FinishReason.TOOL_CALLS),
    ]

    out = spliced(sent, attempt)

    fragments = deltas(out)
    assert [d.arguments for d in fragments] == expected
    assert all(d.id is None and d.name is None for d in fragments)
    client_view = Transcript.of([*sent, *out])
    assert client_view.text(("tool:0", 0)) == '{"city": "Paris"}'
    client_call = client_view.call(0, 0)
    assert client_call is not None and client_call.id == "call_A"
    assert finishes(out) == [(0, FinishReason.TOOL_CALLS)]


def test_a_new_tool_call_after_the_spliced_one_passes_with_its_own_id_and_name() -> None:
    sent = [call(0, id="call_A", name="get_weather", args='{"city": "Pa')]
    attempt = [
        call(0, id="call_X", name="get_weather", args='{"city": "Paris"}'),
        call(1, id="call_Y", name="get_time", args=""),
        call(1, args='{"tz": "CET"}'),
        finish(FinishReason.TOOL_CALLS),
    ]

    out = spliced(sent, attempt)

    assert [(d.index, d.id, d.name, d.arguments) for d in deltas(out)] == [
        (0, None, None, 'ris"}'),
        (1, "call_Y", "get_time", ""),
        (1, None, None, '{"tz": "CET"}'),
    ]


@pytest.mark.parametrize(
    ("sent", "attempt"),
    [
        pytest.param([say("Hello")], [say("Help me")], id="different-text"),
        pytest.param([say("Hel"), say("lo")], [say("H"), say("ey")], id="different-text-across-chunks"),
        pytest.param(
            [call(0, id="call_A", name="get_weather", args='{"c')],
            [call(0, id="call_B", name="get_time", args='{"c')],
            id="different-tool-name",
        ),
        pytest.param(
            [call(0, id="call_A", name="get_weather", args='{"city": "Pa')],
            [call(0, id="call_B", name="get_weather", args='{"city": "Lo')],
            id="different-tool-arguments",
        ),
        pytest.param([say("Hello world")], [say("Hello"), finish()], id="shorter-answer-finishes-early"),
        pytest.param([say("Hello")], [chunk(ChunkChoice(index=0, refusal="Hello")), finish()], id="refusal-for-text"),
        pytest.param(
            [call(0, id="call_A", name="f", args='{"a": 1')],
            [call(0, id="call_B", name="f", args='{"a"'), finish(FinishReason.TOOL_CALLS)],
            id="tool-arguments-finish-early",
        ),
        pytest.param(
            [chunk(ChunkChoice(index=0, extra={"reasoning": "Let me think"}))],
            [chunk(ChunkChoice(index=0, extra={"reasoning": "Let me"})), say("Paris"), finish()],
            id="reasoning-cut-short",
        ),
    ],
)
def test_a_different_answer_raises_splice_mismatch(sent: list[LLMChunk], attempt: list[LLMChunk]) -> None:
    with pytest.raises(SpliceMismatch):
        spliced(sent, attempt)


def test_the_new_attempts_role_is_dropped_and_its_end_passes() -> None:
    out = spliced([role(), say("Hi")], [role(), say("Hi"), say(" there"), finish(), usage(5, 2)])

    assert roles(out) == []
    assert text_of(out) == " there"
    assert finishes(out) == [(0, STOP)]
    assert [(u.prompt_tokens, u.completion_tokens) for u in usages(out)] == [(5, 2)]


def test_what_comes_before_the_attempt_caught_up_is_held_back_until_it_has() -> None:
    splice = Splice(Transcript.of([say("Hello")]))

    early = splice.feed(usage(7, 1))
    held = splice.caught_up
    released = splice.feed(say("Hello!"))

    assert early == [] and not held
    assert [(c.usage, text_of([c])) for c in released] == [(Usage(7, 1, 8), ""), (None, "!")]
    assert splice.caught_up


def test_an_attempt_that_says_something_new_before_reproducing_what_was_sent_leaks_nothing() -> None:
    sent = [role(), chunk(ChunkChoice(index=0, tool_calls=[ToolCallDelta(0, "call_A", "f", '{"ci')]))]
    splice = Splice(Transcript.of(sent))

    out = splice.feed(role()) + splice.feed(say("A different answer, in text."))
    with pytest.raises(SpliceMismatch):
        splice.feed(finish())
    assert out == []


def test_the_splice_is_caught_up_once_every_sent_channel_is_reproduced() -> None:
    splice = Splice(Transcript.of([say("Hello"), chunk(ChunkChoice(index=0, refusal="No"))]))

    progress = []
    for piece in [
        role(),
        say("Hello"),
        chunk(ChunkChoice(index=0, refusal="N")),
        chunk(ChunkChoice(index=0, refusal="o")),
    ]:
        splice.feed(piece)
        progress.append(splice.caught_up)

    assert progress == [False, False, False, True]
    passing = say("Hello again")
    assert splice.feed(passing) == [passing]  # caught up: chunks pass untouched


def test_the_new_attempts_role_is_dropped_after_a_transcript_of_only_the_role() -> None:
    out = spliced([role()], [role(), say("Hi"), finish()])

    assert roles(out) == []


# ---------------------------------------------------------------------------------------- continuing


def test_a_continuing_attempt_loses_only_its_repeated_role() -> None:
    sent = [role(), say("Hel"), say("lo wor")]
    attempt = [role(), say("ld!"), finish(), usage(10, 2)]

    out = spliced(sent, attempt, continuing=True)

    assert roles(out) == []
    assert [ch.choices[0].content for ch in out if ch.choices and ch.choices[0].content] == ["ld!"]
    assert finishes(out) == [(0, STOP)]
    assert len(usages(out)) == 1


def test_a_continuing_attempt_keeps_the_text_that_comes_with_its_role() -> None:
    first = chunk(ChunkChoice(index=0, role=Role.ASSISTANT, content="ld"))

    (out,) = spliced([say("Hello wor")], [first], continuing=True)

    assert out.choices[0].role is None
    assert out.choices[0].content == "ld"


def test_a_continuing_attempt_is_not_checked_against_what_was_sent() -> None:
    # The provider continues from the end: its text is new, even when it happens to repeat the prefix.
    out = spliced([say("Hello")], [say("Hello"), finish()], continuing=True)

    assert text_of(out) == "Hello"
    assert finishes(out) == [(0, STOP)]


# ---------------------------------------------------------------------------------------- n=2


def test_two_interleaved_choices_are_spliced_each_against_its_own_text() -> None:
    sent = [role(), role(choice=1), say("Hel"), say("Wor", choice=1), say("lo")]
    attempt = [
        chunk(ChunkChoice(index=0, role=Role.ASSISTANT, content=""), ChunkChoice(index=1, role=Role.ASSISTANT)),
        say("He"),
        say("World", choice=1),
        chunk(ChunkChoice(index=0, content="llo!"), ChunkChoice(index=1, content="!")),
        finish(choice=1),
        finish(),
    ]

    out = spliced(sent, attempt)

    assert text_of(out, ("content", 0)) == "!"
    assert text_of(out, ("content", 1)) == "ld!"
    assert roles(out) == []
    assert finishes(out) == [(1, STOP), (0, STOP)]


def test_a_choice_not_begun_before_the_break_passes_whole_with_its_role() -> None:
    out = spliced([role(), say("Hel")], [role(), role(choice=1), say("Hello"), say("Bye", choice=1)])

    assert roles(out) == [1]
    assert text_of(out, ("content", 0)) == "lo"
    assert text_of(out, ("content", 1)) == "Bye"


def test_a_choice_that_finishes_short_raises_even_when_the_other_is_complete() -> None:
    sent = [say("Hello"), say("World", choice=1)]

    with pytest.raises(SpliceMismatch, match="choice 1"):
        spliced(sent, [say("Hello"), finish(), say("Wo", choice=1), finish(choice=1)])


# ---------------------------------------------------------------------------------------- property

ALPHABET = "abcdefghij XYZ.,\n{}\"'éß漢🙂"


def random_chunking(rng: random.Random, text: str) -> list[str]:
    pieces, start = [], 0
    while start < len(text):
        size = rng.randint(1, 6)
        pieces.append(text[start : start + size])
        start += size
    return pieces


@pytest.mark.parametrize("seed", range(60))
def test_sent_prefix_and_spliced_rest_are_the_full_text_for_any_cut_and_rechunking(seed: int) -> None:
    rng = random.Random(seed)
    text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 80)))
    original = random_chunking(rng, text)
    cut = rng.randint(1, len(original))  # the break came after this many text chunks
    sent = [role(), *map(say, original[:cut])]
    attempt = [role(), *map(say, random_chunking(rng, text)), finish()]

    out = spliced(sent, attempt)

    assert "".join(original[:cut]) + text_of(out) == text
    assert finishes(out) == [(0, STOP)]


@pytest.mark.parametrize("seed", range(20))
def test_spliced_tool_arguments_are_whole_for_any_cut_and_rechunking(seed: int) -> None:
    rng = random.Random(1000 + seed)
    arguments = '{"city": "' + "".join(rng.choice("abcdéf 漢") for _ in range(rng.randint(0, 40))) + '"}'
    original = random_chunking(rng, arguments)
    cut = rng.randint(1, len(original))
    sent = [call(0, id="call_A", name="f", args=original[0]), *(call(0, args=a) for a in original[1:cut])]
    again = random_chunking(rng, arguments)
    attempt = [call(0, id="call_B", name="f", args=again[0]), *(call(0, args=a) for a in again[1:])]

    out = spliced(sent, [*attempt, finish(FinishReason.TOOL_CALLS)])

    assert "".join(original[:cut]) + text_of(out, ("tool:0", 0)) == arguments
    assert all(d.id is None and d.name is None for d in deltas(out))


# ==================================================================================================
# Checkpointer and MemoryCheckpointStore
# ==================================================================================================


@pytest.mark.parametrize(
    ("every", "count", "sizes"),
    [
        pytest.param(1, 7, [1, 2, 3, 4, 5, 6, 7, 7], id="every-chunk"),
        pytest.param(3, 7, [3, 6, 7], id="every-3-of-7"),
        pytest.param(7, 7, [7, 7], id="interval-equals-length"),
        pytest.param(10, 7, [7], id="interval-longer-than-the-stream"),
        pytest.param(3, 0, [0], id="empty-stream"),
    ],
)
def test_checkpoints_come_every_n_chunks_and_at_the_end(every: int, count: int, sizes: list[int]) -> None:
    taken: list[StreamCheckpoint] = []
    checkpointer = Checkpointer(taken.append, every)
    chunks = [say(str(i)) for i in range(count)]

    for piece in chunks:
        checkpointer.add(piece)
    checkpointer.finish()

    assert [len(c.chunks) for c in taken] == sizes
    assert [c.last_token_index for c in taken] == [size - 1 for size in sizes]
    assert [c.done for c in taken] == [False] * (len(sizes) - 1) + [True]
    assert all(c.chunks == chunks[: len(c.chunks)] for c in taken)


def test_a_checkpoint_is_a_copy_that_later_chunks_do_not_reach() -> None:
    taken: list[StreamCheckpoint] = []
    checkpointer = Checkpointer(taken.append, 2)
    chunks = [say(str(i)) for i in range(5)]

    for piece in chunks:
        checkpointer.add(piece)
    checkpointer.finish()

    first = taken[0]
    assert first.chunks == chunks[:2]
    assert first.last_token_index == 1
    assert not first.done
    assert first.chunks is not taken[1].chunks


@pytest.mark.parametrize("every", [0, -1])
def test_a_checkpoint_interval_below_one_chunk_is_refused(every: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Checkpointer(lambda _: None, every)


def checkpoint(*texts: str) -> StreamCheckpoint:
    return StreamCheckpoint([say(t) for t in texts], len(texts) - 1)


def test_the_store_returns_what_was_put() -> None:
    store = MemoryCheckpointStore(ttl=10, max_entries=4, clock=ManualClock())
    saved = checkpoint("a")

    store.put("k", saved)

    assert store.get("k") is saved
    assert store.get("other") is None
    assert len(store) == 1


def test_a_checkpoint_expires_at_its_ttl() -> None:
    clock = ManualClock()
    store = MemoryCheckpointStore(ttl=10, max_entries=4, clock=clock)
    store.put("k", checkpoint("a"))

    clock.now += 9.999
    assert store.get("k") is not None
    clock.now += 0.001
    assert store.get("k") is None
    assert len(store) == 0


def test_writing_a_checkpoint_again_refreshes_its_ttl() -> None:
    clock = ManualClock()
    store = MemoryCheckpointStore(ttl=10, max_entries=4, clock=clock)
    store.put("k", checkpoint("a"))
    clock.now += 6
    newer = checkpoint("a", "b")
    store.put("k", newer)

    clock.now += 6  # 12 s after the first write, 6 after the second
    assert store.get("k") is newer
    clock.now += 4
    assert store.get("k") is None


def test_over_its_cap_the_store_drops_the_least_recently_written() -> None:
    clock = ManualClock()
    store = MemoryCheckpointStore(ttl=100, max_entries=2, clock=clock)
    store.put("a", checkpoint("a"))
    clock.now += 1
    store.put("b", checkpoint("b"))
    clock.now += 1
    store.put("a", checkpoint("a", "a2"))  # written again: now b is the oldest write
    store.get("b")  # a read is not a write
    clock.now += 1
    store.put("c", checkpoint("c"))

    assert store.get("b") is None
    assert store.get("a") is not None and store.get("c") is not None
    assert len(store) == 2


# ==================================================================================================
# ReplayingStream
# ==================================================================================================

ANSWER = ["The ", "capital ", "of France ", "is Paris."]
FULL = "".join(ANSWER)


def stamped(chunks: list[LLMChunk], id: str, created: int) -> list[LLMChunk]:
    for piece in chunks:
        piece.id, piece.created = id, created
    return chunks


def answer(
    pieces: Iterable[str] = ANSWER, *, id: str = "first", created: int = 100, prompt: int = 20
) -> list[LLMChunk]:
    """A whole answer: role, text, finish, usage (7 chunks for ANSWER)."""
    return stamped([role(), *map(say, pieces), finish(), usage(prompt, 9)], id, created)


def broken(message: str = "connection reset", *, retryable: bool = True) -> ProviderConnectionError:
    return ProviderConnectionError(message, provider=P, retryable=retryable, code="upstream_connection_error")


class FakeStream:
    """Yields `chunks`, then raises `error` (if any) instead of ending; records `aclose()`."""

    def __init__(self, chunks: Iterable[LLMChunk], error: BaseException | None = None) -> None:
        self._chunks: Iterator[LLMChunk] = iter(list(chunks))
        self._error = error
        self.closed = False

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> LLMChunk:
        if self.closed:
            raise StopAsyncIteration
        for piece in self._chunks:
            return piece
        if self._error is not None:
            raise self._error
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.closed = True


class Reopen:
    """The `reopen` callback: hands out the prepared (stream, continuing) pairs, or raises an error."""

    def __init__(self, *results: tuple[FakeStream, bool] | BaseException) -> None:
        self._results = list(results)
        self.calls: list[tuple[dict[Channel, str], int, ProviderError]] = []

    async def __call__(self, sent: Transcript, error: ProviderError) -> tuple[AsyncIterator[LLMChunk], bool]:
        self.calls.append((sent.channels(), sent.chunks, error))
        result = self._results.pop(0)
        if isinstance(result, BaseException):
            raise result
        return result


def replaying(
    first: FakeStream, reopen: Reopen, *, max_buffer_chunks: int = 100, max_replays: int = 2
) -> ReplayingStream:
    return retry_async_generator(first, reopen, max_buffer_chunks=max_buffer_chunks, max_replays=max_replays)


async def drain(stream: AsyncIterator[LLMChunk]) -> list[LLMChunk]:
    return [piece async for piece in stream]


async def drain_into(stream: AsyncIterator[LLMChunk], received: list[LLMChunk]) -> None:
    """Like `drain`, keeping what came before an error in `received`."""
    async for piece in stream:
        received.append(piece)


@pytest.mark.parametrize("rechunked", [pytest.param(False, id="same-chunks"), pytest.param(True, id="rechunked")])
@pytest.mark.parametrize(
    "k",
    [
        *range(1, 6),
        pytest.param(6, id="6-after-finish"),
        pytest.param(7, id="7-after-usage"),
    ],
)
async def test_a_break_after_any_chunk_recovers_the_exact_answer(k: int, rechunked: bool) -> None:
    first = FakeStream(answer()[:k], broken())
    pieces = ["T", "he capital of F", "rance is Paris", "."] if rechunked else ANSWER
    again = FakeStream(answer(pieces, id="second", created=200))
    reopen = Reopen((again, False))
    stream = replaying(first, reopen)

    out = await drain(stream)

    assert text_of(out) == FULL
    assert finishes(out) == [(0, STOP)]
    assert len(usages(out)) == 1
    assert {(c.id, c.created) for c in out} == {("first", 100)}
    assert stream.replays == 1
    assert first.closed
    [(channels, chunks_sent, error)] = reopen.calls
    assert chunks_sent == k
    assert channels.get(CONTENT, "") == "".join(ANSWER[: k - 1])
    assert isinstance(error, ProviderConnectionError)


async def test_a_second_break_is_recovered_from_everything_delivered() -> None:
    first = FakeStream(answer()[:2], broken())
    second = FakeStream(answer(id="second", created=200)[:4], broken("again"))
    third = FakeStream(answer(["The capital of France is ", "Paris."], id="third", created=300))
    reopen = Reopen((second, False), (third, False))
    stream = replaying(first, reopen, max_replays=2)

    out = await drain(stream)

    assert text_of(out) == FULL
    assert finishes(out) == [(0, STOP)]
    assert {(c.id, c.created) for c in out} == {("first", 100)}
    assert stream.replays == 2
    assert first.closed and second.closed
    assert reopen.calls[1][0] == {CONTENT: "The capital of France "}


async def test_a_tool_call_broken_mid_arguments_is_recovered_under_the_sent_id() -> None:
    sent = [role(), call(0, id="call_A", name="get_weather", args='{"ci')]
    again = [role(), call(0, id="call_B", name="get_weather", args='{"city": '), call(0, args='"Paris"}')]
    first = FakeStream(sent, broken())
    stream = replaying(first, Reopen((FakeStream([*again, finish(FinishReason.TOOL_CALLS)]), False)))

    out = await drain(stream)

    client_view = Transcript.of(out)
    client_call = client_view.call(0, 0)
    assert client_call is not None and (client_call.id, client_call.name) == ("call_A", "get_weather")
    assert client_view.text(("tool:0", 0)) == '{"city": "Paris"}'
    assert [d.id for d in deltas(out) if d.id] == ["call_A"]


async def test_a_failure_that_is_not_retryable_is_raised_as_is() -> None:
    error = UpstreamRequestError("bad request", provider=P, status=400)
    reopen = Reopen((FakeStream(answer()), False))
    stream = replaying(FakeStream(answer()[:3], error), reopen)

    with pytest.raises(UpstreamRequestError) as raised:
        await drain(stream)

    assert raised.value is error
    assert reopen.calls == []


@pytest.mark.parametrize(
    ("max_replays", "breaks"),
    [
        pytest.param(0, 1, id="no-replays"),
        pytest.param(1, 2, id="one-replay-then-a-second-break"),
        pytest.param(2, 3, id="two-replays-then-a-third-break"),
    ],
)
async def test_with_replays_used_up_the_last_failure_is_raised_as_is(max_replays: int, breaks: int) -> None:
    errors = [broken(f"break {i}") for i in range(breaks)]
    streams = [FakeStream(answer(id=f"s{i}")[: 2 + i], errors[i]) for i in range(breaks)]
    reopen = Reopen(*((s, False) for s in streams[1:]))
    stream = replaying(streams[0], reopen, max_replays=max_replays)

    with pytest.raises(ProviderConnectionError) as raised:
        await drain(stream)

    assert raised.value is errors[-1]
    assert len(reopen.calls) == max_replays


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(broken("no deployment answers"), id="provider-error"),
        pytest.param(
            DeploymentsUnavailableError("every deployment is open-circuited", retry_after=5.0),
            id="service-error",
        ),
    ],
)
async def test_when_reopen_fails_the_original_failure_is_raised(failure: LLMServiceError) -> None:
    original = broken()
    stream = replaying(FakeStream(answer()[:3], original), Reopen(failure))

    with pytest.raises(ProviderConnectionError) as raised:
        await drain(stream)

    assert raised.value is original
    assert raised.value.__cause__ is failure


@pytest.mark.parametrize(("delivered", "recovers"), [(2, True), (3, True), (4, False)])
async def test_past_max_buffer_chunks_the_original_failure_is_raised(delivered: int, recovers: bool) -> None:
    original = broken()
    reopen = Reopen((FakeStream(answer(id="second")), False))
    stream = replaying(FakeStream(answer()[:delivered], original), reopen, max_buffer_chunks=3)

    if recovers:
        assert text_of(await drain(stream)) == FULL
    else:
        with pytest.raises(ProviderConnectionError) as raised:
            await drain(stream)
        assert raised.value is original
        assert reopen.calls == []


async def test_a_different_regenerated_answer_ends_the_stream_with_stream_interrupted() -> None:
    first = FakeStream(answer()[:3], broken())
    different = FakeStream(answer(["The city ", "of Rome ", "is old."], id="second"))
    stream = replaying(first, Reopen((different, False)))
    received: list[LLMChunk] = []

    with pytest.raises(StreamInterruptedError) as raised:
        await drain_into(stream, received)

    assert text_of(received) == "The capital "
    assert raised.value.code == "stream_interrupted"
    assert raised.value.provider is P
    assert raised.value.__cause__ is None


async def test_aclose_before_iterating_closes_the_first_stream() -> None:
    first = FakeStream(answer())
    stream = replaying(first, Reopen())

    await stream.aclose()

    assert first.closed


async def test_aclose_after_a_replay_closes_the_current_stream() -> None:
    first = FakeStream(answer()[:2], broken())
    again = FakeStream(answer(id="second"))
    stream = replaying(first, Reopen((again, False)))

    received = [await anext(stream) for _ in range(3)]
    await stream.aclose()

    assert text_of(received) == "The capital "
    assert first.closed and again.closed


async def test_a_continued_answer_passes_as_it_comes_and_counts_the_prefix_as_output() -> None:
    first = FakeStream(stamped([role(), say("The "), say("capital o")], "first", 100), broken())
    # 13 characters continued: ceil(13 / 4) = 4 tokens the provider now counts as prompt.
    continued = FakeStream(stamped([role(), say("f France "), say("is Paris."), finish(), usage(24, 6)], "second", 200))
    stream = replaying(first, Reopen((continued, True)))

    out = await drain(stream)

    assert text_of(out) == FULL
    assert roles(out) == [0]
    assert finishes(out) == [(0, STOP)]
    assert usages(out) == [Usage(prompt_tokens=20, completion_tokens=10, total_tokens=30)]
    assert {(c.id, c.created) for c in out} == {("first", 100)}


async def test_the_prefix_moved_in_usage_is_capped_at_the_prompt() -> None:
    first = FakeStream([role(), say("x" * 40)], broken())
    continued = FakeStream([say("!"), finish(), usage(3, 1)])
    stream = replaying(first, Reopen((continued, True)))

    out = await drain(stream)

    assert usages(out) == [Usage(prompt_tokens=0, completion_tokens=4, total_tokens=4)]


async def test_two_continued_replays_move_only_the_last_prefix() -> None:
    first = FakeStream([role(), say("abcd")], broken())  # 4 characters: 1 token
    second = FakeStream([say("efgh")], broken())  # the prefix is now 8 characters: 2 tokens
    # The third stream was given the 8-character prefix: its prompt is 20 + 2.
    third = FakeStream([say("!"), finish(), usage(22, 1)])
    stream = replaying(first, Reopen((second, True), (third, True)))

    out = await drain(stream)

    assert text_of(out) == "abcdefgh!"
    assert usages(out) == [Usage(prompt_tokens=20, completion_tokens=3, total_tokens=23)]


async def test_a_regenerated_replay_after_a_continued_one_keeps_its_own_usage() -> None:
    first = FakeStream([role(), say("abcd")], broken())
    second = FakeStream([say("ef")], broken())
    # Re-generated from the start: the provider's usage is already the whole answer's.
    third = FakeStream([role(), say("abcdef!"), finish(), usage(20, 3)])
    stream = replaying(first, Reopen((second, True), (third, False)))

    out = await drain(stream)

    assert text_of(out) == "abcdef!"
    assert usages(out) == [Usage(prompt_tokens=20, completion_tokens=3, total_tokens=23)]


# ==================================================================================================
# BaseLLMClient against the loopback fake upstream
# ==================================================================================================

FIXTURE_EVENTS = [
    event
    for event in (Path(__file__).parent / "fixtures/openai/chat_text.sse").read_bytes().split(b"\n\n")
    if event.strip()
]
#: The fixture's stream: role, five text chunks, the finish chunk, usage, [DONE].
ROLE, TEXT, FINISH, USAGE, DONE = (
    FIXTURE_EVENTS[:1],
    FIXTURE_EVENTS[1:6],
    FIXTURE_EVENTS[6:7],
    FIXTURE_EVENTS[7:8],
    FIXTURE_EVENTS[8:],
)
FIXTURE_TEXT = "The capital of France is Paris — famous for its cafés."
QUESTION = LLMRequest(
    model="gpt-4o-mini", messages=[Message(role=Role.USER, content="What is the capital of France?")], stream=True
)


def sse(events: list[bytes], *, trailing: bytes = b"\n\n") -> bytes:
    return b"\n\n".join(events) + trailing


@pytest.fixture
def openai_fake(upstreams: dict[ProviderID, Any]) -> Any:
    return upstreams[P]


@pytest.fixture
async def make_client(upstreams: dict[ProviderID, Any]) -> AsyncIterator[Callable[..., OpenAIClient]]:
    settings = fake_settings(upstreams).openai
    assert settings is not None and settings.api_key is not None
    async with aiohttp.ClientSession() as session:

        def make(checkpoint_every: int = 20) -> OpenAIClient:
            credentials = APIKeyCredentialProvider(settings.api_key, env_var="OPENAI_API_KEY")
            return OpenAIClient(
                settings=settings, credentials=credentials, session=session, checkpoint_every=checkpoint_every
            )

        yield make


async def fault_free(client: OpenAIClient) -> list[LLMChunk]:
    return await drain(client.generate_stream(QUESTION))


def test_the_fixture_stream_is_the_shape_these_tests_assume() -> None:
    assert len(FIXTURE_EVENTS) == 9 and DONE == [b"data: [DONE]"]
    assert b'"role":"assistant"' in ROLE[0] and b'"finish_reason":"stop"' in FINISH[0] and b'"usage":{' in USAGE[0]


@pytest.mark.parametrize(("every", "sizes"), [(1, [1, 2, 3, 4, 5, 6, 7, 8, 8]), (3, [3, 6, 8]), (100, [8])])
async def test_a_real_stream_is_checkpointed_every_n_chunks_and_at_its_end(
    make_client: Callable[..., OpenAIClient], every: int, sizes: list[int]
) -> None:
    taken: list[StreamCheckpoint] = []

    out = await drain(make_client(checkpoint_every=every).generate_stream(QUESTION, taken.append))

    assert len(out) == 8
    assert [len(c.chunks) for c in taken] == sizes
    assert [c.done for c in taken] == [False] * (len(sizes) - 1) + [True]
    assert taken[-1].chunks == out
    assert text_of(taken[-1].chunks) == FIXTURE_TEXT


async def test_a_stream_that_fails_is_not_checkpointed_as_done(
    make_client: Callable[..., OpenAIClient], openai_fake: Any
) -> None:
    taken: list[StreamCheckpoint] = []
    openai_fake.inject(Fault(drop_after_chunks=4))

    with pytest.raises(ProviderConnectionError):
        await drain(make_client(checkpoint_every=2).generate_stream(QUESTION, taken.append))

    assert [len(c.chunks) for c in taken] == [2, 4]
    assert not any(c.done for c in taken)


@pytest.mark.parametrize(
    "k",
    [
        *range(0, 7),
        pytest.param(7, id="7-finish-in-checkpoint"),
        pytest.param(8, id="8-all-but-not-done"),
    ],
)
async def test_resuming_from_a_checkpoint_of_k_chunks_yields_exactly_the_fault_free_answer(
    make_client: Callable[..., OpenAIClient], openai_fake: Any, k: int
) -> None:
    client = make_client()
    reference = await fault_free(client)
    saved = StreamCheckpoint(reference[:k], k - 1)

    out = await drain(client.resume_from_checkpoint(saved, QUESTION))

    assert out[:k] == reference[:k]
    assert text_of(out) == FIXTURE_TEXT
    assert finishes(out) == [(0, STOP)]
    assert usages(out) == usages(reference)
    assert len(openai_fake.requests) == 2


async def test_resuming_a_done_checkpoint_sends_no_request(
    make_client: Callable[..., OpenAIClient], openai_fake: Any
) -> None:
    client = make_client(checkpoint_every=100)
    taken: list[StreamCheckpoint] = []
    await drain(client.generate_stream(QUESTION, taken.append))
    (final,) = taken

    out = await drain(client.resume_from_checkpoint(final, QUESTION))

    assert out == final.chunks
    assert len(openai_fake.requests) == 1


async def test_resuming_against_a_different_answer_raises_stream_interrupted(
    make_client: Callable[..., OpenAIClient],
) -> None:
    saved = StreamCheckpoint([role(), say("The capital of Italy")], 1)

    with pytest.raises(StreamInterruptedError, match="could not be resumed"):
        await drain(make_client().resume_from_checkpoint(saved, QUESTION))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(sse(ROLE + TEXT + FINISH + USAGE), id="no-done"),
        pytest.param(sse(ROLE + TEXT + FINISH + USAGE, trailing=b"\n"), id="no-done-last-event-unterminated"),
        pytest.param(sse(ROLE + TEXT + FINISH + USAGE, trailing=b""), id="no-done-no-trailing-newline"),
    ],
)
async def test_a_stream_ending_after_its_finish_reason_without_done_is_complete(
    make_client: Callable[..., OpenAIClient], openai_fake: Any, body: bytes
) -> None:
    openai_fake.inject(Fault(body=body))

    out = await drain(make_client().generate_stream(QUESTION))

    assert text_of(out) == FIXTURE_TEXT
    assert finishes(out) == [(0, STOP)]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(sse(ROLE + TEXT), id="text-then-eof"),
        pytest.param(sse(ROLE + TEXT[:2]), id="cut-mid-answer"),
        # The usage the client (or the gateway, for accounting) asked for is part of a whole answer.
        pytest.param(sse(ROLE + TEXT + FINISH), id="no-usage-no-done"),
    ],
)
async def test_a_stream_ending_before_its_finish_reason_raises_a_retryable_error(
    make_client: Callable[..., OpenAIClient], openai_fake: Any, body: bytes
) -> None:
    openai_fake.inject(Fault(body=body))
    received: list[LLMChunk] = []

    with pytest.raises(ProviderConnectionError) as raised:
        await drain_into(make_client().generate_stream(QUESTION), received)

    assert raised.value.retryable
    assert raised.value.code == "upstream_malformed_response"
    assert FIXTURE_TEXT.startswith(text_of(received))


async def test_a_connection_dropped_mid_stream_raises_a_retryable_error(
    make_client: Callable[..., OpenAIClient], openai_fake: Any
) -> None:
    openai_fake.inject(Fault(drop_after_chunks=3))

    with pytest.raises(ProviderError) as raised:
        await drain(make_client().generate_stream(QUESTION))

    assert raised.value.retryable


@pytest.mark.parametrize("drop_after", [1, 2, 4, 6, pytest.param(7, id="7-after-finish")])
async def test_a_replaying_stream_over_the_real_client_recovers_a_dropped_connection(
    make_client: Callable[..., OpenAIClient], openai_fake: Any, drop_after: int
) -> None:
    client = make_client()
    reference = await fault_free(client)
    openai_fake.inject(Fault(drop_after_chunks=drop_after))

    async def reopen(sent: Transcript, error: ProviderError) -> tuple[AsyncIterator[LLMChunk], bool]:
        return client.generate_stream(QUESTION), False

    stream = retry_async_generator(client.generate_stream(QUESTION), reopen, max_buffer_chunks=50, max_replays=1)
    out = await drain(stream)

    assert text_of(out) == FIXTURE_TEXT
    assert finishes(out) == [(0, STOP)]
    assert usages(out) == usages(reference)  # cut between the finish and the usage: replayed for the usage
    assert stream.replays == 1


def test_a_weighed_store_drops_the_oldest_entries_past_its_weight_limit() -> None:
    clock = ManualClock()
    store: TTLStore[str] = TTLStore(ttl=60, max_entries=100, clock=clock, weigh=len, max_weight=10)
    store.put("a", "xxxx")
    store.put("b", "yyyy")
    store.put("a", "xxx")  # rewritten: weighs again, now the newest

    assert store.weight == 7
    store.put("c", "zzzzz")  # 12 > 10: the oldest (b) goes

    assert store.get("b") is None
    assert (store.get("a"), store.get("c"), store.weight) == ("xxx", "zzzzz", 8)
    clock.now += 61
    assert len(store) == 0 and store.weight == 0
