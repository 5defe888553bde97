"""Authentication, roles, tenant isolation, rate limits, body limits and log hygiene, through
the HTTP API with API keys configured."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import structlog
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient

from api.app import create_app
from api.auth import ApiKey, Role, hash_key, required_role
from api.clock import FixedClock
from api.redis_client import RedisClient
from api.settings import Settings

Client = AsyncTestClient  # type: ignore[type-arg]
KEYS: dict[str, tuple[str, Role]] = {
    "sw_a_admin": ("tenant-a", "admin"), "sw_a_decide": ("tenant-a", "decide"),
    "sw_b_admin": ("tenant-b", "admin"), "sw_b_decide": ("tenant-b", "decide"),
}
A_ADMIN, A_DECIDE = {"authorization": "Bearer sw_a_admin"}, {"authorization": "Bearer sw_a_decide"}
B_ADMIN, B_DECIDE = {"authorization": "Bearer sw_b_admin"}, {"authorization": "Bearer sw_b_decide"}
EMAIL_USER = "ada.lovelace@example.com"
PHONE = "+14155550123"
DECISION = {"message_id": "m1", "user_id": EMAIL_USER, "channels": ["email"],
            "timezone": "America/New_York"}


class Ticker:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value


def keyed(settings: Settings, **fields: Any) -> Settings:
    keys = {hash_key(k): ApiKey(sha256=hash_key(k), tenant=t, role=r, name=k)
            for k, (t, r) in KEYS.items()}
    return msgspec.structs.replace(settings, api_keys=keys, **fields)


@pytest.fixture
def ticker() -> Ticker:
    return Ticker()


@pytest.fixture
async def secured(redis_client: RedisClient, redis_settings: Settings, clock: FixedClock,
                  ticker: Ticker) -> AsyncIterator[Client]:
    app = create_app(keyed(redis_settings), clock=clock, monotonic=ticker)
    async with AsyncTestClient(app=app) as c:
        yield c


def assert_error(r: Any, status: int, code: str, field: str | None) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"code", "message", "field"}
    assert (body["code"], body["field"]) == (code, field)
    if status == 401:
        assert r.headers["www-authenticate"] == 'Bearer realm="sendwise"'


# ------------------------------------------------------------- defect 7: auth first


@pytest.mark.parametrize(("method", "path", "content"), [
    ("POST", "/v1/decisions", b"{nope"),
    ("POST", "/v1/decisions", b'{"message_id": 1}'),
    ("POST", "/v1/events", b'{"events": [{"type": "teleported"}]}'),
    ("PUT", "/v1/policy", b"[not json"),
    ("PUT", "/v1/users/u1/preferences", b'{"timezone": 5}'),
    ("POST", "/v1/decisions", b"x" * 200_000),
])
async def test_anonymous_request_is_401_before_the_body_is_read(
        secured: Client, method: str, path: str, content: bytes) -> None:
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic sw_a_admin"}):
        r = await secured.request(method, path, content=content,
                                  headers={"content-type": "application/json", **headers})
        assert_error(r, 401, "unauthorized", "Authorization")


async def asgi_call(app: Any, method: str, path: str, headers: dict[str, str],
                    chunks: list[bytes]) -> tuple[int, dict[str, Any], int]:
    """One request straight through ASGI, the body in ``chunks`` (no Content-Length unless
    given): (status, JSON body, how many body chunks the app pulled)."""
    pending = list(chunks)
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        chunk = pending.pop(0) if pending else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80), "state": {},
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    await app(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], msgspec.json.decode(body), pulled


async def test_the_guard_answers_without_receiving_the_body(redis_settings: Settings,
                                                            clock: FixedClock) -> None:
    """At the ASGI level: the app never pulls the body of an unauthenticated request."""
    app = create_app(keyed(redis_settings), clock=clock)
    status, body, pulled = await asgi_call(app, "POST", "/v1/decisions",
                                           {"content-type": "application/json"}, [b"{nope"])
    assert (status, body["code"], pulled) == (401, "unauthorized", 0)


# ------------------------------------------------------------------------ roles


def test_every_route_has_the_intended_role(redis_settings: Settings) -> None:
    """The decide role is exactly the hot path; only health probes and docs are open; every
    other route (including ones added later) is admin."""
    # with the benchmark-only endpoints routed, so their roles are checked too
    app = create_app(msgspec.structs.replace(keyed(redis_settings), benchmark_endpoints=True))
    roles = {(method, route.path): required_role(handler, route.path, "/docs")
             for route in app.routes if isinstance(route, HTTPRoute)
             for handler in route.route_handlers for method in handler.http_methods
             if method != "OPTIONS"}  # litestar's own OPTIONS handlers
    decide = {k for k, role in roles.items() if role == "decide"}
    assert decide == {("POST", "/v1/decisions"), ("POST", "/v1/decisions/{decision_id:str}/cancel"),
                      ("GET", "/v1/decisions/{decision_id:str}"), ("POST", "/v1/events"),
                      ("GET", "/v1/reason-codes"), ("POST", "/v1/_trivial"),
                      ("POST", "/v1/_floor")}
    open_ = {path for (_, path), role in roles.items() if role is None}
    assert open_ == {"/health/live", "/health/ready", "/docs", "/docs/openapi.json",
                     "/docs/swagger"} | {p for p in open_ if p.startswith("/docs/")}
    assert roles[("GET", "/metrics")] == roles[("PUT", "/v1/policy")] == "admin"
    assert roles[("GET", "/ui/users/{user_id:str}")] == "admin"
    assert set(roles.values()) == {"decide", "admin", None}


async def test_decide_key_decides_but_cannot_administer(secured: Client) -> None:
    d = await secured.post("/v1/decisions", json=DECISION, headers=A_DECIDE)
    assert d.status_code == 200
    r = await secured.post(f"/v1/decisions/{d.json()['decision_id']}/cancel", headers=A_DECIDE)
    assert r.status_code == 200 and r.json()["released"] is True
    event = {"type": "opened", "user_id": EMAIL_USER, "at": "2026-06-10T15:00:00Z"}
    assert (await secured.post("/v1/events", json={"events": [event]},
                               headers=A_DECIDE)).status_code == 202
    assert (await secured.get("/v1/reason-codes", headers=A_DECIDE)).status_code == 200
    forbidden = [
        ("GET", "/v1/policy", None), ("PUT", "/v1/policy", {"caps": []}),
        ("PUT", "/v1/policy", {"caps": "not even valid"}),  # 403 before the body is judged
        ("GET", f"/v1/users/{EMAIL_USER}/preferences", None),
        ("PUT", f"/v1/users/{EMAIL_USER}/preferences", {"timezone": "Europe/Paris"}),
        ("GET", f"/v1/users/{EMAIL_USER}/timeline", None),
        ("GET", "/metrics", None),
    ]
    for method, path, payload in forbidden:
        r = await secured.request(method, path, json=payload, headers=A_DECIDE)
        assert_error(r, 403, "forbidden", "Authorization")
    admin = (await secured.get(f"/v1/users/{EMAIL_USER}/preferences", headers=A_ADMIN)).json()
    assert admin["revision"] == 0  # the forbidden PUT changed nothing
    assert (await secured.get("/v1/policy", headers=A_ADMIN)).json()["version"] == 0


async def test_admin_key_can_also_decide(secured: Client) -> None:
    r = await secured.post("/v1/decisions", json=DECISION, headers=A_ADMIN)
    assert r.status_code == 200 and r.json()["decision"] == "send"
    assert (await secured.get("/metrics", headers=A_ADMIN)).status_code == 200


async def test_health_and_docs_stay_open_metrics_needs_a_key(secured: Client) -> None:
    for path in ("/health/live", "/health/ready", "/docs/openapi.json", "/docs",
                 "/docs/swagger"):
        assert (await secured.get(path)).status_code == 200, path
    assert_error(await secured.get("/metrics"), 401, "unauthorized", "Authorization")
    assert_error(await secured.get("/v1/reason-codes"), 401, "unauthorized", "Authorization")


# ------------------------------------------------------------- tenant isolation


async def test_tenant_a_keys_cannot_read_or_change_anything_of_tenant_b(secured: Client) -> None:
    # tenant B's state: a policy, preferences limiting the user to 1 message, a decision
    assert (await secured.put("/v1/policy", json={"caps": [], "max_defer_minutes": 60},
                              headers=B_ADMIN)).json()["version"] == 1
    prefs = {"timezone": "Europe/Paris", "phone": PHONE,
             "frequency_limits": [{"limit": 1, "window_minutes": 1440}]}
    assert (await secured.put(f"/v1/users/{EMAIL_USER}/preferences", json=prefs,
                              headers=B_ADMIN)).status_code == 200
    b_decision = (await secured.post("/v1/decisions", json=DECISION, headers=B_DECIDE)).json()
    assert b_decision["decision"] == "send"
    b_id = b_decision["decision_id"]

    for a_key in (A_ADMIN, A_DECIDE):
        # a header naming tenant B is ignored: the key decides the tenant
        h = {**a_key, "x-sendwise-tenant": "tenant-b"}
        # cancel B's decision: not found (the id is sealed to tenant B)
        assert_error(await secured.post(f"/v1/decisions/{b_id}/cancel", headers=h),
                     404, "not_found", "decision_id")
        # nor read its state
        assert_error(await secured.get(f"/v1/decisions/{b_id}", headers=h),
                     404, "not_found", "decision_id")
        # the same message id in A is a fresh decision, untouched by B's limit or ledger
        a_decision = await secured.post("/v1/decisions", json=DECISION, headers=h)
        assert a_decision.status_code == 200
        assert a_decision.json()["decision_id"] != b_id
        assert a_decision.json()["policy_version"] == "0"
        # an unsubscribe reported by A does not reach B
        event = {"type": "unsubscribed", "user_id": EMAIL_USER, "channel": "email",
                 "at": "2026-06-10T15:00:00Z"}
        assert (await secured.post("/v1/events", json={"events": [event]},
                                   headers=h)).status_code == 202
    # reads with A's admin key see A's state only
    h = {**A_ADMIN, "x-sendwise-tenant": "tenant-b"}
    assert (await secured.get("/v1/policy", headers=h)).json()["version"] == 0
    a_prefs = (await secured.get(f"/v1/users/{EMAIL_USER}/preferences", headers=h)).json()
    assert a_prefs["preferences"]["timezone"] is None and a_prefs["preferences"]["phone"] is None
    entries = (await secured.get(f"/v1/users/{EMAIL_USER}/timeline", headers=h)).json()["entries"]
    assert len(entries) == 1 and entries[0]["decision_id"] != b_id
    # and writes with it land in A only
    assert (await secured.put("/v1/policy", json={"caps": []}, headers=h)).json()["version"] == 1
    assert (await secured.put(f"/v1/users/{EMAIL_USER}/preferences",
                              json={"timezone": "Asia/Tokyo"}, headers=h)).status_code == 200

    # tenant B is exactly as it left it
    assert (await secured.get("/v1/policy", headers=B_ADMIN)).json()["version"] == 1
    got = (await secured.get(f"/v1/users/{EMAIL_USER}/preferences", headers=B_ADMIN)).json()
    assert got["revision"] == 1 and got["preferences"]["timezone"] == "Europe/Paris"
    timeline = (await secured.get(f"/v1/users/{EMAIL_USER}/timeline", headers=B_ADMIN)).json()
    assert [e["decision_id"] for e in timeline["entries"]] == [b_id]
    replay = (await secured.post("/v1/decisions", json=DECISION, headers=B_DECIDE)).json()
    assert replay["replayed"] is True and replay["decision_id"] == b_id
    second = await secured.post("/v1/decisions", json={**DECISION, "message_id": "m2"},
                                headers=B_DECIDE)
    # B's own limit of 1 holds, and A's unsubscribe did not suppress B's email
    assert [r["code"] for r in second.json()["reasons"]] == ["user_frequency_limit",
                                                            "max_defer_exceeded"]
    assert (await secured.post(f"/v1/decisions/{b_id}/cancel",
                               headers=B_DECIDE)).json()["released"] is True


# ------------------------------------------------------------------- rate limit


async def test_rate_limit_per_key_with_retry_after(redis_client: RedisClient,
                                                   redis_settings: Settings, clock: FixedClock,
                                                   ticker: Ticker) -> None:
    settings = keyed(redis_settings, rate_limit_per_second=2, rate_limit_burst=3)
    async with AsyncTestClient(app=create_app(settings, clock=clock, monotonic=ticker)) as c:
        for _ in range(3):
            assert (await c.get("/v1/reason-codes", headers=A_DECIDE)).status_code == 200
        r = await c.get("/v1/reason-codes", headers=A_DECIDE)
        assert_error(r, 429, "rate_limited", "Authorization")
        assert r.headers["retry-after"] == "1"
        # the refused request did not read its body either
        r = await c.post("/v1/decisions", content=b"{nope", headers=A_DECIDE)
        assert r.status_code == 429
        # other keys, even of the same tenant, have their own bucket
        assert (await c.get("/v1/reason-codes", headers=A_ADMIN)).status_code == 200
        ticker.value += 0.5  # one token back at 2 per second
        assert (await c.get("/v1/reason-codes", headers=A_DECIDE)).status_code == 200
        assert (await c.get("/v1/reason-codes", headers=A_DECIDE)).status_code == 429
        ticker.value += 60  # refills only up to the burst
        assert [(await c.get("/v1/reason-codes", headers=A_DECIDE)).status_code
                for _ in range(4)] == [200, 200, 200, 429]
        # health checks are never limited
        assert (await c.get("/health/live")).status_code == 200


# ------------------------------------------------------------------- body size

BODY_ENDPOINTS = [("POST", "/v1/decisions"), ("POST", "/v1/events"),
                  ("PUT", "/v1/users/u1/preferences"), ("PUT", "/v1/policy"),
                  ("POST", "/v1/decisions/d_x/cancel")]


@pytest.mark.parametrize(("method", "path"), BODY_ENDPOINTS)
async def test_oversize_bodies_are_413_with_content_length(secured: Client, method: str,
                                                           path: str) -> None:
    big = b'{"pad": "' + b"x" * 70_000 + b'"}'
    r = await secured.request(method, path, content=big,
                              headers={**A_ADMIN, "content-type": "application/json"})
    assert_error(r, 413, "payload_too_large", None)


@pytest.mark.parametrize(("method", "path"), BODY_ENDPOINTS[:4])
async def test_oversize_chunked_bodies_are_413(redis_client: RedisClient,
                                               redis_settings: Settings, clock: FixedClock,
                                               method: str, path: str) -> None:
    """No Content-Length (chunked): the limit holds on the bytes actually received, and
    reading stops at the chunk that crosses it."""
    app = create_app(keyed(redis_settings), clock=clock)
    chunks = [b'{"pad": "'] + [b"x" * 8192] * 40 + [b'"}']
    async with AsyncTestClient(app=app):  # runs the lifespan
        status, body, pulled = await asgi_call(
            app, method, path, {**A_ADMIN, "content-type": "application/json"}, chunks)
    assert status == 413 and set(body) == {"code", "message", "field"}
    assert (body["code"], body["field"]) == ("payload_too_large", None)
    assert pulled == 9  # 9 bytes + 8 x 8 KiB > 64 KiB: the other 33 chunks are never read


async def test_oversize_without_keys_is_413_too(client: Client) -> None:
    for method, path in BODY_ENDPOINTS:
        r = await client.request(method, path, content=b"x" * 70_000,
                                 headers={"content-type": "application/json"})
        assert_error(r, 413, "payload_too_large", None)


# ------------------------------------------------------------------------- logs


async def test_logs_carry_no_user_id_phone_or_key(redis_client: RedisClient,
                                                  redis_settings: Settings, clock: FixedClock,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    settings = keyed(redis_settings, log_decisions=True)
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as events:
        async with AsyncTestClient(app=create_app(settings, clock=clock)) as c:
            await c.put(f"/v1/users/{EMAIL_USER}/preferences", json={"phone": PHONE},
                        headers=A_ADMIN)
            d = (await c.post("/v1/decisions", json={**DECISION, "phone": PHONE},
                              headers=A_DECIDE)).json()
            await c.post("/v1/decisions", json={**DECISION, "phone": PHONE}, headers=A_DECIDE)
            await c.post("/v1/decisions", json={**DECISION, "channels": ["sms"]},
                         headers=A_DECIDE)  # 409, an error path
            await c.get(f"/v1/users/{EMAIL_USER}/timeline", headers=A_ADMIN)
            await c.post(f"/v1/decisions/{d['decision_id']}/cancel", headers=A_DECIDE)
            await c.post("/v1/decisions", json=DECISION, headers={"authorization": "Bearer sw_nope"})
    decisions = [e for e in events if e["event"] == "decision"]
    assert len(decisions) == 2
    assert decisions[0]["decision_id"] == d["decision_id"]
    assert decisions[0]["tenant"] == "tenant-a" and decisions[0]["message_id"] == "m1"
    assert decisions[0]["user"] == decisions[1]["user"]  # correlatable, not readable
    text = repr(events) + "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    b64_user = base64.urlsafe_b64encode(EMAIL_USER.encode()).rstrip(b"=").decode()
    for secret in (EMAIL_USER, "ada.lovelace", b64_user[:20], PHONE, PHONE[1:], "4155550123",
                   "sw_a_decide", "sw_a_admin", "sw_nope", hash_key("sw_a_decide")):
        assert secret not in text, secret
