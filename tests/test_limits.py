"""Deployment limits: concurrency, sliding RPM/TPM windows, 429 pauses and the token estimate, on a fake clock."""

from __future__ import annotations

import math
import random

import pytest

from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import Deployment
from llm_service.core.llm.dispatch.limits import (
    DEFAULT_COMPLETION_RESERVE,
    MEDIA_PART_TOKENS,
    MESSAGE_OVERHEAD_TOKENS,
    DeploymentLimiter,
    Limits,
    Permit,
    estimate_tokens,
    tokens_used,
)
from llm_service.core.llm.models import (
    ImagePart,
    LLMRequest,
    Message,
    OpaquePart,
    ResponseFormat,
    Role,
    TextPart,
    ToolCall,
    ToolDefinition,
    Usage,
)


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def limiter(clock: FakeClock, **limits: int) -> DeploymentLimiter:
    return DeploymentLimiter(Limits(**limits), clock=clock)


def admit(lim: DeploymentLimiter, tokens: int = 1) -> Permit:
    permit = lim.try_acquire(tokens)
    assert permit is not None, lim.snapshot()
    return permit


# --------------------------------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["max_concurrency", "rpm", "tpm"])
@pytest.mark.parametrize("value", [0, -1])
def test_limits_reject_non_positive_values(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        Limits(**{field: value})


def test_limits_come_from_a_deployment() -> None:
    deployment = Deployment(provider=ProviderID.OPENAI, model="m", rpm=60, tpm=1000, max_concurrency=4)
    assert Limits.of(deployment) == Limits(max_concurrency=4, rpm=60, tpm=1000)
    assert Limits.of(Deployment(provider=ProviderID.OPENAI, model="m")) == Limits()


def test_an_unlimited_deployment_admits_everything_now() -> None:
    clock = FakeClock()
    lim = limiter(clock)
    permits = [admit(lim, 10**9) for _ in range(1000)]
    assert lim.in_flight == 1000
    assert lim.room_in(10**9) == 0
    assert lim.fits(10**12)
    for permit in permits:
        permit.release()
    assert lim.in_flight == 0


def test_negative_tokens_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="negative"):
        limiter(FakeClock()).try_acquire(-1)


# --------------------------------------------------------------------------------------------------
# Concurrency
# --------------------------------------------------------------------------------------------------


def test_concurrency_slots_are_taken_and_freed() -> None:
    lim = limiter(FakeClock(), max_concurrency=2)
    first, second = admit(lim), admit(lim)
    assert lim.in_flight == 2
    assert lim.try_acquire(1) is None
    assert lim.room_in(1) == math.inf  # only a release helps, however long one waits

    first.release()
    assert first.released
    assert lim.in_flight == 1
    assert lim.room_in(1) == 0
    admit(lim)
    assert lim.try_acquire(1) is None
    assert not second.released


def test_release_is_idempotent() -> None:
    lim = limiter(FakeClock(), max_concurrency=2)
    first = admit(lim)
    admit(lim)
    first.release()
    first.release()
    first.release(5)
    assert lim.in_flight == 1  # a double release does not free someone else's slot
    admit(lim)
    assert lim.try_acquire(1) is None


# --------------------------------------------------------------------------------------------------
# RPM
# --------------------------------------------------------------------------------------------------


def test_rpm_admits_rpm_requests_then_refuses_until_the_oldest_leaves() -> None:
    clock = FakeClock()
    lim = limiter(clock, rpm=3)
    for at in (0.0, 10.0, 20.0):
        clock.now = at
        admit(lim).release()  # releasing frees a slot, not the window
    clock.now = 30.0
    assert lim.try_acquire(1) is None
    assert lim.room_in(1) == 30.0  # the admission at 0 leaves at 60

    clock.now = 59.5
    assert lim.room_in(1) == 0.5
    assert lim.try_acquire(1) is None

    clock.now = 60.0  # an admission at t counts during [t, t + 60)
    assert lim.room_in(1) == 0
    admit(lim)
    assert lim.room_in(1) == 10.0  # next out: the admission at 10
    assert lim.snapshot()["requests_last_minute"] == 3


@pytest.mark.parametrize(
    ("admitted_at", "now", "room"),
    [
        ((), 0.0, 0.0),
        ((0.0,), 0.0, 60.0),
        ((0.0,), 59.0, 1.0),
        ((0.0,), 60.0, 0.0),
        ((0.0,), 1000.0, 0.0),
        ((5.0, 5.0), 6.0, 59.0),
    ],
)
def test_rpm_window_edges(admitted_at: tuple[float, ...], now: float, room: float) -> None:
    clock = FakeClock()
    lim = limiter(clock, rpm=len(admitted_at) or 1)
    for at in admitted_at:
        clock.now = at
        admit(lim)
    clock.now = now
    assert lim.room_in(1) == room
    assert (lim.try_acquire(1) is not None) is (room == 0)


def test_rpm_memory_is_bounded_by_the_limit() -> None:
    clock = FakeClock()
    lim = limiter(clock, rpm=5)
    for _ in range(10_000):
        permit = lim.try_acquire(1)
        if permit is not None:
            permit.release()
        clock.advance(0.1)
    assert len(lim._window) <= 5


# --------------------------------------------------------------------------------------------------
# TPM
# --------------------------------------------------------------------------------------------------


def test_tpm_admits_by_estimate_and_says_when_enough_tokens_leave() -> None:
    clock = FakeClock()
    lim = limiter(clock, tpm=1000)
    admit(lim, 600)
    clock.now = 10.0
    admit(lim, 300)
    clock.now = 20.0
    assert lim.try_acquire(200) is None
    assert lim.room_in(100) == 0  # exactly the whole TPM is allowed
    assert lim.room_in(200) == 40.0  # 600 leave at 60
    assert lim.room_in(1000) == 50.0  # both must leave: the 300 go at 70
    clock.now = 60.0
    admit(lim, 200)
    assert lim.snapshot()["tokens_last_minute"] == 500


@pytest.mark.parametrize("in_window", [0, 400])
def test_a_request_larger_than_the_whole_tpm_is_never_admissible(in_window: int) -> None:
    clock = FakeClock()
    lim = limiter(clock, tpm=1000)
    if in_window:
        admit(lim, in_window)
    clock.advance(3600)
    assert not lim.fits(1001)
    assert lim.room_in(1001) == math.inf
    assert lim.try_acquire(1001) is None
    assert lim.fits(1000)
    admit(lim, 1000)


def test_release_with_a_smaller_usage_frees_tokens_at_once() -> None:
    clock = FakeClock()
    lim = limiter(clock, tpm=1000)
    permit = admit(lim, 800)
    assert lim.try_acquire(800) is None
    clock.now = 5.0
    permit.release(200)
    assert permit.tokens == 200
    assert lim.snapshot()["tokens_last_minute"] == 200
    admit(lim, 800)


def test_release_with_a_larger_usage_holds_the_window_longer() -> None:
    clock = FakeClock()
    lim = limiter(clock, tpm=1000)
    permit = admit(lim, 100)
    clock.now = 10.0
    admit(lim, 100)
    clock.now = 20.0
    permit.release(950)  # the window now holds 1050 > tpm: correction may overshoot
    assert lim.snapshot()["tokens_last_minute"] == 1050
    assert lim.room_in(1) == 40.0  # the corrected request keeps its admission time (0), leaves at 60
    clock.now = 60.0
    assert lim.snapshot()["tokens_last_minute"] == 100
    admit(lim, 900)


def test_a_correction_after_the_request_left_the_window_changes_nothing() -> None:
    clock = FakeClock()
    lim = limiter(clock, tpm=1000)
    permit = admit(lim, 500)
    clock.now = 61.0
    admit(lim, 100)
    permit.release(5000)
    assert lim.snapshot()["tokens_last_minute"] == 100


@pytest.mark.parametrize(
    ("calls", "tokens_in_window"),
    [
        ([None], 800),
        ([None, 300], 300),  # the slot is freed first, the usage arrives later
        ([300, None], 300),
        ([300, 100], 300),  # the first reported usage wins
        ([0], 0),
        ([-5], 0),  # never raises on an exit path
    ],
)
def test_the_first_reported_usage_corrects_the_window_once(calls: list[int | None], tokens_in_window: int) -> None:
    lim = limiter(FakeClock(), tpm=1000, max_concurrency=1)
    permit = admit(lim, 800)
    for used in calls:
        permit.release(used)
    assert lim.in_flight == 0
    assert lim.snapshot()["tokens_last_minute"] == tokens_in_window


# --------------------------------------------------------------------------------------------------
# Pause
# --------------------------------------------------------------------------------------------------


def test_a_pause_admits_nothing_until_it_ends() -> None:
    clock = FakeClock()
    lim = limiter(clock)
    lim.pause(30)
    assert lim.paused_for() == 30
    assert lim.room_in(1) == 30
    assert lim.try_acquire(1) is None
    clock.now = 29.5
    assert lim.paused_for() == 0.5
    assert lim.try_acquire(1) is None
    clock.now = 30.0
    assert lim.paused_for() == 0
    admit(lim)


@pytest.mark.parametrize(
    ("pauses", "now", "paused_for"),
    [
        ([(0, 30)], 0, 30),
        ([(0, 30), (10, 40)], 10, 40),  # a later, longer pause extends it
        ([(0, 30), (10, 5)], 10, 20),  # a shorter one does not shorten it
        ([(0, 30), (0, 10)], 0, 30),
        ([(0, 30), (20, 0)], 20, 10),
        ([(0, 0)], 0, 0),
        ([(0, -5)], 0, 0),
        ([(0, math.nan)], 0, 0),
        ([(0, 30)], 45, 0),
        ([(0, 30), (40, 10)], 40, 10),  # a pause after the last one ended starts afresh
    ],
)
def test_pause_extension_rules(pauses: list[tuple[float, float]], now: float, paused_for: float) -> None:
    clock = FakeClock()
    lim = limiter(clock)
    for at, seconds in pauses:
        clock.now = at
        lim.pause(seconds)
    clock.now = now
    assert lim.paused_for() == paused_for
    assert lim.room_in(1) == paused_for


def test_a_pause_keeps_in_flight_requests_and_their_release() -> None:
    lim = limiter(FakeClock(), max_concurrency=1)
    permit = admit(lim)
    lim.pause(10)
    permit.release()
    assert lim.in_flight == 0
    assert lim.try_acquire(1) is None


# --------------------------------------------------------------------------------------------------
# Combined limits
# --------------------------------------------------------------------------------------------------


def test_room_in_is_the_longest_wait_of_all_limits() -> None:
    clock = FakeClock()
    lim = limiter(clock, rpm=2, tpm=1000, max_concurrency=2)
    admit(lim, 900).release()  # at 0: TPM has room for 100 until 60
    clock.now = 30.0
    admit(lim, 50).release()  # at 30: RPM full until 60
    lim.pause(10)  # paused until 40
    assert lim.room_in(10) == 30.0  # RPM and TPM agree
    assert lim.room_in(200) == 30.0
    clock.now = 60.0
    assert lim.room_in(1000) == 30.0  # TPM alone: the 50 leave at 90
    assert lim.room_in(900) == 0

    lim.pause(45)
    assert lim.room_in(900) == 45.0  # the pause outlasts the window
    clock.now = 105.0
    one, two = admit(lim), admit(lim)
    assert lim.room_in(1) == math.inf  # concurrency full beats every time-based wait
    one.release()
    two.release()


@pytest.mark.parametrize(
    ("limits", "refused_by"),
    [
        ({"max_concurrency": 1, "rpm": 10, "tpm": 1000}, "concurrency"),
        ({"max_concurrency": 10, "rpm": 1, "tpm": 1000}, "rpm"),
        ({"max_concurrency": 10, "rpm": 10, "tpm": 150}, "tpm"),
    ],
)
def test_a_refusal_takes_nothing(limits: dict[str, int], refused_by: str) -> None:
    clock = FakeClock()
    lim = limiter(clock, **limits)
    admit(lim, 100)
    before = lim.snapshot()
    assert lim.try_acquire(100) is None, refused_by
    assert lim.snapshot() == before


def test_room_in_agrees_with_try_acquire_under_random_traffic() -> None:
    """Whenever room_in is finite, waiting exactly that long is enough, and never more than needed."""
    rng = random.Random(5)
    clock = FakeClock()
    lim = limiter(clock, rpm=7, tpm=2000, max_concurrency=3)
    open_permits: list[Permit] = []
    for _ in range(3000):
        tokens = rng.randint(0, 700)
        room = lim.room_in(tokens)
        permit = lim.try_acquire(tokens)
        assert (permit is not None) is (room == 0)
        if permit is not None:
            open_permits.append(permit)
        elif room == math.inf:
            open_permits.pop(rng.randrange(len(open_permits))).release(rng.choice([None, rng.randint(0, 900)]))
        else:
            clock.advance(room)
            assert lim.room_in(tokens) == 0
        if rng.random() < 0.2:
            lim.pause(rng.choice([0.5, 2.0, 20.0]))
        clock.advance(rng.choice([0.0, 0.25, 1.0, 3.0]))
        snap = lim.snapshot()
        assert snap["requests_last_minute"] <= 7
        assert snap["tokens_last_minute"] == sum(a.tokens for a in lim._window)
        assert snap["in_flight"] == len(open_permits)


def test_snapshot_reports_limits_load_and_pause() -> None:
    clock = FakeClock()
    lim = limiter(clock, rpm=10, tpm=1000, max_concurrency=4)
    admit(lim, 120)
    admit(lim, 30).release()
    lim.pause(12.5)
    assert lim.snapshot() == {
        "limits": {"max_concurrency": 4, "rpm": 10, "tpm": 1000},
        "in_flight": 1,
        "requests_last_minute": 2,
        "tokens_last_minute": 150,
        "paused_for": 12.5,
    }
    clock.now = 60.0
    assert lim.snapshot()["requests_last_minute"] == 0
    assert lim.snapshot()["tokens_last_minute"] == 0
    assert lim.snapshot()["paused_for"] == 0


# --------------------------------------------------------------------------------------------------
# The token estimate
# --------------------------------------------------------------------------------------------------

OVERHEAD = MESSAGE_OVERHEAD_TOKENS
RESERVE = DEFAULT_COMPLETION_RESERVE
DATA_URL = "data:image/png;base64," + "A" * 100_000


def user(content: str | list[TextPart | ImagePart | OpaquePart] | None) -> Message:
    return Message(role=Role.USER, content=content)


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        pytest.param(LLMRequest("m", [user("abcd")]), 1 + OVERHEAD + RESERVE, id="4 bytes"),
        pytest.param(LLMRequest("m", [user("abcde")]), 2 + OVERHEAD + RESERVE, id="rounded up"),
        pytest.param(LLMRequest("m", [user("é")]), 1 + OVERHEAD + RESERVE, id="utf-8 bytes"),
        pytest.param(LLMRequest("m", [user("€" * 4)]), 3 + OVERHEAD + RESERVE, id="3-byte chars"),
        pytest.param(LLMRequest("m", [user(None)]), OVERHEAD + RESERVE, id="no content"),
        pytest.param(LLMRequest("m", []), RESERVE, id="no messages"),
        pytest.param(LLMRequest("m", [user("ab"), user("cd")]), 1 + 2 * OVERHEAD + RESERVE, id="summed then rounded"),
        pytest.param(
            LLMRequest("m", [user([TextPart("ab"), TextPart("cd")])]), 1 + OVERHEAD + RESERVE, id="text parts"
        ),
        pytest.param(
            LLMRequest("m", [user([TextPart("abcd"), ImagePart(DATA_URL)])]),
            1 + OVERHEAD + MEDIA_PART_TOKENS + RESERVE,
            id="image fixed, its bytes ignored",
        ),
        pytest.param(
            LLMRequest("m", [user([ImagePart("https://x/a.png"), ImagePart("https://x/b.png", detail="low")])]),
            OVERHEAD + 2 * MEDIA_PART_TOKENS + RESERVE,
            id="two images",
        ),
        pytest.param(
            LLMRequest("m", [user([OpaquePart("input_audio", {"data": "A" * 10_000})])]),
            OVERHEAD + MEDIA_PART_TOKENS + RESERVE,
            id="audio part like an image",
        ),
        pytest.param(
            LLMRequest("m", [Message(Role.ASSISTANT, tool_calls=[ToolCall("c1", "get", '{"a":1}')])]),
            3 + OVERHEAD + RESERVE,
            id="tool call name and arguments",
        ),
        pytest.param(LLMRequest("m", [Message(Role.ASSISTANT, refusal="no!")]), 1 + OVERHEAD + RESERVE, id="refusal"),
        pytest.param(
            LLMRequest("m", [user("hi")], tools=[ToolDefinition("f")]),
            13 + OVERHEAD + RESERVE,  # 2 + 49 bytes of {"name":"f","description":null,"parameters":null}
            id="minimal tool",
        ),
        pytest.param(
            LLMRequest(
                "m",
                [user("hi")],
                tools=[
                    ToolDefinition(
                        "get_weather",
                        "Weather in a city",
                        {"type": "object", "properties": {"city": {"type": "string"}}},
                    )
                ],
            ),
            33 + OVERHEAD + RESERVE,  # 2 + 127 bytes of the tool's compact JSON
            id="tool with schema",
        ),
        pytest.param(
            LLMRequest("m", [user("hi")], response_format=ResponseFormat("json_schema", schema={"type": "object"})),
            5 + OVERHEAD + RESERVE,  # 2 + 17 bytes
            id="response schema",
        ),
        pytest.param(LLMRequest("m", [user("abcd")], max_tokens=10), 1 + OVERHEAD + 10, id="max_tokens"),
        pytest.param(
            LLMRequest("m", [user("abcd")], max_tokens=10, max_completion_tokens=20),
            1 + OVERHEAD + 20,
            id="max_completion_tokens wins",
        ),
        pytest.param(LLMRequest("m", [user("abcd")], max_tokens=0), 1 + OVERHEAD, id="explicit zero reserve"),
        pytest.param(LLMRequest("m", [user("abcd")], max_tokens=10, n=3), 1 + OVERHEAD + 30, id="reserve per choice"),
        pytest.param(LLMRequest("m", [user("abcd")], n=0), 1 + OVERHEAD + RESERVE, id="n=0 as one"),
    ],
)
def test_estimate_tokens(request_: LLMRequest, expected: int) -> None:
    assert estimate_tokens(request_) == expected


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (None, None),
        (Usage(), None),
        (Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15), 15),
        (Usage(prompt_tokens=10, completion_tokens=5), 15),  # an upstream that leaves total out
        (Usage(total_tokens=42), 42),
    ],
)
def test_tokens_used_reads_the_reported_usage(usage: Usage | None, expected: int | None) -> None:
    assert tokens_used(usage) == expected
