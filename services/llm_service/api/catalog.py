"""GET /v1/models, GET /health (and /health/live, /health/ready) and GET /metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from starlette.responses import PlainTextResponse, Response

from llm_service.api.auth import CALLER_STATE, CallerKey
from llm_service.api.drain import Drain
from llm_service.api.errors import json_response
from llm_service.api.services import Services
from llm_service.metrics import CONTENT_TYPE

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    """The profile's aliases, then one `<provider>/*` entry per configured provider; for a key restricted
    to some models, only the aliases it may use and the providers whose every model it may use."""
    services: Services = request.app.state.services
    caller: CallerKey | None = request.scope.get("state", {}).get(CALLER_STATE)
    data: list[dict[str, Any]] = [
        {"id": alias, "object": "model", "created": 0, "owned_by": deployments[0].provider.value}
        for alias, deployments in services.settings.aliases.items()
        if services.dispatcher.servable(alias) and (caller is None or caller.may_use(alias))
    ]
    data += [
        {"id": f"{p.value}/*", "object": "model", "created": 0, "owned_by": p.value}
        for p in services.providers
        if caller is None or caller.may_use_all(f"{p.value}/")
    ]
    return json_response(200, {"object": "list", "data": data})


@router.get("/health")
async def health(request: Request) -> Response:
    """Overall status, the shared state, the dispatcher (in flight, queues) and every deployment's breaker
    and limits. `degraded`: serving, but replicas that should share state cannot reach it or it refuses the
    limits' writes (`state.reason`; each admits on its own share of the limits)."""
    services: Services = request.app.state.services
    dispatcher = services.dispatcher
    state = dispatcher.state_backend.status()
    status = "unavailable" if not dispatcher.ready() else "degraded" if state["degraded"] else "ok"
    if _draining(request):
        status = "shutting_down"
    body = {
        "status": status,
        "demo": services.demo,
        "providers": [p.value for p in services.providers],
        "state": state,
        "dispatcher": dispatcher.snapshot(),
    }
    return json_response(200, body)


@router.get("/health/live")
async def live(request: Request) -> Response:
    """The process answers (for an orchestrator's liveness probe)."""
    return json_response(200, {"status": "alive"})


@router.get("/health/ready")
async def ready(request: Request) -> Response:
    """Some deployment can take traffic now (for a readiness probe): 200, else 503; 503 from the moment
    the service begins to shut down (api/drain.py)."""
    services: Services = request.app.state.services
    if _draining(request):
        return json_response(503, {"status": "not_ready", "reason": "shutting_down"})
    if services.dispatcher.ready():
        return json_response(200, {"status": "ready"})
    return json_response(503, {"status": "not_ready"})


def _draining(request: Request) -> bool:
    drain: Drain | None = getattr(request.app.state, "drain", None)
    return drain is not None and drain.draining


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    """Prometheus exposition format (see `llm_service.metrics` for the names)."""
    services: Services = request.app.state.services
    if not services.settings.telemetry.metrics_enabled:
        raise HTTPException(status_code=404, detail="Metrics are disabled (LLM_METRICS_ENABLED=false).")
    return Response(services.metrics.render(), media_type=CONTENT_TYPE)
