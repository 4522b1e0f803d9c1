"""Retry policy: Retry-After parsing, the retry decision, backoff, and retry_async with a fake clock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from llm_service.core.config.constants import ProviderID
from llm_service.core.llm.models import (
    InvalidRequestError,
    ProviderError,
    RateLimitError,
)
from llm_service.core.llm.retry import (
    RetryPolicy,
    backoff_delay,
    parse_retry_after,
    retry_async,
    should_retry,
)

NOW = datetime(2024, 12, 2, 12, 0, 0, tzinfo=UTC)


def provider_error(*, retryable: bool = True, retry_after: float | None = None, message: str = "x"):
    return ProviderError(message, provider=ProviderID.OPENAI, retryable=retryable, retry_after=retry_after)


# --------------------------------------------------------------------------------------------------
# parse_retry_after
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({}, None, id="no-header"),
        pytest.param({"retry-after-ms": "1500"}, 1.5, id="ms-int"),
        pytest.param({"retry-after-ms": "250.5"}, 0.2505, id="ms-float"),
        pytest.param({"retry-after-ms": "0"}, 0.0, id="ms-zero"),
        pytest.param({"retry-after": "30"}, 30.0, id="seconds-int"),
        pytest.param({"retry-after": "1.5"}, 1.5, id="seconds-float"),
        pytest.param({"retry-after": "0"}, 0.0, id="seconds-zero"),
        pytest.param({"retry-after": "Mon, 02 Dec 2024 12:00:30 GMT"}, 30.0, id="http-date-future"),
        pytest.param({"retry-after": "Mon, 02 Dec 2024 12:02:00 -0000"}, 120.0, id="http-date-naive"),
        pytest.param({"retry-after": "Mon, 02 Dec 2024 11:59:00 GMT"}, 0.0, id="http-date-past-is-zero"),
        pytest.param({"retry-after": "soon"}, None, id="garbage"),
        pytest.param({"retry-after": ""}, None, id="empty"),
        pytest.param({"retry-after": "-5"}, None, id="negative-seconds"),
        pytest.param({"retry-after": "nan"}, None, id="nan-seconds"),
        pytest.param({"retry-after-ms": "200", "retry-after": "5"}, 0.2, id="ms-preferred-over-seconds"),
        pytest.param({"retry-after-ms": "soon", "retry-after": "5"}, 5.0, id="garbage-ms-falls-back"),
        pytest.param({"retry-after-ms": "-100", "retry-after": "5"}, 5.0, id="negative-ms-falls-back"),
        pytest.param({"retry-after-ms": "-100"}, None, id="negative-ms-alone"),
        pytest.param({"retry-after-ms": "garbage"}, None, id="garbage-ms-alone"),
        pytest.param({"retry-after": "inf"}, None, id="infinite-seconds"),
        pytest.param({"retry-after-ms": "inf"}, None, id="infinite-ms"),
    ],
)
def test_parse_retry_after(headers, expected):
    assert parse_retry_after(headers, now=NOW) == expected


def test_parse_retry_after_http_date_defaults_to_the_current_time():
    # A date far in the past is 0 whatever the real clock says; one far ahead is positive.
    assert parse_retry_after({"retry-after": "Mon, 02 Dec 2024 12:00:30 GMT"}) == 0.0
    ahead = parse_retry_after({"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"})
    assert ahead is not None
    assert ahead > 0


# --------------------------------------------------------------------------------------------------
# should_retry
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "attempt", "policy", "expected"),
    [
        pytest.param(provider_error(), 0, RetryPolicy(), True, id="retryable-first-attempt"),
        pytest.param(provider_error(), 1, RetryPolicy(), True, id="retryable-second-attempt"),
        pytest.param(provider_error(), 2, RetryPolicy(), False, id="attempts-exhausted"),
        pytest.param(provider_error(), 0, RetryPolicy(max_retries=0), False, id="no-retries-allowed"),
        pytest.param(provider_error(retryable=False), 0, RetryPolicy(), False, id="not-retryable"),
        pytest.param(provider_error(retry_after=10.0), 0, RetryPolicy(), True, id="retry-after-at-cap"),
        pytest.param(provider_error(retry_after=10.5), 0, RetryPolicy(), False, id="retry-after-above-cap"),
        pytest.param(
            provider_error(retry_after=3.0),
            0,
            RetryPolicy(max_retry_after=2.0),
            False,
            id="retry-after-above-custom-cap",
        ),
        pytest.param(
            RateLimitError("429", provider=ProviderID.OPENAI, retryable=True, retry_after=0.5),
            0,
            RetryPolicy(),
            True,
            id="rate-limit-subclass",
        ),
        pytest.param(ValueError("boom"), 0, RetryPolicy(), False, id="not-a-provider-error"),
        pytest.param(InvalidRequestError("bad"), 0, RetryPolicy(), False, id="service-error-not-provider"),
    ],
)
def test_should_retry(error, attempt, policy, expected):
    assert should_retry(error, attempt, policy) is expected


# --------------------------------------------------------------------------------------------------
# backoff_delay
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "rand_value", "policy", "expected"),
    [
        pytest.param(0, 0.0, RetryPolicy(), 0.5, id="first-no-jitter"),
        pytest.param(0, 1.0, RetryPolicy(), 0.375, id="first-full-jitter"),
        pytest.param(1, 0.0, RetryPolicy(), 1.0, id="second-doubles"),
        pytest.param(3, 0.0, RetryPolicy(), 4.0, id="fourth"),
        pytest.param(4, 0.0, RetryPolicy(), 8.0, id="reaches-cap"),
        pytest.param(5, 0.0, RetryPolicy(), 8.0, id="capped"),
        pytest.param(10, 1.0, RetryPolicy(), 6.0, id="capped-full-jitter"),
        pytest.param(2, 0.5, RetryPolicy(backoff_base=1.0, backoff_max=3.0, jitter=0.5), 2.25, id="custom"),
        pytest.param(2, 1.0, RetryPolicy(jitter=0.0), 2.0, id="no-jitter-policy"),
    ],
)
def test_backoff_delay(attempt, rand_value, policy, expected):
    assert backoff_delay(attempt, policy, rand=lambda: rand_value) == pytest.approx(expected)


# --------------------------------------------------------------------------------------------------
# retry_async
# --------------------------------------------------------------------------------------------------


class Script:
    """An upstream call that raises the given outcomes in order, then returns "ok"."""

    def __init__(self, *outcomes: BaseException) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.outcomes:
            raise self.outcomes.pop(0)
        return "ok"


class FakeSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def run_retry(call, policy=None, rand_value=0.0):
    sleep = FakeSleep()
    result = asyncio.run(retry_async(call, policy or RetryPolicy(), sleep=sleep, rand=lambda: rand_value))
    return result, sleep.delays


def test_retry_async_returns_at_once_when_the_first_call_succeeds():
    call = Script()

    assert run_retry(call) == ("ok", [])
    assert call.calls == 1


def test_retry_async_succeeds_after_two_failures_with_backoff_between():
    call = Script(provider_error(), provider_error())

    result, delays = run_retry(call)

    assert result == "ok"
    assert call.calls == 3
    assert delays == [0.5, 1.0]


def test_retry_async_applies_jitter_from_the_injected_rand():
    call = Script(provider_error(), provider_error())

    _, delays = run_retry(call, rand_value=1.0)

    assert delays == [0.375, 0.75]


def test_retry_async_gives_up_after_max_retries_plus_one_calls_raising_the_last_error():
    errors = [provider_error(message=f"failure {i}") for i in range(5)]
    call = Script(*errors)
    sleep = FakeSleep()

    with pytest.raises(ProviderError) as caught:
        asyncio.run(retry_async(call, RetryPolicy(max_retries=3), sleep=sleep, rand=lambda: 0.0))

    assert call.calls == 4
    assert caught.value is errors[3]
    assert sleep.delays == [0.5, 1.0, 2.0]


def test_retry_async_waits_the_errors_retry_after_instead_of_backoff():
    call = Script(provider_error(retry_after=3.0), provider_error(retry_after=0.25))

    result, delays = run_retry(call)

    assert result == "ok"
    assert delays == [3.0, 0.25]


def test_retry_async_does_not_retry_a_non_retryable_error():
    error = provider_error(retryable=False)
    call = Script(error)
    sleep = FakeSleep()

    with pytest.raises(ProviderError) as caught:
        asyncio.run(retry_async(call, RetryPolicy(), sleep=sleep, rand=lambda: 0.0))

    assert caught.value is error
    assert call.calls == 1
    assert sleep.delays == []


def test_retry_async_does_not_retry_when_retry_after_exceeds_the_policy_cap():
    error = provider_error(retry_after=60.0)
    call = Script(error)
    sleep = FakeSleep()

    with pytest.raises(ProviderError) as caught:
        asyncio.run(retry_async(call, RetryPolicy(), sleep=sleep, rand=lambda: 0.0))

    assert caught.value is error
    assert caught.value.retry_after == 60.0
    assert call.calls == 1
    assert sleep.delays == []


def test_retry_async_lets_other_exceptions_through_untouched():
    call = Script(KeyError("bug"))
    sleep = FakeSleep()

    with pytest.raises(KeyError, match="bug"):
        asyncio.run(retry_async(call, RetryPolicy(), sleep=sleep, rand=lambda: 0.0))

    assert call.calls == 1
    assert sleep.delays == []
