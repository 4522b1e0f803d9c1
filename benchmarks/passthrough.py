"""The bare reference: the least a Python gateway on the service's own stack can do per request.

A plain ASGI app on uvicorn (uvloop and httptools, as the service runs) that POSTs the request body
bytes to the upstream with one shared aiohttp ClientSession (the service's connector settings) and
returns the upstream's bytes, or streams them as they arrive when the upstream answers with SSE.
No parsing, no validation, no routing, no logging: what is left is the cost of the HTTP server, the
HTTP client and the event loop, which the service cannot go below.

    python -m benchmarks.passthrough --port 9001 --upstream http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import uvicorn

from benchmarks.upstream import raise_fd_limit

Scope = dict[str, Any]
Message = dict[str, Any]


class Passthrough:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._forward(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
                self.session = aiohttp.ClientSession(connector=connector, auto_decompress=True)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _forward(self, scope: Scope, receive: Any, send: Any) -> None:
        assert self.session is not None
        if scope["path"] == "/health":
            await _answer(send, 200, b"text/plain", b"ok")
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        url = self.upstream + scope["path"]
        async with self.session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
            content_type = resp.headers.get("Content-Type", "application/json").encode("latin-1")
            if not content_type.startswith(b"text/event-stream"):
                await _answer(send, resp.status, content_type, await resp.read())
                return
            headers = [(b"content-type", content_type), (b"cache-control", b"no-cache")]
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            async for piece in resp.content.iter_any():
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _answer(send: Any, status: int, content_type: bytes, body: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The bare reference passthrough")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL of the upstream, e.g. http://127.0.0.1:9000")
    args = parser.parse_args(argv)
    raise_fd_limit()
    # As `llm-service serve` runs uvicorn: defaults (uvloop, httptools when installed), no access log.
    uvicorn.run(Passthrough(args.upstream), host=args.host, port=args.port, access_log=False, log_config=None)


if __name__ == "__main__":
    main()
