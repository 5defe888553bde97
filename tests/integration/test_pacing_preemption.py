"""Preemption x channel pacing (docs/pacing.md, "Preemption"): a displaced reservation is
moved inside the commit (commit.lua step 6b), never into a full second (the commit answers
``repace`` until pacing holds a token for its new instant), and its old token is given
back, so the counters in Redis always equal the paced reservations in the ledgers and no
second exceeds the limit. Against the real
Redis fixtures (one node and the 3-master cluster)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from collections.abc import Callable
from typing import Any

from api.clock import FixedClock
from api.engine import Engine
from api.errors import ConflictError
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
    new instant is counted: counters == ledgers."""
    await set_policy(caps=DAILY, pacing={"channels": {"sms": {"per_second": 1}}, "shards": 1},
                     **EXACT, **PREEMPT)
    clock.value = at(NIGHT)
    low = await engine.decide(TENANT, req(message_id="low", priority=2, channels=["sms"]))
    assert _ms(low.send_at) == MORNING
    assert await _counted(redis_client, "sms", 1, SECOND_MS) == {MORNING: 1}
    high = await engine.decide(TENANT, req(message_id="high", priority=8))
    assert high.displaced == [low.decision_id] and _ms(high.send_at) == MORNING
    status = await engine.status(TENANT, low.decision_id)
    assert status.channel == "sms" and _ms(status.send_at) == MORNING + DAY
    assert await _counted(redis_client, "sms", 1, SECOND_MS) == {MORNING + DAY: 1}
    assert await _paced_in_ledgers(engine, ["u1"], "sms") == {MORNING + DAY: 1}
    # the 08:00 second is free again for everyone
    other = await engine.decide(TENANT, req(message_id="o", user_id="u2", channels=["sms"]))
    assert _ms(other.send_at) == MORNING
    assert await _counted(redis_client, "sms", 1, SECOND_MS) == await _paced_in_ledgers(
        engine, ["u1", "u2"], "sms")


async def test_a_displaced_message_is_not_moved_into_a_full_second(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any],
        redis_client: RedisClient) -> None:
    """The displaced message's next allowed instant (08:00 tomorrow) is a full second: the
    commit writes nothing (``repace``), pacing finds the next second with capacity, and the
    re-decision inside the next commit treats the full second as a ``channel_pacing`` rule:
    the message moves to 08:00:01 and the counters equal the ledgers."""
    await set_policy(caps=DAILY, pacing={"channels": {"sms": {"per_second": 1}}, "shards": 1},
                     **EXACT, **PREEMPT)
    clock.value = at(NIGHT)
    tomorrow = dt.datetime.fromtimestamp((MORNING + DAY) / 1000, dt.UTC)
    full = await engine.decide(TENANT, req(message_id="f", user_id="u2", channels=["sms"],
                                           not_before=tomorrow))
    assert _ms(full.send_at) == MORNING + DAY
    low = await engine.decide(TENANT, req(message_id="low", priority=2, channels=["sms"]))
    commit = engine.store.commit
    statuses: list[str] = []

    async def recording(*args: Any, **kwargs: Any) -> Any:
        reply = await commit(*args, **kwargs)
        statuses.append(reply.status)
        return reply

    engine.store.commit = recording  # type: ignore[method-assign]
    high = await engine.decide(TENANT, req(message_id="high", priority=8))
    assert high.displaced == [low.decision_id] and "repace" in statuses
    status = await engine.status(TENANT, low.decision_id)
    assert _ms(status.send_at) == MORNING + DAY + SECOND_MS
    assert [(r.code, r.rule) for r in status.reasons] == [
        ("preempted", "daily"), ("frequency_cap", "daily"),
        ("channel_pacing", "pacing.channels.sms.per_second")]
    counted = await _counted(redis_client, "sms", 1, SECOND_MS)
    assert counted == {MORNING + DAY: 1, MORNING + DAY + SECOND_MS: 1}
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
    highs = await asyncio.gather(*(
        engine.decide(TENANT, req(message_id="high", user_id=user, priority=8,
                                  channels=["sms"])) for user in users))
    assert all(len(h.displaced) == 1 for h in highs)
    counted = await _counted(redis_client, "sms", 2, SECOND_MS)
    assert counted == await _paced_in_ledgers(engine, users, "sms")
    assert sum(counted.values()) == 2 * len(users) and max(counted.values()) <= 10


async def test_concurrent_displacements_into_one_second_never_overshoot(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any],
        redis_client: RedisClient) -> None:
    """Six recipients' paced sms reservations are all displaced at once (by email messages,
    not paced themselves) and all want 08:00 tomorrow, a second that holds 2: they spread
    over the next seconds, no second exceeds the limit, and the counters equal the ledgers."""
    users = [f"u{i}" for i in range(6)]
    limit = 2
    await set_policy(caps=DAILY, pacing={"channels": {"sms": {"per_second": limit}},
                                         "shards": 1}, **EXACT, **PREEMPT)
    clock.value = at(NIGHT)
    for user in users:
        await engine.decide(TENANT, req(message_id="low", user_id=user, priority=2,
                                        channels=["sms"]))
    highs = await asyncio.gather(*(
        engine.decide(TENANT, req(message_id="high", user_id=user, priority=8))
        for user in users), return_exceptions=True)
    done = [h for h in highs if not isinstance(h, BaseException)]
    assert all(isinstance(h, ConflictError) for h in highs if isinstance(h, BaseException))
    assert done and all(len(h.displaced) == 1 for h in done)
    counted = await _counted(redis_client, "sms", 1, SECOND_MS)
    assert counted == await _paced_in_ledgers(engine, users, "sms")
    assert max(counted.values()) <= limit
    tomorrow = {t: n for t, n in counted.items() if t >= MORNING + DAY}
    print(f"\npreempted into one second: {sum(tomorrow.values())} moved over "
          f"{len(tomorrow)} seconds (limit {limit}), {len(highs) - len(done)} retryable 409s")
    assert sum(tomorrow.values()) == len(done)
