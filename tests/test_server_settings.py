"""Server and telemetry settings that change what the service does: CORS and the log format."""

from __future__ import annotations

import logging

import httpx

from conftest import MODELS, QUESTION
from llm_service.core.config.constants import ProviderID
from llm_service.logs import configure_logging


def test_cors_is_off_unless_origins_are_configured(client: httpx.Client) -> None:
    preflight = client.options(
        "/v1/chat/completions",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_configured_origins_get_cors_headers_and_others_do_not(start_service) -> None:
    service = start_service(server={"cors_allow_origins": "https://app.example, https://admin.example"})
    with httpx.Client(base_url=service.url, timeout=20) as http:
        preflight = http.options(
            "/v1/chat/completions",
            headers={
                "Origin": "https://admin.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        answer = http.post(
            "/v1/chat/completions",
            json={"model": MODELS[ProviderID.OPENAI], "messages": QUESTION},
            headers={"Origin": "https://app.example"},
        )
        stranger = http.post(
            "/v1/chat/completions",
            json={"model": MODELS[ProviderID.OPENAI], "messages": QUESTION},
            headers={"Origin": "https://evil.example"},
        )

    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://admin.example"
    assert answer.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-request-id" in answer.headers["access-control-expose-headers"]
    assert "access-control-allow-origin" not in stranger.headers


def test_text_log_format_writes_readable_lines_with_fields(capsys) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("azure").level)
    try:
        configure_logging("INFO", "text")
        logging.getLogger("llm_service.test").info("started", extra={"fields": {"profile": "demo"}})
        line = capsys.readouterr().err.strip().splitlines()[-1]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.getLogger("azure").setLevel(saved[2])

    assert line.endswith("INFO llm_service.test started profile=demo")
    assert not line.startswith("{")


def test_metrics_can_be_turned_off(start_service) -> None:
    service = start_service(telemetry={"metrics_enabled": False})
    response = httpx.get(f"{service.url}/metrics")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
