"""What a provider attached to a tool call, kept until the client sends the call back.

A provider's own tool-call id (the client sees a normalised one: `tool_ids.py`), and Gemini's
`thoughtSignature`, must go back with a call on the next turn. OpenAI clients only send back the tool
call's `id`, so the clients store that data here under the client-visible id when they decode a
response and look it up when they encode the follow-up request.

This store lives in process memory: bounded, oldest evicted first, entries expire after a TTL, and
everything is lost on restart (the follow-up turn is then sent without the data). A later issue
moves it behind the shared state backend (Redis) so that replicas share it and it survives restarts.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from llm_service.core.config.constants import ProviderID


@dataclass(frozen=True, slots=True)
class ProviderCallData:
    """What a provider attached to one tool call that must go back with it on the next turn."""

    provider_id: str | None = None  # the upstream's own tool-call id (Gemini: 3-class models only)
    thought_signature: str | None = None  # Gemini's part-level thoughtSignature
    provider: ProviderID | None = None  # who issued the call: its own id goes back only to it


class ToolCallStore:
    """In-memory, bounded (max_entries, oldest evicted first), entries expire after ttl_seconds (injected clock).

    Every entry lives for the same TTL and a `put` moves its key to the end, so insertion order is
    expiry order: expired entries are always at the front and are purged from there in O(expired).
    """

    def __init__(
        self, *, ttl_seconds: float = 86400.0, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._ttl = ttl_seconds
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, ProviderCallData]] = OrderedDict()

    def put(self, call_id: str, data: ProviderCallData) -> None:
        now = self._clock()
        self._purge(now)
        self._entries[call_id] = (now + self._ttl, data)
        self._entries.move_to_end(call_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def get(self, call_id: str) -> ProviderCallData | None:
        self._purge(self._clock())
        entry = self._entries.get(call_id)
        return None if entry is None else entry[1]

    def __len__(self) -> int:
        self._purge(self._clock())
        return len(self._entries)

    def _purge(self, now: float) -> None:
        entries = self._entries
        while entries:
            expires, _ = next(iter(entries.values()))
            if expires > now:
                return
            entries.popitem(last=False)
