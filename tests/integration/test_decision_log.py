"""Decisions and events go to the tenant's log streams; ``sendwise export`` turns them into
training input that ``training.schema`` accepts (issue 8, durable log + export)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import redis

from api.decision_log import DAY_MS, LENGTH_TRIM_EVERY, DecisionLog
from api.engine import Engine
from api.keys import log_key
from api.log_entry import decode_entry, encode_entry, entry_user
from api.redis_client import RedisClient
from api.schemas import Event
from api.store import Store
from tests.conftest import RedisTarget
from tests.integration.conftest import NOON_NY, TENANT, req
from tests.integration.test_scoring import evening_events
from training.export import export
from training.schema import load_activity, load_messages


def event(**fields: Any) -> Event:
    return msgspec.convert(fields, Event)


def instant(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


async def test_logged_decisions_and_events_export_to_the_training_schema(
        engine: Engine, set_policy: Callable[..., Any], redis_target: RedisTarget,
        tmp_path: Path) -> None:
    await set_policy(quiet_hours=[], send_time={"exploration_rate": 0.0})
    await engine.record_events(TENANT, evening_events("u1"))
    deferred = await engine.decide(TENANT, req(message_id="m1", user_id="u1",
                                               category="promotional"))
    sent = await engine.decide(TENANT, req(message_id="m2", user_id="u2",
                                           category="promotional"))
    await engine.decide(TENANT, req(message_id="m2", user_id="u2", category="promotional"))
    await engine.decide(TENANT, req(message_id="m3", user_id="u2", dry_run=True))
    assert sent.decision == "send" and deferred.decision == "defer"
    await engine.record_events(TENANT, [
        event(type="delivered", user_id="u2", message_id="m2", channel="email",
              at=instant(NOON_NY + 1000)),
        event(type="opened", user_id="u2", message_id="m2", channel="email",
              at=instant(NOON_NY + 600_000))])
    await engine.store.settle()  # replies the answers did not wait for (api/decision_log.py)
    assert engine.log.failures == 0

    client: Any = (redis.RedisCluster.from_url(redis_target.url) if redis_target.cluster
                   else redis.Redis.from_url(redis_target.url))
    try:
        # a day later: both reservations have passed (the replay and the dry run: not logged)
        counts = export(client, TENANT, tmp_path, now_ms=NOON_NY + 86_400_000)
    finally:
        if redis_target.cluster:
            client.disconnect_connection_pools()
        else:
            client.close()
            client.connection_pool.disconnect()
    assert counts == {"messages": 2, "activity": 42, "decisions": 2, "outcomes": 2}
    messages = load_messages(tmp_path / "messages.parquet")
    assert len(messages) == 2 and messages.report.rows_rejected == 0
    opened = messages.outcomes["opened_at"]
    by_user = dict(zip([messages.users[u] for u in messages.user.tolist()], opened.tolist(),
                       strict=True))
    assert by_user["u2"] == (NOON_NY + 600_000) // 1000
    assert all(p == 1.0 for p in messages.propensity.tolist())
    activity = load_activity(tmp_path / "activity.parquet")
    assert len(activity) == 42 and activity.zones == ["America/New_York"]


def _fields(i: int) -> tuple[str | bytes, ...]:
    return encode_entry("event", f"u{i}", {"type": "activity", "at": str(i)})


def _old_fields(i: int) -> dict[str, str]:
    """An entry as releases before the two-field layout wrote it."""
    return {"kind": "event", "type": "activity", "user_id": f"u{i}", "at": str(i)}


async def test_each_append_trims_the_stream_by_age_or_by_length(
        redis_client: RedisClient) -> None:
    """Every append is one ``XADD`` with one trim rule: by length on every
    ``LENGTH_TRIM_EVERY``-th, by age otherwise; both approximate (whole stream nodes of
    ``stream-node-max-entries``, 100 by default), so the bounds hold within a node."""
    key = log_key(TENANT, 3)
    log = DecisionLog(Store(redis_client), max_len=50, retention_days=30)
    now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    node = 100
    for start in range(0, 2_000, 100):  # as a busy worker would: many appends at once
        await asyncio.gather(*(log._append([(key, _fields(i))], now)
                               for i in range(start, start + 100)))
    await log.store.settle()
    assert log.failures == 0
    assert 50 <= await redis_client.xlen(key) <= 50 + node + LENGTH_TRIM_EVERY
    newest = await redis_client.xrevrange(key, count=1)
    assert entry_user(newest[0][1]) == b"u1999"  # trimming drops the oldest only



async def test_appends_drop_entries_older_than_the_retention(redis_client: RedisClient) -> None:
    """Entries written 40 days ago (explicit stream ids) go once appends carry on with a
    30-day retention; the new entries stay."""
    key = log_key(TENANT, 5)
    now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    for i in range(1_000):
        await redis_client.xadd(key, _old_fields(i), id=f"{now - 40 * DAY_MS}-{i}")
    log = DecisionLog(Store(redis_client), max_len=1_000_000, retention_days=30)
    for i in range(1_000, 1_000 + 2 * LENGTH_TRIM_EVERY):
        await log._append([(key, _fields(i))], now)
    await log.store.settle()
    assert log.failures == 0
    remaining = [entry_user(fields) for _, fields in await redis_client.xrange(key)]
    new = [f"u{i}".encode() for i in range(1_000, 1_000 + 2 * LENGTH_TRIM_EVERY)]
    assert remaining[-len(new):] == new
    assert len(remaining) - len(new) <= 100  # at most one stream node of old entries


def test_one_append_in_length_trim_every_trims_by_length() -> None:
    log = DecisionLog(None, max_len=7, retention_days=1)  # type: ignore[arg-type]
    rules = [log._trim(DAY_MS + 5) for _ in range(2 * LENGTH_TRIM_EVERY + 1)]
    assert rules[0] == rules[LENGTH_TRIM_EVERY] == rules[2 * LENGTH_TRIM_EVERY] == (
        "MAXLEN", "~", 7)
    assert all(rule == ("MINID", "~", 5) for k, rule in enumerate(rules)
               if k % LENGTH_TRIM_EVERY)


async def test_erasure_and_export_read_entries_of_both_layouts(redis_client: RedisClient) -> None:
    """A stream written across an upgrade holds entries of the one-field-per-name layout
    and of the two-field one: erasure removes a user's entries of both, and both decode to
    the same names and values."""
    key = log_key(TENANT, 3)
    now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    log = DecisionLog(Store(redis_client))
    for i in range(4):
        await redis_client.xadd(key, _old_fields(i))
        await log._append([(key, _fields(i))], now)
    entries = [decode_entry(fields) for _, fields in await redis_client.xrange(key)]
    for old, new in zip(entries[::2], entries[1::2], strict=True):
        assert old.items() <= new.items()
        assert {k: v for k, v in new.items() if k not in old} == {
            "message_id": "", "channel": "", "campaign": "", "event_kind": "", "timezone": ""}
    assert await Store(redis_client).erase_log_entries(key, "u2") == 2
    left = [entry_user(fields) for _, fields in await redis_client.xrange(key)]
    assert left == [b"u0", b"u0", b"u1", b"u1", b"u3", b"u3"]
