"""A deployment's limiter when replicas share state: this replica's view of a deployment whose limits
are counted for every replica together (`RedisState`).

It counts this replica's own admissions as any `DeploymentLimiter` does, against this replica's share
of the limits (each divided by the replica count). While the shared state answers, admission is
decided there and the share is not consulted: `room_in()` says what the last answer for the
deployment said (for at most `HINT_SECONDS`; older, it says nothing and the next request asks), so that
a burst past an RPM limit is told when to come back without a round trip each. While the shared state
is unreachable, the share decides, as a `DeploymentLimiter` would alone. A 429 pause is published to
every replica; a permit of a shared admission frees its lease and corrects its tokens there too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, Protocol

from typing_extensions import override

from llm_service.core.llm.dispatch.limits import DeploymentLimiter, Limits, Permit, _Admission

#: How long what the shared state said about a deployment's room is taken as still true.
HINT_SECONDS = 1.0


class SharedLink(Protocol):
    """What a shared limiter needs from its backend."""

    @property
    def local(self) -> bool: ...

    def publish_pause(self, limiter: SharedLimiter, seconds: float) -> None: ...

    def settle(self, limiter: SharedLimiter, lease: str, *, free: bool, used_tokens: int | None) -> None: ...


class SharedLimiter(DeploymentLimiter):
    def __init__(
        self,
        limits: Limits,
        *,
        keys: tuple[str, ...],
        replicas: int,
        link: SharedLink,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(limits.share(replicas), clock=clock)
        self.shared_limits = limits
        #: The deployment's keys in the shared state, in the order the scripts take them.
        self.keys = keys
        #: The limits as the scripts take them (0: none).
        self.limit_args = tuple(value or 0 for value in (limits.max_concurrency, limits.rpm, limits.tpm))
        self._link = link
        self._hint_at = -math.inf
        self._hint_room = 0.0

    @override
    def fits(self, tokens: int) -> bool:
        """Against the whole TPM limit: a request the replicas together can take is not refused as too large."""
        return self.shared_limits.tpm is None or tokens <= self.shared_limits.tpm

    @override
    def room_in(self, tokens: int) -> float:
        if self._link.local:
            return super().room_in(tokens)
        if not self.fits(tokens):
            return math.inf
        now = self._clock()
        if now - self._hint_at > HINT_SECONDS:
            return 0.0
        return max(self._hint_room - (now - self._hint_at), 0.0)

    @override
    def try_acquire(self, tokens: int) -> Permit | None:
        """Admit on this replica's share while the shared state is unreachable; while it answers, only it
        admits (a caller that began waiting during an outage is refused here, and waits on)."""
        return super().try_acquire(tokens) if self._link.local else None

    def learn(self, room: float) -> None:
        """What the shared state just said: seconds until the deployment's limits have room (inf: only a
        release can help; 0: room now)."""
        self._hint_at = self._clock()
        self._hint_room = room

    @override
    def pause(self, seconds: float) -> None:
        super().pause(seconds)
        if seconds > 0:
            self._link.publish_pause(self, seconds)

    def granted(self, tokens: int, lease: str) -> Permit:
        """Count an admission the shared state granted under `lease`; its permit settles it there too."""
        self._hint_at = -math.inf
        return SharedPermit(self, self._count(tokens), lease)

    @override
    def snapshot(self) -> dict[str, Any]:
        snapshot = super().snapshot()
        shared = self.shared_limits
        snapshot["replica_limits"] = snapshot["limits"]
        snapshot["limits"] = {"max_concurrency": shared.max_concurrency, "rpm": shared.rpm, "tpm": shared.tpm}
        return snapshot


class SharedPermit(Permit):
    """The permit of an admission granted by the shared state: released here and there."""

    __slots__ = ("_lease", "_shared")

    def __init__(self, limiter: SharedLimiter, admission: _Admission, lease: str) -> None:
        super().__init__(limiter, admission)
        self._shared = limiter
        self._lease = lease

    @override
    def release(self, used_tokens: int | None = None) -> None:
        free = not self.released
        correct = used_tokens is not None and not self._corrected
        super().release(used_tokens)
        if free or correct:
            used = max(used_tokens, 0) if used_tokens is not None and correct else None
            self._shared._link.settle(self._shared, self._lease, free=free, used_tokens=used)
