"""A fused chat path: what the service would cost a plain request with a second, flat path beside its layers.

Not the service and not a design for it: a measuring stick for a decision (docs/performance.md, issue 8).
The floor (`floor.py`) has the per-request target's features in their cheapest forms; this is the service's
own parts on one flat path, for a plain, non-streaming request to an OpenAI-compatible deployment:

- the service's edge, unchanged: `GatewayApp`, the access record and line, the request's metrics, the
  drain, the disconnect watch, the body reader, the response;
- no domain objects: the client's body is checked (the service's own option readers and limits) and
  relayed with the deployment's model; the answer is checked plain and relayed;
- the service's own admission and accounting: the model's line in the gate (`Gate`: nobody ahead, room
  now), the pool's slot (limiter and breaker), the request's budget (`Deadlines`), the slot's success
  with the reported usage;
- the deployment's own client: its session, URL, headers and credentials.

What it leaves out, and a real fused path would need (each falling back to the layered path): any other
request, waiting in line, failover and retries, tracing, tool-call ids, error answers, the content-filter
check. `python -m benchmarks.inproc --fused [--bytecodes]` measures it beside the passthrough and the
service.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from llm_service.api.access_log import AccessLogMiddleware, AccessRecord
from llm_service.api.chat import read_json_body
from llm_service.api.drain import DrainMiddleware
from llm_service.api.errors import JSONBytesResponse
from llm_service.api.services import Services
from llm_service.api.sse import DisconnectWatch
from llm_service.core.llm.dispatch.limits import DEFAULT_COMPLETION_RESERVE, MESSAGE_OVERHEAD_TOKENS
from llm_service.core.llm.models import Usage
from llm_service.core.llm.openai_format import _OPTIONS, _plain_top
from llm_service.core.llm.request_limits import RequestCheck

_ROLES = frozenset({"system", "user", "assistant", "developer"})
_PLAIN_MESSAGE = frozenset({"role", "content"})


class FusedChat:
    """POST /v1/chat/completions for the benchmark's plain requests, flat (see the module docstring)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services: Services = scope["app"].state.services
        access: AccessRecord = scope["state"]["access"]
        dispatcher = services.dispatcher
        body: Any = await read_json_body(scope, receive, services.settings.server.max_body_bytes)
        # The request: checked as the service checks it, nothing built.
        model, messages = body["model"], body["messages"]
        check = RequestCheck(services.settings.request_limits)
        check.start(model, messages, [])
        size = 0
        for message in messages:
            if type(message) is not dict or not message.keys() <= _PLAIN_MESSAGE or message["role"] not in _ROLES:
                raise ValueError("not a plain message")
            content = message["content"]
            if type(content) is not str:
                raise ValueError("not a plain message")
            size += len(content) if content.isascii() else len(content.encode())
        reserve = DEFAULT_COMPLETION_RESERVE
        for key, value in body.items():
            read = _OPTIONS.get(key)
            if read is not None and value is not None:
                read(value, key)
                if key == "max_tokens":
                    reserve = value
            elif key not in ("model", "messages"):
                raise ValueError(f"not a plain request: {key}")
        tokens = -(-size // 4) + MESSAGE_OVERHEAD_TOKENS * len(messages) + reserve
        access.model, access.stream = model, False
        # Admission: the model's line in the gate, with nobody ahead and room now.
        deployments = dispatcher.resolve(model)
        gate, pool = dispatcher._gate, dispatcher._pool
        slot = gate._queue(deployments).admit_now(partial(pool.try_take, deployments, tokens))
        if slot is None:
            raise RuntimeError("no room now: the layered path would wait in line")
        deployment = slot.deployment
        deadline = dispatcher._budgets.start()
        try:
            client = dispatcher._clients.for_deployment(deployment)
            upstream = client._client or await client._initialize_client()
            headers = dict(upstream.headers)
            headers.update(await upstream.credentials.auth_headers())
            body["model"] = deployment.model
            started = time.perf_counter()
            with DisconnectWatch(receive):
                async with upstream.session.post(
                    f"{upstream.endpoint}/chat/completions",
                    data=orjson.dumps(body),
                    headers=headers,
                    timeout=upstream.timeout,
                ) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"upstream answered {resp.status}")
                    answer = await resp.read()
            upstream_seconds = time.perf_counter() - started
            data = orjson.loads(answer)
            if not _plain_top(data, "chat.completion"):
                raise RuntimeError("not a plain answer")
            reported = data["usage"]
            usage = Usage(reported["prompt_tokens"], reported["completion_tokens"], reported["total_tokens"])
        except BaseException:
            slot.abandoned()
            raise
        finally:
            dispatcher._budgets.finish(deadline)
        slot.succeeded(usage)
        # The access record and the response, as the service writes them.
        label = deployment.label
        access.provider, access.upstream_model, access.deployment = deployment.provider.value, deployment.model, label
        access.metric_deployment = dispatcher.metric_label(deployment)
        access.record_usage(usage)
        access.overhead_ms = round((time.perf_counter() - access.started - upstream_seconds) * 1000, 2)
        raw = (
            (b"x-llm-provider", deployment.provider.value.encode()),
            (b"x-llm-model", deployment.model.encode()),
            (b"x-llm-deployment", label.encode()),
            (b"x-llm-gateway-overhead-ms", b"%.2f" % access.overhead_ms),
        )
        await JSONBytesResponse(answer, 200, raw=raw)(scope, receive, send)


def install(app: Any) -> None:
    """The service `app` (made by `create_app`, without API keys or CORS) serving its chat path by the fused
    path, inside its own access log and drain."""
    app.fast_routes["/v1/chat/completions"] = AccessLogMiddleware(DrainMiddleware(FusedChat(), app.state.drain))
