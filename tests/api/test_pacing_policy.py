"""The policy's ``pacing`` fields through HTTP: each bad value is a 400 naming its field
path, nothing is stored, and a paced decision answers with the ``channel_pacing`` reason."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import AsyncTestClient

Client = AsyncTestClient  # type: ignore[type-arg]
DECISION = {"user_id": "u1", "channels": ["sms"], "timezone": "America/New_York"}


@pytest.mark.parametrize(("pacing", "field"), [
    ({"channels": {"sms": {"per_second": 0}}}, "pacing.channels.sms.per_second"),
    ({"channels": {"sms": {"per_second": "fast"}}}, "pacing.channels.sms.per_second"),
    ({"channels": {"whatsapp": {"per_minute": 6_000_001}}}, "pacing.channels.whatsapp.per_minute"),
    ({"channels": {"whatsapp": {"unique_recipients_per_24h": -1}}},
     "pacing.channels.whatsapp.unique_recipients_per_24h"),
    ({"channels": {"sms": {"per_hour": 5}}}, "pacing.channels.sms.per_hour"),
    ({"channels": {"fax": {"per_second": 5}}}, "pacing.channels.fax"),
    ({"channels": {"sms": {}}}, "pacing.channels.sms"),
    ({"channels": {"sms": {"per_second": 5}}, "shards": 0}, "pacing.shards"),
    ({"channels": {"sms": {"per_second": 5}}, "shards": 65}, "pacing.shards"),
])
async def test_bad_pacing_is_a_400_naming_the_field(client: Client, pacing: dict[str, Any],
                                                    field: str) -> None:
    r = await client.put("/v1/policy", json={"pacing": pacing})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field
    assert (await client.get("/v1/policy")).json()["version"] == 0  # nothing stored


async def test_pacing_is_off_by_default_and_round_trips(client: Client) -> None:
    assert (await client.get("/v1/policy")).json()["pacing"] == {"channels": {}, "shards": 8}
    pacing = {"channels": {"sms": {"per_second": 1},
                           "whatsapp": {"per_minute": 600, "unique_recipients_per_24h": 1000}},
              "shards": 4}
    ok = await client.put("/v1/policy", json={"pacing": pacing})
    assert ok.status_code == 200
    stored = (await client.get("/v1/policy")).json()["pacing"]
    assert stored == pacing
    first = await client.post("/v1/decisions", json={**DECISION, "message_id": "a"})
    assert first.json()["decision"] == "send"
    second = await client.post("/v1/decisions", json={**DECISION, "message_id": "b",
                                                      "user_id": "u2"})
    data = second.json()
    assert data["decision"] == "defer"
    assert data["reasons"] == [{"code": "channel_pacing",
                                "rule": "pacing.channels.sms.per_second",
                                "until": data["send_at"], "channel": "sms"}]
