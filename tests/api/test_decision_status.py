"""``GET /v1/decisions/{decision_id}``: a decision as it stands now, which a platform
confirms just before sending a deferred message."""

from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient

from api.clock import FixedClock
from tests.integration.conftest import at

Client = AsyncTestClient  # type: ignore[type-arg]
BASE = {"message_id": "m1", "user_id": "u1", "channels": ["email"],
        "timezone": "America/New_York"}


async def _decide(client: Client, **fields: Any) -> dict[str, Any]:
    r = await client.post("/v1/decisions", json={**BASE, **fields})
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


async def _state(client: Client, decision_id: str, **headers: str) -> dict[str, Any]:
    r = await client.get(f"/v1/decisions/{decision_id}", headers=headers)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


async def test_state_of_a_sent_and_a_deferred_decision(client: Client,
                                                        clock: FixedClock) -> None:
    sent = await _decide(client)
    state = await _state(client, sent["decision_id"])
    assert state == {"decision_id": sent["decision_id"], "message_id": "m1", "state": "send",
                     "channel": "email", "send_at": sent["send_at"],
                     "local_send_at": sent["local_send_at"], "timezone": "America/New_York",
                     "reasons": [], "decided_at": sent["decided_at"], "cancelled_at": None}
    clock.value = at("2026-06-10T23:00:00-04:00")
    deferred = await _decide(client, message_id="m2", user_id="u2")
    state = await _state(client, deferred["decision_id"])
    assert state["state"] == "defer" and state["send_at"] == deferred["send_at"]
    assert state["reasons"] == deferred["reasons"]


async def test_cancelled_and_suppressed_states(client: Client) -> None:
    d = await _decide(client)
    assert (await client.post(f"/v1/decisions/{d['decision_id']}/cancel")).status_code == 200
    state = await _state(client, d["decision_id"])
    assert state["state"] == "cancelled" and state["cancelled_at"] is not None
    assert state["send_at"] is None and state["channel"] is None
    none = await _decide(client, message_id="w", channels=["whatsapp"])
    assert (await _state(client, none["decision_id"]))["state"] == "suppress"


async def test_preempted_state(client: Client, clock: FixedClock) -> None:
    policy = {"caps": [{"id": "daily", "limit": 1, "window_minutes": 1440}],
              "preemption": {"enabled": True}}
    assert (await client.put("/v1/policy", json=policy)).status_code == 200
    clock.value = at("2026-06-10T23:00:00-04:00")
    # no instant left before its deadline once displaced: suppressed
    low = await _decide(client, message_id="low", priority=1,
                        deadline="2026-06-11T18:00:00Z")
    high = await _decide(client, message_id="high", priority=9)
    assert high["displaced"] == [low["decision_id"]]
    state = await _state(client, low["decision_id"])
    assert state["state"] == "preempted" and state["send_at"] is None
    assert [r["code"] for r in state["reasons"]] == ["preempted", "deadline_exceeded"]


async def test_unknown_and_other_tenants_ids_are_404(client: Client) -> None:
    d = await _decide(client)
    for bogus in ("d_bogus", "d_dTE.bm9wZQ", "nope"):
        r = await client.get(f"/v1/decisions/{bogus}")
        assert r.status_code == 404 and r.json()["field"] == "decision_id"
    r = await client.get(f"/v1/decisions/{d['decision_id']}",
                         headers={"x-sendwise-tenant": "other"})
    assert r.status_code == 404 and r.json()["code"] == "not_found"


async def test_follows_merged_users(client: Client) -> None:
    d = await _decide(client, user_id="anon")
    r = await client.post("/v1/users/anon/merge", json={"into_user_id": "known"})
    assert r.status_code == 200
    state = await _state(client, d["decision_id"])
    assert state["state"] == "send" and state["message_id"] == "m1"
