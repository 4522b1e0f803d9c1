"""Circuit breaker for one deployment: closed -> open -> half-open -> closed, on an injected clock.

```
          failure ratio >= threshold              cooldown elapsed
closed ─────────────────────────────────► open ───────────────────► half_open
  ▲        (or trip(), from closed or half_open)  ▲                       │
  │                                               └─── a probe failed ────┤
  └────────────────────────── a probe succeeded ──────────────────────────┘
```

closed     every call goes through; outcomes go into a sliding time window (`OutcomeWindow`). The
           failure that brings the window's failure ratio to `failure_ratio`, with at least
           `min_calls` calls in it, opens the breaker.
open       nothing goes through for `cooldown_seconds` (or what `trip()` was told); `open_for()` is the
           Retry-After for callers. Becomes half-open on the first look after that.
half_open  up to `half_open_probes` calls go through at once; the first probe verdict decides:
           success closes (with a fresh window), failure opens again for a new cooldown.

A health check (`dispatch/health.py`) may look at an open breaker before its cooldown ends:
`health_check_passed()` turns it half-open at once, a failed check `trip()`s it open for a new cooldown.

A verdict that arrives while open, or while half-open with no probe in flight, belongs to a call
admitted before the breaker opened and is ignored: only probes decide a half-open breaker. Every
transition is reported once to `on_transition` and logged as one structured event on
`llm_service.breaker`. Nothing here sleeps, locks or reads the wall clock: it runs on the event loop
and time comes only from `clock`.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

log = logging.getLogger("llm_service.breaker")

Clock = Callable[[], float]

#: Reasons of the transitions the breaker makes on its own; `trip()` brings its caller's reason.
REASON_FAILURE_RATIO = "failure_ratio"
REASON_COOLDOWN = "cooldown_elapsed"
REASON_PROBE_SUCCEEDED = "probe_succeeded"
REASON_PROBE_FAILED = "probe_failed"
REASON_HEALTH_CHECK_PASSED = "health_check_passed"
REASON_HEALTH_CHECK_FAILED = "health_check_failed"
#: Another replica opened the deployment's breaker (shared state): this one follows.
REASON_OPENED_ELSEWHERE = "opened_by_another_replica"


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a breaker opens, how long it stays open, and how it probes its way back.

    `window_buckets` is the window's resolution: outcomes are counted per `window_seconds /
    window_buckets` seconds, which bounds memory whatever the call rate.
    """

    failure_ratio: float = 0.5  # open when failures/calls over the window >= this ...
    min_calls: int = 10  # ... and the window holds at least this many calls
    window_seconds: float = 60.0  # sliding time window of recorded outcomes
    cooldown_seconds: float = 30.0  # open -> half_open after this long
    half_open_probes: int = 1  # probe requests let through at once while half-open
    window_buckets: int = 60

    def __post_init__(self) -> None:
        checks = {
            "failure_ratio must be in (0, 1]": 0.0 < self.failure_ratio <= 1.0,
            "min_calls must be at least 1": self.min_calls >= 1,
            "window_seconds must be positive and finite": 0.0 < self.window_seconds < math.inf,
            "cooldown_seconds must be non-negative and finite": 0.0 <= self.cooldown_seconds < math.inf,
            "half_open_probes must be at least 1": self.half_open_probes >= 1,
            "window_buckets must be at least 1": self.window_buckets >= 1,
        }
        problems = [problem for problem, ok in checks.items() if not ok]
        if problems:
            raise ValueError(f"invalid BreakerPolicy: {'; '.join(problems)}")


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change of breaker `name`, with the window as it stood at time `at` (clock time)."""

    name: str
    from_state: BreakerState
    to_state: BreakerState
    reason: str
    failure_ratio: float
    window_calls: int
    at: float
    #: Seconds the breaker stays open (0.0 unless the transition opened it); not part of equality.
    open_for: float = field(default=0.0, compare=False)


def failure_ratio(calls: int, failures: int) -> float:
    """failures/calls, 0.0 for an empty window."""
    return failures / calls if calls else 0.0


def should_open(calls: int, failures: int, policy: BreakerPolicy) -> bool:
    """Whether a closed breaker whose window holds `calls` outcomes, `failures` of them failed, opens."""
    return calls >= policy.min_calls and failure_ratio(calls, failures) >= policy.failure_ratio


@dataclass(slots=True)
class _Bucket:
    index: int
    calls: int = 0
    failures: int = 0


class OutcomeWindow:
    """Call outcomes of the last `seconds`, counted in `buckets` time buckets.

    O(1) amortised per record and at most `buckets` buckets held. An outcome leaves when its bucket
    is a whole window old, so it counts for at most `seconds` and at least `seconds - seconds/buckets`.
    Time is passed in; a clock that steps back lands in the newest bucket.
    """

    __slots__ = ("_buckets", "_calls", "_failures", "_size", "_width")

    def __init__(self, seconds: float, buckets: int) -> None:
        self._width = seconds / buckets
        self._size = buckets
        self._buckets: deque[_Bucket] = deque()
        self._calls = 0
        self._failures = 0

    def record(self, now: float, *, ok: bool) -> None:
        index = self._prune(now)
        if not self._buckets or self._buckets[-1].index < index:
            self._buckets.append(_Bucket(index))
        bucket = self._buckets[-1]
        bucket.calls += 1
        self._calls += 1
        if not ok:
            bucket.failures += 1
            self._failures += 1

    def counts(self, now: float) -> tuple[int, int]:
        """(calls, failures) in the window ending at `now`."""
        self._prune(now)
        return self._calls, self._failures

    def reset(self) -> None:
        self._buckets.clear()
        self._calls = 0
        self._failures = 0

    def _prune(self, now: float) -> int:
        index = math.floor(now / self._width)
        oldest_kept = index - self._size + 1
        while self._buckets and self._buckets[0].index < oldest_kept:
            gone = self._buckets.popleft()
            self._calls -= gone.calls
            self._failures -= gone.failures
        return index


class CircuitBreaker:
    """The breaker of one deployment. Ask `allow()` before a call; report its end with exactly one of
    `record_success()`, `record_failure()` or `record_cancelled()`."""

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy,
        *,
        clock: Clock = time.monotonic,
        on_transition: Callable[[Transition], None] | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        self._clock = clock
        self._on_transition = on_transition
        self._window = OutcomeWindow(policy.window_seconds, policy.window_buckets)
        self._state = BreakerState.CLOSED
        self._open_until = 0.0
        self._probes = 0
        self._since = clock()

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose cooldown has passed turns half-open here."""
        return self._current(self._clock())

    def allow(self) -> bool:
        """Whether a call may go through now; while half-open, an admitted call is a probe."""
        return self.admit() is not None

    def admit(self) -> BreakerState | None:
        """`allow()`, saying in which state the call went through (HALF_OPEN: it is a probe), None if
        refused: one look at the clock, so that the caller cannot see one state and be admitted in another
        (a cooldown ending between two looks would take a probe slot for a call not counted as a probe)."""
        state = self._current(self._clock())
        if state is BreakerState.HALF_OPEN:
            if self._probes >= self.policy.half_open_probes:
                return None
            self._probes += 1
            return state
        return state if state is BreakerState.CLOSED else None

    def admits(self) -> bool:
        """Whether `allow()` would let a call through now, without taking a half-open probe slot."""
        state = self.state
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and self._probes < self.policy.half_open_probes
        )

    def record_success(self) -> None:
        now = self._clock()
        state = self._current(now)
        if state is BreakerState.CLOSED:
            self._window.record(now, ok=True)
        elif state is BreakerState.HALF_OPEN and self._probes:
            self._move(BreakerState.CLOSED, REASON_PROBE_SUCCEEDED, now)

    def record_failure(self) -> None:
        now = self._clock()
        state = self._current(now)
        if state is BreakerState.CLOSED:
            self._window.record(now, ok=False)
            if should_open(*self._window.counts(now), self.policy):
                self._open(REASON_FAILURE_RATIO, self.policy.cooldown_seconds, now)
        elif state is BreakerState.HALF_OPEN and self._probes:
            self._open(REASON_PROBE_FAILED, self.policy.cooldown_seconds, now)

    def record_cancelled(self) -> None:
        """An admitted call ended without a verdict (the client left): free its probe slot, if any."""
        if self.state is BreakerState.HALF_OPEN and self._probes:
            self._probes -= 1

    def open_for(self) -> float:
        """Seconds until the breaker turns half-open; 0.0 unless it is open."""
        now = self._clock()
        if self._current(now) is BreakerState.OPEN:
            return self._open_until - now
        return 0.0

    def trip(self, reason: str, seconds: float | None = None) -> None:
        """Force the breaker open for `seconds` (default: the cooldown), e.g. when an upstream said
        to come back later. An open breaker only ever stays open longer, and reports no transition."""
        if seconds is not None and not 0.0 <= seconds < math.inf:
            raise ValueError(f"trip seconds must be non-negative and finite, got {seconds!r}")
        now = self._clock()
        duration = self.policy.cooldown_seconds if seconds is None else seconds
        if self._current(now) is BreakerState.OPEN:
            self._open_until = max(self._open_until, now + duration)
        else:
            self._open(reason, duration, now)

    def health_check_passed(self) -> None:
        """An out-of-band check found the deployment answering: an open breaker lets probes through now
        instead of at its cooldown's end (only probes close it)."""
        now = self._clock()
        if self._current(now) is BreakerState.OPEN:
            self._move(BreakerState.HALF_OPEN, REASON_HEALTH_CHECK_PASSED, now)

    @property
    def since(self) -> float:
        """Clock time of the last transition (or of the breaker's creation)."""
        self._current(self._clock())
        return self._since

    def snapshot(self) -> dict[str, Any]:
        """What /health shows for this breaker."""
        now = self._clock()
        state = self._current(now)
        calls, failures = self._window.counts(now)
        return {
            "state": state.value,
            "failure_ratio": failure_ratio(calls, failures),
            "window_calls": calls,
            "open_for": self._open_until - now if state is BreakerState.OPEN else 0.0,
        }

    def _current(self, now: float) -> BreakerState:
        if self._state is BreakerState.OPEN and now >= self._open_until:
            self._move(BreakerState.HALF_OPEN, REASON_COOLDOWN, now)
        return self._state

    def _open(self, reason: str, seconds: float, now: float) -> None:
        self._open_until = now + seconds
        self._move(BreakerState.OPEN, reason, now)

    def _move(self, to_state: BreakerState, reason: str, now: float) -> None:
        calls, failures = self._window.counts(now)
        open_for = self._open_until - now if to_state is BreakerState.OPEN else 0.0
        transition = Transition(
            name=self.name,
            from_state=self._state,
            to_state=to_state,
            reason=reason,
            failure_ratio=failure_ratio(calls, failures),
            window_calls=calls,
            at=now,
            open_for=open_for,
        )
        self._state = to_state
        self._since = now
        self._probes = 0
        if to_state is BreakerState.CLOSED:
            self._window.reset()
        log.log(
            logging.WARNING if to_state is BreakerState.OPEN else logging.INFO,
            "breaker transition",
            extra={
                "fields": {
                    "deployment": self.name,
                    "from": transition.from_state.value,
                    "to": transition.to_state.value,
                    "reason": reason,
                    "failure_ratio": transition.failure_ratio,
                    "window_calls": calls,
                    "window_seconds": self.policy.window_seconds,
                    "open_for": open_for,
                }
            },
        )
        if self._on_transition is not None:
            self._on_transition(transition)
