"""What the dispatcher tells a tracer about each upstream attempt, and how an attempt ended.

An attempt starts when a deployment slot is taken and ends with the slot (`pool.Slot`): success,
failure or abandonment, for a stream when its last chunk has gone. `AttemptTracer` is the seam; the
OpenTelemetry implementation lives outside core (`llm_service/tracing.py`), so core never imports
OpenTelemetry and a dispatcher without a tracer does no tracing work at all.

An outcome carries what the answer says about itself (id, model, finish reasons, usage), never its text.

An attempt may name itself to its upstream (`Attempt.headers`: W3C `traceparent` and `tracestate`), so an
upstream that traces too (vLLM, another instance of this service) joins the caller's trace: the dispatcher
makes them the task's `ATTEMPT_HEADERS` for the attempt, and a client's request-headers hook
(`attempt_headers`, given by the factory when tracing propagates) adds them to the upstream request.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from llm_service.core.config.settings import Deployment
from llm_service.core.llm.models import LLMChunk, LLMRequest, LLMResponse, Usage


@dataclass(slots=True)
class AttemptOutcome:
    """How an attempt ended: answered (the fields describe the answer), `error`, or `abandoned` (the
    caller went away, or the request's budget ran out, before it finished)."""

    response_id: str | None = None
    response_model: str | None = None
    finish_reasons: list[str] = field(default_factory=list)
    usage: Usage | None = None
    error: BaseException | None = None
    abandoned: bool = False

    @classmethod
    def of_response(cls, response: LLMResponse) -> AttemptOutcome:
        reasons = [c.finish_reason.value for c in response.choices if c.finish_reason is not None]
        return cls(response.id or None, response.model or None, reasons, response.usage)

    def see(self, chunk: LLMChunk) -> None:
        """Take in a streamed chunk as it passes: the id and model once, each finish reason, the usage."""
        if self.response_id is None:
            self.response_id, self.response_model = chunk.id or None, chunk.model or None
        for choice in chunk.choices:
            if choice.finish_reason is not None:
                self.finish_reasons.append(choice.finish_reason.value)
        if chunk.usage is not None:
            self.usage = chunk.usage


NO_HEADERS: Mapping[str, str] = MappingProxyType({})
#: The trace context headers of the upstream attempt the running task makes (none outside an attempt).
ATTEMPT_HEADERS: ContextVar[Mapping[str, str]] = ContextVar("llm_attempt_headers", default=NO_HEADERS)


def attempt_headers(request: LLMRequest) -> Mapping[str, str]:
    """A client's request-headers hook (`base.RequestHeaders`): the current attempt's trace context headers."""
    return ATTEMPT_HEADERS.get()


class Attempt(Protocol):
    """One traced attempt; ended exactly once (the slot guarantees it)."""

    #: The headers that name it to its upstream (trace context), made the task's `ATTEMPT_HEADERS` while it
    #: is made; empty: nothing is sent, and nothing set.
    @property
    def headers(self) -> Mapping[str, str]: ...

    def end(self, outcome: AttemptOutcome) -> None: ...


class AttemptTracer(Protocol):
    """Starts the trace of an attempt on `deployment`; `request` is what the upstream is sent (its
    model is the deployment's)."""

    def attempt(self, deployment: Deployment, request: LLMRequest) -> Attempt: ...
