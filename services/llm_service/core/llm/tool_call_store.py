"""What a provider attached to a tool call, kept until the client sends the call back.

A provider's own tool-call id (the client sees a normalised one: `tool_ids.py`), and Gemini's
`thoughtSignature`, must go back with a call on the next turn. OpenAI clients only send back the tool
call's `id`, so the clients store that data here under the client-visible id when they decode a
response and look it up when they encode the follow-up request.

This store lives in process memory: bounded, oldest evicted first, entries expire after a TTL. Shared
(`share()`: the dispatcher's state backend, when replicas share one, i.e. Redis), what is put here is
also kept there for the same TTL, and a follow-up turn that reaches another replica (or this one after a
restart) fetches the calls it does not know before it is encoded (`fetch()`: one lookup a call, only for
calls not known here). Without sharing, or while the shared state is unreachable, a follow-up turn
elsewhere is sent without the data (Gemini then gets its documented placeholder signature).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import orjson

from llm_service.core.config.constants import ProviderID


@dataclass(frozen=True, slots=True)
class ProviderCallData:
    """What a provider attached to one tool call that must go back with it on the next turn."""

    provider_id: str | None = None  # the upstream's own tool-call id (Gemini: 3-class models only)
    thought_signature: str | None = None  # Gemini's part-level thoughtSignature
    provider: ProviderID | None = None  # who issued the call: its own id goes back only to it


class SharedValues(Protocol):
    """Where every replica reads what one keeps: the dispatcher's state backend, whose store of values
    with a TTL (named for stream checkpoints, its first use) is shared while its state is (not `local`)."""

    @property
    def local(self) -> bool: ...

    def put_checkpoint(self, key: str, data: bytes, ttl: float) -> None: ...

    async def get_checkpoint(self, key: str) -> bytes | None: ...


#: Where a call's data is kept in the shared values, by its client-visible id.
_SHARED_KEY = "toolcall:"
#: The most calls one request looks up in the shared values (its latest ones: Gemini checks the signatures
#: of the current turn), so that a request made of invented ids costs a bounded number of lookups.
MAX_FETCHED_CALLS = 128


class ToolCallStore:
    """In-memory, bounded (max_entries, oldest evicted first), entries expire after ttl_seconds (injected clock).

    Entries put here live for the same TTL and a `put` moves its key to the end, so insertion order is
    (nearly) expiry order: expired entries are purged from the front in O(expired). An entry fetched from
    the shared store keeps only the rest of its TTL there, so it may expire before older ones: `get`
    checks each entry's own expiry, and the purge reaches it in its turn (`max_entries` bounds them all).
    `wall_clock` (epoch seconds) dates what is shared, since replicas share no monotonic clock.
    """

    def __init__(
        self,
        *,
        ttl_seconds: float = 86400.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._ttl = ttl_seconds
        self._max = max_entries
        self._clock = clock
        self._wall_clock = wall_clock
        self._entries: OrderedDict[str, tuple[float, ProviderCallData]] = OrderedDict()
        #: Where replicas share the data (`share()`); None: this process only.
        self.shared: SharedValues | None = None

    def share(self, shared: SharedValues) -> None:
        """From now on also keep every call's data in `shared`, and let `fetch()` look there."""
        self.shared = shared

    def put(self, call_id: str, data: ProviderCallData) -> None:
        self._keep(call_id, data, self._ttl)
        shared = self.shared
        if shared is not None and not shared.local:
            expires = self._wall_clock() + self._ttl
            shared.put_checkpoint(_SHARED_KEY + call_id, _encoded(data, expires), self._ttl)

    async def fetch(self, call_ids: Iterable[str]) -> None:
        """Bring in what the shared store holds of the calls in `call_ids` this store does not know (a
        conversation begun on another replica): the latest `MAX_FETCHED_CALLS` of them, in one round trip
        (the backend pipelines the lookups). Nothing without sharing, or while it is unreachable; a lookup
        that fails finds nothing (the call then goes without its data, as without sharing)."""
        shared = self.shared
        if shared is None or shared.local:
            return
        missing = [c for c in dict.fromkeys(call_ids) if _issued_form(c) and self.get(c) is None][-MAX_FETCHED_CALLS:]
        if not missing:
            return
        try:
            found = await asyncio.gather(*(shared.get_checkpoint(_SHARED_KEY + call_id) for call_id in missing))
        except Exception:  # the backend's own failure (it degrades itself); never the request's
            return
        now = self._wall_clock()
        for call_id, raw in zip(missing, found, strict=True):
            kept = _decoded(raw) if raw is not None else None
            if kept is not None and kept[1] > now:
                self._keep(call_id, kept[0], min(kept[1] - now, self._ttl))

    def _keep(self, call_id: str, data: ProviderCallData, ttl: float) -> None:
        now = self._clock()
        self._purge(now)
        self._entries[call_id] = (now + ttl, data)
        self._entries.move_to_end(call_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def get(self, call_id: str) -> ProviderCallData | None:
        now = self._clock()
        self._purge(now)
        entry = self._entries.get(call_id)
        return None if entry is None or entry[0] <= now else entry[1]

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


def _issued_form(call_id: str) -> bool:
    """Whether `call_id` has the form of the ids the service issues (`tool_ids.normalize_tool_call_id`:
    `call_` and 24 base62 characters): only such ids were ever kept, so only they are looked up."""
    return len(call_id) == 29 and call_id.startswith("call_") and call_id.isascii() and call_id[5:].isalnum()


def _encoded(data: ProviderCallData, expires: float) -> bytes:
    """A call's data for the shared store, with when it expires (epoch seconds)."""
    provider = data.provider.value if data.provider is not None else None
    fields = {"provider": provider, "id": data.provider_id, "signature": data.thought_signature, "expires": expires}
    return orjson.dumps(fields)


def _decoded(raw: bytes) -> tuple[ProviderCallData, float] | None:
    """A call's data and expiry as `_encoded` wrote them; None for anything else (a key not ours, say)."""
    try:
        fields = orjson.loads(raw)
        provider, expires = fields["provider"], fields["expires"]
        data = ProviderCallData(
            provider_id=fields["id"],
            thought_signature=fields["signature"],
            provider=ProviderID(provider) if provider is not None else None,
        )
    except (orjson.JSONDecodeError, TypeError, KeyError, ValueError):
        return None
    texts = (data.provider_id, data.thought_signature)
    if not all(text is None or type(text) is str for text in texts) or type(expires) not in (int, float):
        return None
    return data, float(expires)
