"""Wire format of the fake Vertex AI Gemini upstream: Google's JSON layouts, error bodies and
the request checks the real service makes (protocol reference section 4).

Pure functions, no sockets. Google writes JSON two ways, and the fixtures under
``tests/fixtures/vertex_ai/`` are stored exactly so: non-stream bodies pretty-printed with
2-space indents and a trailing newline (:func:`pretty`), SSE payloads on one line with
``": "`` after keys and a bare ``,`` between members (:func:`one_line`). The JSON-array stream
is re-serialised from the SSE payloads with :func:`pretty`, so it stays byte-compatible.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

from .wire import Scenario, status_phrase

# Google documents this value as a stand-in for a signature a client does not have.
SKIP_SIGNATURE = "skip_thought_signature_validator"

SSE_CONTENT_TYPE = "text/event-stream"
JSON_CONTENT_TYPE = "application/json; charset=UTF-8"

Method = Literal["generateContent", "streamGenerateContent"]

_STATUS_NAMES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# Messages for statuses without a fixture file ([U] except 400/429/500, seen in the wild).
_GENERIC_MESSAGES: dict[int, str] = {
    400: "Request contains an invalid argument.",
    429: "Resource exhausted. Please try again later. Please refer to "
    "https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more details.",
    500: "Internal error encountered.",
    503: "The service is currently unavailable.",
    504: "The request timed out. Please try again.",
}

_DOCS = "https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/gemini"
EMPTY_PARTS = (
    "Unable to submit request because it must include at least one parts field, which describes the prompt "
    f"input. Learn more: {_DOCS}"
)
EMPTY_TEXT = (
    "Unable to submit request because it has an empty text parameter. Add a value to the parameter and try "
    f"again. Learn more: {_DOCS}"
)
INVALID_ROLE = "Please use a valid role: user, model."
CALL_COUNT_MISMATCH = (
    "Please ensure that the number of function response parts is equal to the number of function call parts of "
    "the function call turn."
)
CORRUPTED_SIGNATURE = "Corrupted thought signature."
_AUTH_HELP = (
    "Expected OAuth 2 access token, login cookie or other valid authentication credential. "
    "See https://developers.google.com/identity/sign-in/web/devconsole-project."
)

# What Google's front end answers for a URL no API serves (trimmed: no inline style sheet).
_NOT_FOUND_PAGE = """<!DOCTYPE html>
<html lang=en>
  <meta charset=utf-8>
  <meta name=viewport content="initial-scale=1, minimum-scale=1, width=device-width">
  <title>Error 404 (Not Found)!!1</title>
  <a href=//www.google.com/><span id=logo aria-label=Google></span></a>
  <p><b>404.</b> <ins>That\u2019s an error.</ins>
  <p>The requested URL <code>{path}</code> was not found on this server.  <ins>That\u2019s all we know.</ins>
"""


# --------------------------------------------------------------------------- JSON layouts


def pretty(obj: Any) -> bytes:
    """Google's non-stream layout: 2-space indents, UTF-8 as is, trailing newline."""
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode()


def one_line(obj: Any) -> bytes:
    """Google's SSE payload layout: ``{"a": 1,"b": [{"c": 2}]}``."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ": ")).encode()


def array_pieces(responses: list[Any]) -> Iterator[bytes]:
    """The JSON-array stream (``streamGenerateContent`` without ``alt=sse``) in the pieces it is
    written in: ``[{...}`` then ``\\n,\\r\\n{...}`` per further element; the closing ``\\n]``
    is :data:`ARRAY_END`."""
    for index, response in enumerate(responses):
        yield (b"[" if index == 0 else b"\n,\r\n") + pretty(response).rstrip(b"\n")


ARRAY_END = b"\n]"


def array_error_piece(error_body: bytes) -> bytes:
    """A mid-stream error in the JSON-array stream: one more element, then the close [U]."""
    return b"\n,\r\n" + error_body.rstrip(b"\n") + ARRAY_END


def raw_error_lines(error_body: bytes, newline: bytes) -> bytes:
    """A mid-stream error on an ``alt=sse`` stream: the pretty error JSON as bare lines (no
    ``data:``), which clients reassemble by counting braces (reference section 4.5)."""
    return b"".join(line + newline for line in error_body.rstrip(b"\n").split(b"\n"))


# --------------------------------------------------------------------------- errors


def google_error(status: int, message: str, details: list[dict[str, Any]] | None = None) -> bytes:
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": _STATUS_NAMES.get(status, "UNKNOWN"),
    }
    if details is not None:
        error["details"] = details
    return pretty({"error": error})


def generic_error(status: int) -> bytes:
    return google_error(status, _GENERIC_MESSAGES.get(status, status_phrase(status)))


def not_found_page(path: str) -> bytes:
    return _NOT_FOUND_PAGE.format(path=path).encode()


def rpc_method(version: str, method: Method) -> str:
    return f"google.cloud.aiplatform.{version}.PredictionService.{method[0].upper()}{method[1:]}"


def unauthenticated(presented: str | None, version: str, method: Method) -> bytes:
    """401 for a missing or unusable Bearer token."""
    if presented is None:
        message, reason = f"Request is missing required authentication credential. {_AUTH_HELP}", "CREDENTIALS_MISSING"
    else:
        message, reason = (
            f"Request had invalid authentication credentials. {_AUTH_HELP}",
            "ACCESS_TOKEN_TYPE_UNSUPPORTED",
        )
    info = {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "metadata": {"method": rpc_method(version, method), "service": "aiplatform.googleapis.com"},
    }
    return google_error(401, message, [info])


def model_resource(project: str, location: str, model: str) -> str:
    return f"projects/{project}/locations/{location}/publishers/google/models/{model}"


def permission_denied(resource: str) -> bytes:
    """403 for a project/location the credentials cannot use (or that does not exist)."""
    permission = "aiplatform.endpoints.predict"
    info = {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "IAM_PERMISSION_DENIED",
        "domain": "aiplatform.googleapis.com",
        "metadata": {"permission": permission, "resource": resource},
    }
    message = (
        f"Permission '{permission}' denied on resource '//aiplatform.googleapis.com/{resource}' (or it may not exist)."
    )
    return google_error(403, message, [info])


def invalid_json(detail: str, field: str | None = None) -> bytes:
    """400 for a body the JSON/proto parser refuses."""
    message = f"Invalid JSON payload received. {detail}"
    if field is None:
        return google_error(400, message)
    violation = {"field": field, "description": message}
    return google_error(
        400, message, [{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [violation]}]
    )


def invalid_argument(message: str) -> bytes:
    return google_error(400, message)


# --------------------------------------------------------------------------- requests


def choose_scenario(body: dict[str, Any]) -> Scenario:
    """Pick the canned answer the way a model would behave for this request."""
    contents = body.get("contents")
    last = contents[-1] if isinstance(contents, list) and contents else None
    if any("functionResponse" in part for part in _parts(last)):
        return "tool_result"
    declares = any(isinstance(tool, dict) and tool.get("functionDeclarations") for tool in _list(body.get("tools")))
    mode = _dict(_dict(body.get("toolConfig")).get("functionCallingConfig")).get("mode")
    if declares and mode != "NONE":
        return "tool_call"
    return "text"


def ends_with_model(body: Any) -> bool:
    """Whether the last content is the model's (an assistant prefill)."""
    contents = _dict(body).get("contents")
    return isinstance(contents, list) and bool(contents) and _dict(contents[-1]).get("role") == "model"


def validate_request(
    body: dict[str, Any], *, reject_id_fields: bool, signatures: frozenset[str] | None
) -> bytes | None:
    """Return a 400 body for what the real service rejects, else None. Checks run in the order
    the service applies them: unknown fields (parser; ``id`` in a functionCall/functionResponse when
    ``reject_id_fields``), roles and parts, call/response counts,
    and, when ``signatures`` (those the fake issued) is given, the thought-signature echo."""
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return invalid_argument(EMPTY_PARTS)
    if reject_id_fields:
        rejection = _unknown_id_field(contents)
        if rejection is not None:
            return rejection
    for content in contents:
        rejection = _check_content(content)
        if rejection is not None:
            return rejection
    if not _counts_match(contents):
        return invalid_argument(CALL_COUNT_MISMATCH)
    return _check_signatures(contents, signatures) if signatures is not None else None


def _unknown_id_field(contents: list[Any]) -> bytes | None:
    # Older API versions know no "id" in FunctionCall/FunctionResponse.
    for c_index, content in enumerate(contents):
        for p_index, part in enumerate(_parts(content)):
            for key, field in (("functionCall", "function_call"), ("functionResponse", "function_response")):
                if "id" in _dict(part.get(key)):
                    where = f"contents[{c_index}].parts[{p_index}].{field}"
                    return invalid_json(f"Unknown name \"id\" at '{where}': Cannot find field.", where)
    return None


def _check_content(content: Any) -> bytes | None:
    if not isinstance(content, dict) or content.get("role", "user") not in ("user", "model"):
        return invalid_argument(INVALID_ROLE)
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        return invalid_argument(EMPTY_PARTS)
    if any(isinstance(part, dict) and part.get("text") == "" and len(part) == 1 for part in parts):
        return invalid_argument(EMPTY_TEXT)
    return None


def _counts_match(contents: list[Any]) -> bool:
    """Every function-call turn is answered by as many functionResponse parts as it had calls,
    and function responses only answer such a turn."""
    for index, content in enumerate(contents):
        responses = sum("functionResponse" in part for part in _parts(content))
        previous = contents[index - 1] if index else None
        calls = sum("functionCall" in part for part in _parts(previous))
        is_model = isinstance(previous, dict) and previous.get("role") == "model"
        if responses and (not is_model or calls != responses):
            return False
        if calls and is_model and content.get("role", "user") == "user" and calls != responses:
            return False
    return True


def _check_signatures(contents: list[Any], issued: frozenset[str]) -> bytes | None:
    """Gemini 3: in the current turn (after the last user content that is not only function
    responses) every functionCall part must carry the signature it was issued with."""
    start = 0
    for index, content in enumerate(contents):
        parts = _parts(content)
        if _dict(content).get("role", "user") == "user" and any("functionResponse" not in p for p in parts):
            start = index
    for index in range(start, len(contents)):
        if _dict(contents[index]).get("role") != "model":
            continue
        for part in (part for part in _parts(contents[index]) if "functionCall" in part):
            signature = part.get("thoughtSignature")
            if signature is None:
                name = _dict(part.get("functionCall")).get("name", "")
                return invalid_argument(
                    f"Unable to submit request because function call `{name}` in the {index + 1}. content block "
                    "is missing a `thought_signature`. Learn more: "
                    "https://docs.cloud.google.com/vertex-ai/generative-ai/docs/thought-signatures"
                )
            if signature != SKIP_SIGNATURE and signature not in issued:
                return invalid_argument(CORRUPTED_SIGNATURE)
    return None


# --------------------------------------------------------------------------- responses


def thought_signatures(body: bytes) -> set[str]:
    """Every part-level ``thoughtSignature`` in a response body."""
    response = json.loads(body)
    return {
        part["thoughtSignature"]
        for candidate in _list(_dict(response).get("candidates"))
        for part in _parts(_dict(candidate).get("content"))
        if isinstance(part.get("thoughtSignature"), str)
    }


def _parts(content: Any) -> list[dict[str, Any]]:
    return [part for part in _list(_dict(content).get("parts")) if isinstance(part, dict)]


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
