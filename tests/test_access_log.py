"""One structured JSON log line per request: who served it, how it went, tokens; never a secret or prompt."""

from __future__ import annotations

import logging

import httpx
import pytest

from conftest import KEYS, MODELS
from harness import wait_until
from llm_service.core.config.constants import ProviderID
from llm_service.logs import JSONFormatter
from sse_client import read_events

SECRET_PROMPT = "my secret prompt text"


def access_records(caplog: pytest.LogCaptureFixture, request_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "llm_service.access" and r.fields.get("request_id") == request_id]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_one_access_line_per_request_with_provider_model_status_tokens(
    client: httpx.Client, caplog: pytest.LogCaptureFixture, stream: bool
) -> None:
    caplog.set_level(logging.INFO, logger="llm_service.access")
    body = {
        "model": MODELS[ProviderID.OPENAI],
        "messages": [{"role": "user", "content": SECRET_PROMPT}],
        "stream": stream,
    }
    with client.stream(
        "POST", "/v1/chat/completions", json=body, headers={"x-request-id": f"log-{stream}"}
    ) as response:
        read_events(response) if stream else response.read()

    assert wait_until(lambda: len(access_records(caplog, f"log-{stream}")) == 1)
    record = access_records(caplog, f"log-{stream}")[0]
    fields = record.fields
    assert fields["status"] == 200
    assert fields["provider"] == "openai"
    assert fields["upstream_model"] == "gpt-4o-mini"
    assert fields["model"] == MODELS[ProviderID.OPENAI]
    assert fields["stream"] is stream
    assert fields["total_tokens"] > 0
    assert fields["latency_ms"] >= 0
    line = JSONFormatter().format(record)
    assert SECRET_PROMPT not in line
    assert all(key not in line for key in KEYS.values())


def test_error_requests_are_logged_with_their_status(client: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llm_service.access")
    client.post(
        "/v1/chat/completions",
        json={"model": "nosuch/x", "messages": []},
        headers={"x-request-id": "log-err"},
    )

    assert wait_until(lambda: len(access_records(caplog, "log-err")) == 1)
    assert access_records(caplog, "log-err")[0].fields["status"] == 400


def test_azure_identity_failure_text_stays_out_of_the_log() -> None:
    """azure-identity logs each failed token request with the authority's error text at WARNING; the
    service's own error (provider, credential kind, status) is what is logged instead."""
    from llm_service.logs import configure_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("azure").level)
    try:
        configure_logging("INFO")
        assert not logging.getLogger("azure.identity.aio._internal.get_token_mixin").isEnabledFor(logging.WARNING)
        assert logging.getLogger("llm_service.credentials").isEnabledFor(logging.WARNING)
    finally:
        root.handlers[:], _, _ = saved
        root.setLevel(saved[1])
        logging.getLogger("azure").setLevel(saved[2])
