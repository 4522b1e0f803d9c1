"""The floor: the least a gateway with the per-request target's features on could do, in one function.

Not the service and not a design for it: a measuring stick. Issue 8 asks for the service's CPU per
non-streaming request within 1.5x of the bare passthrough's with "dispatcher, limits, breakers, metrics
and logging on". This ASGI app does, for a plain request to one OpenAI-compatible upstream, only what
those words need, each in its cheapest form and written inline: the body read and parsed once, the
messages and the options the benchmark sends checked, one deployment looked up, a token estimate, an
rpm and a tpm sliding window, a concurrency count and a breaker's state checked and updated, the
upstream body written with its model and key, the answer parsed and checked plain, its usage counted,
the service's own metrics cells and one JSON access line. It has none of the rest: no auth, no queue,
no failover, no deadlines, no disconnect watch, no tool-call ids, no domain types, no error paths.

`python -m benchmarks.inproc --instructions --floor` counts it next to the passthrough and the service:
whatever it costs over the passthrough, the service cannot go below with those features on.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any

import aiohttp
import orjson

from llm_service.api.body import BodyEnd, read_body
from llm_service.logs import info_fields
from llm_service.metrics import Metrics

Scope = dict[str, Any]

_ROLES = frozenset({"system", "user", "assistant", "developer"})
_OPTIONS = frozenset({"model", "messages", "temperature", "max_tokens", "user", "stream"})
_WINDOW = 60.0
_MAX_BODY = 4 * 1024 * 1024
_log = logging.getLogger("llm_service.access")


class Floor:
    def __init__(self, upstream: str, session: aiohttp.ClientSession) -> None:
        self.url = upstream.rstrip("/") + "/v1/chat/completions"
        self.session = session
        self.headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench-0123456789abcdef"}
        self.deployments: dict[str, tuple[str, int, int]] = {}  # model -> (upstream model, rpm, tpm)
        self.requests: collections.deque[float] = collections.deque()
        self.tokens: collections.deque[tuple[float, int]] = collections.deque()
        self.token_sum = 0
        self.in_flight = 0
        self.breaker_open_until = 0.0
        self.failures = 0
        self.metrics = Metrics()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:  # noqa: C901 (inlined on purpose)
        started = time.perf_counter()
        body, end = await read_body(receive, _MAX_BODY)  # as the service reads it: a limit, a disconnect seen
        if end is not BodyEnd.COMPLETE:
            raise ValueError(end.value)
        request = orjson.loads(body)
        model = request["model"]
        messages = request["messages"]
        if type(model) is not str or type(messages) is not list or not request.keys() <= _OPTIONS:
            raise ValueError("not a plain request")
        chars = 0
        for m in messages:
            content = m.get("content")
            if type(m) is not dict or m.get("role") not in _ROLES or type(content) is not str or len(m) != 2:
                raise ValueError("not a plain message")
            chars += len(content)
        temperature = request.get("temperature")
        if temperature is not None and not 0 <= temperature <= 2:
            raise ValueError("temperature")
        max_tokens = request.get("max_tokens") or 0
        if type(max_tokens) is not int:
            raise ValueError("max_tokens")
        deployment = self.deployments.get(model)
        if deployment is None:
            deployment = self.deployments[model] = (model.split("/", 1)[-1], 100_000_000, 1_000_000_000)
        upstream_model, rpm, tpm = deployment
        estimate = chars // 4 + 4 * len(messages) + max_tokens
        now = time.monotonic()
        if now < self.breaker_open_until:
            raise RuntimeError("breaker open")
        requests, tokens = self.requests, self.tokens
        while requests and requests[0] <= now - _WINDOW:
            requests.popleft()
        while tokens and tokens[0][0] <= now - _WINDOW:
            self.token_sum -= tokens.popleft()[1]
        if len(requests) >= rpm or self.token_sum + estimate > tpm:
            raise RuntimeError("over a limit")
        requests.append(now)
        tokens.append((now, estimate))
        self.token_sum += estimate
        self.in_flight += 1
        try:
            request["model"] = upstream_model
            sent = time.perf_counter()
            async with self.session.post(self.url, data=orjson.dumps(request), headers=self.headers) as resp:
                answer = await resp.read()
                status = resp.status
            upstream_seconds = time.perf_counter() - sent
        finally:
            self.in_flight -= 1
        data = orjson.loads(answer)
        usage = data.get("usage") or {}
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        kind = data.get("object")
        if status != 200 or kind != "chat.completion" or not isinstance(prompt, int) or not isinstance(completion, int):
            self.failures += 1
            raise RuntimeError("not a plain answer")
        for choice in data["choices"]:
            reply = choice.get("message")
            if type(reply) is not dict or "tool_calls" in reply or reply.get("role") != "assistant":
                raise RuntimeError("not a plain choice")
        self.failures = 0
        self.token_sum += prompt + completion - estimate  # the window corrected to what was used
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer, "more_body": False})
        seconds = time.perf_counter() - started
        overhead = seconds - upstream_seconds
        self.metrics.request_outcome(
            "remote",
            model,
            "200",
            False,
            seconds=seconds,
            ttft=None,
            overhead=overhead,
            tokens_in=prompt,
            tokens_out=completion,
        )
        info_fields(
            _log,
            "request",
            {
                "method": "POST",
                "path": scope["path"],
                "status": 200,
                "model": model,
                "provider": "remote",
                "deployment": model,
                "latency_ms": round(seconds * 1000, 2),
                "overhead_ms": round(overhead * 1000, 2),
                "prompt_tokens": prompt,
                "completion_tokens": completion,
            },
        )
