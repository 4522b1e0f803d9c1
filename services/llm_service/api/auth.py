"""Inbound authentication: a pure ASGI middleware that lets in only callers presenting a configured key.

A caller sends `Authorization: Bearer <key>` (the openai SDK) or `api-key: <key>` (Azure clients). The
key's SHA-256 digest is looked up by its first 8 bytes and then compared whole with
`hmac.compare_digest`: one header scan, one hash, one dict lookup, one constant-time compare per
request. A missing or wrong key is a 401 in OpenAI's shape with `WWW-Authenticate: Bearer`; a key with
its own limits (`core/config/auth.py`) is held to them on each chat request (POST): past its requests
per minute a 429 with Retry-After (a sliding window of the requests of every replica, kept in Redis when
it is configured; else, and while it is unreachable, of this replica's share of the rate), a model it
may not use a 403
`model_not_found`, as OpenAI answers a project key without access to a model. The model is read from
the body only for keys restricted to some models; the body is handed on unchanged. Such a key is left in
the scope's state (`CALLER_STATE`) for `GET /v1/models`, which lists only what it may use.

With several keys, a resumable stream belongs to the key that started it: another key that asks for it
(GET /v1/chat/completions/{id}/stream) is told it is not found. This is kept in the process, so not
with Redis configured (where another replica may resume a stream): then the stream id alone, an
unguessable token, is what lets a caller read it.

Installed inside the access log on both of `GatewayApp`'s paths (main.py), so a refusal has its request
id and access line; with no key configured it is not installed at all.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_service.api.body import BodyEnd, read_body
from llm_service.api.errors import error_body, json_response
from llm_service.core.config.auth import ApiKey, AuthSettings
from llm_service.core.llm.dispatch.state import StateBackend, StateUnavailable

#: Requests per minute are counted over this sliding window (s).
RPM_WINDOW = 60.0
#: A request's state shared with other replicas, if there is one.
SharedState = Callable[[Scope], StateBackend | None]
#: The route that resumes a stream: /v1/chat/completions/{stream id}/stream.
_RESUME_PREFIX, _RESUME_SUFFIX = "/v1/chat/completions/", "/stream"
_RESUME_LENGTH = len(_RESUME_PREFIX) + len(_RESUME_SUFFIX)
_STREAM_ID_HEADER = b"x-llm-stream-id"
_QUOTED = 40  # characters of what the caller sent that an error message may quote

_MISSING = json_response(
    401,
    error_body(
        "You didn't provide an API key. Send it in an Authorization header (Authorization: Bearer <key>) "
        "or an api-key header.",
        "invalid_request_error",
        code="invalid_api_key",
    ),
    {"www-authenticate": "Bearer"},
)
_WRONG = json_response(
    401,
    error_body("Incorrect API key provided.", "invalid_request_error", code="invalid_api_key"),
    {"www-authenticate": "Bearer"},
)


#: Where a request's restricted key (`CallerKey`) is found in the ASGI scope's state.
CALLER_STATE = "restricted_caller"


class CallerKey:
    """A configured key as the middleware holds it: its digest and limits, ready to check."""

    __slots__ = ("digest", "exact_models", "key_rpm", "label", "model_prefixes", "rpm", "shared_id", "window")

    def __init__(self, key: ApiKey, replicas: int) -> None:
        self.digest = bytes.fromhex(key.hash)
        #: How the access log names the caller: the key's name, else the start of its digest (the digest
        #: of a random key tells nothing about the key).
        self.label = key.name or f"sha256:{key.hash[:12]}"
        #: The key's rate, which the replicas count together in the state they share (Redis).
        self.key_rpm = key.rpm
        #: Its window there: named by a digest of the key's digest (never the key, nor the name, which may
        #: change; nor the digest the profile holds, so that key names in Redis cannot be matched with it).
        self.shared_id = hashlib.sha256(b"caller:" + self.digest).hexdigest()[:32]
        # Without shared state each replica counts its own requests: it admits its share of the key's rate.
        self.rpm = max(1, key.rpm // replicas) if key.rpm is not None else None
        self.window: deque[float] = deque()
        models = key.models
        self.exact_models = frozenset(m for m in models if not m.endswith("*")) if models is not None else None
        self.model_prefixes = tuple(m[:-1] for m in models or () if m.endswith("*"))

    def admit(self, now: float) -> float | None:
        """Count a request now; None if within this replica's share of the rate, else the seconds until
        the window has room."""
        rpm = self.rpm
        if rpm is None:
            return None
        window = self._pruned(now)
        if len(window) >= rpm:
            # The window may hold more than this share (what the shared window admitted): it has room once
            # the request at this position leaves it.
            return window[len(window) - rpm] + RPM_WINDOW - now
        window.append(now)
        return None

    def count(self, now: float) -> None:
        """Count a request the shared window admitted: should the shared state go, this replica's share
        starts from what it let in."""
        self._pruned(now).append(now)

    def _pruned(self, now: float) -> deque[float]:
        window = self.window
        while window and window[0] <= now - RPM_WINDOW:
            window.popleft()
        return window

    def may_use(self, model: str) -> bool:
        exact = self.exact_models
        return exact is None or model in exact or model.startswith(self.model_prefixes)

    def may_use_all(self, prefix: str) -> bool:
        """Whether every model named `prefix...` is allowed (e.g. `openai/`: a listing's `openai/*`)."""
        return self.exact_models is None or any(prefix.startswith(p) for p in self.model_prefixes)


class KeyTable:
    """The configured keys by the first 8 bytes of their digests."""

    def __init__(self, keys: Iterable[ApiKey], replicas: int = 1) -> None:
        self._by_prefix: dict[bytes, CallerKey] = {}
        for key in keys:
            caller = CallerKey(key, replicas)
            self._by_prefix[caller.digest[:8]] = caller
        self.count = len(self._by_prefix)

    def find(self, key: bytes) -> CallerKey | None:
        digest = hashlib.sha256(key).digest()
        caller = self._by_prefix.get(digest[:8])
        if caller is None or not hmac.compare_digest(caller.digest, digest):
            return None
        return caller


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The key of `Authorization: Bearer <key>` or `api-key: <key>` (the first one sent), else None."""
    for name, value in headers:
        if name == b"authorization":
            if value[:7].lower() == b"bearer ":
                return value[7:].strip() or None
            return None
        if name == b"api-key":
            return value.strip() or None
    return None


class AuthMiddleware:
    """Lets in requests that present a configured key; `open_paths` (health, metrics) need none."""

    def __init__(
        self,
        app: ASGIApp,
        keys: KeyTable,
        *,
        open_paths: frozenset[str] = frozenset(),
        max_body_bytes: int,
        streams: StreamOwners | None = None,
        shared_state: SharedState | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.keys = keys
        self.open_paths = open_paths
        self.max_body_bytes = max_body_bytes
        self.streams = streams
        self.shared_state = shared_state
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)  # a CORS preflight never carries credentials
            return
        presented = presented_key(scope["headers"])
        caller = self.keys.find(presented) if presented is not None else None
        if caller is None:
            _note(scope, "invalid_api_key")
            await (_WRONG if presented is not None else _MISSING)(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        access = state.get("access")
        if access is not None:
            access.caller = caller.label
        if caller.exact_models is not None:
            state[CALLER_STATE] = caller  # a key restricted to some models: /v1/models lists only those
        streams = self.streams
        if scope["method"] == "POST":
            if caller.rpm is not None:
                shared = self.shared_state(scope) if self.shared_state is not None else None
                rpm, wait = await self._admit(caller, shared)
                if wait is not None:
                    _note(scope, "rate_limit_exceeded")
                    await _rate_limited(rpm, wait)(scope, receive, send)
                    return
            if caller.exact_models is not None:
                replayed = await self._check_model(caller, scope, receive, send)
                if replayed is None:
                    return
                receive = replayed
            if streams is not None:
                send = streams.noting(caller, send)
        elif streams is not None and not streams.may_read(caller, scope["path"]):
            _note(scope, "stream_not_found")
            await _stream_not_found()(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _admit(self, caller: CallerKey, shared: StateBackend | None) -> tuple[int | None, float | None]:
        """The request counted against its key's rate: in the window the replicas share when there is one,
        else on this replica's share of it. The rate counted against, and None or the seconds to wait."""
        if shared is not None and caller.key_rpm is not None:
            try:
                wait = await shared.admit_caller(caller.shared_id, caller.key_rpm)
            except StateUnavailable:
                pass  # Redis unreachable: this replica's share, as for the deployments' limits
            else:
                if wait is None:
                    caller.count(self.clock())
                return caller.key_rpm, wait
        return caller.rpm, caller.admit(self.clock())

    async def _check_model(self, caller: CallerKey, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """Read the body and refuse a model the key may not use (403: None); else a `receive` that replays it.

        A body that is too large, not JSON or without a model is handed on as it came: the chat route
        answers it (413, 400) as for any caller."""
        body, end = await read_body(receive, self.max_body_bytes)
        complete = end is BodyEnd.COMPLETE
        if complete:
            model = _model_of(body)
            if model is not None and not caller.may_use(model):
                _note(scope, "model_not_found")
                await _model_refused(model)(scope, receive, send)
                return None
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": not complete}

        return replay


class StreamOwners:
    """Which key started each resumable stream (the latest `capacity` of them, as the sessions keep)."""

    __slots__ = ("capacity", "owners")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.owners: OrderedDict[bytes, CallerKey] = OrderedDict()

    def noting(self, caller: CallerKey, send: Send) -> Send:
        owners, capacity = self.owners, self.capacity

        async def send_noting_stream(message: Message) -> None:
            if message["type"] == "http.response.start":
                for name, value in message.get("headers", ()):
                    if name == _STREAM_ID_HEADER:
                        owners[bytes(value)] = caller
                        if len(owners) > capacity:
                            owners.popitem(last=False)
                        break
            await send(message)

        return send_noting_stream

    def may_read(self, caller: CallerKey, path: str) -> bool:
        """Whether `path`, if it resumes a stream, names one this key started."""
        stream_id = resumed_stream_id(path)
        return stream_id is None or self.owners.get(stream_id.encode("latin-1", "replace")) is caller


def resumed_stream_id(path: str) -> str | None:
    """The stream id of a path that resumes a stream (/v1/chat/completions/{id}/stream), else None."""
    if path.startswith(_RESUME_PREFIX) and path.endswith(_RESUME_SUFFIX) and len(path) > _RESUME_LENGTH:
        return path[len(_RESUME_PREFIX) : -len(_RESUME_SUFFIX)]
    return None


def _model_of(body: bytes) -> str | None:
    try:
        parsed: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    model = parsed.get("model") if isinstance(parsed, dict) else None
    return model if isinstance(model, str) else None


def _note(scope: Scope, code: str) -> None:
    """The refusal's code on the request's access line."""
    access = scope.get("state", {}).get("access")
    if access is not None:
        access.error_code = code


def _rate_limited(rpm: int | None, wait: float) -> Response:
    message = f"Rate limit reached for requests: this API key may make {rpm} requests per minute."
    headers = {"retry-after": str(max(1, math.ceil(wait))), "x-should-retry": "true"}
    return json_response(429, error_body(message, "requests", code="rate_limit_exceeded"), headers)


def _model_refused(model: str) -> Response:
    quoted = model if len(model) <= _QUOTED else model[:_QUOTED] + "…"
    message = f"This API key does not have access to model `{quoted}`."
    return json_response(403, error_body(message, "invalid_request_error", code="model_not_found", param="model"))


def _stream_not_found() -> Response:
    message = "No stream with this id is kept here for this API key."
    return json_response(404, error_body(message, "invalid_request_error", code="stream_not_found"))


def auth_middleware(
    settings: AuthSettings,
    *,
    replicas: int,
    max_body_bytes: int,
    streams_kept: int,
    shared_state: SharedState | None = None,
) -> Callable[[ASGIApp], ASGIApp] | None:
    """What wraps an app in the authentication, the same keys, windows and stream owners for every path;
    None with no key configured: then nothing is wrapped and authentication costs nothing.
    `streams_kept`: resumable streams kept at most (0: resumption is off). `shared_state`: the state the
    replicas share, where keys' rates are counted together (None: each replica counts its share)."""
    if not settings.enabled():
        return None
    keys = KeyTable(settings.accepted_keys(), replicas)
    open_paths = frozenset(
        ({"/health", "/health/live", "/health/ready"} if not settings.health_requires_key else set())
        | ({"/metrics"} if not settings.metrics_requires_key else set())
    )
    # With one key every caller shares it: nothing to tell apart.
    streams = StreamOwners(streams_kept) if keys.count > 1 and streams_kept else None

    def wrap(app: ASGIApp) -> ASGIApp:
        return AuthMiddleware(
            app,
            keys,
            open_paths=open_paths,
            max_body_bytes=max_body_bytes,
            streams=streams,
            shared_state=shared_state,
        )

    return wrap
