"""The openai SDK sees upstream failures as its own typed errors (needs the fakes' fault injection)."""

from __future__ import annotations

import openai
import pytest

from conftest import MODELS, QUESTION
from llm_service.fakes import Fault


@pytest.fixture
def sdk(service) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.url}/v1", api_key="unused-by-the-service", max_retries=0)


def test_upstream_rate_limit_is_the_sdks_rate_limit_error(sdk, provider, fake) -> None:
    fake.inject(Fault(status=429, headers={"retry-after": "30"}))
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model=MODELS[provider], messages=QUESTION)
    assert caught.value.response.headers["retry-after"] == "30"


def test_rejected_upstream_credentials_are_an_api_status_error(sdk, provider, fake) -> None:
    fake.inject(Fault(status=401))
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.chat.completions.create(model=MODELS[provider], messages=QUESTION)
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_auth_error"


def test_a_stream_that_keeps_failing_raises_the_sdks_api_error_after_the_text_so_far(sdk, provider, fake) -> None:
    fake.inject(Fault(error_event_after_chunks=3, times=3))  # the first attempt and both replays
    stream = sdk.chat.completions.create(model=MODELS[provider], messages=QUESTION, stream=True)
    received: list[str] = []

    def read_all() -> None:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError):
        read_all()
    assert "".join(received)
