"""Priority that means something: cap reserves, preemption of lower-priority reservations
that are not yet due (the displaced message moved to its next allowed instant or
suppressed, in the same commit), the decision state a platform confirms before sending
(README, "Priority and preemption")."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Callable
from typing import Any

from api.clock import FixedClock
from api.engine import Engine
from api.log_entry import decode_entry
from api.plan import decode_member
from tests.integration.conftest import EXACT, TENANT, at, req

HOUR = 3_600_000
DAY = 24 * HOUR
#: 23:00 in New York: every promotional message is deferred to 08:00 (not yet due)
NIGHT = "2026-06-10T23:00:00-04:00"
MORNING = dt.datetime.fromisoformat("2026-06-11T08:00:00-04:00")
PREEMPT = {"preemption": {"enabled": True, "max_displaced": 2}}


def codes(response: Any) -> list[str]:
    return [r.code for r in response.reasons]


async def _ledger(engine: Engine, user: str = "u1") -> dict[str, int]:
    return {decode_member(m)[0]: int(s) for m, s in await engine.store.ledger(TENANT, user)}


async def test_reserve_keeps_the_last_slots_for_higher_priorities(
        engine: Engine, set_policy: Callable[..., Any]) -> None:
    """Priority < 5 sees 2 of the 3 daily slots; priority 5 still gets the third."""
    await set_policy(caps=[{"id": "daily", "limit": 3, "window_minutes": 1440,
                            "reserve": {"below_priority": 5, "limit": 2}}], **EXACT)
    for mid in ("a", "b"):
        assert (await engine.decide(TENANT, req(message_id=mid, priority=4))).decision == "send"
    low = await engine.decide(TENANT, req(message_id="c", priority=4))
    assert low.decision == "defer" and codes(low) == ["frequency_cap"]
    assert low.reasons[0].rule == "daily"
    high = await engine.decide(TENANT, req(message_id="d", priority=5))
    assert high.decision == "send"
    # the cap itself holds for everyone: a fourth is deferred whatever its priority
    top = await engine.decide(TENANT, req(message_id="e", priority=10))
    assert top.decision == "defer" and codes(top) == ["frequency_cap"]


async def test_higher_priority_preempts_and_the_displaced_message_moves(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any]) -> None:
    await set_policy(caps=[{"id": "daily", "limit": 1, "window_minutes": 1440}],
                     **EXACT, **PREEMPT)
    clock.value = at(NIGHT)
    low = await engine.decide(TENANT, req(message_id="low", priority=2, channels=["sms"]))
    assert low.decision == "defer" and low.send_at == MORNING and low.displaced == []
    high = await engine.decide(TENANT, req(message_id="high", priority=8))
    assert high.decision == "defer" and high.send_at == MORNING
    assert high.displaced == [low.decision_id]
    # re-decided in the same commit: its next allowed instant, a day later
    later = MORNING + dt.timedelta(days=1)
    assert await _ledger(engine) == {"high": int(MORNING.timestamp() * 1000),
                                     "low": int(later.timestamp() * 1000)}
    # the state a platform confirms, and a retry of the displaced message, both say so
    status = await engine.status(TENANT, low.decision_id)
    assert (status.state, status.channel, status.send_at) == ("defer", "sms", later)
    assert [(r.code, r.rule, r.until) for r in status.reasons] == [
        ("preempted", "daily", None), ("frequency_cap", "daily", later)]
    retry = await engine.decide(TENANT, req(message_id="low", priority=2, channels=["sms"]))
    assert retry.replayed and retry.send_at == later and codes(retry)[0] == "preempted"
    # the preempting answer replays with its displaced ids
    again = await engine.decide(TENANT, req(message_id="high", priority=8))
    assert again.displaced == [low.decision_id] and again.replayed
    assert (await engine.status(TENANT, high.decision_id)).state == "defer"


async def test_a_displaced_message_with_no_instant_left_is_suppressed(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any]) -> None:
    await set_policy(caps=[{"id": "daily", "limit": 1, "window_minutes": 1440}],
                     **EXACT, **PREEMPT)
    clock.value = at(NIGHT)
    deadline = MORNING + dt.timedelta(hours=6)
    low = await engine.decide(TENANT, req(message_id="low", priority=2, deadline=deadline))
    high = await engine.decide(TENANT, req(message_id="high", priority=8))
    assert high.displaced == [low.decision_id]
    assert set(await _ledger(engine)) == {"high"}
    status = await engine.status(TENANT, low.decision_id)
    assert status.state == "preempted" and status.send_at is None and status.channel is None
    assert [(r.code, r.rule) for r in status.reasons] == [("preempted", "daily"),
                                                         ("deadline_exceeded", "request.deadline")]
    retry = await engine.decide(TENANT, req(message_id="low", priority=2, deadline=deadline))
    assert retry.decision == "suppress" and codes(retry)[0] == "preempted" and retry.replayed


async def test_preemption_needs_a_strictly_lower_priority_not_yet_due(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any]) -> None:
    await set_policy(caps=[{"id": "daily", "limit": 1, "window_minutes": 1440}],
                     quiet_hours=[], **EXACT, **PREEMPT)
    sent = await engine.decide(TENANT, req(message_id="sent", priority=0))
    assert sent.decision == "send"  # due now: never displaced
    high = await engine.decide(TENANT, req(message_id="high", priority=10))
    assert high.decision == "defer" and high.displaced == []
    # an equal priority does not displace either
    clock.advance(DAY + 1)
    await engine.decide(TENANT, req(message_id="x", priority=5,
                                    not_before=dt.datetime.fromtimestamp(
                                        (clock.now_ms() + 2 * DAY) / 1000, dt.UTC)))
    same = await engine.decide(TENANT, req(message_id="y", priority=5))
    assert same.displaced == []


async def test_preemption_is_off_by_default(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any]) -> None:
    await set_policy(caps=[{"id": "daily", "limit": 1, "window_minutes": 1440}], **EXACT)
    clock.value = at(NIGHT)
    await engine.decide(TENANT, req(message_id="low", priority=0))
    high = await engine.decide(TENANT, req(message_id="high", priority=10))
    assert high.send_at == MORNING + dt.timedelta(days=1) and high.displaced == []


async def test_preemption_is_bounded_and_all_or_nothing(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any]) -> None:
    """Freeing 08:00 takes displacing the promotional reservation, but the greedy choice
    (lowest priority first) tries the news one first: with max_displaced 1 nobody is
    displaced (a displacement that does not free the slot would only lose a message); with
    2 the slot frees, and the news reservation it did not need is put back."""
    caps = [{"id": "promo-daily", "limit": 1, "window_minutes": 1440,
             "scope": {"categories": ["promotional"]}},
            {"id": "all-daily", "limit": 2, "window_minutes": 1440}]
    await set_policy(categories=["transactional", "promotional", "news"], caps=caps,
                     preemption={"enabled": True, "max_displaced": 1}, **EXACT)
    clock.value = at(NIGHT)
    promo = await engine.decide(TENANT, req(message_id="promo", priority=2))
    news = await engine.decide(TENANT, req(message_id="news", priority=1, category="news"))
    assert promo.send_at == news.send_at == MORNING
    high = await engine.decide(TENANT, req(message_id="high", priority=9))
    assert high.displaced == [] and high.send_at == MORNING + dt.timedelta(days=1)
    assert set(await _ledger(engine)) == {"promo", "news", "high"}

    await set_policy(version=1, categories=["transactional", "promotional", "news"],
                     caps=caps, preemption={"enabled": True, "max_displaced": 2}, **EXACT)
    top = await engine.decide(TENANT, req(message_id="top", priority=10, user_id="u1",
                                          channels=["sms"]))
    assert top.send_at == MORNING
    assert top.displaced == [promo.decision_id]
    ledger = await _ledger(engine)
    assert ledger["news"] == int(MORNING.timestamp() * 1000)
    # promo moves past both promotional reservations (top, high): 08:00 two days on
    assert ledger["promo"] == int((MORNING + dt.timedelta(days=2)).timestamp() * 1000)
    assert (await engine.status(TENANT, news.decision_id)).state == "defer"


async def test_exempt_reservations_are_never_displaced(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any]) -> None:
    await set_policy(caps=[{"id": "daily", "limit": 1, "window_minutes": 1440}],
                     exempt_count_toward_caps=True, **EXACT, **PREEMPT)
    clock.value = at(NIGHT)
    receipt = await engine.decide(TENANT, req(message_id="receipt", category="transactional",
                                              priority=0, not_before=MORNING))
    assert receipt.send_at == MORNING
    high = await engine.decide(TENANT, req(message_id="high", priority=10))
    assert high.displaced == [] and high.send_at == MORNING + dt.timedelta(days=1)


async def test_dry_run_displaces_nothing(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any]) -> None:
    await set_policy(caps=[{"id": "daily", "limit": 1, "window_minutes": 1440}],
                     **EXACT, **PREEMPT)
    clock.value = at(NIGHT)
    low = await engine.decide(TENANT, req(message_id="low", priority=1))
    probe = await engine.decide(TENANT, req(message_id="high", priority=9, dry_run=True))
    assert probe.displaced == [low.decision_id] and probe.send_at == MORNING  # would displace
    assert (await engine.status(TENANT, low.decision_id)).state == "defer"
    assert set(await _ledger(engine)) == {"low"}


async def test_displaced_decisions_are_logged(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any],
        redis_client: Any) -> None:
    from api.keys import log_bucket, log_key

    await set_policy(caps=[{"id": "daily", "limit": 1, "window_minutes": 1440}],
                     **EXACT, **PREEMPT)
    clock.value = at(NIGHT)
    await engine.decide(TENANT, req(message_id="low", priority=1, campaign_id="spring"))
    await engine.decide(TENANT, req(message_id="high", priority=9))
    rows = [decode_entry(fields) for _, fields in
            await redis_client.xrange(log_key(TENANT, log_bucket("u1")))]
    assert [(r["message_id"], r["decision"]) for r in rows] == [
        ("low", "defer"), ("high", "defer"), ("low", "defer")]
    assert rows[-1]["reason"] == "preempted" and rows[-1]["campaign"] == "spring"
    assert rows[-1]["send_at"] == str(int((MORNING + dt.timedelta(days=1)).timestamp() * 1000))


async def test_concurrent_priorities_keep_the_cap_and_a_consistent_ledger(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any]) -> None:
    """60 simultaneous messages of random priorities for one person, 3 per 24 h, with
    preemption: no 24 h window ever holds more than 3; every live decision is in the
    ledger at its instant, every displaced id is preempted and absent from it."""
    await set_policy(caps=[{"id": "daily", "limit": 3, "window_minutes": 1440}],
                     max_defer_minutes=3 * 1440, **PREEMPT)
    clock.value = at(NIGHT)
    rng = random.Random(11)
    requests = [req(message_id=f"m{i}", priority=rng.randint(0, 10)) for i in range(60)]
    answers = await asyncio.gather(*(engine.decide(TENANT, r) for r in requests))
    ledger = await _ledger(engine)
    times = sorted(ledger.values())
    assert max(sum(1 for t in times if s <= t < s + DAY) for s in times) <= 3
    displaced = {d for a in answers for d in a.displaced}
    assert displaced  # the scenario does exercise preemption
    live = {}
    for request, answer in zip(requests, answers, strict=True):
        status = await engine.status(TENANT, answer.decision_id)
        if answer.decision_id in displaced:  # moved (defer) or suppressed (preempted)
            assert status.reasons[0].code == "preempted"
            assert status.state in ("defer", "preempted")
            assert (request.message_id in ledger) == (status.state == "defer")
        else:
            assert status.state == answer.decision
        if status.state in ("send", "defer"):
            assert status.send_at is not None
            live[request.message_id] = int(status.send_at.timestamp() * 1000)
    assert live == ledger
    # a displaced message lost its slot to a strictly higher priority
    by_id = {a.decision_id: r for r, a in zip(requests, answers, strict=True)}
    for request, answer in zip(requests, answers, strict=True):
        for did in answer.displaced:
            assert by_id[did].priority < request.priority


async def test_the_stored_plan_is_small_and_expires_when_due(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any],
        redis_client: Any) -> None:
    """The memory a deferral costs while it can be displaced (default policy plus
    preemption, two channels): a few hundred bytes, gone once it is due; none at all for
    sends, or without preemption."""
    from api.keys import user_keys

    await set_policy(**PREEMPT)
    clock.value = at(NIGHT)
    await engine.decide(TENANT, req(message_id="now", category="transactional"))
    d = await engine.decide(TENANT, req(message_id="m", channels=["email", "sms"],
                                        campaign_id="spring-sale", tags=["shoes"]))
    keys = user_keys(TENANT, "u1")
    size = await redis_client.strlen(keys.replan_prefix + "m")
    memory = await redis_client.memory_usage(keys.replan_prefix + "m")
    assert 0 < size <= 700 and memory <= 1024, (size, memory)  # measured: 614 B, 704 B
    assert await redis_client.exists(keys.replan_prefix + "now") == 0
    ttl = await redis_client.pttl(keys.replan_prefix + "m")
    assert d.send_at is not None
    assert 0 < ttl <= int(d.send_at.timestamp() * 1000) - clock.now_ms() + 1
    await set_policy()
    await engine.decide(TENANT, req(message_id="off"))
    assert await redis_client.exists(keys.replan_prefix + "off") == 0


async def test_two_displaced_messages_move_in_turn(
        engine: Engine, set_policy: Callable[..., Any]) -> None:
    """The slot at 22:00 on the 11th sits within 24 h of two lower-priority reservations:
    both go, and each is re-decided against the ledger as the previous one left it (the
    first moves behind the new message, the second behind the first)."""
    await set_policy(caps=[{"id": "daily", "limit": 1, "window_minutes": 1440}],
                     quiet_hours=[], **EXACT, **PREEMPT)

    def instant(text: str) -> dt.datetime:
        return dt.datetime.fromisoformat(text)

    low1 = await engine.decide(TENANT, req(message_id="low1", priority=1,
                                           not_before=instant("2026-06-11T10:00:00-04:00")))
    low2 = await engine.decide(TENANT, req(message_id="low2", priority=2,
                                           not_before=instant("2026-06-12T10:00:00-04:00")))
    high = await engine.decide(TENANT, req(message_id="high", priority=9,
                                           not_before=instant("2026-06-11T22:00:00-04:00")))
    assert high.send_at == instant("2026-06-11T22:00:00-04:00")
    assert high.displaced == [low1.decision_id, low2.decision_id]

    def ms(text: str) -> int:
        return int(instant(text).timestamp() * 1000)

    assert await _ledger(engine) == {"high": ms("2026-06-11T22:00:00-04:00"),
                                     "low1": ms("2026-06-12T22:00:00-04:00"),
                                     "low2": ms("2026-06-13T22:00:00-04:00")}
