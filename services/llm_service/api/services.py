"""What the routes need from the running app, built once in the lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import Settings
from llm_service.core.llm.dispatcher import LLMDispatcher
from llm_service.metrics import Metrics


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    dispatcher: LLMDispatcher
    providers: tuple[ProviderID, ...]
    demo: bool
    metrics: Metrics
