"""Preemption x channel pacing (docs/pacing.md, "Preemption"): a displaced reservation is
moved inside the commit (commit.lua step 6b) and its pacing token follows it, so the
counters in Redis always equal the paced reservations in the ledgers. Against the real
Redis fixtures (one node and the 3-master cluster)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from collections.abc import Callable
from typing import Any

from structlog.testing import capture_logs

from api.clock import FixedClock
from api.engine import Engine
from api.pacing import SECOND_MS
from api.plan import decode_member
from api.redis_client import RedisClient
from tests.integration.conftest import EXACT, TENANT, at, req
from tests.integration.test_pacing import _counted, _ms

#: 23:00 in New York: promotional messages are deferred to 08:00 (not yet due: displaceable)
NIGHT = "2026-06-10T23:00:00-04:00"
MORNING = at("2026-06-11T08:00:00-04:00")
DAY = 24 * 3_600_000
DAILY = [{"id": "daily", "limit": 1, "window_minutes": 1440}]
PREEMPT = {"preemption": {"enabled": True, "max_displaced": 2}}


async def _paced_in_ledgers(engine: Engine, users: list[str], channel: str) -> Counter[int]:
    """The reservations on ``channel`` in these users' ledgers, per second (ms)."""
    total: Counter[int] = Counter()
    for user in users:
        for member, score in await engine.store.ledger(TENANT, user):
            if decode_member(member)[1] == channel:
                total[int(score) // SECOND_MS * SECOND_MS] += 1
    return total


async def test_a_displaced_paced_message_takes_its_token_along(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any],
        redis_client: RedisClient) -> None:
    """low (sms, paced) waits for 08:00; high (email, not paced) displaces it to 08:00 the
    next day. Its 08:00 token goes back (another recipient then gets 08:00 exactly) and the
    new instant is counted: counters == ledgers, nothing overbooked."""
    await set_policy(caps=DAILY, pacing={"channels": {"sms": {"per_second": 1}}, "shards": 1},
                     **EXACT, **PREEMPT)
    clock.value = at(NIGHT)
    low = await engine.decide(TENANT, req(message_id="low", priority=2, channels=["sms"]))
    assert _ms(low.send_at) == MORNING
    assert await _counted(redis_client, "sms", 1, SECOND_MS) == {MORNING: 1}
    with capture_logs() as logs:
        high = await engine.decide(TENANT, req(message_id="high", priority=8))
    assert high.displaced == [low.decision_id] and _ms(high.send_at) == MORNING
    status = await engine.status(TENANT, low.decision_id)
    assert status.channel == "sms" and _ms(status.send_at) == MORNING + DAY
    assert await _counted(redis_client, "sms", 1, SECOND_MS) == {MORNING + DAY: 1}
    assert await _paced_in_ledgers(engine, ["u1"], "sms") == {MORNING + DAY: 1}
    assert not [e for e in logs if e["event"] == "pacing_overbooked"]
    # the 08:00 second is free again for everyone
    other = await engine.decide(TENANT, req(message_id="o", user_id="u2", channels=["sms"]))
    assert _ms(other.send_at) == MORNING
    assert await _counted(redis_client, "sms", 1, SECOND_MS) == await _paced_in_ledgers(
        engine, ["u1", "u2"], "sms")


async def test_a_displaced_message_moved_into_a_full_second_is_counted_and_logged(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any],
        redis_client: RedisClient) -> None:
    """The displaced message's new instant is chosen by its recipient's rules inside the
    commit; when that second is full already it is still counted (the ledger and the
    record say that instant) and logged as ``pacing_overbooked``: the one documented
    overshoot, one per such move."""
    await set_policy(caps=DAILY, pacing={"channels": {"sms": {"per_second": 1}}, "shards": 1},
                     **EXACT, **PREEMPT)
    clock.value = at(NIGHT)
    tomorrow = dt.datetime.fromtimestamp((MORNING + DAY) / 1000, dt.UTC)
    full = await engine.decide(TENANT, req(message_id="f", user_id="u2", channels=["sms"],
                                           not_before=tomorrow))
    assert _ms(full.send_at) == MORNING + DAY
    await engine.decide(TENANT, req(message_id="low", priority=2, channels=["sms"]))
    with capture_logs() as logs:
        high = await engine.decide(TENANT, req(message_id="high", priority=8))
    assert len(high.displaced) == 1
    over = [e for e in logs if e["event"] == "pacing_overbooked"]
    assert [(e["at"], e["cause"]) for e in over] == [(MORNING + DAY, "preempted")]
    counted = await _counted(redis_client, "sms", 1, SECOND_MS)
    assert counted == {MORNING + DAY: 2}
    assert counted == await _paced_in_ledgers(engine, ["u1", "u2"], "sms")


async def test_concurrent_preemptions_keep_counters_equal_to_ledgers(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any],
        redis_client: RedisClient) -> None:
    """Eight recipients, each with a paced sms reservation at 08:00, each displaced at once
    by a high-priority message on sms too (10 per second, 2 shards): every token moves with
    its message, the sums match the ledgers exactly and no second exceeds the limit."""
    users = [f"u{i}" for i in range(8)]
    await set_policy(caps=DAILY, pacing={"channels": {"sms": {"per_second": 10}}, "shards": 2},
                     **EXACT, **PREEMPT)
    clock.value = at(NIGHT)
    for user in users:
        await engine.decide(TENANT, req(message_id="low", user_id=user, priority=2,
                                        channels=["sms"]))
    with capture_logs() as logs:
        highs = await asyncio.gather(*(
            engine.decide(TENANT, req(message_id="high", user_id=user, priority=8,
                                      channels=["sms"])) for user in users))
    assert all(len(h.displaced) == 1 for h in highs)
    counted = await _counted(redis_client, "sms", 2, SECOND_MS)
    assert counted == await _paced_in_ledgers(engine, users, "sms")
    assert sum(counted.values()) == 2 * len(users) and max(counted.values()) <= 10
    assert not [e for e in logs if e["event"] == "pacing_overbooked"]
