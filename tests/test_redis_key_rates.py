"""An API key's requests per minute are counted by every replica together in the Redis they share, as a
deployment's limits are: a client whose keep-alive connection stays with one replica (or one worker of
`serve --workers`) gets its key's whole rate, not that replica's share; while Redis is unreachable each
replica admits its share of the rate, starting from what it let in itself. On a real redis-server."""

from __future__ import annotations

from typing import Any

import httpx

from conftest import MODELS, QUESTION, fake_settings
from harness import ServiceThread
from llm_service.core.config.auth import hash_api_key
from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import Settings
from redis_server import RedisServer

OPENAI = ProviderID.OPENAI
LIMITED = "sk-llm-limited-0123456789abcdefghijklmnop"
OTHER = "sk-llm-other-0123456789abcdefghijklmnopqr"
RPM = 4
ASK = {"model": MODELS[OPENAI], "messages": QUESTION}


def keyed_replicas(upstreams: dict[ProviderID, Any], server: RedisServer) -> Settings:
    """Two replicas on one Redis; LIMITED may make `RPM` requests a minute, OTHER any number."""
    auth = {
        "api_key_hashes": [hash_api_key(OTHER)],
        "api_keys": [{"hash": hash_api_key(LIMITED), "name": "limited", "rpm": RPM}],
    }
    scale_out = {"redis_url": server.url, "replicas": 2, "redis_retry_seconds": 0.1, "redis_timeout_seconds": 5.0}
    return fake_settings(upstreams, auth=auth, scale_out=scale_out, dispatcher={"health_check_interval_seconds": 0})


def asked(url: str, key: str, count: int) -> list[httpx.Response]:
    """`count` chat requests one after another, on one keep-alive connection (as an SDK client sends them)."""
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as http:
        return [http.post("/v1/chat/completions", json=ASK) for _ in range(count)]


def codes(responses: list[httpx.Response]) -> list[int]:
    return [r.status_code for r in responses]


def test_a_keys_rate_is_counted_by_every_replica_together(upstreams, redis_server) -> None:
    with (
        ServiceThread(keyed_replicas(upstreams, redis_server)) as a,
        ServiceThread(keyed_replicas(upstreams, redis_server)) as b,
    ):
        on_a = asked(a.url, LIMITED, RPM + 2)  # one replica's share would be RPM / 2
        on_b = asked(b.url, LIMITED, 1)  # the window both count in is full
        others = asked(b.url, OTHER, 3)

    assert codes(on_a) == [200] * RPM + [429, 429]
    assert codes(on_b) == [429]
    refused = on_b[0]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert f"may make {RPM} requests per minute" in error["message"]  # the key's rate, not a share of it
    assert codes(others) == [200] * 3
    assert len(upstreams[OPENAI].requests) == RPM + 3


def test_with_redis_gone_each_replica_admits_its_share_counting_what_it_let_in(upstreams, redis_server) -> None:
    share = RPM // 2
    with (
        ServiceThread(keyed_replicas(upstreams, redis_server)) as a,
        ServiceThread(keyed_replicas(upstreams, redis_server)) as b,
    ):
        shared = asked(a.url, LIMITED, share)
        redis_server.stop()
        on_a = asked(a.url, LIMITED, 1)  # its share is used up by what it let in while Redis counted
        on_b = asked(b.url, LIMITED, share + 1)

    assert codes(shared) == [200] * share
    assert codes(on_a) == [429]
    assert f"may make {share} requests per minute" in on_a[0].json()["error"]["message"]
    assert codes(on_b) == [200] * share + [429]
