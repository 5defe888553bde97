"""Decisions and events go to the tenant's log streams; ``sendwise export`` turns them into
training input that ``training.schema`` accepts (issue 8, durable log + export)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import redis

from api.engine import Engine
from api.schemas import Event
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
