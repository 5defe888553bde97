"""User data lifecycle through HTTP: merge, erase, export (every Redis target)."""

from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient

from api.clock import FixedClock
from api.keys import user_keys
from api.redis_client import RedisClient
from tests.api.test_http import body

Client = AsyncTestClient  # type: ignore[type-arg]
HOUR = 3_600_000
IN_ONE_HOUR = "2026-06-10T17:00:00Z"  # NOON_NY + 1 h
TENANT = "default"


async def _decide(client: Client, **fields: Any) -> dict[str, Any]:
    r = await client.post("/v1/decisions", json=body(**fields))
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


async def _merge(client: Client, source: str, into: str) -> dict[str, Any]:
    r = await client.post(f"/v1/users/{source}/merge", json={"into_user_id": into})
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


async def _export(client: Client, user: str) -> dict[str, Any]:
    r = await client.get(f"/v1/users/{user}/export")
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


async def _user_keys_in_redis(redis_client: RedisClient, user: str) -> list[bytes]:
    """A whole-keyspace SCAN of the test Redis (one node in every target)."""
    pattern = user_keys(TENANT, user).pattern
    return [k async for k in redis_client.scan_iter(match=pattern, count=1000)]


async def test_merge_makes_caps_apply_jointly(client: Client, clock: FixedClock) -> None:
    """Default policy: 3 promotional per rolling 24 h. Two ids with 2 sends each are one
    person after the merge: the 4 reservations are honoured (above the cap), and a new
    promotion for either id is suppressed before its deadline. (Sends 31 minutes apart,
    past the default promotional spacing; deferrals unspread, the instant is asserted.)"""
    assert (await client.put("/v1/policy", json={"send_time": {"spread_minutes": 0}})
            ).status_code == 200
    for i in range(2):
        clock.advance(i * 31 * 60_000)
        assert (await _decide(client, user_id="anon", message_id=f"a{i}"))["decision"] == "send"
        assert (await _decide(client, user_id="known", message_id=f"k{i}"))["decision"] == "send"
    merged = await _merge(client, "anon", "known")
    assert merged["into_user_id"] == "known"
    assert merged["moved"] == {"ledger_entries": 2, "decisions": 2, "conversions": 0,
                               "event_opt_outs": 0}
    timeline = (await client.get("/v1/users/known/timeline")).json()
    assert sorted(e["message_id"] for e in timeline["entries"]) == ["a0", "a1", "k0", "k1"]
    for user in ("known", "anon"):  # the old id is decided against the person's ledger too
        r = await _decide(client, user_id=user, message_id=f"new-{user}", deadline=IN_ONE_HOUR)
        assert r["decision"] == "suppress", r
        assert {x["code"] for x in r["reasons"]} >= {"frequency_cap", "deadline_exceeded"}
    # without a deadline: deferred to when the merged 24 h window frees
    r = await _decide(client, user_id="known", message_id="later")
    assert r["decision"] == "defer" and r["send_at"] == "2026-06-11T16:00:00Z"


async def test_merge_keeps_the_most_restrictive_consent(client: Client) -> None:
    anon = {"timezone": "Europe/Paris",
            "channels": {"email": {"consent": "opted_out"}, "whatsapp": {"consent": "opted_in"}},
            "frequency_limits": [{"limit": 1, "window_minutes": 60}],
            "quiet_hours": [{"start": "12:00", "end": "13:00"}],
            "topic_opt_outs": ["sports", "news"]}
    known = {"channels": {"email": {"consent": "opted_in"}, "sms": {"consent": "opted_out"},
                          "push": {"consent": "opted_in"}},
             "frequency_limits": [{"limit": 5, "calendar": "day"}],
             "topic_opt_outs": ["news", "politics"]}
    assert (await client.put("/v1/users/anon/preferences", json=anon)).status_code == 200
    assert (await client.put("/v1/users/known/preferences", json=known)).status_code == 200
    events = [{"type": "unsubscribed", "user_id": "anon", "at": "2026-06-10T15:00:00Z",
               "channel": "push"},
              {"type": "converted", "user_id": "anon", "at": "2026-06-09T15:00:00Z",
               "campaign_id": "spring"},
              {"type": "converted", "user_id": "known", "at": "2026-06-10T15:00:00Z",
               "campaign_id": "spring"}]
    assert (await client.post("/v1/events", json={"events": events})).status_code == 202

    merged = await _merge(client, "anon", "known")
    assert merged["moved"]["event_opt_outs"] == 1 and merged["moved"]["conversions"] == 1
    prefs = merged["preferences"]
    doc = prefs["preferences"]
    assert doc["channels"] == {"email": {"consent": "opted_out"},
                               "sms": {"consent": "opted_out"},
                               "push": {"consent": "opted_in"},
                               "whatsapp": {"consent": "opted_in"}}
    assert doc["topic_opt_outs"] == ["news", "politics", "sports"]
    assert doc["frequency_limits"] == [
        {"limit": 5, "window_minutes": None, "calendar": "day", "channels": []},
        {"limit": 1, "window_minutes": 60, "calendar": None, "channels": []}]
    assert doc["quiet_hours"] == [{"start": "12:00", "end": "13:00", "weekdays": None}]
    assert doc["timezone"] == "Europe/Paris"  # the target had none
    assert prefs["event_opt_outs"] == {"push": "2026-06-10T15:00:00Z"}
    exported = await _export(client, "known")
    assert exported["conversions"] == {"spring": "2026-06-10T15:00:00Z"}  # the latest
    assert exported["merged_from"] == {"anon": "2026-06-10T16:00:00Z"}

    r = await _decide(client, user_id="known", message_id="m", channels=["email", "push", "sms"],
                      timezone=None)
    assert r["decision"] == "suppress"
    assert [x["code"] for x in r["reasons"]][:3] == ["no_consent"] * 3
    r = await _decide(client, user_id="anon", message_id="t", tags=["sports"], timezone=None)
    assert r["reasons"][0]["code"] == "topic_opted_out"


async def test_retried_merge_is_idempotent_and_old_ids_still_work(client: Client) -> None:
    first = await _decide(client, user_id="anon", message_id="a1")
    suppressed = await _decide(client, user_id="anon", message_id="a2", channels=["whatsapp"])
    assert suppressed["decision"] == "suppress"
    await _decide(client, user_id="known", message_id="k1")
    await _merge(client, "anon", "known")
    once = await _export(client, "known")
    again = await _merge(client, "anon", "known")
    assert again["moved"] == {"ledger_entries": 0, "decisions": 0, "conversions": 0,
                              "event_opt_outs": 0}
    twice = await _export(client, "known")
    assert {**once, "revision": 0} == {**twice, "revision": 0}
    assert len(twice["ledger"]) == 2 and len(twice["decisions"]) == 3

    # a retry of the old id's message replays its original answer, byte for byte
    replay = await _decide(client, user_id="anon", message_id="a1")
    assert replay["replayed"] is True
    assert {**replay, "replayed": False} == first
    # its decision id still cancels the reservation, now in the merged ledger
    r = await client.post(f"/v1/decisions/{first['decision_id']}/cancel")
    assert r.status_code == 200 and r.json()["released"] is True
    assert [e["message_id"] for e in (await _export(client, "known"))["ledger"]] == ["k1"]

    left = await _export(client, "anon")
    assert left["merged_into"] == "known"
    assert left["ledger"] == [] and left["decisions"] == [] and left["conversions"] == {}


async def test_writes_to_a_merged_id(client: Client) -> None:
    await _merge(client, "anon", "known")
    # an unsubscribe for the old id binds the person
    event = {"type": "unsubscribed", "user_id": "anon", "at": "2026-06-10T15:00:00Z",
             "channel": "email"}
    assert (await client.post("/v1/events", json={"events": [event]})).status_code == 202
    got = (await client.get("/v1/users/known/preferences")).json()
    assert got["event_opt_outs"] == {"email": "2026-06-10T15:00:00Z"}
    # a preference document for the old id is refused, naming the new id
    r = await client.put("/v1/users/anon/preferences", json={"topic_opt_outs": ["x"]})
    assert r.status_code == 409 and r.json()["code"] == "user_merged"
    assert "known" in r.json()["message"]


async def test_merge_refusals_change_nothing(client: Client, redis_client: RedisClient) -> None:
    r = await client.post("/v1/users/a/merge", json={"into_user_id": "a"})
    assert r.status_code == 400 and r.json()["field"] == "into_user_id"
    r = await client.post("/v1/users/a/merge", json={"into": "b"})
    assert r.status_code == 400 and r.json()["field"] == "into"
    await _merge(client, "a", "b")
    r = await client.post("/v1/users/b/merge", json={"into_user_id": "a"})
    assert r.status_code == 409 and r.json()["code"] == "merge_cycle"
    r = await client.post("/v1/users/a/merge", json={"into_user_id": "c"})
    assert r.status_code == 409 and r.json()["code"] == "already_merged"
    # the joint document would break a list limit (16 quiet windows)
    many = [{"start": f"{h:02d}:00", "end": f"{h:02d}:30"} for h in range(10)]
    more = [{"start": f"{h:02d}:00", "end": f"{h:02d}:30"} for h in range(10, 20)]
    await client.put("/v1/users/x/preferences", json={"quiet_hours": many})
    await client.put("/v1/users/y/preferences", json={"quiet_hours": more})
    before = await _export(client, "x")
    r = await client.post("/v1/users/x/merge", json={"into_user_id": "y"})
    assert r.status_code == 409 and r.json()["code"] == "merge_limit_exceeded"
    after = await _export(client, "x")
    assert after == before and after["merged_into"] is None


async def test_merge_follows_the_target_to_where_it_went(client: Client) -> None:
    await _decide(client, user_id="a", message_id="m-a")
    await _decide(client, user_id="b", message_id="m-b")
    await _merge(client, "b", "c")
    merged = await _merge(client, "a", "b")  # b is c now
    assert merged["into_user_id"] == "c"
    ledger = (await _export(client, "c"))["ledger"]
    assert sorted(e["message_id"] for e in ledger) == ["m-a", "m-b"]
    r = await _decide(client, user_id="a", message_id="m-a")
    assert r["replayed"] is True


async def test_delete_erases_every_key(client: Client, redis_client: RedisClient,
                                       clock: FixedClock) -> None:
    await client.put("/v1/users/u1/preferences", json={"timezone": "Europe/Berlin",
                                                       "topic_opt_outs": ["x"]})
    events = [{"type": "unsubscribed", "user_id": "u1", "at": "2026-06-10T15:00:00Z",
               "channel": "sms"},
              {"type": "converted", "user_id": "u1", "at": "2026-06-10T15:00:00Z",
               "campaign_id": "c1"}]
    await client.post("/v1/events", json={"events": events})
    sent = await _decide(client, message_id="m1")
    await _decide(client, message_id="m2", tags=["x"])  # suppressed: a record, no ledger entry
    await _decide(client, message_id="m3")
    await client.post(f"/v1/decisions/{sent['decision_id']}/cancel")  # record, no ledger entry
    await _decide(client, user_id="other", message_id="m1")
    await _decide(client, user_id="gone", message_id="g1")
    await _merge(client, "gone", "u1")
    assert await _user_keys_in_redis(redis_client, "u1")

    r = await client.delete("/v1/users/u1")
    assert r.status_code == 200, r.text
    assert r.json() == {"user_id": "u1", "merged_ids": ["gone"], "erased": {
        "ledger_entries": 2, "decisions": 4, "conversions": 1, "event_opt_outs": 1,
        "preferences": 1, "keys": 5}}  # u1's ledger, prefs, conv, records hash; gone's prefs
    assert await _user_keys_in_redis(redis_client, "u1") == []
    assert await _user_keys_in_redis(redis_client, "gone") == []
    assert await _user_keys_in_redis(redis_client, "other") != []
    again = await client.delete("/v1/users/u1")
    assert again.json()["erased"] == {"ledger_entries": 0, "decisions": 0, "conversions": 0,
                                      "event_opt_outs": 0, "preferences": 0, "keys": 0}
    # a fresh start: the old decision is not replayed
    assert (await _decide(client, message_id="m1"))["replayed"] is False


async def test_delete_of_a_merged_id_unlinks_it(client: Client, redis_client: RedisClient) -> None:
    await _merge(client, "anon", "known")
    await client.delete("/v1/users/anon")
    assert await _user_keys_in_redis(redis_client, "anon") == []
    assert (await _export(client, "known"))["merged_from"] == {}


async def test_export_contains_everything(client: Client, clock: FixedClock) -> None:
    prefs = {"timezone": "Europe/Berlin", "channels": {"sms": {"consent": "opted_in"}},
             "frequency_limits": [{"limit": 9, "window_minutes": 600}],
             "quiet_hours": [{"start": "23:00", "end": "06:00"}], "topic_opt_outs": ["x"]}
    await client.put("/v1/users/u1/preferences", json=prefs)
    events = [{"type": "unsubscribed", "user_id": "u1", "at": "2026-06-10T15:00:00Z",
               "channel": "push"},
              {"type": "converted", "user_id": "u1", "at": "2026-06-10T14:00:00Z",
               "campaign_id": "c1"}]
    await client.post("/v1/events", json={"events": events})
    sent = await _decide(client, message_id="m1", channels=["sms"], campaign_id="c2",
                         tags=["t"], offer={"id": "o1", "group": "g"}, timezone=None)
    suppressed = await _decide(client, message_id="m2", channels=["push"], timezone=None)
    exported = await _export(client, "u1")
    assert exported["user_id"] == "u1" and exported["merged_into"] is None
    assert exported["preferences"] == {**prefs, "phone": None, "country": None, "region": None,
                                       "channels": {"sms": {"consent": "opted_in"}},
                                       "frequency_limits": [{"limit": 9, "window_minutes": 600,
                                                             "calendar": None, "channels": []}],
                                       "quiet_hours": [{"start": "23:00", "end": "06:00",
                                                        "weekdays": None}]}
    assert exported["event_opt_outs"] == {"push": "2026-06-10T15:00:00Z"}
    assert exported["conversions"] == {"c1": "2026-06-10T14:00:00Z"}
    assert exported["revision"] == 2
    [entry] = exported["ledger"]
    assert entry == {"message_id": "m1", "channel": "sms", "category": "promotional",
                     "campaign_id": "c2", "tags": ["t"], "offer": {"id": "o1", "group": "g"},
                     "send_at": "2026-06-10T16:00:00Z",
                     "local_send_at": "2026-06-10T18:00:00+02:00", "status": "sent",
                     "decision_id": sent["decision_id"], "decision": "send", "reasons": [],
                     "priority": 5}
    assert exported["decisions"] == [{**sent, "replayed": True},
                                     {**suppressed, "replayed": True}]
    assert exported["exported_at"] == "2026-06-10T16:00:00Z"
