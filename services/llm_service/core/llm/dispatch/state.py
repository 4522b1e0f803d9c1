"""The dispatcher's state that replicas share, behind one small protocol: `StateBackend`.

What it holds, per deployment and for streams:

- rate-limit accounting and concurrency slots: `limiter()` hands the pool one `DeploymentLimiter` per
  deployment, this replica's own accounting (its admissions, 429 pauses). While admission is `local`
  the limiters decide it, synchronously; otherwise `acquire()` takes capacity in the shared state
  (one round trip, the first of several deployments with room) and the limiter only counts it;
- breaker state: `breaker_moved()` hears every transition of this replica's breakers, and `acquire()`
  names the deployments another replica's breaker holds open, which the pool's breakers then follow;
- stream checkpoints: `put_checkpoint()` (written in the background where the store is remote) and
  `get_checkpoint()`, each kept for its TTL;
- resumable streams' events: `stream_log()` is where every replica can read them (`StreamLog`), or None
  when no other replica can (the producing process holds its streams itself).

`MemoryState` keeps everything in this process: admission is always local, with nothing to await, so
a single process pays nothing for the protocol. Told it is one of several replicas (`LLM_REPLICAS`, e.g.
uvicorn workers without a Redis), it admits its share of each limit, so that together they stay within.
`RedisState` (`redis_state.py`, when `REDIS_URL` is set) keeps it in Redis, and is `local` only while
Redis is unreachable (`degraded`), each replica then admitting its share of the limits. Nothing above
this protocol knows which backend it has.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from llm_service.core.llm.dispatch.breaker import Transition
from llm_service.core.llm.dispatch.limits import DeploymentLimiter, Limits, Permit

if TYPE_CHECKING:
    from llm_service.core.config.settings import Deployment, Settings

Clock = Callable[[], float]


#: Why a backend is degraded (`StateBackend.degraded_reason`).
UNREACHABLE, REFUSED = "unreachable", "refused"
DEGRADED_REASONS = (UNREACHABLE, REFUSED)


class StateUnavailable(Exception):
    """The shared state did not answer, and the backend is `local` (degraded) from now on until it does; or
    it answered this call with an error."""


@dataclass(slots=True)
class Acquired:
    """What `acquire()` found: the position of the limiter that admitted the request and its permit (None:
    no room anywhere), and, by position, the seconds another replica's breaker holds a deployment open."""

    index: int | None = None
    permit: Permit | None = None
    opened_elsewhere: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StreamPage:
    """What a `StreamLog` holds of one stream after an index: `events` as (index, encoded event) in order;
    `end`, when the stream's end follows them, its number of events (the index its end took); `oldest`,
    the index of the oldest entry still kept."""

    oldest: int
    events: list[tuple[int, bytes]]
    end: int | None


class StreamLog(Protocol):
    """Resumable streams' events where every replica reads them: the producing replica appends (in the
    background, never awaited), any replica reads them back, live ones as they come."""

    def append(self, key: str, index: int, event: bytes) -> None:
        """Event `index` of stream `key` (the one after `index - 1`)."""
        ...

    def end(self, key: str, count: int) -> None:
        """Stream `key` ended after its `count` events."""
        ...

    async def read(self, key: str, after: int, *, wait: float) -> StreamPage | None:
        """Stream `key` after index `after`, waiting up to `wait` seconds for an event when there is none
        yet (an empty page then); None when the stream is not kept (never written, or expired);
        `StateUnavailable` when the log does not answer."""
        ...


class StateBackend(Protocol):
    """The dispatcher's shared state; see the module docstring."""

    #: Whether other replicas read what this one keeps (Redis; not this process's memory): what a
    #: conversation needs on its next turn (tool-call data) is then kept here too.
    replicated: bool

    @property
    def local(self) -> bool:
        """Whether admission is decided by the limiters alone, now, without `acquire()`."""
        ...

    @property
    def degraded(self) -> bool:
        """Whether shared state is configured but unreachable (each replica on its share of the limits)."""
        ...

    @property
    def degraded_reason(self) -> str | None:
        """Why it is degraded (`DEGRADED_REASONS`): `unreachable` (the link failed: refused, dropped, timed
        out) or `refused` (it answered the limits' own writes with an error: full, read-only, a key of
        another type); None while not degraded."""
        ...

    @property
    def poll_interval(self) -> float:
        """How often a waiting request asks again for capacity freed elsewhere (inf: every release here
        is announced, no need to ask)."""
        ...

    @property
    def error_replies(self) -> Mapping[str, int]:
        """How many commands the shared state answered with an error (out of memory, ...), by error class:
        what they would have written is lost."""
        ...

    def limiter(self, deployment: Deployment) -> DeploymentLimiter:
        """A new limiter for `deployment`: this replica's accounting of its traffic."""
        ...

    async def acquire(self, limiters: Sequence[DeploymentLimiter], tokens: int) -> Acquired:
        """Admit a request of `tokens` on the first of `limiters` whose deployment has room in the shared
        state, atomically for every replica; raises `StateUnavailable` when the state does not answer."""
        ...

    def breaker_moved(self, deployment: Deployment, transition: Transition) -> None:
        """A breaker of this replica changed state (an opening is then avoided by every replica)."""
        ...

    async def admit_caller(self, caller: str, rpm: int) -> float | None:
        """A request of the API key `caller` (an id of the key, never the key) counted in the window of its
        `rpm` requests a minute that every replica shares: None when admitted, else the seconds until the
        window has room. StateUnavailable when there is no shared window (no Redis, or none reachable):
        the replica then counts the key's requests on its own share of the rate."""
        ...

    def put_checkpoint(self, key: str, data: bytes, ttl: float) -> None:
        """Keep `data` under `key` for `ttl` seconds (replacing what was there)."""
        ...

    async def get_checkpoint(self, key: str) -> bytes | None:
        """What `put_checkpoint` kept under `key`, unless it expired."""
        ...

    def stream_log(self, *, keep: int, ttl: float) -> StreamLog | None:
        """Where resumable streams' events are kept for every replica to read: the last `keep` of each,
        `ttl` seconds after its last write (the same log on every call); None when no other replica can."""
        ...

    def start(self) -> None:
        """Start background work (lease renewal, reconnection) on the running event loop."""
        ...

    async def aclose(self) -> None: ...

    def status(self) -> dict[str, Any]:
        """What /health shows: the backend, and whether the state is shared now."""
        ...


class MemoryCheckpoints:
    """Checkpoints in this process: each kept for its own TTL, at most `max_entries` of them and
    `max_bytes` in all (the least recently written dropped first)."""

    def __init__(self, *, max_entries: int, max_bytes: int, clock: Clock = time.monotonic) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._clock = clock
        self._bytes = 0
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def put(self, key: str, data: bytes, ttl: float) -> None:
        self._drop(key)
        self._entries[key] = (self._clock() + ttl, data)
        self._bytes += len(data)
        now = self._clock()
        while self._entries:
            oldest_key, (until, _) = next(iter(self._entries.items()))
            if until > now and len(self._entries) <= self._max_entries and self._bytes <= self._max_bytes:
                break
            self._drop(oldest_key)

    def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            self._drop(key)
            return None
        return entry[1]

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry[1])


class MemoryState:
    """Everything in this process: the default, and what one process needs."""

    replicated = False

    def __init__(
        self, *, clock: Clock = time.monotonic, checkpoints: MemoryCheckpoints | None = None, replicas: int = 1
    ) -> None:
        self._clock = clock
        self._replicas = replicas
        if checkpoints is None:
            checkpoints = MemoryCheckpoints(max_entries=10_000, max_bytes=256 << 20, clock=clock)
        self._checkpoints = checkpoints

    @property
    def local(self) -> bool:
        return True

    @property
    def degraded(self) -> bool:
        return False

    @property
    def degraded_reason(self) -> str | None:
        return None

    @property
    def poll_interval(self) -> float:
        return float("inf")

    @property
    def error_replies(self) -> Mapping[str, int]:
        return {}

    def limiter(self, deployment: Deployment) -> DeploymentLimiter:
        return DeploymentLimiter(Limits.of(deployment).share(self._replicas), clock=self._clock)

    async def acquire(self, limiters: Sequence[DeploymentLimiter], tokens: int) -> Acquired:
        for index, limiter in enumerate(limiters):
            permit = limiter.try_acquire(tokens)
            if permit is not None:
                return Acquired(index, permit)
        return Acquired()

    def breaker_moved(self, deployment: Deployment, transition: Transition) -> None:
        return None  # nobody else to tell

    async def admit_caller(self, caller: str, rpm: int) -> float | None:
        raise StateUnavailable("no state shared with other replicas")

    def put_checkpoint(self, key: str, data: bytes, ttl: float) -> None:
        self._checkpoints.put(key, data, ttl)

    async def get_checkpoint(self, key: str) -> bytes | None:
        return self._checkpoints.get(key)

    def stream_log(self, *, keep: int, ttl: float) -> StreamLog | None:
        return None  # this process's own sessions hold its streams, and nobody else resumes them

    def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {"backend": "memory", "shared": False, "degraded": False, "reason": None}


def state_backend(settings: Settings, *, clock: Clock = time.monotonic) -> StateBackend:
    """The backend the settings ask for: Redis with `REDIS_URL` (redis-py is imported only then), else memory."""
    streaming = settings.streaming
    checkpoints = MemoryCheckpoints(
        max_entries=streaming.max_resumable_streams, max_bytes=streaming.stream_resume_max_bytes, clock=clock
    )
    scale_out = settings.scale_out
    if scale_out.redis_url is None:
        return MemoryState(clock=clock, checkpoints=checkpoints, replicas=scale_out.replicas)
    from llm_service.core.llm.dispatch.redis_state import RedisState

    return RedisState.from_settings(scale_out, clock=clock, checkpoints=checkpoints)
