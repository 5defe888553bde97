"""No thundering herd: deferred messages spread over ``send_time.spread_minutes`` after
the instant they become allowed, never earlier, deterministically; and the default
minimum spacing between two promotional messages to one person."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.clock import FixedClock
from api.engine import Engine
from api.plan import MINUTE_MS, spread_offset
from tests.integration.conftest import NOON_NY, TENANT, at, req

MORNING = dt.datetime.fromisoformat("2026-06-11T08:00:00-04:00")
MORNING_MS = int(MORNING.timestamp() * 1000)


def _ms(value: dt.datetime | None) -> int:
    assert value is not None
    return int(value.timestamp() * 1000)


async def test_quiet_hours_herd_is_spread_over_the_window(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any]) -> None:
    """200 people asked at 23:00: all deferred by quiet hours, landing over [08:00, 08:30)
    at each message's own offset, none before 08:00; retries answer the same instants.
    The default policy (spread 30 minutes), without exploration."""
    await set_policy()
    clock.value = at("2026-06-10T23:00:00-04:00")
    requests = [req(message_id=f"m{i}", user_id=f"u{i}") for i in range(200)]
    answers = await asyncio.gather(*(engine.decide(TENANT, r) for r in requests))
    instants = [_ms(a.send_at) for a in answers]
    assert all(a.decision == "defer" for a in answers)
    assert instants == [MORNING_MS + spread_offset(TENANT, r.message_id, 30) for r in requests]
    assert all(MORNING_MS <= t < MORNING_MS + 30 * MINUTE_MS for t in instants)
    # spread, not clumped: every 5-minute slice of the window gets some
    assert {(t - MORNING_MS) // (5 * MINUTE_MS) for t in instants} == set(range(6))
    # the reason keeps the true instant the quiet hours end
    assert all(a.reasons[0].code == "quiet_hours" and a.reasons[0].until == MORNING
               for a in answers)
    again = await asyncio.gather(*(engine.decide(TENANT, r) for r in requests))
    assert [a.send_at for a in again] == [a.send_at for a in answers]


async def test_spread_stays_inside_the_free_gap(engine: Engine, clock: FixedClock,
                                                set_policy: Callable[..., Any]) -> None:
    """Another quiet window from 08:10: an offset past it lands at the gap's last instant,
    never inside the next block (and never pushed past it)."""
    await set_policy(quiet_hours=[{"id": "night", "start": "21:00", "end": "08:00"},
                                  {"id": "standup", "start": "08:10", "end": "09:00"}])
    clock.value = at("2026-06-10T23:00:00-04:00")
    requests = [req(message_id=f"m{i}", user_id=f"u{i}") for i in range(60)]
    answers = await asyncio.gather(*(engine.decide(TENANT, r) for r in requests))
    gap_end = MORNING_MS + 10 * MINUTE_MS
    for r, a in zip(requests, answers, strict=True):
        want = MORNING_MS + spread_offset(TENANT, r.message_id, 30)
        assert _ms(a.send_at) == min(want, gap_end - 1)


async def test_sends_now_are_never_spread_and_zero_disables(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any]) -> None:
    assert _ms((await engine.decide(TENANT, req(message_id="now"))).send_at) == NOON_NY
    await set_policy(send_time={"spread_minutes": 0})
    clock.value = at("2026-06-10T23:00:00-04:00")
    assert _ms((await engine.decide(TENANT, req(message_id="m", user_id="x"))).send_at) \
        == MORNING_MS


async def test_spread_keeps_caps_exact(engine: Engine, clock: FixedClock,
                                       set_policy: Callable[..., Any]) -> None:
    """One person, cap 2 per 24 h, 12 messages at night: spread instants still never put
    3 in a 24 h window (the spread instant is the one reserved and counted)."""
    await set_policy(caps=[{"id": "two", "limit": 2, "window_minutes": 1440}])
    clock.value = at("2026-06-10T23:00:00-04:00")
    answers = [await engine.decide(TENANT, req(message_id=f"m{i}")) for i in range(12)]
    times = sorted(_ms(a.send_at) for a in answers if a.send_at is not None)
    day = 24 * 60 * MINUTE_MS
    assert max(sum(1 for t in times if s <= t < s + day) for s in times) <= 2
    assert all(t >= MORNING_MS for t in times)


async def test_default_spacing_between_promotional_messages(engine: Engine) -> None:
    """Two promotional messages to one person are 30 minutes apart, across channels;
    transactional ones are not held back."""
    first = await engine.decide(TENANT, req(message_id="a"))
    assert first.decision == "send"
    second = await engine.decide(TENANT, req(message_id="b", channels=["sms"]))
    assert second.decision == "defer"
    assert [(r.code, r.rule) for r in second.reasons] == [("frequency_cap",
                                                          "promotional-spacing")]
    freed = NOON_NY + 30 * MINUTE_MS
    assert second.reasons[0].until == dt.datetime.fromtimestamp(freed / 1000, dt.UTC)
    assert freed <= _ms(second.send_at) < freed + 30 * MINUTE_MS  # spread after it frees
    receipt = await engine.decide(TENANT, req(message_id="r", category="transactional"))
    assert receipt.decision == "send"


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spread=st.integers(0, 90), minute=st.integers(0, 24 * 60 - 1),
       ids=st.lists(st.integers(0, 10_000), min_size=1, max_size=6, unique=True))
async def test_spread_never_lands_in_a_blocked_instant(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any], redis_client: Any,
        spread: int, minute: int, ids: list[int]) -> None:
    """Property: whatever the window and the time asked, a deferred answer lies in
    [allowed instant, allowed instant + spread) and outside the quiet hours."""
    await redis_client.flushall()
    engine.policies = type(engine.policies)(engine.store)
    await set_policy(send_time={"spread_minutes": spread}, caps=[],
                     quiet_hours=[{"id": "night", "start": "21:00", "end": "08:00"},
                                  {"id": "lunch", "start": "12:00", "end": "12:20"}])
    clock.value = at("2026-06-10T00:00:00-04:00") + minute * MINUTE_MS
    for i in ids:
        a = await engine.decide(TENANT, req(message_id=f"m{i}", user_id=f"u{i}"))
        assert a.send_at is not None and a.local_send_at is not None
        if a.decision == "send":
            continue
        allowed = a.reasons[-1].until
        assert allowed is not None
        assert allowed <= a.send_at < allowed + dt.timedelta(minutes=max(spread, 1))
        local = a.local_send_at.time()
        assert dt.time(8) <= local < dt.time(21)
        assert not dt.time(12) <= local < dt.time(12, 20)
