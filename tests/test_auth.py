"""Inbound authentication: only callers presenting a configured key are let in, on the chat routes' fast
path and on FastAPI's alike; per-key limits (RPM, models); health and metrics open or protected; with no
keys, loopback only; `llm-service hash-key`."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Any

import httpx
import openai
import pytest

from conftest import MODELS, QUESTION
from harness import wait_until
from llm_service import cli
from llm_service.api.auth import CallerKey, KeyTable, presented_key
from llm_service.core.config.auth import ApiKey, AuthSettings, hash_api_key
from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import Settings
from log_records import fields_of
from sse_client import read_events, streamed_text
from test_access_log import access_records

OPENAI, OPENROUTER = ProviderID.OPENAI, ProviderID.OPENROUTER
KEY_A = "sk-llm-caller-a-0123456789abcdefghijklmnop"
KEY_B = "sk-llm-caller-b-0123456789abcdefghijklmnop"
KEY_C = "sk-llm-caller-c-0123456789abcdefghijklmnop"
ASK = {"model": MODELS[OPENAI], "messages": QUESTION}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def guarded(start_service) -> Any:
    """A service that knows KEY_A, KEY_B (2 requests a minute) and KEY_C (openai/* and alias x only)."""
    limited = {"hash": "sha256:" + hash_api_key(KEY_B).upper(), "name": "b", "rpm": 2}
    narrow = {"hash": hash_api_key(KEY_C), "models": ["openai/*", "x"]}
    return start_service(auth={"api_key_hashes": [hash_api_key(KEY_A)], "api_keys": [limited, narrow]})


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/chat/completions/stream"])
def test_a_request_without_a_key_is_401_in_openais_shape(guarded, path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="llm_service.access")
    response = httpx.post(f"{guarded.url}{path}", json=ASK, headers={"x-request-id": "no-key"})

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["x-request-id"] == "no-key"
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
    assert error["param"] is None and "API key" in error["message"]
    assert wait_until(lambda: len(access_records(caplog, "no-key")) == 1)
    line = fields_of(access_records(caplog, "no-key")[0])
    assert (line["path"], line["status"], line["error_code"]) == (path, 401, "invalid_api_key")


@pytest.mark.parametrize(
    "headers",
    [
        bearer("sk-llm-wrong"),
        {"api-key": "sk-llm-wrong"},
        {"Authorization": f"Basic {KEY_A}"},
        bearer(KEY_A[:-1]),
        {"Authorization": "Bearer"},
    ],
    ids=["bearer", "api-key", "basic", "truncated", "no-key"],
)
def test_a_wrong_key_is_401_and_never_echoed(guarded, headers, caplog) -> None:
    with caplog.at_level(logging.DEBUG):
        answers = [
            httpx.post(f"{guarded.url}/v1/chat/completions", json=ASK, headers=headers),
            httpx.get(f"{guarded.url}/v1/models", headers=headers),  # FastAPI's path
        ]

    for response in answers:
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert "wrong" not in response.text and KEY_A[:-1] not in response.text
    assert "sk-llm-wrong" not in caplog.text and KEY_A[:-1] not in caplog.text


def test_good_keys_are_let_in_as_bearer_or_api_key_plain_and_streaming(guarded, upstreams, caplog) -> None:
    caplog.set_level(logging.INFO, logger="llm_service.access")
    with httpx.Client(base_url=guarded.url, timeout=20) as http:
        plain = http.post("/v1/chat/completions", json=ASK, headers=bearer(KEY_A) | {"x-request-id": "key-a"})
        azure_style = http.post("/v1/chat/completions", json=ASK, headers={"api-key": KEY_A})
        models = http.get("/v1/models", headers={"authorization": f"bearer {KEY_A}"})
        b_headers = bearer(KEY_B) | {"x-request-id": "key-b"}
        with http.stream("POST", "/v1/chat/completions/stream", json=ASK, headers=b_headers) as stream:
            assert stream.status_code == 200
            events = read_events(stream)

    assert plain.status_code == azure_style.status_code == models.status_code == 200
    assert plain.json()["choices"][0]["message"]["content"]
    assert events[-1] == "[DONE]" and streamed_text(events)
    sent = [r.headers for r in upstreams[OPENAI].requests]
    assert all(KEY_A not in str(h) and KEY_B not in str(h) for h in sent)  # the caller's key stays here
    # The access log says who called: the key's name, else the start of its digest; never the key.
    assert wait_until(lambda: access_records(caplog, "key-a") and access_records(caplog, "key-b"))
    assert fields_of(access_records(caplog, "key-a")[0])["caller"] == f"sha256:{hash_api_key(KEY_A)[:12]}"
    assert fields_of(access_records(caplog, "key-b")[0])["caller"] == "b"
    assert KEY_A not in caplog.text and KEY_B not in caplog.text


def test_the_openai_sdk_authenticates_with_its_api_key(guarded) -> None:
    good = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key=KEY_A, max_retries=0)
    bad = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="sk-llm-nope", max_retries=0)

    assert good.chat.completions.create(model=MODELS[OPENAI], messages=QUESTION).choices  # type: ignore[arg-type]
    with pytest.raises(openai.AuthenticationError) as refused:
        bad.chat.completions.create(model=MODELS[OPENAI], messages=QUESTION)  # type: ignore[arg-type]
    assert refused.value.code == "invalid_api_key"


def test_a_key_past_its_rpm_is_429_with_retry_after_and_other_keys_are_not(guarded) -> None:
    with httpx.Client(base_url=guarded.url, timeout=20) as http:
        limited = [http.post("/v1/chat/completions", json=ASK, headers=bearer(KEY_B)) for _ in range(3)]
        others = [http.post("/v1/chat/completions", json=ASK, headers=bearer(KEY_A)) for _ in range(3)]
        reading = http.get("/v1/models", headers=bearer(KEY_B))  # only chat requests count

    assert [r.status_code for r in limited] == [200, 200, 429]
    refused = limited[2]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert [r.status_code for r in others] == [200] * 3
    assert reading.status_code == 200


def test_a_model_the_key_may_not_use_is_403_model_not_found_and_never_sent(guarded, upstreams) -> None:
    body = {"model": MODELS[OPENROUTER], "messages": QUESTION, "stream": True}
    with httpx.Client(base_url=guarded.url, timeout=20) as http:
        refused = http.post("/v1/chat/completions", json=body, headers=bearer(KEY_C))
        alias = http.post("/v1/chat/completions", json={**ASK, "model": "x"}, headers=bearer(KEY_C))
        broken = http.post("/v1/chat/completions", content=b"{not json", headers=bearer(KEY_C))
        allowed = http.post("/v1/chat/completions/stream", json=ASK, headers=bearer(KEY_C))
        anyone = http.post("/v1/chat/completions", json={**body, "stream": False}, headers=bearer(KEY_A))

    assert refused.status_code == 403
    assert refused.json()["error"] == {
        "message": f"This API key does not have access to model `{MODELS[OPENROUTER]}`.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    assert len(upstreams[OPENROUTER].requests) == 1  # KEY_A's only
    assert alias.status_code == 404  # allowed, but no such alias: as for any caller
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    assert allowed.status_code == 200 and allowed.text.endswith("data: [DONE]\n\n")  # the body was handed on
    assert anyone.status_code == 200


def test_models_lists_for_a_restricted_key_only_what_it_may_use(start_service) -> None:
    aliases = {
        "x": [{"provider": "openai", "model": "gpt-4o-mini"}],
        "fast": [{"provider": "openrouter", "model": "openai/gpt-4o-mini"}],
    }
    narrow = {"hash": hash_api_key(KEY_C), "models": ["openai/*", "x"]}
    partial = {"hash": hash_api_key(KEY_B), "models": ["openrouter/openai/*"]}
    keys = {"api_key_hashes": [hash_api_key(KEY_A)], "api_keys": [narrow, partial]}
    service = start_service(aliases=aliases, auth=keys)
    with httpx.Client(base_url=service.url, timeout=20) as http:
        listed = {key: http.get("/v1/models", headers=bearer(key)) for key in (KEY_A, KEY_B, KEY_C)}
    everything, some, narrowed = ([m["id"] for m in listed[k].json()["data"]] for k in (KEY_A, KEY_B, KEY_C))

    assert {"x", "fast", "openai/*", "openrouter/*"} <= set(everything)
    # The alias it names and the provider whose every model it may use; nothing else.
    assert narrowed == ["x", "openai/*"]
    # Some of OpenRouter's models, not all: no `openrouter/*`, and no alias.
    assert some == []


def test_health_and_metrics_are_open_unless_protected(guarded, start_service) -> None:
    for path in ("/health", "/health/live", "/health/ready", "/metrics"):
        assert httpx.get(f"{guarded.url}{path}").status_code == 200, path
    assert httpx.get(f"{guarded.url}/openapi.json").status_code == 401

    protected = start_service(
        auth={"api_key_hashes": hash_api_key(KEY_A), "health_requires_key": True, "metrics_requires_key": True}
    )
    for path in ("/health", "/health/ready", "/metrics"):
        assert httpx.get(f"{protected.url}{path}").status_code == 401, path
        assert httpx.get(f"{protected.url}{path}", headers=bearer(KEY_A)).status_code == 200, path


def test_a_resumable_stream_is_resumed_only_with_the_key_that_started_it(guarded) -> None:
    with httpx.Client(base_url=guarded.url, timeout=20) as http:
        with http.stream("POST", "/v1/chat/completions/stream", json=ASK, headers=bearer(KEY_A)) as stream:
            stream_id = stream.headers["x-llm-stream-id"]
            read_events(stream)
        resume = f"/v1/chat/completions/{stream_id}/stream"
        other = http.get(resume, headers=bearer(KEY_B))
        nobody = http.get(resume)
        with http.stream("GET", resume, headers=bearer(KEY_A)) as again:
            assert again.status_code == 200
            events = read_events(again)

    assert other.status_code == 404 and other.json()["error"]["code"] == "stream_not_found"
    assert nobody.status_code == 401
    assert events[-1] == "[DONE]" and streamed_text(events)


def test_with_no_keys_configured_nothing_is_asked(client) -> None:
    assert client.post("/v1/chat/completions", json=ASK).status_code == 200


def test_the_key_table_finds_configured_keys_only() -> None:
    table = KeyTable([ApiKey(hash=hash_api_key(KEY_A)), ApiKey(hash=hash_api_key(KEY_B), rpm=1)])

    assert table.find(KEY_A.encode()) is not None
    assert table.find(KEY_B.encode()) is not table.find(KEY_A.encode())
    assert table.find(b"sk-llm-other") is None and table.find(b"") is None
    assert presented_key([(b"authorization", b"Bearer  k1 ")]) == b"k1"
    assert presented_key([(b"x-other", b"v"), (b"api-key", b"k2")]) == b"k2"
    assert presented_key([(b"authorization", b"Token k1")]) is None
    assert presented_key([]) is None


def test_a_replica_back_on_its_share_of_a_keys_rate_says_when_its_window_has_room() -> None:
    """What the shared window admitted is counted here too, so the window may hold more than this replica's
    share (rpm 4 over 2 replicas: 2) when Redis goes: it has room once all but one of a share have left."""
    caller = CallerKey(ApiKey(hash=hash_api_key(KEY_B), rpm=4), replicas=2)
    for at in (0.0, 1.0, 2.0, 3.0):
        caller.count(at)

    assert caller.admit(10.0) == 52.0  # when the request of t=2 leaves, one (t=3) is left: room for one
    assert caller.admit(61.5) == 0.5
    assert caller.admit(62.0) is None
    assert caller.admit(62.5) == 0.5  # full again (t=3 and t=62): room when t=3 leaves


def test_key_digests_are_read_from_a_comma_separated_variable_and_a_bad_one_is_not_echoed(monkeypatch) -> None:
    monkeypatch.setenv("LLM_API_KEY_HASHES", f"{hash_api_key(KEY_A)}, sha256:{hash_api_key(KEY_B)}")
    assert Settings(demo_mode="off").auth.api_key_hashes == [hash_api_key(KEY_A), hash_api_key(KEY_B)]

    with pytest.raises(ValueError, match="SHA-256 hex digest") as bad:
        Settings(demo_mode="off", auth={"api_key_hashes": [KEY_A]})
    assert KEY_A not in str(bad.value)


def test_a_digest_named_twice_keeps_its_limits() -> None:
    auth = AuthSettings(api_key_hashes=[hash_api_key(KEY_B)], api_keys=[ApiKey(hash=hash_api_key(KEY_B), rpm=5)])
    assert [k.rpm for k in auth.accepted_keys()] == [5]


def _cli_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LLM_")}


def test_hash_key_prints_the_digest_of_the_key_on_stdin() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "llm_service", "hash-key"],
        input=KEY_A + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=_cli_env(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == hash_api_key(KEY_A)
    assert KEY_A not in result.stdout + result.stderr


def test_hash_key_generate_prints_a_new_key_and_its_digest(capsys) -> None:
    assert cli.main(["hash-key", "--generate"]) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    key, digest = lines["key"].strip(), lines["hash"].strip()
    assert key.startswith("sk-llm-") and len(key) > 40
    assert digest == hash_api_key(key)


def _serve(monkeypatch, *args: str) -> list[str]:
    """`llm-service serve` without serving: the hosts it would have listened on."""
    hosts: list[str] = []

    def run(server: cli.DrainingServer, sockets: object = None) -> None:
        hosts.append(server.config.host)
        server.started = True

    monkeypatch.setattr(cli.DrainingServer, "run", run)
    monkeypatch.setattr(cli, "configure_logging", lambda level, log_format, process_fields=None: None)
    assert cli.main(["serve", *args]) in (0, 2)
    return hosts


@pytest.fixture
def no_env(monkeypatch, tmp_path) -> None:
    for name in list(os.environ):
        if name.startswith(("LLM_", "OPENAI_", "OPENROUTER_", "AZURE_", "VERTEX_", "REMOTE_LLM_", "GENAI_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLM_CONFIG_DIR", str(tmp_path))


@pytest.mark.usefixtures("no_env")
def test_without_keys_serve_refuses_an_interface_other_than_loopback(monkeypatch, capsys) -> None:
    assert _serve(monkeypatch, "--host", "0.0.0.0", "--port", "0") == []
    message = capsys.readouterr().err
    assert "LLM_API_KEY_HASHES" in message and "LLM_ALLOW_UNAUTHENTICATED" in message


@pytest.mark.usefixtures("no_env")
def test_without_keys_serve_warns_on_loopback_and_serves_elsewhere_only_when_allowed(monkeypatch, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="llm_service"):
        assert _serve(monkeypatch, "--host", "127.0.0.1", "--port", "0") == ["127.0.0.1"]
    assert "no API key configured" in caplog.text

    monkeypatch.setenv("LLM_ALLOW_UNAUTHENTICATED", "true")
    assert _serve(monkeypatch, "--host", "0.0.0.0", "--port", "0") == ["0.0.0.0"]

    monkeypatch.delenv("LLM_ALLOW_UNAUTHENTICATED")
    monkeypatch.setenv("LLM_API_KEY_HASHES", hash_api_key(KEY_A))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llm_service"):
        assert _serve(monkeypatch, "--host", "0.0.0.0", "--port", "0") == ["0.0.0.0"]
    assert "no API key configured" not in caplog.text
