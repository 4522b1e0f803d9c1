"""create_app(settings) -> FastAPI. The lifespan opens and closes what the process shares: one pooled
aiohttp session for every upstream, the provider clients and their token caches, the dispatcher (its
health checks and shared state: Redis when configured), the resumable streams (and, in demo mode, the
fixture-backed upstreams; with an OTLP endpoint configured, the OpenTelemetry tracer provider). Every
request passes the access log, then the drain (api/drain.py: graceful shutdown) and the authentication
(api/auth.py: when keys are configured), on FastAPI's path and on the chat routes' fast path alike."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

import aiohttp
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from typing_extensions import override

from llm_service import __version__
from llm_service.api import catalog, chat
from llm_service.api.access_log import AccessLogMiddleware
from llm_service.api.auth import auth_middleware
from llm_service.api.drain import Drain, DrainMiddleware
from llm_service.api.errors import install_error_handlers
from llm_service.api.resume import StreamSessions
from llm_service.api.services import Services
from llm_service.core.config.settings import Settings
from llm_service.core.llm.dispatch.state import StateBackend
from llm_service.core.llm.dispatcher import LLMDispatcher
from llm_service.core.llm.factory import provider_clients
from llm_service.demo import demo_upstreams
from llm_service.metrics import Metrics

if TYPE_CHECKING:
    from llm_service.tracing import Tracing

log = logging.getLogger("llm_service")
#: FastAPI's own OpenTelemetry (newer releases) looks up global providers on every request (~70 µs in the
#: benchmark's profile) and would add a second server span to ours (tracing.py): off where it exists.
_NO_FASTAPI_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


class GatewayApp(FastAPI):
    """FastAPI, but the chat routes are served ahead of its routing and middleware stack.

    `fast_routes` maps an exact path to a plain ASGI app for POST (the chat endpoints inside the access
    log, and CORS when configured): about 200 µs a request less than FastAPI's own path. Anything else,
    and these paths reached another way, goes through FastAPI as usual, to the same endpoints.
    """

    fast_routes: dict[str, ASGIApp]

    @override
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            fast = self.fast_routes.get(scope["path"])
            if fast is not None:
                scope["app"] = self  # as Starlette would: endpoints find the services in app.state
                await fast(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    *,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    own_process: bool = False,
) -> FastAPI:
    """The service; tests inject `clock` (wall-clock seconds: credential expiry), `monotonic` (the
    dispatcher's breakers and limits) and `sleep` (the dispatcher's waits between attempts).
    `own_process` (`llm-service serve`): the process is the service's alone, so its garbage collector
    is tuned for it once the service has started (`tune_gc`)."""
    base_settings = settings if settings is not None else Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            active = base_settings
            demo = active.demo_enabled()
            if demo:
                active = await stack.enter_async_context(demo_upstreams(active))
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True),
                auto_decompress=True,
            )
            stack.push_async_callback(session.close)
            clients = await stack.enter_async_context(provider_clients(active, session, clock=clock))
            tracing = _tracing(active)
            if tracing is not None:
                stack.push_async_callback(tracing.aclose)  # after the dispatcher's: flushes the last spans
            metrics = Metrics()
            tracer = tracing.attempts if tracing is not None else None
            dispatcher = LLMDispatcher(active, clients, observer=metrics, clock=monotonic, sleep=sleep, tracer=tracer)
            metrics.watch(dispatcher)
            if dispatcher.state_backend.replicated:  # a conversation may go on at another replica
                clients.tool_calls.share(dispatcher.state_backend)
            dispatcher.start()
            stack.push_async_callback(dispatcher.aclose)
            sessions = StreamSessions.of(active.streaming, monotonic)
            if sessions is not None:
                stack.push_async_callback(sessions.aclose)
            app.state.services = Services(
                settings=active,
                dispatcher=dispatcher,
                providers=tuple(active.configured_providers()),
                demo=demo,
                metrics=metrics,
                tracing=tracing,
                stream_sessions=sessions,
            )
            if own_process:
                tune_gc()
            log.info(
                "started",
                extra={
                    "fields": {
                        "version": __version__,
                        "profile": active.config_profile,
                        "demo": demo,
                        "providers": [p.value for p in active.configured_providers()],
                        "aliases": sorted(active.aliases),
                        "pid": os.getpid(),
                        "replicas": active.scale_out.replicas,
                    }
                },
            )
            yield

    app = GatewayApp(title="AgentOne LLM Service", version=__version__, lifespan=lifespan, **_NO_FASTAPI_TELEMETRY)
    install_error_handlers(app)
    app.include_router(chat.router)
    app.include_router(catalog.router)
    guarded = _guards(base_settings, app)
    app.add_middleware(guarded)  # inside the access log: refusals keep their request id and access line
    app.add_middleware(AccessLogMiddleware)
    origins = base_settings.server.cors_origins()
    cors: dict[str, Any] = {
        "allow_origins": origins,
        "allow_methods": ["GET", "POST", "OPTIONS"],
        "allow_headers": ["*"],
        "expose_headers": ["x-request-id", "x-llm-provider", "x-llm-model", "retry-after", "x-should-retry"],
    }
    if origins:
        app.add_middleware(CORSMiddleware, **cors)
    app.fast_routes = {}
    for path, endpoint in chat.CHAT_ENDPOINTS.items():
        served: ASGIApp = AccessLogMiddleware(guarded(endpoint))
        app.fast_routes[path] = CORSMiddleware(served, **cors) if origins else served
    return app


def _guards(settings: Settings, app: FastAPI) -> Callable[[ASGIApp], ASGIApp]:
    """What wraps each of the app's two paths inside the access log: the drain on shutdown
    (`app.state.drain`, which `llm-service serve` runs on SIGTERM) around the authentication (none
    without configured keys)."""
    drain = app.state.drain = Drain(settings.server.drain_seconds)
    streaming = settings.streaming
    # Streams are bound to their keys in this process: with Redis another replica may resume them.
    bound = streaming.stream_resume_enabled and settings.scale_out.redis_url is None
    auth = auth_middleware(
        settings.auth,
        replicas=settings.scale_out.replicas,
        max_body_bytes=settings.server.max_body_bytes,
        streams_kept=streaming.max_resumable_streams if bound else 0,
        shared_state=_shared_state if settings.scale_out.redis_url is not None else None,
    )

    def guarded(inner: ASGIApp) -> ASGIApp:
        return DrainMiddleware(auth(inner) if auth is not None else inner, drain)

    return guarded


#: Young-generation threshold of the garbage collector while serving (Python's default: 700).
GC_YOUNG_THRESHOLD = 7000


def tune_gc() -> None:
    """Keep the garbage collector off the hot path: what exists once the service has started (settings,
    clients, FastAPI's routes and models: most of the heap) is frozen out of every later collection,
    and the young generation collects every `GC_YOUNG_THRESHOLD` allocations instead of 700, so that
    objects of requests still in flight are not promoted into older generations that are expensive to
    collect. In the benchmark this took the collector's time from about 180 to about 50 µs a request."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _shared_state(scope: Scope) -> StateBackend | None:
    """The state this replica shares with the others (Redis), once the service has started."""
    services: Services | None = getattr(getattr(scope.get("app"), "state", None), "services", None)
    if services is None:
        return None
    backend = services.dispatcher.state_backend
    return backend if backend.replicated else None


def _tracing(settings: Settings) -> Tracing | None:
    """OpenTelemetry tracing when an OTLP endpoint is configured; without one its SDK is not even imported."""
    if settings.telemetry.traces_url() is None:
        return None
    from llm_service.tracing import Tracing

    return Tracing(settings, version=__version__)
