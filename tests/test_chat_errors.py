"""Every failure reaches the client as OpenAI's error body with the right status; streams never
end silently; a client that hangs up cancels the upstream request."""

from __future__ import annotations

import gzip
import socket
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from conftest import KEYS, MODELS, QUESTION
from harness import wait_until
from llm_service.core.config.constants import ProviderID
from llm_service.core.llm.base import MAX_ANSWER_BYTES, MAX_ERROR_BYTES
from llm_service.core.llm.sse import MAX_EVENT_BYTES
from llm_service.fakes import Fault
from sse_client import stream_events, streamed_text

FIXTURES = Path(__file__).parent / "fixtures"


def chat(client: httpx.Client, provider: ProviderID, **extra) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"model": MODELS[provider], "messages": QUESTION, **extra})


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return error


# ------------------------------------------------------------------------------ the caller's fault


def test_invalid_json_is_400(client: httpx.Client) -> None:
    response = client.post(
        "/v1/chat/completions",
        content=b'{"model": "openai/x", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert_openai_error(response, 400, "invalid_json")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": QUESTION}, "model"),
        ({"model": "openai/gpt-4o-mini"}, "messages"),
        (
            {"model": "openai/gpt-4o-mini", "messages": [{"role": "wizard", "content": "hi"}]},
            "messages[0].role",
        ),
        ({"model": "openai/gpt-4o-mini", "messages": QUESTION, "temperature": 7}, "temperature"),
        (
            {"model": "openai/gpt-4o-mini", "messages": [{"role": "tool", "content": "x"}]},
            "messages[0].tool_call_id",
        ),
        (
            {
                "model": "openai/gpt-4o-mini",
                "messages": [{"role": "user", "content": [{"input_audio": {}}]}],
            },
            "messages[0].content[0].type",
        ),
    ],
    ids=["no-model", "no-messages", "bad-role", "temperature-range", "tool-without-id", "untyped-part"],
)
def test_schema_violation_is_400_naming_the_field(client: httpx.Client, body: dict[str, Any], param: str) -> None:
    error = assert_openai_error(client.post("/v1/chat/completions", json=body), 400)
    assert error["param"] == param
    assert param in error["message"]


@pytest.mark.parametrize("model", ["nosuch/gpt-4o", "gpt-unknown-alias", "openai/"])
def test_unknown_model_or_provider_is_404(client: httpx.Client, model: str) -> None:
    response = client.post("/v1/chat/completions", json={"model": model, "messages": QUESTION})
    error = assert_openai_error(response, 404, "model_not_found")
    assert error["param"] == "model"


def test_body_over_the_limit_is_413(start_service, upstreams) -> None:
    service = start_service(server={"max_body_bytes": 2048})
    big = [{"role": "user", "content": "x" * 4096}]
    with httpx.Client(base_url=service.url, timeout=20) as http:
        response = http.post("/v1/chat/completions", json={"model": "openai/gpt-4o-mini", "messages": big})
        assert_openai_error(response, 413, "request_too_large")
        # Chunked upload without a Content-Length is cut off while reading.
        chunked = http.post("/v1/chat/completions", content=iter([b"{" + b" " * 3000 + b"}"]))
        assert_openai_error(chunked, 413, "request_too_large")
    assert upstreams[ProviderID.OPENAI].requests == []


# ------------------------------------------------------------------------------ the upstream's fault


def test_upstream_rate_limit_is_429_with_retry_after(client: httpx.Client, provider, fake) -> None:
    fake.inject(Fault(status=429, headers={"retry-after": "30"}))
    response = chat(client, provider)

    assert_openai_error(response, 429)
    assert response.headers["retry-after"] == "30"
    assert len(fake.requests) == 1  # a 30 s wait is the caller's to schedule, not ours to hold


def test_transient_upstream_error_is_retried(client: httpx.Client, provider, fake) -> None:
    fake.inject(Fault(status=503, times=1))
    response = chat(client, provider)

    assert response.status_code == 200, response.text
    assert len(fake.requests) == 2


def test_upstream_server_error_is_502_after_retries(client: httpx.Client, provider, fake) -> None:
    fake.inject(Fault(status=500, times=3))
    error = assert_openai_error(chat(client, provider), 502)

    assert provider.value in error["message"]
    assert len(fake.requests) == 3  # the first try and two retries


def test_rejected_credentials_are_502_naming_the_provider_not_the_key(client: httpx.Client, provider, fake) -> None:
    fake.inject(Fault(status=401))
    error = assert_openai_error(chat(client, provider), 502, "upstream_auth_error")

    assert provider.value in error["message"]
    assert KEYS[provider] not in error["message"]
    assert KEYS[provider][:8] not in error["message"]
    assert len(fake.requests) == 1


def test_upstream_bad_request_keeps_its_status_and_message(client: httpx.Client, provider, fake) -> None:
    fake.inject(Fault(status=400))
    error = assert_openai_error(chat(client, provider), 400)
    assert provider.value in error["message"]


def test_a_runaway_upstream_error_message_reaches_the_client_capped(client: httpx.Client, provider, fake) -> None:
    # An upstream's 400 with a 50,000-character message and parameter name (a broken proxy, a body
    # echoing its input): the client gets the start of both, and how much was left out.
    said = "The request was refused because " + "x" * 50_000
    param = "messages" + "y" * 5_000
    if provider is ProviderID.VERTEX_AI:
        body = {"error": {"code": 400, "message": said, "status": "INVALID_ARGUMENT"}}
    else:
        body = {"error": {"message": said, "type": "invalid_request_error", "param": param, "code": None}}
    fake.inject(Fault(status=400, body=orjson.dumps(body)))

    error = assert_openai_error(chat(client, provider), 400)

    assert error["message"].startswith(f"{provider.value} returned an error: The request was refused because xxx")
    assert error["message"].endswith(" more characters)")
    assert 2000 < len(error["message"]) < 2100
    if provider is not ProviderID.VERTEX_AI:
        assert error["param"].startswith("messagesyyy")
        assert len(error["param"]) < 250


def test_an_answer_or_error_body_past_its_size_limit_is_not_read_whole(client: httpx.Client, provider, fake) -> None:
    # A 200 answer longer than MAX_ANSWER_BYTES: a malformed answer, refused on its length. An error
    # body longer than MAX_ERROR_BYTES: read only so far (it no longer parses), the status speaks.
    fake.inject(Fault(status=200, body=b'{"choices": [], "pad": "' + b"x" * MAX_ANSWER_BYTES + b'"}'))
    too_long = assert_openai_error(chat(client, provider), 502, "upstream_malformed_response")
    message = "The request was refused because " + "x" * MAX_ERROR_BYTES
    fake.inject(Fault(status=400, body=orjson.dumps({"error": {"message": message, "code": 400}})))
    cut_short = assert_openai_error(chat(client, provider), 400)

    assert "an answer of more than" in too_long["message"]
    assert cut_short["message"] == f"{provider.value} returned an error: HTTP 400"
    assert len(fake.requests) == 2


def test_a_compressed_answer_is_read_and_a_compressed_bomb_refused(client: httpx.Client, upstreams) -> None:
    # gzip: its Content-Length is not what it unpacks to. A real answer compressed is read as ever; 33 MiB
    # of padding in 33 KB is refused once the unpacked answer passes the limit.
    answer = (FIXTURES / "openai" / "chat_text.json").read_bytes()
    fake = upstreams[ProviderID.OPENAI]
    fake.inject(Fault(status=200, body=gzip.compress(answer), headers={"content-encoding": "gzip"}))
    plain = chat(client, ProviderID.OPENAI)
    bomb = b'{"choices": [], "pad": "' + b"x" * MAX_ANSWER_BYTES + b'"}'
    fake.inject(Fault(status=200, body=gzip.compress(bomb), headers={"content-encoding": "gzip"}))
    refused = assert_openai_error(chat(client, ProviderID.OPENAI), 502, "upstream_malformed_response")

    assert plain.status_code == 200
    assert plain.json()["choices"][0]["message"] == orjson.loads(answer)["choices"][0]["message"]
    assert "an answer of more than" in refused["message"]


def test_upstream_timeout_is_504(start_service, provider, fake) -> None:
    service = start_service(**{provider.value: {"timeout_read": 0.3}}, dispatcher={"max_retries": 0})
    fake.inject(Fault(delay_before_headers=3.0))
    with httpx.Client(base_url=service.url, timeout=20) as http:
        response = http.post("/v1/chat/completions", json={"model": MODELS[provider], "messages": QUESTION})
    error = assert_openai_error(response, 504, "upstream_timeout")
    assert provider.value in error["message"]


def test_malformed_upstream_body_is_502(client: httpx.Client, provider, fake) -> None:
    fake.inject(Fault(status=200, body=b'{"id": "chatcmpl-1", "choices": [tru'))
    assert_openai_error(chat(client, provider), 502, "upstream_malformed_response")


def test_a_stream_event_past_the_size_limit_is_502_not_held_in_memory(client: httpx.Client, provider, fake) -> None:
    # A broken upstream whose first event never ends within 16 MiB: refused as malformed (not retried:
    # the same request would get the same answer), before anything reached the client.
    fake.inject(Fault(body=b'data: {"id": "' + b"x" * (MAX_EVENT_BYTES + 1024) + b'"}\n\n'))
    response = chat(client, provider, stream=True)
    error = assert_openai_error(response, 502, "upstream_malformed_response")
    assert "event of more than" in error["message"]
    assert len(fake.requests) == 1


def test_unreachable_upstream_is_502(start_service, provider) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    service = start_service(**{provider.value: {"base_url": dead}}, dispatcher={"max_retries": 0})
    with httpx.Client(base_url=service.url, timeout=20) as http:
        response = http.post("/v1/chat/completions", json={"model": MODELS[provider], "messages": QUESTION})
    error = assert_openai_error(response, 502, "upstream_connection_error")
    assert provider.value in error["message"]


def test_unconfigured_provider_names_the_setting(start_service) -> None:
    service = start_service(openai={"api_key": None})
    with httpx.Client(base_url=service.url, timeout=20) as http:
        response = http.post("/v1/chat/completions", json={"model": "openai/gpt-4o-mini", "messages": QUESTION})
    error = assert_openai_error(response, 404, "provider_not_configured")
    assert "OPENAI_API_KEY" in error["message"]


def test_stream_failing_before_the_first_byte_gets_an_http_status(client: httpx.Client, provider, fake) -> None:
    fake.inject(Fault(status=429, headers={"retry-after": "20"}))
    response = chat(client, provider, stream=True)

    assert_openai_error(response, 429)
    assert response.headers["retry-after"] == "20"


# ------------------------------------------------------------------------------ mid-stream


@pytest.mark.parametrize(
    "fault",
    # The first attempt and both replays (LLM_MAX_STREAM_REPLAYS=2) break.
    [Fault(error_event_after_chunks=3, times=3), Fault(drop_after_chunks=3, times=3)],
    ids=["error-event", "connection-drop"],
)
def test_a_stream_that_keeps_failing_mid_answer_ends_with_one_error_event_then_done(
    client: httpx.Client, provider, fake, fault
) -> None:
    fake.inject(fault)
    events = stream_events(client, {"model": MODELS[provider], "messages": QUESTION, "stream": True})

    assert events[-1] == "[DONE]"
    errors = [e for e in events[:-1] if "error" in e]
    assert len(errors) == 1
    assert events[-2] is errors[0]
    assert set(errors[0]["error"]) == {"message", "type", "param", "code"}
    assert provider.value in errors[0]["error"]["message"]
    assert streamed_text(events[:-2])  # what arrived before the failure was delivered
    assert not any(e["choices"] and e["choices"][0]["finish_reason"] for e in events[:-2])


@pytest.mark.parametrize(
    "streaming",
    [{"stream_resume_enabled": False}, {"stream_resume_grace_seconds": 0}],
    ids=["not-resumable", "no-grace"],
)
def test_client_disconnect_cancels_the_upstream_request(start_service, provider, fake, streaming) -> None:
    service = start_service(streaming=streaming)
    fake.inject(Fault(delay_per_chunk=0.4))
    with (
        httpx.Client(base_url=service.url, timeout=20) as client,
        client.stream(
            "POST", "/v1/chat/completions", json={"model": MODELS[provider], "messages": QUESTION, "stream": True}
        ) as r,
    ):
        first_event = next(line for line in r.iter_lines() if not line.startswith("id: "))
        assert first_event.startswith("data: ")
    # The service must hang up on the upstream while it is still mid-stream.
    assert fake.wait_for_disconnect(timeout=5)
    assert wait_until(lambda: fake.active_streams == 0)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_client_giving_up_before_the_first_byte_cancels_the_upstream_request(provider, fake, service, stream) -> None:
    fake.inject(Fault(delay_before_headers=5.0))
    with httpx.Client(base_url=service.url, timeout=0.5) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post("/v1/chat/completions", json={"model": MODELS[provider], "messages": QUESTION, "stream": stream})

    assert fake.wait_for_disconnect(timeout=4)
    assert len(fake.requests) == 1  # and no retry for a caller who is gone


@pytest.mark.parametrize(
    "body",
    [b'{"choices": [1]}', b'{"choices": [{"message": "hi"}]}', b'"just a string"', b"[]"],
    ids=["choice-not-object", "message-not-object", "json-string", "json-array"],
)
def test_wrong_shaped_upstream_body_is_a_502_not_a_crash(client: httpx.Client, provider, fake, body) -> None:
    fake.inject(Fault(status=200, body=body))
    response = chat(client, provider)
    assert_openai_error(response, 502, "upstream_malformed_response")
    assert response.headers["x-request-id"]


def test_rate_limit_without_retry_after_uses_the_reset_headers_and_hides_upstream_text(client, upstreams) -> None:
    fake = upstreams[ProviderID.OPENAI]
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}
    fake.inject(Fault(status=429, headers=headers))
    response = chat(client, ProviderID.OPENAI)

    error = assert_openai_error(response, 429)
    assert response.headers["retry-after"] == "360"
    assert "org-" not in error["message"]


def test_errors_tell_clients_whether_retrying_helps(client: httpx.Client, provider, fake) -> None:
    fake.inject(Fault(status=401))
    assert chat(client, provider).headers["x-should-retry"] == "false"
    fake.inject(Fault(status=503, times=3))
    assert chat(client, provider).headers["x-should-retry"] == "true"


def test_a_chained_instance_does_not_multiply_retries(upstreams, start_service) -> None:
    """remote -> this service -> openai: a credentials failure is tried once, not 3 x 3 times."""
    inner = start_service()
    outer = start_service(remote={"base_url": f"{inner.url}/v1", "api_key": None})
    upstreams[ProviderID.OPENAI].inject(Fault(status=401, times=9))
    with httpx.Client(base_url=outer.url, timeout=20) as http:
        response = http.post("/v1/chat/completions", json={"model": "remote/openai/gpt-4o-mini", "messages": QUESTION})

    assert response.status_code == 502
    assert len(upstreams[ProviderID.OPENAI].requests) == 1


def test_alias_to_an_unavailable_provider_is_404_and_not_listed(start_service) -> None:
    aliases = {"gemini": [{"provider": "vertex_ai", "model": "gemini-2.5-flash"}]}
    service = start_service(aliases=aliases, vertex_ai={"project": None})
    with httpx.Client(base_url=service.url, timeout=20) as http:
        response = http.post("/v1/chat/completions", json={"model": "gemini", "messages": QUESTION})
        listed = {m["id"] for m in http.get("/v1/models").json()["data"]}

    assert "vertex_ai" in assert_openai_error(response, 404, "model_not_found")["message"]
    assert "gemini" not in listed
