"""Atomicity under concurrency: many simultaneous decisions from several API "workers"
(engines with their own Redis connection pools) must keep every promise exactly."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest

from api.clock import FixedClock
from api.engine import Engine
from api.policy import Policy
from api.redis_client import RedisClient, make_redis
from api.settings import Settings
from api.store import Store
from tests.integration.conftest import NOON_NY, TENANT, req

HOUR = 3_600_000
DAY = 24 * HOUR
WORKERS = 4


@pytest.fixture
async def workers(redis_settings: Settings, redis_client: RedisClient,
                  clock: FixedClock) -> AsyncIterator[list[Engine]]:
    settings = msgspec.structs.replace(redis_settings, redis_max_connections=16)
    clients = [make_redis(settings) for _ in range(WORKERS)]
    engines = [Engine(Store(c, max_in_flight=16), settings, clock) for c in clients]
    yield engines
    for c in clients:
        await c.aclose()


async def _set_policy(engines: list[Engine], clock: FixedClock, **fields: Any) -> None:
    # caps, not send times, are under test: no decision explores a later slot (new users
    # explore too at the default rate)
    fields.setdefault("send_time", {"exploration_rate": 0.0})
    policy = msgspec.convert(fields, Policy)
    stored = await engines[0].store.put_policy(TENANT, policy, None, clock.now_ms())
    for engine in engines:
        engine.policies.put(TENANT, stored)


def _max_in_any_window(times: list[int], window: int) -> int:
    """Brute force over every window starting at an entry (the max is attained there)."""
    times = sorted(times)
    return max((sum(1 for t in times if s <= t < s + window) for s in times), default=0)


async def _gather(engines: list[Engine], requests: list[Any]) -> list[Any]:
    rng = random.Random(7)
    return await asyncio.gather(*(rng.choice(engines).decide(TENANT, r) for r in requests))


async def test_cap_holds_exactly_under_concurrent_load(workers: list[Engine],
                                                       clock: FixedClock) -> None:
    """300 simultaneous messages for 3 users, cap 5 per 24 h, deadline in 1 h: exactly 5
    sends per user, everything else suppressed, nothing over the cap in the ledger."""
    await _set_policy(workers, clock, quiet_hours=[],
                      caps=[{"id": "five-a-day", "limit": 5, "window_minutes": 1440}])
    deadline = dt.datetime.fromtimestamp((NOON_NY + HOUR) / 1000, dt.UTC)
    users = ["alice", "bob", "carol"]
    requests = [req(message_id=f"m{i}", user_id=users[i % 3], deadline=deadline)
                for i in range(300)]
    answers = await _gather(workers, requests)
    for user in users:
        mine = [a for a, r in zip(answers, requests, strict=True) if r.user_id == user]
        assert sum(a.decision == "send" for a in mine) == 5
        assert sum(a.decision == "suppress" for a in mine) == 95
        ledger = await workers[0].store.ledger(TENANT, user)
        assert len(ledger) == 5


async def test_deferred_reservations_never_share_a_capped_window(workers: list[Engine],
                                                                 clock: FixedClock) -> None:
    """Without a deadline the overflow is deferred; across the 7-day horizon each rolling
    24 h window still holds at most 3, and the horizon is filled exactly."""
    await _set_policy(workers, clock, quiet_hours=[],
                      caps=[{"id": "three-a-day", "limit": 3, "window_minutes": 1440}])
    requests = [req(message_id=f"m{i}", user_id=f"user{i % 2}") for i in range(120)]
    answers = await _gather(workers, requests)
    for user in ("user0", "user1"):
        ledger = await workers[0].store.ledger(TENANT, user)
        times = [int(score) for _, score in ledger]
        assert _max_in_any_window(times, DAY) == 3
        assert len(times) == 21  # 7 days x 3
        mine = [a for a, r in zip(answers, requests, strict=True) if r.user_id == user]
        assert sum(a.decision != "suppress" for a in mine) == 21


async def test_concurrent_retries_of_one_message_count_once(workers: list[Engine]) -> None:
    answers = await _gather(workers, [req(message_id="same") for _ in range(60)])
    assert len({(a.decision_id, a.decision, a.channel, a.send_at) for a in answers}) == 1
    assert sum(not a.replayed for a in answers) == 1
    assert len(await workers[0].store.ledger(TENANT, "u1")) == 1


async def test_concurrent_conflicting_offers_one_wins(workers: list[Engine],
                                                      clock: FixedClock) -> None:
    await _set_policy(workers, clock, quiet_hours=[], caps=[])
    deadline = dt.datetime.fromtimestamp((NOON_NY + HOUR) / 1000, dt.UTC)
    requests = [req(message_id=f"o{i}", channels=["email", "sms"], deadline=deadline,
                    offer={"id": f"offer{i}", "group": "black-friday"}) for i in range(40)]
    answers = await _gather(workers, requests)
    assert sum(a.decision == "send" for a in answers) == 1
    losers = [a for a in answers if a.decision == "suppress"]
    assert len(losers) == 39
    assert all("conflicting_offer" in {r.code for r in a.reasons} for a in losers)


async def test_opt_out_racing_decisions_takes_effect_for_the_next(
        workers: list[Engine], clock: FixedClock, set_policy: Callable[..., Any]) -> None:
    """A decision that read preferences before an opt-out landed is retried by the commit's
    revision check; once the opt-out call has returned, no later decision sends."""
    from api.schemas import Event

    await _set_policy(workers, clock, quiet_hours=[], caps=[])
    when = dt.datetime.fromtimestamp(NOON_NY / 1000, dt.UTC)

    async def opt_out() -> None:
        await asyncio.sleep(0)
        await workers[1].store.apply_events(
            TENANT, [Event(type="unsubscribed", user_id="u1", at=when, channel="email")],
            )

    before = [workers[i % WORKERS].decide(TENANT, req(message_id=f"b{i}")) for i in range(30)]
    await asyncio.gather(opt_out(), *before)
    after = await _gather(workers, [req(message_id=f"a{i}") for i in range(30)])
    assert all(a.decision == "suppress" for a in after)


async def test_decision_concurrency_bounds_the_decisions_in_progress_and_keeps_arrival_order(
        redis_client: RedisClient, clock: FixedClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """``SENDWISE_DECISION_CONCURRENCY``: at most that many decisions run at once in one
    worker; the others wait and start in the order they arrived; every one is answered."""
    settings = Settings(redis_url="unused", decision_concurrency=2)
    engine = Engine(Store(redis_client), settings, clock)
    policy = msgspec.convert({"send_time": {"exploration_rate": 0.0}, "quiet_hours": []}, Policy)
    engine.policies.put(TENANT, await engine.store.put_policy(TENANT, policy, None,
                                                               clock.now_ms()))
    real = engine._decide_observed
    running, peak, started = 0, 0, []

    async def counted(tenant: str, request: Any) -> Any:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        started.append(request.message_id)
        try:
            return await real(tenant, request)
        finally:
            running -= 1

    monkeypatch.setattr(engine, "_decide_observed", counted)
    ids = [f"m{i}" for i in range(8)]
    answers = await asyncio.gather(*(engine.decide(TENANT, req(message_id=m, user_id=f"u{m}"))
                                     for m in ids))
    assert peak == 2
    assert started == ids
    assert [a.message_id for a in answers] == ids and all(a.decision == "send" for a in answers)
    entries = {entry: engine.metrics.registry.get_sample_value(
        "sendwise_admission_total", {"entry": entry}) for entry in ("immediate", "queued")}
    assert entries == {"immediate": 2.0, "queued": 6.0}
