"""Fake provider upstreams for tests and the gateway's demo mode.

:class:`FakeUpstream` speaks the OpenAI Chat Completions wire protocol (or its OpenRouter, Azure
OpenAI or vLLM flavour) and :class:`FakeVertex` the Vertex AI Gemini one, each on a loopback
port, replaying the fixture files under ``tests/fixtures/<provider>/`` byte for byte,
recording every request and injecting :class:`Fault` s on demand, and refusing tool-call ids and
call/result pairs the real provider refuses (:data:`ToolCallIdRule`, :mod:`.tool_call_rules`).
:class:`FakeUpstreamThread` runs either on a background event loop for synchronous tests.
"""

from .faults import Fault, FaultQueue
from .openai_upstream import FakeUpstream, LoopbackChatFake, RecordedRequest
from .threaded import FakeUpstreamThread, ServerThread
from .tool_call_rules import ToolCallIdRule
from .vertex_upstream import FakeVertex
from .wire import DEFAULT_FIXTURES_DIR, Flavor, Scenario

__all__ = [
    "DEFAULT_FIXTURES_DIR",
    "FakeUpstream",
    "FakeUpstreamThread",
    "FakeVertex",
    "Fault",
    "FaultQueue",
    "Flavor",
    "LoopbackChatFake",
    "RecordedRequest",
    "Scenario",
    "ServerThread",
    "ToolCallIdRule",
]
