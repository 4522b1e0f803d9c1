"""`llm-service serve --host H --port P` (also `python -m llm_service serve`), and `llm-service config`:

- `config check [--profile P] [--strict]` prints every configuration problem, one per line naming its
  culprit (env var, or profile file:line:column and YAML path); exit 1 on an error (with `--strict`,
  on a warning too), else 0 after a short summary.
- `config show [--profile P] [--format yaml|json]` prints the effective configuration, every secret
  masked.

`serve` runs the same check first: an error stops it before it starts (exit 2, the check's messages on
stderr, no traceback); warnings are logged and it starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

import uvicorn
import yaml

from llm_service.core.config.validation import ConfigReport, check_configuration, effective_configuration
from llm_service.logs import configure_logging
from llm_service.main import create_app

log = logging.getLogger("llm_service")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "config":
        return _show(args) if args.config_command == "show" else _check(args)
    return _serve(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-service", description="AgentOne LLM Service")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default=None, help="interface (default: LLM_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default: LLM_PORT or 8000)")
    config = commands.add_parser("config", help="check or show the configuration (env + profile)")
    actions = config.add_subparsers(dest="config_command", required=True)
    check = actions.add_parser("check", help="print every configuration problem; exit 1 on an error")
    check.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    show = actions.add_parser("show", help="print the effective configuration, secrets masked")
    show.add_argument("--format", choices=("yaml", "json"), default="yaml", help="output format (default: yaml)")
    for action in (check, show):
        action.add_argument("--profile", default=None, help="profile to load (default: LLM_CONFIG_PROFILE or default)")
    return parser


def _report(args: argparse.Namespace) -> ConfigReport:
    profile: str | None = getattr(args, "profile", None)
    return check_configuration(**({"config_profile": profile} if profile else {}))


def _serve(args: argparse.Namespace) -> int:
    report = _report(args)
    settings = report.settings
    if settings is None:
        # Say every problem, without a traceback, and do not start.
        for problem in report.problems:
            print(f"llm-service: {problem}", file=sys.stderr)
        print(f"llm-service: configuration error: not starting ({_counts(report)})", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.telemetry.log_format)
    for problem in report.warnings:
        log.warning("configuration warning", extra={"fields": {"where": problem.where, "problem": problem.message}})
    host = args.host or settings.server.host
    port = args.port if args.port is not None else settings.server.port
    uvicorn.run(
        create_app(settings, own_process=True),
        host=host,
        port=port,
        access_log=False,
        log_config=None,
        backlog=settings.server.backlog,
    )
    return 0


def _check(args: argparse.Namespace) -> int:
    report = _report(args)
    for problem in report.problems:
        print(problem)
    settings = report.settings
    if settings is None:
        print(f"configuration has errors: {_counts(report)}")
        return 1
    source = report.profile_file if report.profile_loaded else f"no {report.profile_file}: defaults only"
    count = len(report.warnings)
    warnings = f" ({count} warning{'s' * (count != 1)})" if count else ""
    providers = ", ".join(p.value for p in settings.configured_providers()) or "none"
    demo = " (demo mode: the built-in fixtures serve every provider)" if settings.demo_enabled() else ""
    print(f"configuration OK{warnings}: profile {report.profile!r} ({source})")
    print(f"  providers: {providers}{demo}")
    print(f"  aliases:   {', '.join(sorted(settings.aliases)) or 'none'}")
    return 1 if args.strict and report.warnings else 0


def _show(args: argparse.Namespace) -> int:
    report = _report(args)
    if report.settings is None:
        for problem in report.problems:
            print(problem, file=sys.stderr)
        print(f"configuration has errors: {_counts(report)}", file=sys.stderr)
        return 1
    data: dict[str, Any] = effective_configuration(report.settings)
    if args.format == "json":
        print(json.dumps(data, indent=2))
    else:
        print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), end="")
    return 0


def _counts(report: ConfigReport) -> str:
    errors, warnings = len(report.errors), len(report.warnings)
    return f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"


if __name__ == "__main__":
    sys.exit(main())
