"""Preference documents as stored (``SENDWISE_PREFERENCES_FORMAT``): format 2 (deflated,
the default) and format 1 (plain JSON, what earlier releases read). Whatever a worker
writes, every worker of this release reads, through the API and into its decisions."""

from __future__ import annotations

import datetime as dt

import pytest

from api.keys import user_keys
from api.redis_client import RedisClient
from api.settings import Settings
from tests.api.conftest import worker

#: 18:00 in Paris at the clock's instant (NOON_NY): inside these quiet hours
PREFS = {"timezone": "Europe/Paris", "country": "FR",
         "channels": {"email": {"consent": "opted_in"}, "sms": {"consent": "opted_out"}},
         "frequency_limits": [{"limit": 2, "calendar": "week"}],
         "quiet_hours": [{"start": "17:00", "end": "09:00"}], "topic_opt_outs": ["sports"]}


@pytest.mark.parametrize(("writer", "reader"), [(2, 2), (1, 2), (2, 1), (1, 1)])
async def test_a_document_either_format_wrote_reads_and_decides_the_same(
        redis_client: RedisClient, redis_settings: Settings, writer: int, reader: int) -> None:
    async with worker(redis_settings, preferences_format=writer) as client:
        put = await client.put("/v1/users/u1/preferences", json=PREFS)
        assert put.status_code == 200, put.text
    stored = await redis_client.hget(user_keys("default", "u1").prefs, "doc")
    assert isinstance(stored, bytes)
    assert stored[:1] == (b"\x02" if writer == 2 else b"{")
    async with worker(redis_settings, preferences_format=reader) as client:
        got = await client.get("/v1/users/u1/preferences")
        assert got.status_code == 200, got.text
        assert got.json()["preferences"] == {**PREFS, "phone": None, "region": None,
                                             "frequency_limits": [{
                                                 "limit": 2, "calendar": "week",
                                                 "window_minutes": None, "channels": []}],
                                             "quiet_hours": [{"start": "17:00", "end": "09:00",
                                                              "weekdays": None}]}
        decided = await client.post("/v1/decisions", json={
            "message_id": "m1", "user_id": "u1", "channels": ["email", "sms"]})
        assert decided.status_code == 200, decided.text
        answer = decided.json()
        assert answer["decision"] == "defer"
        local = dt.datetime.fromisoformat(answer["local_send_at"])
        assert local.utcoffset() == dt.timedelta(hours=2)  # the stored zone: Paris
        assert local.date() == dt.date(2026, 6, 11), local
        assert 9 <= local.hour < 17, local  # out of the stored quiet hours
        codes = {r["code"] for r in answer["reasons"]}
        assert {"user_quiet_hours", "no_consent"} <= codes, answer["reasons"]


#: stored documents no worker of this release can read: damaged in either format, and a
#: first byte a newer release might use for its own format
UNREADABLE = [b"\x02\x00garbage", b'{"timezone":', b'{"timezone": 5}', b"\x03later-format"]


@pytest.mark.parametrize("stored", UNREADABLE, ids=["deflate", "json", "type", "newer"])
async def test_an_unreadable_document_is_a_409_until_replaced(
        redis_client: RedisClient, redis_settings: Settings, stored: bytes) -> None:
    """No decision on a guess about consent: the recipient's decisions and reads answer 409
    ``preferences_unreadable`` naming it, nothing is reserved, its events are still
    recorded, and a PUT of the preferences ends it."""
    async with worker(redis_settings, preferences_format=2) as client:
        assert (await client.put("/v1/users/u1/preferences", json=PREFS)).status_code == 200
        keys = user_keys("default", "u1")
        await redis_client.hset(keys.prefs, "doc", stored)
        decision = {"message_id": "m1", "user_id": "u1", "channels": ["email"]}
        for answer in (await client.post("/v1/decisions", json=decision),
                       await client.get("/v1/users/u1/preferences"),
                       await client.get("/v1/users/u1/timeline"),
                       await client.get("/v1/users/u1/export")):
            assert answer.status_code == 409, answer.text
            body = answer.json()
            assert (body["code"], body["field"]) == ("preferences_unreadable", "user_id")
            assert "PUT them again" in body["message"]
        assert await redis_client.zcard(keys.ledger) == 0
        assert await redis_client.hget(keys.records, "m1") is None
        # what an operator sees: the answers counted by their code
        assert 'sendwise_api_errors_total{code="preferences_unreadable"} 4.0' in (
            await client.get("/metrics")).text
        events = await client.post("/v1/events", json={"events": [
            {"type": "opened", "user_id": "u1", "message_id": "m0", "channel": "email",
             "at": "2026-06-10T15:00:00Z"}]})
        assert events.status_code == 202, events.text
        assert (await client.put("/v1/users/u1/preferences", json=PREFS)).status_code == 200
        decided = await client.post("/v1/decisions", json=decision)
        assert decided.status_code == 200, decided.text
        assert decided.json()["decision"] == "defer"  # the stored quiet hours again
