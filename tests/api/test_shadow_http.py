"""Shadow policy routes through the HTTP API: install, read, report, promote, remove;
validation naming the field, roles and tenant isolation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from api.clock import FixedClock
from api.redis_client import RedisClient
from api.settings import Settings
from api.store import Store
from tests.api.test_security import A_ADMIN, A_DECIDE, B_ADMIN, DECISION, assert_error, keyed

Client = AsyncTestClient  # type: ignore[type-arg]
STRICTER = {"caps": [{"id": "promo-daily", "limit": 1, "window_minutes": 1440,
                      "scope": {"categories": ["promotional"]}}]}


@pytest.fixture
async def secured(redis_client: RedisClient, redis_settings: Settings,
                  clock: FixedClock) -> AsyncIterator[Client]:
    """API keys for two tenants, each with an admin and a decide key (test_security.py)."""
    async with AsyncTestClient(app=create_app(keyed(redis_settings), clock=clock)) as c:
        yield c


def decision(mid: str) -> dict[str, Any]:
    return {"message_id": mid, "user_id": "u1", "channels": ["email"],
            "timezone": "America/New_York"}


async def test_install_report_promote(client: Client, clock: FixedClock) -> None:
    """The README's walk-through: install a stricter shadow, decide, read the report,
    promote it with one call. The two decisions are 31 minutes apart, past the default
    policy's promotional spacing, so the live policy sends both."""
    r = await client.put("/v1/policy", json={"mode": "shadow", **STRICTER})
    assert r.status_code == 200, r.text
    shadow = r.json()
    assert (shadow["mode"], shadow["version"], shadow["sample_rate"]) == ("shadow", 1, 1.0)
    assert shadow["caps"][0]["limit"] == 1 and shadow["updated_at"] == "2026-06-10T16:00:00Z"
    live = (await client.get("/v1/policy")).json()
    assert live["version"] == 0 and "mode" not in live  # the live policy is untouched
    assert (await client.get("/v1/policy/shadow")).json() == shadow

    answers = []
    for i in range(2):
        answers.append((await client.post("/v1/decisions", json=decision(f"m{i}"))).json())
        clock.advance(31 * 60_000)
    assert [a["decision"] for a in answers] == ["send", "send"]

    report = (await client.get("/v1/policy/shadow/report")).json()
    assert (report["version"], report["evaluated"], report["changed"]) == (1, 2, 1)
    assert report["transitions"] == {"send": {"send": 1, "defer": 1}}
    assert report["reasons_added"] == [{"code": "frequency_cap", "decisions": 1}]
    assert report["samples"][0]["decision_id"] == answers[1]["decision_id"]
    assert report["samples"][0]["shadow"]["decision"] == "defer"

    stale = await client.post("/v1/policy/shadow/promote?version=2")
    assert_error(stale, 409, "policy_version_conflict", "version")
    stale = await client.post("/v1/policy/shadow/promote?live_version=3")
    assert_error(stale, 409, "policy_version_conflict", "live_version")
    r = await client.post("/v1/policy/shadow/promote?version=1&live_version=0")
    assert r.status_code == 200, r.text
    assert r.json()["policy"]["version"] == 1 and r.json()["report"]["evaluated"] == 2
    live = (await client.get("/v1/policy")).json()
    assert live["version"] == 1 and live["caps"] == shadow["caps"]
    assert (await client.post("/v1/decisions", json=decision("m9"))).json()["decision"] == "defer"
    assert_error(await client.get("/v1/policy/shadow"), 404, "not_found", "mode")
    assert_error(await client.get("/v1/policy/shadow/report"), 404, "not_found", "mode")


async def test_live_put_answers_its_mode(client: Client) -> None:
    r = await client.put("/v1/policy", json={"caps": []})
    assert r.status_code == 200
    assert (r.json()["mode"], r.json()["sample_rate"], r.json()["version"]) == ("live", None, 1)
    r = await client.put("/v1/policy", json={"mode": "live", "version": 1, "caps": []})
    assert r.json()["version"] == 2
    assert "mode" not in (await client.get("/v1/policy")).json()  # never stored


async def test_validation_names_the_field(client: Client) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"mode": "shadow", "caps": [{"id": "x", "limit": 1}]}, "caps[0].window_minutes"),
        ({"mode": "shadow", "caps": [{"id": "x", "limit": 0, "window_minutes": 5}]},
         "caps[0].limit"),
        ({"mode": "shadow", "sample_rate": 0}, "sample_rate"),
        ({"mode": "shadow", "sample_rate": 1.5}, "sample_rate"),
        ({"mode": "shade"}, "mode"),
        ({"sample_rate": 0.5}, "sample_rate"),  # only for a shadow
        ({"mode": "shadow", "default_timezone": "Mars/Base"}, "default_timezone"),
    ]
    for payload, field in cases:
        r = await client.put("/v1/policy", json=payload)
        assert r.status_code == 400, (payload, r.text)
        assert r.json()["field"] == field, (payload, r.json())
    assert_error(await client.get("/v1/policy/shadow"), 404, "not_found", "mode")  # nothing stored

    assert (await client.put("/v1/policy", json={"mode": "shadow"})).status_code == 200
    r = await client.post("/v1/policy/shadow/promote?version=-1")
    assert_error(r, 400, "invalid_field", "version")
    r = await client.post("/v1/policy/shadow/promote?live_version=one")
    assert_error(r, 400, "invalid_field", "live_version")
    assert_error(await client.delete("/v1/policy/shadow?version=x"), 400, "invalid_field",
                 "version")


async def test_versions_guard_shadow_writes(client: Client) -> None:
    assert (await client.put("/v1/policy", json={"mode": "shadow"})).json()["version"] == 1
    r = await client.put("/v1/policy", json={"mode": "shadow", "version": 5})
    assert_error(r, 409, "policy_version_conflict", "version")
    r = await client.put("/v1/policy", json={"mode": "shadow", "version": 1, "sample_rate": 0.5})
    assert (r.json()["version"], r.json()["sample_rate"]) == (2, 0.5)
    assert (await client.get("/v1/policy")).json()["version"] == 0  # live versions apart
    read = (await client.get("/v1/policy/shadow")).json()  # read, edit, put back
    r = await client.put("/v1/policy", json={**read, "max_defer_minutes": 60})
    assert (r.json()["version"], r.json()["max_defer_minutes"]) == (3, 60)
    r = await client.put("/v1/policy", json=read)  # the version it read has moved on
    assert_error(r, 409, "policy_version_conflict", "version")
    assert_error(await client.delete("/v1/policy/shadow?version=1"), 409,
                 "policy_version_conflict", "version")
    assert (await client.delete("/v1/policy/shadow?version=3")).status_code == 204
    assert_error(await client.delete("/v1/policy/shadow"), 404, "not_found", "mode")
    assert_error(await client.post("/v1/policy/shadow/promote"), 404, "not_found", "mode")


async def test_roles_and_tenant_isolation(secured: Client) -> None:
    for method, path in [("GET", "/v1/policy/shadow"), ("DELETE", "/v1/policy/shadow"),
                         ("POST", "/v1/policy/shadow/promote"),
                         ("GET", "/v1/policy/shadow/report")]:
        r = await secured.request(method, path, headers=A_DECIDE)
        assert_error(r, 403, "forbidden", "Authorization")
        assert_error(await secured.request(method, path), 401, "unauthorized", "Authorization")
    r = await secured.put("/v1/policy", json={"mode": "shadow", **STRICTER}, headers=A_DECIDE)
    assert_error(r, 403, "forbidden", "Authorization")

    r = await secured.put("/v1/policy", json={"mode": "shadow", **STRICTER}, headers=A_ADMIN)
    assert r.status_code == 200
    assert (await secured.post("/v1/decisions", json=DECISION, headers=A_DECIDE)).status_code == 200
    assert (await secured.get("/v1/policy/shadow/report",
                              headers=A_ADMIN)).json()["evaluated"] == 1
    # tenant B sees no shadow of A's, and cannot promote or remove it
    assert_error(await secured.get("/v1/policy/shadow", headers=B_ADMIN), 404, "not_found", "mode")
    assert_error(await secured.get("/v1/policy/shadow/report", headers=B_ADMIN), 404,
                 "not_found", "mode")
    assert_error(await secured.post("/v1/policy/shadow/promote", headers=B_ADMIN), 404,
                 "not_found", "mode")
    assert (await secured.get("/v1/policy/shadow", headers=A_ADMIN)).status_code == 200


async def test_the_document_describes_the_routes(client: Client) -> None:
    doc = (await client.get("/docs/openapi.json")).json()
    assert {"get", "delete"} <= set(doc["paths"]["/v1/policy/shadow"])
    assert "post" in doc["paths"]["/v1/policy/shadow/promote"]
    assert "get" in doc["paths"]["/v1/policy/shadow/report"]
    body = doc["paths"]["/v1/policy"]["put"]["requestBody"]["content"]["application/json"]
    name = body["schema"]["$ref"].rsplit("/", 1)[1]
    props = doc["components"]["schemas"][name]["properties"]
    assert props["mode"]["enum"] == ["live", "shadow"] and "sample_rate" in props


async def test_a_worker_flushes_its_counts_when_it_stops(redis_client: RedisClient,
                                                         redis_settings: Settings,
                                                         clock: FixedClock) -> None:
    """Counts batched in a worker reach the report at shutdown, not only on the next flush."""
    async with AsyncTestClient(app=create_app(redis_settings, clock=clock)) as c:
        assert (await c.put("/v1/policy", json={"mode": "shadow", **STRICTER})).status_code == 200
        for i in range(3):
            assert (await c.post("/v1/decisions", json=decision(f"m{i}"))).status_code == 200
    counts = await Store(redis_client).shadow_counts("default")
    assert counts is not None and counts.counts["total"] == 3
