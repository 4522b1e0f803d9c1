"""`llm-service serve --host H --port P` (also `python -m llm_service serve`)."""

from __future__ import annotations

import argparse
import sys

import uvicorn

from llm_service.core.config.settings import Settings
from llm_service.core.llm.models import ConfigurationError
from llm_service.logs import configure_logging
from llm_service.main import create_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-service", description="AgentOne LLM Service")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default=None, help="interface (default: LLM_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default: LLM_PORT or 8000)")
    args = parser.parse_args(argv)

    try:
        settings = Settings()
    except ConfigurationError as exc:
        # A setting is missing or contradicts another: say which, without a traceback.
        print(f"llm-service: configuration error: {exc.message}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    host = args.host or settings.server.host
    port = args.port if args.port is not None else settings.server.port
    uvicorn.run(create_app(settings), host=host, port=port, access_log=False, log_config=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
