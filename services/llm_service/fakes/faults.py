"""Fault injection for the fake upstreams: what can go wrong, and the FIFO queue tests fill.

A test queues :class:`Fault` objects (from any thread); each request the fake serves takes
one application of the fault at the head of the queue.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field, replace


@dataclass
class Fault:
    """One misbehaviour of the upstream, applied to the next ``times`` chat requests.

    Knobs combine: e.g. ``Fault(delay_per_chunk=0.05, drop_after_chunks=2)`` streams two
    events slowly and then cuts the connection.
    """

    # Respond with this HTTP status and a provider-correct error body (fixture
    # ``error_<status>.json`` when present, else a generic body in the flavour's shape).
    status: int | None = None
    # Extra response headers, e.g. {"retry-after": "30"}, {"retry-after-ms": "250"},
    # {"x-should-retry": "false"}. Added to error and success responses alike.
    headers: dict[str, str] = field(default_factory=dict)
    # Raw body bytes replacing whatever would have been sent (malformed-body tests). With
    # ``status`` it is the error body; without, a 200 body (an SSE body for stream requests).
    body: bytes | None = None
    # Seconds to wait before the response headers are sent.
    delay_before_headers: float = 0.0
    # Seconds between SSE events (streams only).
    delay_per_chunk: float = 0.0
    # Close the TCP connection after N data events: no [DONE], no chunked terminator. For a
    # non-stream request the connection is closed halfway through the JSON body instead.
    drop_after_chunks: int | None = None
    # After N data events send a mid-stream error event in the flavour's shape, then end
    # the stream cleanly without [DONE] (streams only).
    error_event_after_chunks: int | None = None
    # Refuse a request whose last message is an assistant message (Vertex: whose last content has
    # role "model") with a 400 in the provider's shape: a model that takes no assistant prefill, e.g.
    # a fallback that cannot continue a partial answer. Other requests are served as usual; the
    # fault is consumed either way.
    reject_assistant_prefix: bool = False
    # How many requests this fault applies to before it is consumed.
    times: int = 1
    # A fixture file stem. With ``status``: the error body to send instead of
    # ``error_<status>``, e.g. "error_400_context_length" (with status=400). Without ``status``:
    # a success answer served instead of the request's scenario, e.g. Azure's
    # "chat_content_filter" (its .json or .sse twin, as the request asks). With
    # ``error_event_after_chunks`` on the Vertex fake: an "error_<...>" stem names the body of
    # the mid-stream error. A stem the fake does not have is refused by ``inject``.
    fixture: str | None = None


class FaultQueue:
    """Thread-safe FIFO of faults; :meth:`take` hands out one application per request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Fault] = deque()

    def put(self, fault: Fault) -> None:
        if fault.times < 1:
            raise ValueError(f"Fault.times must be >= 1, got {fault.times}")
        with self._lock:
            # A private copy: the caller may keep and reuse its Fault object.
            self._queue.append(replace(fault, headers=dict(fault.headers)))

    def take(self) -> Fault | None:
        """Consume one application of the head fault, or return None if the queue is empty."""
        with self._lock:
            if not self._queue:
                return None
            head = self._queue[0]
            head.times -= 1
            if head.times == 0:
                self._queue.popleft()
            return head

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue)
