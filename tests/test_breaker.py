"""Circuit breaker: the opening rule, the sliding window, and every state transition on a fake clock."""

from __future__ import annotations

import logging

import pytest

from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import Deployment
from llm_service.core.llm.dispatch.breaker import (
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    OutcomeWindow,
    Transition,
    should_open,
)
from llm_service.core.llm.dispatch.pool import DeploymentPool

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Harness:
    """A breaker on a fake clock that keeps every transition it reports."""

    def __init__(self, policy: BreakerPolicy | None = None) -> None:
        self.clock = FakeClock()
        self.transitions: list[Transition] = []
        self.breaker = CircuitBreaker(
            "openai/gpt-4o", policy or BreakerPolicy(), clock=self.clock, on_transition=self.transitions.append
        )

    def feed(self, outcomes: str) -> None:
        """'S' a success, 'F' a failure: each one admitted, then recorded."""
        for outcome in outcomes:
            assert self.breaker.allow()
            if outcome == "S":
                self.breaker.record_success()
            else:
                self.breaker.record_failure()

    def moves(self) -> list[tuple[BreakerState, BreakerState, str]]:
        return [(t.from_state, t.to_state, t.reason) for t in self.transitions]

    def open_then_half_open(self) -> None:
        self.feed("F" * self.breaker.policy.min_calls)
        self.clock.advance(self.breaker.policy.cooldown_seconds)
        assert self.breaker.state is HALF_OPEN


# --------------------------------------------------------------------------------------------------
# BreakerPolicy and should_open
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"failure_ratio": 0.0}, id="ratio-zero"),
        pytest.param({"failure_ratio": 1.5}, id="ratio-above-one"),
        pytest.param({"failure_ratio": float("nan")}, id="ratio-nan"),
        pytest.param({"min_calls": 0}, id="min-calls-zero"),
        pytest.param({"window_seconds": 0.0}, id="window-zero"),
        pytest.param({"window_seconds": float("inf")}, id="window-infinite"),
        pytest.param({"cooldown_seconds": -1.0}, id="cooldown-negative"),
        pytest.param({"cooldown_seconds": float("inf")}, id="cooldown-infinite"),
        pytest.param({"half_open_probes": 0}, id="no-probes"),
        pytest.param({"window_buckets": 0}, id="no-buckets"),
    ],
)
def test_policy_rejects_values_that_would_never_open_or_never_close(changes):
    with pytest.raises(ValueError, match="invalid BreakerPolicy"):
        BreakerPolicy(**changes)


@pytest.mark.parametrize(
    ("calls", "failures", "policy", "expected"),
    [
        pytest.param(0, 0, BreakerPolicy(), False, id="empty-window"),
        pytest.param(9, 9, BreakerPolicy(), False, id="all-failed-below-min-calls"),
        pytest.param(10, 5, BreakerPolicy(), True, id="at-threshold"),
        pytest.param(10, 4, BreakerPolicy(), False, id="just-below-threshold"),
        pytest.param(10, 10, BreakerPolicy(), True, id="all-failed"),
        pytest.param(100, 49, BreakerPolicy(), False, id="large-window-below"),
        pytest.param(100, 50, BreakerPolicy(), True, id="large-window-at"),
        pytest.param(3, 1, BreakerPolicy(failure_ratio=1 / 3, min_calls=3), True, id="one-third-at"),
        pytest.param(4, 1, BreakerPolicy(failure_ratio=1 / 3, min_calls=3), False, id="one-quarter-below-third"),
        pytest.param(5, 4, BreakerPolicy(failure_ratio=1.0, min_calls=1), False, id="ratio-one-needs-all"),
        pytest.param(1, 1, BreakerPolicy(failure_ratio=1.0, min_calls=1), True, id="single-failure-min-one"),
        pytest.param(20, 1, BreakerPolicy(failure_ratio=0.05, min_calls=20), True, id="five-percent"),
    ],
)
def test_should_open(calls, failures, policy, expected):
    assert should_open(calls, failures, policy) is expected


@pytest.mark.parametrize(
    ("outcomes", "policy", "expected"),
    [
        pytest.param("FFFFFSSSSS", BreakerPolicy(), CLOSED, id="at-threshold-by-a-success-waits"),
        pytest.param("FFFFFSSSSSF", BreakerPolicy(), OPEN, id="the-next-failure-opens"),
        pytest.param("SSSSSFFFFF", BreakerPolicy(), OPEN, id="half-failed-failures-last"),
        pytest.param("SSSSSSFFFF", BreakerPolicy(), CLOSED, id="forty-percent"),
        pytest.param("FFFFFFFFF", BreakerPolicy(), CLOSED, id="nine-failures-below-min-calls"),
        pytest.param("SSSSSSSSSSFFFFFFFFF", BreakerPolicy(), CLOSED, id="nine-of-nineteen"),
        pytest.param("SSSSSSSSSSFFFFFFFFFF", BreakerPolicy(), OPEN, id="ten-of-twenty"),
        pytest.param("FSF", BreakerPolicy(failure_ratio=0.6, min_calls=3), OPEN, id="two-thirds-over-sixty"),
        pytest.param("FSS", BreakerPolicy(failure_ratio=0.6, min_calls=3), CLOSED, id="one-third-under-sixty"),
        pytest.param("F", BreakerPolicy(failure_ratio=1.0, min_calls=1), OPEN, id="first-failure-trips"),
        pytest.param("SF", BreakerPolicy(failure_ratio=1.0, min_calls=1), CLOSED, id="any-success-holds"),
    ],
)
def test_the_failure_ratio_over_the_window_decides_when_a_closed_breaker_opens(outcomes, policy, expected):
    """Only a failure opens a breaker: a success that leaves the ratio at the threshold does not."""
    harness = Harness(policy)

    harness.feed(outcomes)

    assert harness.breaker.state is expected
    assert harness.moves() == ([] if expected is CLOSED else [(CLOSED, OPEN, "failure_ratio")])


def test_successes_alone_never_open_a_breaker_even_when_failures_age_out():
    harness = Harness()
    harness.feed("FFFF")
    harness.clock.advance(30)
    harness.feed("SSSSSS")
    harness.clock.advance(30)  # the four failures leave; only successes remain

    harness.feed("S" * 20)

    assert harness.breaker.state is CLOSED
    assert harness.breaker.snapshot()["failure_ratio"] == 0.0


# --------------------------------------------------------------------------------------------------
# OutcomeWindow
# --------------------------------------------------------------------------------------------------


def test_outcomes_leave_the_window_once_it_has_passed_over_them():
    window = OutcomeWindow(seconds=60.0, buckets=60)
    window.record(100.0, ok=False)
    window.record(130.0, ok=True)

    assert window.counts(159.9) == (2, 1)
    assert window.counts(160.0) == (1, 0)  # the failure at 100 is a whole window old
    assert window.counts(190.0) == (0, 0)


def test_an_outcome_counts_for_at_most_the_window_and_at_least_the_window_less_one_bucket():
    window = OutcomeWindow(seconds=60.0, buckets=6)  # 10-second buckets
    window.record(105.0, ok=False)  # bucket [100, 110)

    assert window.counts(159.9) == (1, 1)
    assert window.counts(160.0) == (0, 0)  # 55 s after it happened, within one bucket of 60


def test_the_window_holds_a_bounded_number_of_buckets_whatever_the_call_rate():
    window = OutcomeWindow(seconds=60.0, buckets=60)
    for step in range(100_000):
        window.record(step * 0.01, ok=step % 3 == 0)

    assert len(window._buckets) <= 60
    calls, failures = window.counts(999.99)
    assert calls == 6000  # the last 60 one-second buckets, 100 calls each
    assert failures == 4000


def test_a_clock_that_steps_back_records_into_the_newest_bucket():
    window = OutcomeWindow(seconds=60.0, buckets=60)
    window.record(100.0, ok=True)
    window.record(90.0, ok=False)

    assert window.counts(100.0) == (2, 1)
    assert window.counts(160.0) == (0, 0)


def test_reset_empties_the_window():
    window = OutcomeWindow(seconds=60.0, buckets=60)
    window.record(1.0, ok=False)
    window.reset()

    assert window.counts(1.0) == (0, 0)


def test_breaker_outcomes_older_than_the_window_no_longer_count_toward_opening():
    harness = Harness()
    harness.feed("F" * 9)
    harness.clock.advance(60)

    harness.feed("F")

    assert harness.breaker.state is CLOSED
    assert harness.breaker.snapshot()["window_calls"] == 1


# --------------------------------------------------------------------------------------------------
# open, half-open, closed
# --------------------------------------------------------------------------------------------------


def test_an_open_breaker_refuses_calls_and_says_when_to_come_back():
    harness = Harness()
    harness.feed("F" * 10)

    assert not harness.breaker.allow()
    assert harness.breaker.open_for() == 30.0
    harness.clock.advance(12.5)
    assert not harness.breaker.allow()
    assert harness.breaker.open_for() == 17.5
    assert harness.breaker.snapshot() == {
        "state": "open",
        "failure_ratio": 1.0,
        "window_calls": 10,
        "open_for": 17.5,
    }


def test_a_closed_breaker_is_open_for_zero_seconds():
    harness = Harness()

    assert harness.breaker.open_for() == 0.0
    assert harness.breaker.snapshot() == {"state": "closed", "failure_ratio": 0.0, "window_calls": 0, "open_for": 0.0}


def test_an_open_breaker_turns_half_open_once_the_cooldown_has_passed_reported_once():
    harness = Harness()
    harness.feed("F" * 10)

    harness.clock.advance(29.999)
    assert harness.breaker.state is OPEN
    harness.clock.advance(0.001)
    assert harness.breaker.state is HALF_OPEN
    assert harness.breaker.state is HALF_OPEN
    assert harness.breaker.open_for() == 0.0

    assert harness.moves() == [(CLOSED, OPEN, "failure_ratio"), (OPEN, HALF_OPEN, "cooldown_elapsed")]


@pytest.mark.parametrize("probes", [1, 2, 5])
def test_a_half_open_breaker_lets_exactly_half_open_probes_through(probes):
    harness = Harness(BreakerPolicy(half_open_probes=probes))
    harness.open_then_half_open()

    admitted = [harness.breaker.allow() for _ in range(probes + 3)]

    assert admitted == [True] * probes + [False] * 3


def test_the_first_allow_after_the_cooldown_is_a_probe():
    harness = Harness()
    harness.feed("F" * 10)
    harness.clock.advance(30)

    assert harness.breaker.allow()
    assert not harness.breaker.allow()
    assert harness.breaker.state is HALF_OPEN


def test_a_successful_probe_closes_the_breaker_with_a_fresh_window():
    harness = Harness()
    harness.open_then_half_open()
    assert harness.breaker.allow()

    harness.breaker.record_success()

    assert harness.breaker.state is CLOSED
    assert harness.breaker.snapshot()["window_calls"] == 0
    assert all(harness.breaker.allow() for _ in range(20))
    harness.feed("F" * 9)  # a fresh window: the failures that opened it are forgotten
    assert harness.breaker.state is CLOSED
    assert harness.moves()[-1] == (HALF_OPEN, CLOSED, "probe_succeeded")


def test_a_failed_probe_opens_the_breaker_again_for_a_new_cooldown():
    harness = Harness()
    harness.open_then_half_open()
    harness.clock.advance(7)
    assert harness.breaker.allow()

    harness.breaker.record_failure()

    assert harness.breaker.state is OPEN
    assert not harness.breaker.allow()
    assert harness.breaker.open_for() == 30.0
    harness.clock.advance(30)
    assert harness.breaker.state is HALF_OPEN
    assert harness.moves()[-2:] == [(HALF_OPEN, OPEN, "probe_failed"), (OPEN, HALF_OPEN, "cooldown_elapsed")]


def test_record_cancelled_frees_a_half_open_probe_slot_without_a_verdict():
    harness = Harness()
    harness.open_then_half_open()
    assert harness.breaker.allow()
    assert not harness.breaker.allow()

    harness.breaker.record_cancelled()

    assert harness.breaker.state is HALF_OPEN
    assert harness.breaker.allow()
    assert not harness.breaker.allow()
    assert harness.moves()[-1] == (OPEN, HALF_OPEN, "cooldown_elapsed")


def test_record_cancelled_records_nothing_in_a_closed_breaker():
    harness = Harness()
    harness.feed("FFFF")
    for _ in range(10):
        assert harness.breaker.allow()
        harness.breaker.record_cancelled()

    assert harness.breaker.snapshot()["window_calls"] == 4
    assert harness.breaker.state is CLOSED


def test_record_cancelled_with_no_probe_in_flight_does_not_add_probe_slots():
    harness = Harness()
    harness.open_then_half_open()
    harness.breaker.record_cancelled()

    assert [harness.breaker.allow(), harness.breaker.allow()] == [True, False]


@pytest.mark.parametrize("verdict", ["record_success", "record_failure"])
def test_verdicts_of_calls_admitted_before_the_breaker_opened_are_ignored(verdict):
    harness = Harness()
    harness.feed("F" * 10)
    getattr(harness.breaker, verdict)()  # while open: neither closes it nor restarts the cooldown
    assert harness.breaker.open_for() == 30.0

    harness.clock.advance(30)
    getattr(harness.breaker, verdict)()  # half-open, no probe admitted yet

    assert harness.breaker.state is HALF_OPEN
    assert harness.moves() == [(CLOSED, OPEN, "failure_ratio"), (OPEN, HALF_OPEN, "cooldown_elapsed")]


# --------------------------------------------------------------------------------------------------
# trip
# --------------------------------------------------------------------------------------------------


def test_trip_without_seconds_opens_for_the_cooldown():
    harness = Harness(BreakerPolicy(cooldown_seconds=45.0))

    harness.breaker.trip("upstream_unavailable")

    assert harness.breaker.state is OPEN
    assert not harness.breaker.allow()
    assert harness.breaker.open_for() == 45.0
    assert harness.moves() == [(CLOSED, OPEN, "upstream_unavailable")]


def test_trip_with_seconds_opens_for_that_long_then_half_opens():
    harness = Harness()

    harness.breaker.trip("rate_limited", seconds=5.0)

    assert harness.breaker.open_for() == 5.0
    harness.clock.advance(5)
    assert harness.breaker.allow()
    assert harness.moves() == [(CLOSED, OPEN, "rate_limited"), (OPEN, HALF_OPEN, "cooldown_elapsed")]


def test_trip_on_an_open_breaker_only_lengthens_it_and_reports_nothing():
    harness = Harness()
    harness.breaker.trip("rate_limited", seconds=10.0)

    harness.breaker.trip("rate_limited", seconds=2.0)
    assert harness.breaker.open_for() == 10.0
    harness.breaker.trip("rate_limited", seconds=90.0)
    assert harness.breaker.open_for() == 90.0

    assert harness.moves() == [(CLOSED, OPEN, "rate_limited")]


def test_trip_on_a_half_open_breaker_reopens_it_and_drops_its_probes():
    harness = Harness(BreakerPolicy(half_open_probes=2))
    harness.open_then_half_open()
    assert harness.breaker.allow()

    harness.breaker.trip("rate_limited", seconds=3.0)
    harness.breaker.record_success()  # the probe admitted before the trip no longer decides

    assert harness.breaker.state is OPEN
    harness.clock.advance(3)
    assert [harness.breaker.allow() for _ in range(3)] == [True, True, False]


def test_trip_with_zero_seconds_half_opens_at_the_next_look():
    harness = Harness()
    harness.breaker.trip("probe_now", seconds=0.0)

    assert harness.breaker.state is HALF_OPEN
    assert harness.moves() == [(CLOSED, OPEN, "probe_now"), (OPEN, HALF_OPEN, "cooldown_elapsed")]


@pytest.mark.parametrize("seconds", [-1.0, float("inf"), float("nan")])
def test_trip_rejects_seconds_that_are_negative_or_not_finite(seconds):
    harness = Harness()

    with pytest.raises(ValueError, match="trip seconds"):
        harness.breaker.trip("bad", seconds=seconds)
    assert harness.breaker.state is CLOSED


# --------------------------------------------------------------------------------------------------
# Reporting: on_transition and the structured log
# --------------------------------------------------------------------------------------------------


def test_every_transition_is_reported_once_with_its_window_and_logged_as_one_event(caplog):
    caplog.set_level(logging.INFO, logger="llm_service.breaker")
    harness = Harness(BreakerPolicy(min_calls=4))
    start = harness.clock.now

    harness.feed("SFFF")  # 3/4 >= 0.5 -> open
    harness.clock.advance(30)
    assert harness.breaker.allow()  # -> half_open, one probe
    harness.breaker.record_failure()  # -> open
    harness.clock.advance(30)
    assert harness.breaker.allow()  # -> half_open
    harness.breaker.record_success()  # -> closed
    harness.breaker.trip("retry_after", seconds=8.0)  # -> open

    name = "openai/gpt-4o"
    assert harness.transitions == [
        Transition(name, CLOSED, OPEN, "failure_ratio", 0.75, 4, start),
        Transition(name, OPEN, HALF_OPEN, "cooldown_elapsed", 0.75, 4, start + 30),
        Transition(name, HALF_OPEN, OPEN, "probe_failed", 0.75, 4, start + 30),
        Transition(name, OPEN, HALF_OPEN, "cooldown_elapsed", 0.0, 0, start + 60),  # aged out
        Transition(name, HALF_OPEN, CLOSED, "probe_succeeded", 0.0, 0, start + 60),
        Transition(name, CLOSED, OPEN, "retry_after", 0.0, 0, start + 60),
    ]

    records = [r for r in caplog.records if r.name == "llm_service.breaker"]
    assert [r.getMessage() for r in records] == ["breaker transition"] * 6
    levels = ["WARNING", "INFO", "WARNING", "INFO", "INFO", "WARNING"]  # opening warns
    assert [r.levelname for r in records] == levels
    for record, transition in zip(records, harness.transitions, strict=True):
        fields = record.fields
        assert fields["deployment"] == name
        assert fields["from"] == transition.from_state.value
        assert fields["to"] == transition.to_state.value
        assert fields["reason"] == transition.reason
        assert fields["failure_ratio"] == transition.failure_ratio
        assert fields["window_calls"] == transition.window_calls
        assert fields["window_seconds"] == 60.0
    assert [r.fields["open_for"] for r in records] == [30.0, 0.0, 30.0, 0.0, 0.0, 8.0]


def test_the_window_at_closing_is_reported_before_it_is_reset():
    harness = Harness(BreakerPolicy(cooldown_seconds=10.0))  # the failures are still in the window
    harness.feed("F" * 10)
    harness.clock.advance(10)
    assert harness.breaker.allow()

    harness.breaker.record_success()

    assert (harness.transitions[-1].failure_ratio, harness.transitions[-1].window_calls) == (1.0, 10)
    assert harness.breaker.snapshot()["window_calls"] == 0


def test_a_breaker_without_a_callback_still_logs(caplog):
    caplog.set_level(logging.INFO, logger="llm_service.breaker")
    clock = FakeClock()
    breaker = CircuitBreaker("vertex_ai/gemini", BreakerPolicy(), clock=clock)

    breaker.trip("maintenance")

    assert [r.fields["reason"] for r in caplog.records] == ["maintenance"]


def test_the_default_clock_is_monotonic_time():
    breaker = CircuitBreaker("remote/llama", BreakerPolicy())

    assert breaker.allow()
    assert breaker.state is CLOSED
    breaker.trip("maintenance", seconds=3600.0)
    assert 3599.0 < breaker.open_for() <= 3600.0


def test_a_call_let_in_as_the_cooldown_ends_is_a_probe_and_its_verdict_closes_the_breaker():
    # The pool asks its breaker once: a cooldown that ends while the pool decides cannot let a call in
    # as a probe yet count it as an ordinary call (whose verdict a half-open breaker ignores: it would
    # stay half-open, its one probe slot taken, refusing everything).
    deployment = Deployment(provider=ProviderID.OPENAI, model="gpt-4o-mini")
    times = [1000.0]

    def clock() -> float:  # each look at the clock a moment later than the one before
        times[0] += 0.001
        return times[0]

    pool = DeploymentPool(dict.fromkeys(ProviderID, BreakerPolicy(cooldown_seconds=1.0)), clock=clock)
    breaker = pool.register(deployment).breaker
    breaker.trip("test", 0.0025)  # its cooldown ends between the second and third looks of the first try
    slot = None
    while slot is None:
        slot = pool.try_take([deployment], 1)
    assert slot.probe
    slot.succeeded()
    assert breaker.state is CLOSED
