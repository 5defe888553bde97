"""Request ids, the access log and the decision-id header; the benchmark-only endpoint."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import redis
import structlog
from litestar.testing import TestClient
from structlog.testing import capture_logs

from api.app import DECISION_ID_HEADER, create_app
from api.redis_server import EmbeddedRedis
from api.settings import Settings

Client = TestClient  # type: ignore[type-arg]
DECISION = {"message_id": "r1", "user_id": "u1", "channels": ["email"],
            "category": "transactional"}


def _client(embedded_redis: EmbeddedRedis, **settings: object) -> Client:
    redis.Redis.from_url(embedded_redis.url).flushdb()
    return TestClient(create_app(Settings(redis_url=embedded_redis.url, **settings)))  # type: ignore[arg-type]


@pytest.fixture
def client(embedded_redis: EmbeddedRedis) -> Iterator[Client]:
    with _client(embedded_redis, log_decisions=True) as c:
        yield c


def test_every_line_of_a_request_carries_its_id(client: Client) -> None:
    # capture as production logs: contextvars merged into each line
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as lines:
        r = client.post("/v1/decisions", json=DECISION)
    assert r.status_code == 200
    request_id = r.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert r.headers[DECISION_ID_HEADER] == r.json()["decision_id"]
    decision = next(line for line in lines if line["event"] == "decision")
    access = next(line for line in lines if line["event"] == "request")
    assert decision["request_id"] == access["request_id"] == request_id
    assert decision["decision_id"] == r.json()["decision_id"]
    assert access["method"] == "POST" and access["route"] == "/v1/decisions"
    assert access["status"] == 200 and access["duration_ms"] >= 0
    assert len([line for line in lines if line["event"] == "request"]) == 1


def test_caller_request_ids_are_kept_when_safe(client: Client) -> None:
    kept = client.get("/health/live", headers={"X-Request-Id": "platform-42:abc.DEF"})
    assert kept.headers["x-request-id"] == "platform-42:abc.DEF"
    for forged in ("two words", "x" * 129, 'a"}{"admin":true', ""):
        r = client.get("/health/live", headers={"X-Request-Id": forged})
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"]), forged


def test_errors_are_logged_with_their_status(client: Client) -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as lines:
        bad = client.post("/v1/decisions", json={**DECISION, "channels": ["fax"]})
        unknown = client.get("/no/such/route")
        wrong_method = client.delete("/v1/policy")
    assert [bad.status_code, unknown.status_code, wrong_method.status_code] == [400, 404, 405]
    access = [line for line in lines if line["event"] == "request"]
    assert [(a["status"], a["request_id"]) for a in access] == [
        (r.status_code, r.headers["x-request-id"]) for r in (bad, unknown, wrong_method)]
    # the route template, never the raw path (user ids stay out of the logs)
    assert [a["route"] for a in access] == ["/v1/decisions", None, None]  # 404 and 405: no route


def test_no_access_line_below_info(embedded_redis: EmbeddedRedis) -> None:
    with _client(embedded_redis, log_level="warning", log_decisions=False) as c, \
            capture_logs() as lines:
        r = c.get("/health/live")
    assert r.headers["x-request-id"]
    assert [line for line in lines if line["event"] == "request"] == []


def test_trivial_endpoint_only_when_benchmarking(embedded_redis: EmbeddedRedis) -> None:
    with _client(embedded_redis) as c:
        assert c.post("/v1/_trivial", json=DECISION).status_code == 404
    with _client(embedded_redis, benchmark_endpoints=True) as c:
        r = c.post("/v1/_trivial", json=DECISION)
        assert r.status_code == 200 and r.json() == {"message_id": "r1"}
        assert "/v1/_trivial" not in c.get("/docs/openapi.json").json()["paths"]
    assert Settings.from_env({"SENDWISE_BENCHMARK_ENDPOINTS": "1"}).benchmark_endpoints
    assert not Settings.from_env({}).benchmark_endpoints
