"""The public v1 contract through litestar's test client."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from api.auth import ApiKey, hash_key
from api.clock import FixedClock
from api.redis_client import RedisClient
from api.settings import Settings
from tests.conftest import TEST_ID_KEY

Client = AsyncTestClient  # type: ignore[type-arg]
BASE = {"message_id": "m1", "user_id": "u1", "channels": ["email"],
        "timezone": "America/New_York"}


def body(**fields: Any) -> dict[str, Any]:
    return {**BASE, **fields}


async def test_decision_round_trip(client: Client) -> None:
    r = await client.post("/v1/decisions", json=body())
    assert r.status_code == 200
    data = r.json()
    assert data["decision"] == "send"
    assert data["send_at"] == "2026-06-10T16:00:00Z"
    assert data["local_send_at"] == "2026-06-10T12:00:00-04:00"
    assert data["decision_id"].startswith("d_")
    assert data["policy_version"] == "0"
    assert data["reasons"] == []


@pytest.mark.parametrize(("payload", "field", "code"), [
    (body(channels=["fax"]), "channels[0]", "invalid_field"),
    (body(channels=[]), "channels", "invalid_field"),
    (body(channels=["sms", "sms"]), "channels", "invalid_field"),
    (body(surprise=1), "surprise", "invalid_field"),
    ({"user_id": "u1", "channels": ["sms"]}, "message_id", "invalid_field"),
    (body(timezone="Mars/Olympus"), "timezone", "invalid_timezone"),
    (body(deadline="2020-01-01T00:00:00Z"), "deadline", "deadline_in_past"),
    (body(deadline="2026-06-11T00:00:00"), "deadline", "invalid_field"),
    (body(deadline="tomorrow"), "deadline", "invalid_field"),
    (body(phone="+1555"), "phone", "invalid_phone"),
    (body(category="spam"), "category", "invalid_field"),
    (body(priority=99), "priority", "invalid_field"),
    (body(offer={"id": "x"}), "offer.group", "invalid_field"),
    (body(region="US-FL", country="FR"), "region", "invalid_field"),
    (body(tags=["ok", "bad\x00"]), "tags[1]", "invalid_field"),
])
async def test_bad_input_is_a_4xx_naming_the_field(client: Client, payload: dict[str, Any],
                                                   field: str, code: str,
                                                   redis_client: RedisClient) -> None:
    r = await client.post("/v1/decisions", json=payload)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field, r.json()
    assert r.json()["code"] == code
    assert await redis_client.dbsize() == 0  # nothing written


async def test_malformed_json_and_oversize_body(client: Client) -> None:
    r = await client.post("/v1/decisions", content=b"{nope",
                          headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_json"
    r = await client.post("/v1/decisions", json=body(tags=["x" * 60] * 2000))
    assert r.status_code == 413
    assert r.json()["code"] == "payload_too_large"


async def test_idempotency_conflict_is_409(client: Client) -> None:
    assert (await client.post("/v1/decisions", json=body())).status_code == 200
    r = await client.post("/v1/decisions", json=body(channels=["push"]))
    assert r.status_code == 409
    assert r.json() == {"code": "idempotency_conflict", "field": "message_id",
                        "message": r.json()["message"]}


async def test_preferences_round_trip_and_validation(client: Client) -> None:
    prefs = {"timezone": "Europe/Paris", "channels": {"sms": {"consent": "opted_out"}},
             "frequency_limits": [{"limit": 2, "calendar": "week"}],
             "quiet_hours": [{"start": "22:00", "end": "09:00"}], "topic_opt_outs": ["sports"]}
    r = await client.put("/v1/users/u1/preferences", json=prefs)
    assert r.status_code == 200, r.text
    assert r.json()["revision"] == 1
    got = (await client.get("/v1/users/u1/preferences")).json()
    assert got["preferences"]["timezone"] == "Europe/Paris"
    bad = await client.put("/v1/users/u1/preferences", json={"timezone": "Nowhere/Land"})
    assert bad.status_code == 400 and bad.json()["field"] == "timezone"
    bad = await client.put("/v1/users/u1/preferences",
                           json={"frequency_limits": [{"limit": 2}]})
    assert bad.json()["field"] == "frequency_limits[0].window_minutes"
    bad = await client.put("/v1/users/u1/preferences", json={"quiet_hours": [{"start": "25:00",
                                                                               "end": "08:00"}]})
    assert bad.json()["field"] == "quiet_hours[0].start"


async def test_policy_put_validates_whole_and_versions(client: Client) -> None:
    current = (await client.get("/v1/policy")).json()
    assert current["version"] == 0
    assert current["quiet_hours"][0]["start"] == "21:00"
    bad = await client.put("/v1/policy", json={"caps": [{"id": "x", "limit": 1}]})
    assert bad.status_code == 400
    assert bad.json()["field"] == "caps[0].window_minutes"
    bad = await client.put("/v1/policy", json={"caps": [{"id": "x", "limit": 0,
                                                         "window_minutes": 5}]})
    assert bad.json()["field"] == "caps[0].limit"
    bad = await client.put("/v1/policy", json={"caps": [{"id": "x", "limit": 2,
                                                         "window_minutes": 5, "reserve": {
                                                             "below_priority": 5, "limit": 2}}]})
    assert (bad.status_code, bad.json()["field"]) == (400, "caps[0].reserve.limit")
    bad = await client.put("/v1/policy", json={"preemption": {"max_displaced": 11}})
    assert (bad.status_code, bad.json()["field"]) == (400, "preemption.max_displaced")
    bad = await client.put("/v1/policy", json={"send_time": {"spread_minutes": 1441}})
    assert (bad.status_code, bad.json()["field"]) == (400, "send_time.spread_minutes")
    ok = await client.put("/v1/policy", json={"caps": [{"id": "x", "limit": 1,
                                                        "window_minutes": 60}]})
    assert ok.status_code == 200 and ok.json()["version"] == 1
    stale = await client.put("/v1/policy", json={"version": 5, "caps": []})
    assert stale.status_code == 409 and stale.json()["code"] == "policy_version_conflict"
    ok = await client.put("/v1/policy", json={"version": 1, "caps": []})
    assert ok.json()["version"] == 2
    r = await client.post("/v1/decisions", json=body())
    assert r.json()["policy_version"] == "2"


async def test_events_batch_is_validated_whole(client: Client,
                                               redis_client: RedisClient) -> None:
    events = [{"type": "unsubscribed", "user_id": "u1", "at": "2026-06-10T15:00:00Z",
               "channel": "email"},
              {"type": "converted", "user_id": "u1", "at": "2026-06-10T15:00:00Z"}]
    r = await client.post("/v1/events", json={"events": events})
    assert r.status_code == 400 and r.json()["field"] == "events[1].campaign_id"
    assert await redis_client.dbsize() == 0
    events[1]["campaign_id"] = "c1"
    r = await client.post("/v1/events", json={"events": events})
    assert r.status_code == 202
    assert r.json() == {"accepted": 2, "opt_outs": 1, "conversions": 1, "profile_updates": 0}
    d = (await client.post("/v1/decisions", json=body())).json()
    assert d["decision"] == "suppress" and d["reasons"][0]["code"] == "no_consent"
    bad = await client.post("/v1/events", json={"events": [{"type": "teleported",
                                                            "user_id": "u", "at": "x"}]})
    assert bad.status_code == 400 and bad.json()["field"] == "events[0].type"


async def test_cancel_and_timeline(client: Client) -> None:
    d = (await client.post("/v1/decisions", json=body(priority=8))).json()
    timeline = (await client.get("/v1/users/u1/timeline")).json()
    assert [e["message_id"] for e in timeline["entries"]] == ["m1"]
    assert timeline["entries"][0]["decision"] == "send"
    assert timeline["entries"][0]["priority"] == 8
    r = await client.post(f"/v1/decisions/{d['decision_id']}/cancel")
    assert r.status_code == 200 and r.json()["released"] is True
    assert (await client.get("/v1/users/u1/timeline")).json()["entries"] == []
    assert (await client.post("/v1/decisions/d_bogus/cancel")).status_code == 404
    assert (await client.post("/v1/decisions/d_dTE.bm9wZQ/cancel")).status_code == 404


async def test_health_docs_metrics_reason_codes(client: Client) -> None:
    assert (await client.get("/health/live")).json() == {"status": "ok"}
    assert (await client.get("/health/ready")).status_code == 200
    schema = (await client.get("/docs/openapi.json")).json()
    assert "/v1/decisions" in schema["paths"]
    codes = {c["code"] for c in (await client.get("/v1/reason-codes")).json()}
    assert {"frequency_cap", "quiet_hours", "policy_store_unavailable"} <= codes
    await client.post("/v1/decisions", json=body())
    metrics = (await client.get("/metrics")).text
    assert 'sendwise_decisions_total{channel="email",decision="send"} 1.0' in metrics
    assert "sendwise_decision_seconds_count 1.0" in metrics
    assert (await client.get("/nope")).json()["code"] == "not_found"
    # error answers by their machine code: the strict decoder's and the domain's
    assert (await client.post("/v1/decisions", json=body(channels=["fax"]))).status_code == 400
    assert (await client.post("/v1/decisions", json=body(channels=["push"]))).status_code == 409
    metrics = (await client.get("/metrics")).text
    assert 'sendwise_api_errors_total{code="invalid_field"} 1.0' in metrics
    assert 'sendwise_api_errors_total{code="idempotency_conflict"} 1.0' in metrics


async def test_api_keys_select_the_tenant(redis_client: RedisClient, redis_settings: Settings,
                                          clock: FixedClock) -> None:
    keys = [ApiKey(sha256=hash_key(k), tenant=t, role="admin") for k, t in (("k1", "t1"),
                                                                           ("k2", "t2"))]
    settings = msgspec.structs.replace(redis_settings, api_keys={k.sha256: k for k in keys})
    app = create_app(settings, clock=clock)
    async with AsyncTestClient(app=app) as c:
        assert (await c.post("/v1/decisions", json=body())).status_code == 401
        h1 = {"authorization": "Bearer k1"}
        h2 = {"authorization": "Bearer k2"}
        assert (await c.post("/v1/decisions", json=body(), headers=h1)).status_code == 200
        # same message id, other tenant: a fresh decision, not a conflict
        r = await c.post("/v1/decisions", json=body(channels=["push"]), headers=h2)
        assert r.status_code == 200 and r.json()["replayed"] is False
        bad = await c.post("/v1/decisions", json=body(), headers={"authorization": "Bearer x"})
        assert bad.status_code == 401


async def test_redis_down_degrades_instead_of_failing(clock: FixedClock, tmp_path: Any) -> None:
    """Invariant 7: no 5xx on decisions; transactional sends, promotional defers."""
    app = create_app(Settings(redis_url=f"unix://{tmp_path}/nothing.sock",
                              fallback_defer_seconds=600, redis_timeout_seconds=0.2,
                              log_decisions=False, id_key=TEST_ID_KEY), clock=clock)
    async with AsyncTestClient(app=app) as c:
        promo = await c.post("/v1/decisions", json=body())
        assert promo.status_code == 200
        assert promo.json()["decision"] == "defer"
        assert promo.json()["send_at"] == "2026-06-10T16:10:00Z"
        assert promo.json()["reasons"] == [{"code": "policy_store_unavailable",
                                            "rule": "fallback"}]
        tx = await c.post("/v1/decisions", json=body(message_id="t", category="transactional"))
        assert tx.json()["decision"] == "send"
        assert (await c.post("/v1/decisions", json=body(channels=["fax"]))).status_code == 400
        assert (await c.get("/health/ready")).status_code == 503
        prefs = await c.get("/v1/users/u1/preferences")
        assert prefs.status_code == 503 and prefs.json()["code"] == "store_unavailable"
        metrics = (await c.get("/metrics")).text
        assert "sendwise_fallback_decisions_total 2.0" in metrics
