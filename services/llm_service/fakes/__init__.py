"""Fake provider upstreams for tests and the gateway's demo mode.

:class:`FakeUpstream` speaks the OpenAI Chat Completions wire protocol (or its OpenRouter
flavour) on a loopback port, replaying the fixture files under ``tests/fixtures/<flavor>/``
byte for byte, recording every request and injecting :class:`Fault` s on demand.
:class:`FakeUpstreamThread` runs one on a background event loop for synchronous tests.
"""

from .faults import Fault, FaultQueue
from .openai_upstream import FakeUpstream, RecordedRequest
from .threaded import FakeUpstreamThread, ServerThread
from .wire import DEFAULT_FIXTURES_DIR, Flavor, Scenario

__all__ = [
    "DEFAULT_FIXTURES_DIR",
    "FakeUpstream",
    "FakeUpstreamThread",
    "Fault",
    "FaultQueue",
    "Flavor",
    "RecordedRequest",
    "Scenario",
    "ServerThread",
]
