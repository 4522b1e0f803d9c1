"""What each layer of the service costs a request: the in-process benchmark (`benchmarks.inproc`) run with
a layer taken out of the service, to compare with the whole service in the same run.

A measurement tool, not a mode of the service: each layer is taken out by replacing, in this process only,
the function that does its work with one that does none (or reuses the first request's result), for as
long as the `without()` context lasts. The requests still answer 200 with the same body, so the load is
the same; what the service then no longer spends is what the layer costs. The layers:

- `translation`: reading the client's request into the domain, writing it for the upstream, reading the
  upstream's answer back (`parse_chat_request`, the OpenAI-family client's `_encode_request` and
  `_decode_response`): each request reuses the first one's results. The upper bound of what any leaner
  wire path (a relay of the client's bytes) could save.
- `dispatcher`: admission (limits, queue), breakers, failover and the request's budget: the request
  goes straight to its deployment's client.
- `access-log`: the access line and the request's metrics.
- `disconnect-watch`: watching for a client that leaves while its answer is awaited.

These replace private functions by name: a refactoring that renames one breaks the tool loudly (an
AttributeError), and the smoke test runs every layer so that this is found in CI.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

LAYERS = ("translation", "dispatcher", "access-log", "disconnect-watch")


@contextlib.contextmanager
def without(layers: tuple[str, ...] | list[str]) -> Iterator[None]:
    """The service (in this process) with `layers` taken out, until the context ends."""
    unknown = set(layers) - set(LAYERS)
    if unknown:
        raise ValueError(f"unknown layers: {', '.join(sorted(unknown))} (known: {', '.join(LAYERS)})")
    with contextlib.ExitStack() as stack:
        for layer in layers:
            for owner, name, replacement in _REPLACEMENTS[layer]():
                stack.enter_context(_replaced(owner, name, replacement))
        yield


@contextlib.contextmanager
def _replaced(owner: Any, name: str, replacement: Any) -> Iterator[None]:
    original = getattr(owner, name)  # AttributeError: the service changed, and this tool with it
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, original)


Replacement = tuple[Any, str, Any]


def _first_result(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function`, computed once: every later call answers the first call's result."""
    kept: list[Any] = []

    def reused(*args: Any, **kwargs: Any) -> Any:
        if not kept:
            kept.append(function(*args, **kwargs))
        return kept[0]

    return reused


def _translation() -> list[Replacement]:
    from llm_service.api import chat
    from llm_service.core.llm.openai_compat import OpenAICompatibleClient
    from llm_service.core.llm.openai_format import parse_chat_request

    return [
        (chat, "parse_chat_request", _first_result(parse_chat_request)),
        (OpenAICompatibleClient, "_encode_request", _first_result(OpenAICompatibleClient._encode_request)),
        (OpenAICompatibleClient, "_decode_response", _first_result(OpenAICompatibleClient._decode_response)),
    ]


def _dispatcher() -> list[Replacement]:
    from llm_service.core.llm.dispatcher import LLMDispatcher
    from llm_service.core.llm.models import LLMRequest, LLMResponse

    async def generate(
        self: LLMDispatcher, request: LLMRequest, upstream_time: object = None
    ) -> tuple[Any, LLMResponse]:
        deployment = self.resolve(request.model)[0]
        upstream = (
            request if request.model == deployment.model else dataclasses.replace(request, model=deployment.model)
        )
        return deployment, await self._clients.for_deployment(deployment).generate(upstream)

    return [(LLMDispatcher, "generate", generate)]


def _access_log() -> list[Replacement]:
    from llm_service.api import access_log

    def nothing(*args: Any, **kwargs: Any) -> None:
        return None

    return [(access_log, "info_fields", nothing), (access_log, "record_request_metrics", nothing)]


class _Unwatched:
    """A `DisconnectWatch` that watches nothing."""

    def __init__(self, receive: object) -> None:
        pass

    def __enter__(self) -> _Unwatched:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _disconnect_watch() -> list[Replacement]:
    from llm_service.api import chat

    return [(chat, "DisconnectWatch", _Unwatched)]


_REPLACEMENTS: dict[str, Callable[[], list[Replacement]]] = {
    "translation": _translation,
    "dispatcher": _dispatcher,
    "access-log": _access_log,
    "disconnect-watch": _disconnect_watch,
}
