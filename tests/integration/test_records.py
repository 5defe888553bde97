"""Idempotency records in one hash per user (api/keys.py): the stored layout, expiry at
the record's own instant, the batched trim, and the rolling upgrade: a record a previous
release wrote as its own string key (``sw:{t:u}:m:<message>``) is still found by a retry,
a commit's duplicate check, a cancel, ``GET /v1/decisions/{id}``, the timeline, an export,
a merge, an erasure and a preemption, until it expires."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from api import lifecycle
from api.clock import FixedClock
from api.engine import Engine
from api.errors import NotFoundError
from api.keys import user_keys
from api.redis_client import RedisClient
from api.render import record_parts
from api.settings import Settings
from api.userstate import UserState
from tests.integration.conftest import EXACT, TENANT, at, req

HOUR = 3_600_000
TTL = Settings().idempotency_ttl_seconds * 1000


async def _stored(redis_client: RedisClient, user: str, mid: str) -> tuple[int, bytes] | None:
    raw = await redis_client.hget(user_keys(TENANT, user).records, mid)
    if raw is None:
        return None
    expiry, _, record = bytes(raw).partition(b" ")
    return int(expiry), record


async def _to_legacy(redis_client: RedisClient, clock: FixedClock, user: str,
                     mid: str) -> bytes:
    """Rewrite a record as the previous release stored it: its own key, PX = time left."""
    keys = user_keys(TENANT, user)
    stored = await _stored(redis_client, user, mid)
    assert stored is not None
    expiry, record = stored
    await redis_client.hdel(keys.records, mid)
    await redis_client.set(keys.record(mid), record, px=expiry - clock.now_ms())
    return record


async def test_a_record_is_a_field_of_the_users_hash_until_its_ttl(
        engine: Engine, clock: FixedClock, redis_client: RedisClient) -> None:
    first = await engine.decide(TENANT, req(message_id="m1"))
    keys = user_keys(TENANT, "u1")
    stored = await _stored(redis_client, "u1", "m1")
    assert stored is not None and stored[0] == clock.now_ms() + TTL
    assert await redis_client.exists(keys.record("m1")) == 0  # no key per message
    assert await redis_client.object("encoding", keys.records) in (b"ziplist", b"listpack",
                                                                   b"hashtable")
    assert TTL < await redis_client.pttl(keys.records) <= TTL + TTL // 8  # the slack
    again = await engine.decide(TENANT, req(message_id="m1"))
    assert again.replayed and msgspec.structs.replace(again, replayed=False) == first
    assert (await engine.status(TENANT, first.decision_id)).state == "send"
    clock.advance(TTL)  # the record has expired: the reservation still counts, once
    with pytest.raises(NotFoundError):
        await engine.status(TENANT, first.decision_id)
    retry = await engine.decide(TENANT, req(message_id="m1"))
    assert retry.replayed and retry.send_at == first.send_at


async def test_a_deferrals_record_lives_a_ttl_past_its_send_instant(
        engine: Engine, clock: FixedClock, redis_client: RedisClient,
        set_policy: Callable[..., Any]) -> None:
    await set_policy(**EXACT)
    clock.value = at("2026-06-10T23:00:00-04:00")  # deferred to 08:00 (quiet hours)
    answer = await engine.decide(TENANT, req(message_id="late"))
    assert answer.decision == "defer" and answer.send_at is not None
    stored = await _stored(redis_client, "u1", "late")
    assert stored is not None
    assert stored[0] == int(answer.send_at.timestamp() * 1000) + TTL


async def test_expired_records_are_trimmed_in_batches(
        engine: Engine, clock: FixedClock, redis_client: RedisClient) -> None:
    """The field '' holds the earliest expiry and the hash's own (ttl/8 past the latest
    record when it was set, so most writes leave it alone); a write more than ttl/8 after
    the earliest drops every expired field, an earlier write drops none (one HGETALL per
    ttl/8 at most)."""
    keys = user_keys(TENANT, "u1")
    await engine.decide(TENANT, req(message_id="a", category="transactional"))
    first = clock.now_ms() + TTL
    meta = f"{first} {first + TTL // 8}".encode()
    assert await redis_client.hget(keys.records, "") == meta
    clock.advance(HOUR)
    await engine.decide(TENANT, req(message_id="b", category="transactional"))
    assert await redis_client.hget(keys.records, "") == meta  # inside the slack
    clock.advance(TTL)  # both expired, "a" by one hour more
    await engine.decide(TENANT, req(message_id="c", category="transactional"))
    assert sorted(await redis_client.hkeys(keys.records)) == [b"", b"a", b"b", b"c"]
    clock.advance(TTL // 8)
    await engine.decide(TENANT, req(message_id="d", category="transactional"))
    assert sorted(await redis_client.hkeys(keys.records)) == [b"", b"c", b"d"]
    c = clock.now_ms() - TTL // 8 + TTL  # c's expiry, the earliest now; the hash's own was
    # set by c's write (ttl/8 past it) and d's record expires no later than that
    assert await redis_client.hget(keys.records, "") == f"{c} {c + TTL // 8}".encode()
    assert TTL < await redis_client.pttl(keys.records) <= TTL + TTL // 8


async def test_a_previous_releases_record_is_replayed_and_cancelled_in_place(
        engine: Engine, clock: FixedClock, redis_client: RedisClient) -> None:
    first = await engine.decide(TENANT, req(message_id="m1"))
    record = await _to_legacy(redis_client, clock, "u1", "m1")
    keys = user_keys(TENANT, "u1")
    again = await engine.decide(TENANT, req(message_id="m1"))  # read.lua's fallback
    assert again.replayed and msgspec.structs.replace(again, replayed=False) == first
    assert (await engine.status(TENANT, first.decision_id)).state == "send"
    timeline = await engine.timeline(TENANT, "u1")
    assert [e.decision for e in timeline.entries] == ["send"]
    pttl = await redis_client.pttl(keys.record("m1"))
    cancelled = await engine.cancel(TENANT, first.decision_id)
    assert cancelled.released
    stored = await redis_client.get(keys.record("m1"))
    assert stored is not None  # the cancellation appended in the record's own framing
    assert record_parts(bytes(stored)) == (*record_parts(record)[:2], clock.now_ms())
    assert 0 < await redis_client.pttl(keys.record("m1")) <= pttl  # KEEPTTL
    assert await redis_client.hget(keys.records, "m1") is None  # rewritten where it was
    assert (await engine.status(TENANT, first.decision_id)).state == "cancelled"
    again = await engine.cancel(TENANT, first.decision_id)
    assert not again.released and again.cancelled_at == cancelled.cancelled_at


async def test_commits_duplicate_check_finds_a_previous_releases_record(
        engine: Engine, clock: FixedClock, redis_client: RedisClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A record that appears between the read and the commit (here: a read that missed it)
    is found by commit.lua in either layout."""
    first = await engine.decide(TENANT, req(message_id="s", tags=["x"], dry_run=False))
    await _to_legacy(redis_client, clock, "u1", "s")
    read = engine.store.read_user

    async def missing_record(*args: Any, **kwargs: Any) -> UserState:
        return msgspec.structs.replace(await read(*args, **kwargs), record=None)

    monkeypatch.setattr(engine.store, "read_user", missing_record)
    again = await engine.decide(TENANT, req(message_id="s", tags=["x"]))
    assert again.replayed and msgspec.structs.replace(again, replayed=False) == first
    assert await redis_client.hget(user_keys(TENANT, "u1").records, "s") is None  # no write


async def test_a_previous_releases_records_are_exported_merged_and_erased(
        engine: Engine, clock: FixedClock, redis_client: RedisClient) -> None:
    old = await engine.decide(TENANT, req(user_id="anon", message_id="a1"))
    await engine.decide(TENANT, req(user_id="anon", message_id="a2", channels=["push"]))
    await _to_legacy(redis_client, clock, "anon", "a1")
    dump = await lifecycle.snapshot(engine.store, TENANT, "anon", clock.now_ms())
    assert sorted(dump.records) == ["a1", "a2"]
    assert dump.legacy_record_keys == [user_keys(TENANT, "anon").record("a1")]
    moved = await lifecycle.merge(engine.store, TENANT, "anon", "known", clock.now_ms())
    assert moved.decisions == 2
    assert await redis_client.exists(user_keys(TENANT, "anon").record("a1")) == 0
    stored = await _stored(redis_client, "known", "a1")
    assert stored is not None and stored[0] > clock.now_ms()
    replay = await engine.decide(TENANT, req(user_id="anon", message_id="a1"))
    assert replay.replayed and replay.send_at == old.send_at
    await engine.decide(TENANT, req(user_id="known", message_id="k1", channels=["sms"]))
    await _to_legacy(redis_client, clock, "known", "k1")
    erased = await lifecycle.erase(engine.store, TENANT, "known", clock.now_ms())
    assert erased.erased.decisions == 3  # two in the hash, one key of the previous release
    assert [k async for k in redis_client.scan_iter(
        match=user_keys(TENANT, "known").pattern)] == []


async def test_a_displaced_previous_releases_record_is_rewritten_in_place(
        engine: Engine, clock: FixedClock, redis_client: RedisClient,
        set_policy: Callable[..., Any]) -> None:
    await set_policy(caps=[{"id": "daily", "limit": 1, "window_minutes": 1440}], **EXACT,
                     preemption={"enabled": True, "max_displaced": 2})
    clock.value = at("2026-06-10T23:00:00-04:00")
    low = await engine.decide(TENANT, req(message_id="low", priority=2, channels=["sms"]))
    await _to_legacy(redis_client, clock, "u1", "low")
    high = await engine.decide(TENANT, req(message_id="high", priority=8))
    assert high.displaced == [low.decision_id]
    later = dt.datetime.fromisoformat("2026-06-12T08:00:00-04:00")
    status = await engine.status(TENANT, low.decision_id)
    assert (status.state, status.send_at) == ("defer", later)
    keys = user_keys(TENANT, "u1")
    assert await redis_client.hget(keys.records, "low") is None
    want = int(later.timestamp() * 1000) + TTL - clock.now_ms()
    assert want - 1000 < await redis_client.pttl(keys.record("low")) <= want
