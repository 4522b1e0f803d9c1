"""The one place where errors become HTTP: status, OpenAI's error body and headers.

Body: `{"error": {"message", "type", "param", "code"}}`. Upstream failures are 502 (the service's
upstream failed, not the caller), except rate limits (429 with Retry-After), timeouts (504),
content filtering (400, code `content_filter`) and upstream 4xx that blame the request (that status).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from typing_extensions import override

from llm_service.core.llm.models import (
    ConfigurationError,
    ContentFilterError,
    CredentialError,
    CredentialUnavailableError,
    DeploymentsUnavailableError,
    InvalidRequestError,
    LLMServiceError,
    ModelNotFoundError,
    OverloadedError,
    ProviderError,
    ProviderNotConfiguredError,
    ProviderTimeoutError,
    RateLimitError,
    RequestTooLargeError,
    UpstreamRequestError,
)

log = logging.getLogger("llm_service.errors")
#: Retry-After (seconds) on a 429 whose upstream did not say when to come back.
DEFAULT_RETRY_AFTER = "1"

# Checked in order: the first class the error is an instance of decides.
_STATUS_AND_TYPE: tuple[tuple[type[LLMServiceError], HTTPStatus, str], ...] = (
    (InvalidRequestError, HTTPStatus.BAD_REQUEST, "invalid_request_error"),
    (ModelNotFoundError, HTTPStatus.NOT_FOUND, "invalid_request_error"),
    (ProviderNotConfiguredError, HTTPStatus.NOT_FOUND, "invalid_request_error"),
    (RequestTooLargeError, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "invalid_request_error"),
    (ConfigurationError, HTTPStatus.INTERNAL_SERVER_ERROR, "server_error"),
    (OverloadedError, HTTPStatus.TOO_MANY_REQUESTS, "rate_limit_exceeded"),
    (DeploymentsUnavailableError, HTTPStatus.SERVICE_UNAVAILABLE, "service_unavailable"),
    (RateLimitError, HTTPStatus.TOO_MANY_REQUESTS, "rate_limit_error"),
    (ContentFilterError, HTTPStatus.BAD_REQUEST, "invalid_request_error"),
    (ProviderTimeoutError, HTTPStatus.GATEWAY_TIMEOUT, "timeout_error"),
    (UpstreamRequestError, HTTPStatus.BAD_REQUEST, "invalid_request_error"),
    (CredentialUnavailableError, HTTPStatus.SERVICE_UNAVAILABLE, "upstream_error"),
    (CredentialError, HTTPStatus.BAD_GATEWAY, "upstream_error"),
    (ProviderError, HTTPStatus.BAD_GATEWAY, "upstream_error"),
)


#: The service's own "not now" answers: they always say when to come back.
_COME_BACK_LATER = (OverloadedError, DeploymentsUnavailableError)


def error_body(message: str, type_: str, *, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def describe(exc: LLMServiceError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(HTTP status, OpenAI error body, extra headers) for one of our errors."""
    status: int = HTTPStatus.INTERNAL_SERVER_ERROR
    type_ = "server_error"
    for cls, cls_status, cls_type in _STATUS_AND_TYPE:
        if isinstance(exc, cls):
            status, type_ = cls_status, cls_type
            break
    if isinstance(exc, UpstreamRequestError) and exc.status is not None and 400 <= exc.status < 500:
        status = exc.status  # not always in HTTPStatus (499, 460, ...)
    # Tells clients (the openai SDK, another instance of this service) whether retrying can help.
    retryable = (isinstance(exc, ProviderError) and exc.retryable) or isinstance(exc, _COME_BACK_LATER)
    headers = {"x-should-retry": "true" if retryable else "false"}
    if isinstance(exc, (ProviderError, *_COME_BACK_LATER)):
        wait = exc.retry_after
        if wait is not None and math.isfinite(wait):
            headers["Retry-After"] = str(max(1, math.ceil(wait)))
        elif isinstance(exc, RateLimitError):
            headers["Retry-After"] = DEFAULT_RETRY_AFTER
    return status, error_body(exc.message, type_, code=exc.code, param=exc.param), headers


#: Response headers as uvicorn takes them: lower-case names and values, in bytes.
RawHeaders = Sequence[tuple[bytes, bytes]]


def raw_headers(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


class JSONBytesResponse(Response):
    """A JSON answer already encoded, its headers made straight into the raw list uvicorn sends: none of
    Response's header machinery, and two sends (about 10 µs a request less on the hot path)."""

    def __init__(
        self, body: bytes, status: int, headers: Mapping[str, str] | None = None, raw: RawHeaders = ()
    ) -> None:
        self.body = body
        self.status_code = status
        self.background = None
        self.raw_headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *raw]
        if headers:
            self.raw_headers += raw_headers(headers)

    @override
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        # The body past the access log's wrapper, which only looks at the start (as SSEResponse does).
        await getattr(send, "body_send", send)({"type": "http.response.body", "body": self.body})


def json_response(status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> Response:
    return JSONBytesResponse(orjson.dumps(body), status, headers)


def error_response(exc: LLMServiceError) -> Response:
    status, body, headers = describe(exc)
    return json_response(status, body, headers)


#: For a bug: says nothing about internals (the traceback goes to the log).
INTERNAL_ERROR_BODY = error_body("Internal server error", "server_error")


def internal_error_response() -> Response:
    return json_response(HTTPStatus.INTERNAL_SERVER_ERROR, INTERNAL_ERROR_BODY)


def install_error_handlers(app: FastAPI) -> None:
    """Our errors and Starlette's; unexpected exceptions are caught in `AccessLogMiddleware`, inside
    the app, so they keep their request id and access line and do not drop the connection."""

    async def on_service_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LLMServiceError)
        request.state.access.error_code = exc.code
        return error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = "not_found" if exc.status_code == HTTPStatus.NOT_FOUND else None
        body = error_body(str(exc.detail), "invalid_request_error", code=code)
        return json_response(exc.status_code, body, dict(exc.headers or {}))

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        body = error_body(
            f"Invalid '{param}': {first.get('msg', 'invalid value')}", "invalid_request_error", param=param
        )
        return json_response(HTTPStatus.BAD_REQUEST, body)

    app.add_exception_handler(LLMServiceError, on_service_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
