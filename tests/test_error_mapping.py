"""Errors at both ends: upstream status -> our error class (classify_error), our error -> HTTP (describe)."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from llm_service.api.errors import describe
from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import OpenAISettings
from llm_service.core.llm.base import ErrorDetail
from llm_service.core.llm.credentials import APIKeyCredentialProvider
from llm_service.core.llm.models import (
    ConfigurationError,
    ContentFilterError,
    InvalidRequestError,
    LLMServiceError,
    ModelNotFoundError,
    ProviderAuthError,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitError,
    RequestTooLargeError,
    UpstreamRequestError,
)
from llm_service.core.llm.openai_client import OpenAIClient

P = ProviderID.OPENAI

# ==================================================================================================
# describe(): our error -> (HTTP status, OpenAI error body, headers)
# ==================================================================================================


@pytest.mark.parametrize(
    ("error", "status", "type_", "code", "headers"),
    [
        pytest.param(
            InvalidRequestError("bad temperature", param="temperature", code="invalid_value"),
            400,
            "invalid_request_error",
            "invalid_value",
            {},
            id="invalid-request",
        ),
        pytest.param(
            ModelNotFoundError("no such model", code="model_not_found"),
            404,
            "invalid_request_error",
            "model_not_found",
            {},
            id="model-not-found",
        ),
        pytest.param(
            RequestTooLargeError("too big", code="request_too_large"),
            413,
            "invalid_request_error",
            "request_too_large",
            {},
            id="too-large",
        ),
        pytest.param(
            ConfigurationError("set OPENAI_API_KEY", code="provider_not_configured"),
            500,
            "server_error",
            "provider_not_configured",
            {},
            id="configuration",
        ),
        pytest.param(
            RateLimitError("slow down", provider=P, status=429, retry_after=0.2, code="rate_limit_exceeded"),
            429,
            "rate_limit_error",
            "rate_limit_exceeded",
            {"Retry-After": "1"},
            id="rate-limit-fraction-rounds-up",
        ),
        pytest.param(
            RateLimitError("slow down", provider=P, status=429, retry_after=30, code="rate_limit_exceeded"),
            429,
            "rate_limit_error",
            "rate_limit_exceeded",
            {"Retry-After": "30"},
            id="rate-limit-whole-seconds",
        ),
        pytest.param(
            RateLimitError("slow down", provider=P, status=429, retry_after=1.01, code="rate_limit_exceeded"),
            429,
            "rate_limit_error",
            "rate_limit_exceeded",
            {"Retry-After": "2"},
            id="rate-limit-just-above-second",
        ),
        pytest.param(
            RateLimitError("slow down", provider=P, status=429, retry_after=0.0, code="rate_limit_exceeded"),
            429,
            "rate_limit_error",
            "rate_limit_exceeded",
            {"Retry-After": "1"},
            id="rate-limit-zero-is-one",
        ),
        pytest.param(
            RateLimitError("slow down", provider=P, status=429, code="rate_limit_exceeded"),
            429,
            "rate_limit_error",
            "rate_limit_exceeded",
            {"Retry-After": "1"},
            id="rate-limit-without-retry-after",
        ),
        pytest.param(
            ContentFilterError("blocked", provider=P, status=400, code="content_filter"),
            400,
            "invalid_request_error",
            "content_filter",
            {},
            id="content-filter",
        ),
        pytest.param(
            ProviderTimeoutError("late", provider=P, retryable=True, code="upstream_timeout"),
            504,
            "timeout_error",
            "upstream_timeout",
            {},
            id="timeout",
        ),
        pytest.param(
            UpstreamRequestError("no model", provider=P, status=404, code="model_not_found"),
            404,
            "invalid_request_error",
            "model_not_found",
            {},
            id="upstream-404",
        ),
        pytest.param(
            UpstreamRequestError("unprocessable", provider=P, status=422),
            422,
            "invalid_request_error",
            None,
            {},
            id="upstream-422",
        ),
        pytest.param(
            UpstreamRequestError("context", provider=P, status=400, code="context_length_exceeded"),
            400,
            "invalid_request_error",
            "context_length_exceeded",
            {},
            id="upstream-400",
        ),
        pytest.param(
            UpstreamRequestError("no status", provider=P),
            400,
            "invalid_request_error",
            None,
            {},
            id="upstream-without-status",
        ),
        pytest.param(
            ProviderAuthError("rejected", provider=P, status=401, code="upstream_auth_error"),
            502,
            "upstream_error",
            "upstream_auth_error",
            {},
            id="auth",
        ),
        pytest.param(
            ProviderConnectionError("refused", provider=P, retryable=True, code="upstream_connection_error"),
            502,
            "upstream_error",
            "upstream_connection_error",
            {},
            id="connection",
        ),
        pytest.param(
            ProviderError("boom", provider=P, status=500, code="upstream_error"),
            502,
            "upstream_error",
            "upstream_error",
            {},
            id="provider-error",
        ),
        pytest.param(
            ProviderError("busy", provider=P, status=503, retry_after=2.5, code="upstream_error"),
            502,
            "upstream_error",
            "upstream_error",
            {"Retry-After": "3"},
            id="provider-error-with-retry-after",
        ),
        pytest.param(LLMServiceError("odd"), 500, "server_error", None, {}, id="base-class-fallback"),
    ],
)
def test_describe_maps_error_to_status_type_code_and_headers(error, status, type_, code, headers):
    got_status, body, got_headers = describe(error)

    assert got_status == status
    assert body == {"error": {"message": error.message, "type": type_, "param": error.param, "code": code}}
    retryable = isinstance(error, ProviderError) and error.retryable
    assert got_headers.pop("x-should-retry") == ("true" if retryable else "false")
    assert got_headers == headers


def test_describe_body_has_exactly_message_type_param_code():
    _, body, _ = describe(InvalidRequestError("x", param="messages[0].role", code="invalid_value"))

    assert list(body) == ["error"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == "messages[0].role"


def test_describe_handles_a_nonstandard_upstream_4xx_status():
    status, body, _ = describe(UpstreamRequestError("closed", provider=P, status=499))

    assert 400 <= status < 500
    assert body["error"]["type"] == "invalid_request_error"


def test_describe_handles_an_infinite_retry_after():
    status, _, headers = describe(RateLimitError("x", provider=P, status=429, retry_after=float("inf")))

    assert status == 429
    assert headers.get("Retry-After", "1").isdigit()


# ==================================================================================================
# BaseLLMClient.classify_error: upstream status + error body -> our error class
# ==================================================================================================

UPSTREAM_KEY = "sk-proj-LEAKED0123456789"


@pytest.fixture
def client() -> OpenAIClient:
    return OpenAIClient(
        settings=OpenAISettings(api_key=SecretStr("k")),
        credentials=APIKeyCredentialProvider(SecretStr("k"), env_var="OPENAI_API_KEY"),
        session=None,  # type: ignore[arg-type]  # classify_error does not touch the session
    )


def detail(message: str = "upstream says no", code: str | None = None, param: str | None = None) -> ErrorDetail:
    return ErrorDetail(message=message, code=code, param=param)


@pytest.mark.parametrize(
    ("status", "error_detail", "retry_after", "cls", "retryable", "code"),
    [
        pytest.param(
            401,
            detail(f"Incorrect API key provided: {UPSTREAM_KEY}.", "invalid_api_key"),
            None,
            ProviderAuthError,
            False,
            "upstream_auth_error",
            id="401",
        ),
        pytest.param(
            403,
            detail(f"Key {UPSTREAM_KEY} lacks scope"),
            None,
            ProviderAuthError,
            False,
            "upstream_auth_error",
            id="403",
        ),
        pytest.param(
            429,
            detail("Rate limit reached", "rate_limit_exceeded"),
            0.5,
            RateLimitError,
            True,
            "rate_limit_exceeded",
            id="429",
        ),
        pytest.param(429, None, None, RateLimitError, True, "rate_limit_exceeded", id="429-without-body"),
        pytest.param(
            429,
            detail("You exceeded your quota", "insufficient_quota"),
            None,
            RateLimitError,
            False,
            "insufficient_quota",
            id="429-insufficient-quota",
        ),
        pytest.param(408, None, None, ProviderTimeoutError, True, "upstream_timeout", id="408"),
        pytest.param(500, detail(code="server_error"), None, ProviderError, True, "server_error", id="500"),
        pytest.param(502, None, None, ProviderError, True, "upstream_error", id="502"),
        pytest.param(503, detail(code="slow_down"), 1.0, ProviderError, True, "slow_down", id="503"),
        pytest.param(504, None, None, ProviderError, True, "upstream_error", id="504"),
        pytest.param(501, None, None, ProviderError, False, "upstream_error", id="501-not-retryable"),
        pytest.param(
            400,
            detail("max_tokens unsupported", "unsupported_parameter", "max_tokens"),
            None,
            UpstreamRequestError,
            False,
            "unsupported_parameter",
            id="400",
        ),
        pytest.param(
            404,
            detail("no model", "model_not_found"),
            None,
            UpstreamRequestError,
            False,
            "model_not_found",
            id="404",
        ),
        pytest.param(422, None, None, UpstreamRequestError, False, None, id="422-without-body"),
        pytest.param(
            400,
            detail("flagged", "content_filter"),
            None,
            ContentFilterError,
            False,
            "content_filter",
            id="400-content-filter",
        ),
        pytest.param(
            400,
            detail("policy", "content_policy_violation"),
            None,
            ContentFilterError,
            False,
            "content_filter",
            id="400-content-policy-violation",
        ),
        pytest.param(
            403,
            detail("moderation", "content_filter"),
            None,
            ContentFilterError,
            False,
            "content_filter",
            id="403-content-filter-is-not-auth",
        ),
        pytest.param(
            402, detail("credits", "402"), None, ProviderError, False, "insufficient_quota", id="402-payment-required"
        ),
        pytest.param(402, None, None, ProviderError, False, "insufficient_quota", id="402-without-body"),
        pytest.param(
            None,
            detail("Provider disconnected", "server_error"),
            None,
            ProviderError,
            True,
            "server_error",
            id="stream-error-event",
        ),
        pytest.param(None, None, None, ProviderError, True, "upstream_error", id="stream-error-event-without-detail"),
        pytest.param(
            None,
            detail("blocked", "content_filter"),
            None,
            ContentFilterError,
            False,
            "content_filter",
            id="stream-content-filter",
        ),
    ],
)
def test_classify_error_by_status_and_code(client, status, error_detail, retry_after, cls, retryable, code):
    headers = {"retry-after": str(retry_after)} if retry_after is not None else None
    error = client.classify_error(status, error_detail, headers)

    assert type(error) is cls
    assert error.retryable is retryable
    assert error.code == code
    assert error.status == status
    assert error.provider is ProviderID.OPENAI
    assert error.retry_after == retry_after


@pytest.mark.parametrize("status", [401, 403])
def test_classify_auth_error_does_not_repeat_the_upstream_message(client, status):
    upstream = detail(f"Incorrect API key provided: {UPSTREAM_KEY}. You can find your key at ...", "invalid_api_key")

    error = client.classify_error(status, upstream, None)

    assert UPSTREAM_KEY not in error.message
    assert UPSTREAM_KEY not in str(error)
    assert "Incorrect API key" not in error.message
    assert error.message == f"openai rejected the service's credentials (HTTP {status})"


def test_classify_upstream_request_error_carries_param_and_message(client):
    error = client.classify_error(400, detail("Unsupported parameter: 'max_tokens'", param="max_tokens"), None)

    assert error.param == "max_tokens"
    assert error.message == "openai returned an error: Unsupported parameter: 'max_tokens'"


@pytest.mark.parametrize(
    "error_detail",
    [pytest.param(None, id="no-detail"), pytest.param(detail(""), id="empty-message")],
)
def test_classify_error_without_upstream_message_names_the_status(client, error_detail):
    assert client.classify_error(503, error_detail, None).message == "openai returned an error: HTTP 503"


@pytest.mark.parametrize(
    ("status", "body", "headers", "cls", "message", "retry_after"),
    [
        pytest.param(
            429,
            b'{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}',
            {"retry-after-ms": "250"},
            RateLimitError,
            "openai is rate limiting this service (requests)",
            0.25,
            id="429-json-with-retry-after-ms",
        ),
        pytest.param(
            502,
            b"<html>Bad gateway</html>",
            {"retry-after": "3"},
            ProviderError,
            "openai returned an error: HTTP 502",
            3.0,
            id="502-html-body",
        ),
        pytest.param(500, b"", {}, ProviderError, "openai returned an error: HTTP 500", None, id="500-empty-body"),
        pytest.param(
            402,
            b'{"error":{"code":402,"message":"This request requires more credits","metadata":{}}}',
            {},
            ProviderError,
            "openai returned an error: This request requires more credits",
            None,
            id="402-openrouter-numeric-code",
        ),
    ],
)
def test_http_error_parses_body_and_headers_before_classifying(
    client, status, body, headers, cls, message, retry_after
):
    error = client._http_error(status, body, headers)

    assert type(error) is cls
    assert error.message == message
    assert error.retry_after == retry_after
