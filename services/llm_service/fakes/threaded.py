"""Background-thread runner for :class:`FakeUpstream`, for synchronous tests.

The fake lives on its own event loop in a daemon thread, so a blocking test (or a sync
HTTP client such as the openai SDK) can talk to it while the test thread waits.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Generic, Protocol, TypeVar

from typing_extensions import override

from .faults import Fault
from .openai_upstream import RecordedRequest


class LoopbackServer(Protocol):
    """What the thread runner needs of a fake: start on host:port inside a loop, and close."""

    async def start(self, host: str = ..., port: int = ...) -> None: ...

    async def close(self) -> None: ...


class ChatFake(LoopbackServer, Protocol):
    """The controls every chat fake offers (FakeUpstream, and the Vertex fake alike)."""

    @property
    def url(self) -> str: ...

    @property
    def requests(self) -> list[RecordedRequest]: ...

    def inject(self, fault: Fault) -> None: ...

    def wait_for_disconnect(self, timeout: float, count: int = 1) -> bool: ...


S = TypeVar("S", bound=LoopbackServer)


class ServerThread(Generic[S]):
    """Runs any loopback fake (chat upstream, token endpoint) on its own event loop in a daemon thread."""

    def __init__(self, server: S, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = server
        self._host = host
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> ServerThread[S]:
        """Start the thread and block until the server is listening."""
        if self._thread is not None:
            raise RuntimeError("FakeUpstreamThread already started")
        ready = threading.Event()
        errors: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                try:
                    loop.run_until_complete(self.server.start(self._host, self._port))
                except BaseException as exc:  # reported to the starting thread
                    errors.append(exc)
                    return
                finally:
                    ready.set()
                loop.run_forever()
                loop.run_until_complete(self.server.close())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("fake upstream did not start in time")
        if errors:
            self._thread.join()
            self._thread = self._loop = None
            raise errors[0]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._thread = self._loop = None

    def __enter__(self) -> ServerThread[S]:
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class FakeUpstreamThread(ServerThread[ChatFake]):
    """Runs a chat fake (:class:`FakeUpstream` or any fake with the same controls) in a thread.

    ``with FakeUpstreamThread(FakeUpstream()) as fake: ...`` starts and stops it; the
    upstream's controls are reachable as ``fake.upstream`` (and the common ones directly).
    """

    @property
    def upstream(self) -> ChatFake:
        return self.server

    @override
    def start(self, timeout: float = 10.0) -> FakeUpstreamThread:
        super().start(timeout)
        return self

    @override
    def __enter__(self) -> FakeUpstreamThread:
        return self if self._thread is not None else self.start()

    # Shortcuts to the upstream's most used controls.
    @property
    def url(self) -> str:
        return self.upstream.url

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.upstream.requests

    def inject(self, fault: Fault) -> None:
        self.upstream.inject(fault)

    def wait_for_disconnect(self, timeout: float, count: int = 1) -> bool:
        return self.upstream.wait_for_disconnect(timeout, count)
