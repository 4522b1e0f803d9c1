"""Fake Vertex AI Gemini upstream (``generateContent`` / ``streamGenerateContent``).

Serves the fixtures under ``tests/fixtures/vertex_ai/`` on a loopback port with the controls
of :class:`~llm_service.fakes.FakeUpstream` (request log, faults, hang-up bookkeeping); it
runs under :class:`~llm_service.fakes.FakeUpstreamThread` as well. Protocol reference section 4.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import CIMultiDict
from typing_extensions import override

from . import vertex_wire as vw
from .continuation import PREFILL_REFUSED
from .faults import Fault
from .openai_upstream import NOT_JSON, LoopbackChatFake, StreamPiece
from .wire import DEFAULT_FIXTURES_DIR, FixtureSet, Scenario, SseEvent, normalize_prefix

_ROUTE = re.compile(
    r"/(?P<version>v1|v1beta1)/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
    r"/publishers/google/models/(?P<model>[^/:]+):(?P<method>generateContent|streamGenerateContent)"
)


class FakeVertex(LoopbackChatFake):
    """A Vertex AI Gemini endpoint for one project and location.

    Routes: ``POST {path_prefix}/{v1|v1beta1}/projects/{project}/locations/{location}/publishers/
    google/models/{model}:generateContent`` and ``:streamGenerateContent`` (``?alt=sse``: SSE
    with no terminator; without: one JSON array). Any model name is served. Auth:
    ``Authorization: Bearer <access_token>``. :attr:`url` is ``http://host:port{path_prefix}``,
    what a user sets as ``VERTEX_BASE_URL`` (the real default is
    ``https://{location}-aiplatform.googleapis.com``).

    ``function_call_ids`` answers tool calls like Gemini 3 (fixture ``chat_tool_call_ids``: every
    functionCall part carries an ``id`` and a ``thoughtSignature``).
    ``reject_id_fields`` is the older API version that knows no ``id`` in a functionCall or
    functionResponse: a request carrying one is refused with 400 ``Unknown name "id"`` (reference
    section 7). Left unset, it follows ``function_call_ids``: refused unless the model issues ids.
    ``False`` models a newer API version serving a model without ids (the ``id`` fields are accepted and
    ignored); ``True`` with ``function_call_ids`` is a contradiction and refused.
    ``require_thought_signatures`` refuses a current-turn functionCall part without a signature
    the fake issued (and, without ids, answers with the signed ``chat_tool_call_signed``).
    ``crlf`` (default: CRLF, as Vertex sends) picks the SSE line terminator.
    """

    def __init__(
        self,
        access_token: str | None = "ya29.test-token",
        project: str = "demo-proj",
        location: str = "us-central1",
        *,
        fixtures_dir: Path | None = None,
        function_call_ids: bool = False,
        reject_id_fields: bool | None = None,
        require_thought_signatures: bool = False,
        path_prefix: str = "",
        crlf: bool = True,
        split_writes: bool = False,
        chunk_delay: float = 0.0,
    ) -> None:
        if function_call_ids and reject_id_fields:
            raise ValueError("a model that issues function-call ids cannot refuse them (reject_id_fields)")
        fixtures = FixtureSet("vertex_ai", fixtures_dir or DEFAULT_FIXTURES_DIR)
        super().__init__(fixtures, crlf=crlf, split_writes=split_writes, chunk_delay=chunk_delay)
        self.access_token = access_token
        self.project = project
        self.location = location
        self.function_call_ids = function_call_ids
        self.reject_id_fields = not function_call_ids if reject_id_fields is None else reject_id_fields
        self.require_thought_signatures = require_thought_signatures
        self.path_prefix = normalize_prefix(path_prefix)
        signed = ("tool_call_ids", "tool_call_signed")
        issued = [vw.thought_signatures(fixtures.completions[name]) for name in signed if name in fixtures.completions]
        self.issued_signatures = frozenset().union(*issued)

    # ------------------------------------------------------------------ hooks

    @override
    def _add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._handle)

    @override
    def _url_path(self) -> str:
        return self.path_prefix

    @override
    def _generic_error(self, status: int) -> bytes:
        return vw.generic_error(status)

    @override
    def _check_fault(self, fault: Fault) -> None:
        # Here an error_* stem with error_event_after_chunks names the mid-stream error body.
        if fault.fixture is None or not fault.fixture.startswith("error_") or fault.error_event_after_chunks is None:
            super()._check_fault(fault)
        elif fault.status is None and fault.fixture not in self.fixtures.errors:
            raise ValueError(f"no error fixture {fault.fixture!r} in {self.fixtures.directory}")

    # ------------------------------------------------------------------ handler

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        parsed = self._record(request, await request.read())
        path = request.path
        match = _ROUTE.fullmatch(path[len(self.path_prefix) :]) if path.startswith(self.path_prefix) else None
        if match is None or request.method != "POST":
            return self._respond(404, vw.not_found_page(path), {}, "text/html; charset=UTF-8")
        fault = await self._take_fault()
        extra = fault.headers if fault is not None else {}
        if fault is not None and fault.status is not None:
            return self._respond(fault.status, self._fault_error_body(fault), extra)
        rejection = self._reject(request, match, parsed)
        if rejection is None and fault is not None and fault.reject_assistant_prefix and vw.ends_with_model(parsed):
            rejection = 400, vw.invalid_argument(PREFILL_REFUSED)
        if rejection is not None:
            return self._respond(rejection[0], rejection[1], extra)
        assert isinstance(parsed, dict)
        answer = self._answer(vw.choose_scenario(parsed), _success_fixture(fault))
        if match["method"] == "generateContent":
            return await self._complete(request, answer, fault, extra)
        return await self._stream_answer(request, answer, fault, extra)

    def _reject(self, request: web.Request, match: re.Match[str], parsed: Any) -> tuple[int, bytes] | None:
        """Auth, then the resource, then the body: the order the real service checks them in."""
        method: vw.Method = "generateContent" if match["method"] == "generateContent" else "streamGenerateContent"
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        presented = token.strip() if scheme.lower() == "bearer" and token.strip() else None
        if self.access_token is not None and presented != self.access_token:
            return 401, vw.unauthenticated(presented, match["version"], method)
        if (match["project"], match["location"]) != (self.project, self.location):
            return 403, vw.permission_denied(vw.model_resource(match["project"], match["location"], match["model"]))
        if parsed is NOT_JSON or not isinstance(parsed, dict):
            return 400, vw.invalid_json("Unexpected token.")
        signatures = self.issued_signatures if self.require_thought_signatures else None
        rejection = vw.validate_request(parsed, reject_id_fields=self.reject_id_fields, signatures=signatures)
        return None if rejection is None else (400, rejection)

    # ------------------------------------------------------------------ responses

    async def _complete(
        self, request: web.Request, answer: str, fault: Fault | None, extra: dict[str, str]
    ) -> web.StreamResponse:
        headers = self._headers(vw.JSON_CONTENT_TYPE, extra)
        if fault is not None and fault.body is not None:
            return web.Response(body=fault.body, headers=headers)
        body = self.fixtures.completions[answer]
        if fault is None or fault.drop_after_chunks is None:
            return web.Response(body=body, headers=headers)
        return await self._truncated(request, body, headers)

    async def _stream_answer(
        self, request: web.Request, answer: str, fault: Fault | None, extra: dict[str, str]
    ) -> web.StreamResponse:
        sse = request.query.get("alt") == "sse"
        headers = self._headers(vw.SSE_CONTENT_TYPE if sse else vw.JSON_CONTENT_TYPE, extra)
        if sse:
            headers["Content-Disposition"] = "attachment"
        if fault is not None and fault.body is not None:
            return web.Response(body=fault.body, headers=headers)
        payloads = [event.data for event in self.fixtures.streams[answer] if event.data is not None]
        error_body = self._midstream_error(fault)
        if sse:
            pieces = [StreamPiece(SseEvent(data=payload).render(self._newline)) for payload in payloads]
            return await self._stream(request, headers, pieces, fault, vw.raw_error_lines(error_body, self._newline))
        pieces = [StreamPiece(piece) for piece in vw.array_pieces([json.loads(p) for p in payloads])]
        pieces.append(StreamPiece(vw.ARRAY_END, "end"))
        return await self._stream(request, headers, pieces, fault, vw.array_error_piece(error_body))

    def _answer(self, scenario: Scenario, fixture: str | None) -> str:
        """A fault's fixture, else the scenario, in the Gemini 3 variant when so configured."""
        variant: str = scenario
        if scenario == "tool_call" and self.function_call_ids:
            variant = "tool_call_ids"
        elif scenario == "tool_call" and self.require_thought_signatures:
            variant = "tool_call_signed"
        if fixture is None and variant in self.fixtures.completions:
            return variant
        return self.fixtures.answer_for(scenario, fixture)

    def _midstream_error(self, fault: Fault | None) -> bytes:
        stem = fault.fixture if fault is not None and fault.fixture else ""
        if stem.startswith("error_") and stem in self.fixtures.errors:
            return self.fixtures.errors[stem]
        return self.fixtures.errors.get("error_500") or vw.generic_error(500)

    def _respond(
        self, status: int, body: bytes, extra: dict[str, str], content_type: str = vw.JSON_CONTENT_TYPE
    ) -> web.Response:
        return web.Response(status=status, body=body, headers=self._headers(content_type, extra))

    def _headers(self, content_type: str, extra: dict[str, str]) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict(
            {
                "Content-Type": content_type,
                "Vary": "Origin, X-Origin, Referer",
                "Server": "scaffolding on HTTPServer2",
                "X-XSS-Protection": "0",
                "X-Frame-Options": "SAMEORIGIN",
                "X-Content-Type-Options": "nosniff",
            }
        )
        headers.update(extra)
        return headers


def _success_fixture(fault: Fault | None) -> str | None:
    if fault is None or fault.fixture is None or not fault.fixture.startswith("chat_"):
        return None
    return fault.fixture
