"""A routed stream holding its deployment slot until it ends, with a limit on the silence between chunks
(`deadlines.IdleWatchdog`)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

from llm_service.core.llm.dispatch.attempt_trace import AttemptOutcome
from llm_service.core.llm.dispatch.deadlines import IdleWatchdog
from llm_service.core.llm.dispatch.pool import Slot
from llm_service.core.llm.models import LLMChunk, ProviderError, Usage
from llm_service.core.llm.retry import close_stream


class HeldStream:
    """A routed stream holding its deployment slot, which it ends exactly once however the stream ends:
    at its end (success, with the usage seen), on an upstream error (failure), or when closed early or
    never read at all (abandoned) — `aclose()` works on a stream that was never started. A traced attempt
    also collects what the chunks say about the answer (id, model, finish reasons, usage) for its trace."""

    def __init__(
        self, slot: Slot, first: LLMChunk | None, rest: AsyncIterator[LLMChunk], *, idle_timeout: float = math.inf
    ) -> None:
        self._slot = slot
        self._idle = IdleWatchdog(idle_timeout, slot.deployment.provider)
        self._first = first
        self._rest = rest
        self._usage: Usage | None = None
        self._outcome = AttemptOutcome() if slot.trace is not None else None
        self._exhausted = first is None

    def __aiter__(self) -> HeldStream:
        return self

    async def __anext__(self) -> LLMChunk:
        chunk = self._first
        if chunk is not None:
            self._first = None
        elif self._exhausted:
            raise StopAsyncIteration
        else:
            idle = self._idle
            cancelling = idle.begin()  # IdleWatchdog.next() spelled out: a coroutine less a chunk
            try:
                chunk = await anext(self._rest)
            except asyncio.CancelledError:
                idle.close()
                if not idle.silent(cancelling):
                    self._slot.abandoned()
                    raise
                error = idle.timeout_error()
                self._slot.failed(error)
                raise error from None
            except StopAsyncIteration:
                self._exhausted = True
                self._idle.close()
                self._slot.succeeded(self._usage, self._outcome)
                raise
            except ProviderError as error:
                self._idle.close()
                self._slot.failed(error)
                raise
            except BaseException:
                self._idle.close()
                self._slot.abandoned()
                raise
            finally:
                idle.end()
        if chunk.usage is not None:
            self._usage = chunk.usage
        if self._outcome is not None:
            self._outcome.see(chunk)
        return chunk

    async def aclose(self) -> None:
        self._idle.close()
        self._slot.abandoned()  # a no-op when the stream already ended
        await close_stream(self._rest)
