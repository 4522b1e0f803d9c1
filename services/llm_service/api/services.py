"""What the routes need from the running app, built once in the lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from llm_service.api.resume import StreamSessions
from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import Settings
from llm_service.core.llm.dispatcher import LLMDispatcher
from llm_service.metrics import Metrics

if TYPE_CHECKING:  # OpenTelemetry is imported only when tracing is configured
    from llm_service.tracing import Tracing


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    dispatcher: LLMDispatcher
    providers: tuple[ProviderID, ...]
    demo: bool
    metrics: Metrics
    #: OpenTelemetry tracing; None when no OTLP endpoint is configured.
    tracing: Tracing | None = None
    #: Resumable streams; None when resumption is turned off.
    stream_sessions: StreamSessions | None = None
