"""Channel send-rate pacing (docs/pacing.md) against the real Redis fixtures (one node and
the 3-master cluster): deferral to the next instant with capacity, unique recipients,
interaction with the recipient's own rules, dry runs, cancel, and the overshoot bound
under concurrency (measured and printed)."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from api.clock import FixedClock
from api.engine import Engine
from api.errors import ConflictError
from api.ids import IdKey
from api.keys import pace_keys
from api.localtime import utc_to_ms
from api.pacing import (
    DAY_MS,
    MINUTE_MS,
    SECOND_MS,
    Pacer,
    limits_for,
    shard_of,
    token_span,
)
from api.plan import PLAN_FIELDS, PaceExpect, Plan, decode_lua_plan, encode_plan
from api.policy import Policy
from api.redis_client import RedisClient, make_redis
from api.schemas import DecisionResponse
from api.settings import Settings
from api.store import Store
from tests.conftest import TEST_ID_KEY
from tests.integration.conftest import NOON_NY, TENANT, at, deterministic, req

WORKERS = 4


def _ms(value: dt.datetime | None) -> int:
    assert value is not None
    return utc_to_ms(value)


def _pacing_reasons(r: DecisionResponse) -> list[tuple[str, int | None]]:
    return [(x.rule, None if x.until is None else utc_to_ms(x.until))
            for x in r.reasons if x.code == "channel_pacing"]


async def _counted(redis_client: RedisClient, channel: str, shards: int,
                   bucket_ms: int) -> Counter[int]:
    """What the pacing counters hold, summed over shards, per bucket start (ms)."""
    total: Counter[int] = Counter()
    for shard in range(shards):
        fields = await redis_client.hgetall(pace_keys(TENANT, channel, shard).counts)
        for name, count in fields.items():
            g, k = name.decode().split(":")
            if g.isdigit() and int(g) == bucket_ms:  # not the full-run fields lo:/hi:
                total[int(k) * bucket_ms] += int(count)
    return +total


async def test_off_by_default_costs_no_extra_round_trip(engine: Engine,
                                                        set_policy: Callable[..., Any]) -> None:
    await set_policy(pacing={"channels": {"email": {"per_second": 1}}})
    calls: list[int] = []
    commit = engine.store.commit

    async def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return await commit(*args, **kwargs)

    engine.store.commit = counting  # type: ignore[method-assign]
    r = await engine.decide(TENANT, req(channels=["sms"], category="transactional"))
    assert r.decision == "send" and len(calls) == 1  # sms is not paced: the plain commit
    r = await engine.decide(TENANT, req(message_id="m2", channels=["email"],
                                        category="transactional"))
    assert r.decision == "send" and len(calls) == 3  # paced: dry commit + commit


async def test_full_second_defers_to_the_next_second_with_capacity(
        engine: Engine, set_policy: Callable[..., Any], redis_client: RedisClient) -> None:
    await set_policy(pacing={"channels": {"sms": {"per_second": 2}}, "shards": 1})
    answers = [await engine.decide(TENANT, req(message_id=f"m{i}", user_id=f"u{i}",
                                               channels=["sms"])) for i in range(5)]
    assert [a.decision for a in answers] == ["send", "send", "defer", "defer", "defer"]
    assert [_ms(a.send_at) - NOON_NY for a in answers] == [0, 0, 1000, 1000, 2000]
    assert _pacing_reasons(answers[2]) == [("pacing.channels.sms.per_second", NOON_NY + 1000)]
    assert _pacing_reasons(answers[4]) == [("pacing.channels.sms.per_second", NOON_NY + 2000)]
    assert _pacing_reasons(answers[0]) == []
    # the counters hold exactly the decisions: nothing taken twice, nothing leaked
    assert await _counted(redis_client, "sms", 1, SECOND_MS) == {
        NOON_NY: 2, NOON_NY + 1000: 2, NOON_NY + 2000: 1}


async def test_per_minute_and_another_channel_wins(engine: Engine,
                                                   set_policy: Callable[..., Any]) -> None:
    """A full minute on sms defers it to the next minute; with email also requested, the
    earliest allowed instant wins and the reasons say why sms lost."""
    await set_policy(pacing={"channels": {"sms": {"per_minute": 1}}, "shards": 1})
    clock_start = NOON_NY
    first = await engine.decide(TENANT, req(message_id="a", user_id="u1", channels=["sms"]))
    assert first.decision == "send"
    second = await engine.decide(TENANT, req(message_id="b", user_id="u2", channels=["sms"]))
    assert _ms(second.send_at) == clock_start + MINUTE_MS
    both = await engine.decide(TENANT, req(message_id="c", user_id="u3",
                                           channels=["sms", "email"]))
    assert both.decision == "send" and both.channel == "email"
    assert [(x.code, x.channel) for x in both.reasons] == [("channel_pacing", "sms")]


async def test_deferral_respects_the_recipients_quiet_hours(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any],
        redis_client: RedisClient) -> None:
    """The next minute with capacity is 21:00, inside quiet hours: the decision moves to
    08:00 the next day, and the 21:00 token taken on the way is given back (a transactional
    message, exempt from quiet hours, then gets 21:00 exactly)."""
    await set_policy(pacing={"channels": {"sms": {"per_minute": 1}}, "shards": 1},
                     send_time={"spread_minutes": 0})  # the exact instant quiet hours end
    clock.value = at("2026-06-10T20:59:10-04:00")
    a = await engine.decide(TENANT, req(message_id="a", user_id="u1", channels=["sms"]))
    assert a.decision == "send"
    b = await engine.decide(TENANT, req(message_id="b", user_id="u2", channels=["sms"]))
    assert b.send_at == dt.datetime.fromisoformat("2026-06-11T08:00:00-04:00")
    assert {x.code for x in b.reasons} == {"channel_pacing", "quiet_hours"}
    c = await engine.decide(TENANT, req(message_id="c", user_id="u3", channels=["sms"],
                                        category="transactional"))
    assert c.send_at == dt.datetime.fromisoformat("2026-06-10T21:00:00-04:00")
    counted = await _counted(redis_client, "sms", 1, MINUTE_MS)
    assert counted == {at("2026-06-10T20:59:00-04:00"): 1, at("2026-06-10T21:00:00-04:00"): 1,
                       at("2026-06-11T08:00:00-04:00"): 1}


async def test_unique_recipients_per_24h(engine: Engine, clock: FixedClock,
                                         set_policy: Callable[..., Any]) -> None:
    """Two conversations per rolling 24 h: a recipient already in one costs nothing, a third
    recipient waits until the oldest conversation is 24 h old."""
    await set_policy(opt_in_only_channels=[], quiet_hours=[], caps=[],
                     pacing={"channels": {"whatsapp": {"unique_recipients_per_24h": 2}},
                             "shards": 1})
    wa = ["whatsapp"]
    assert (await engine.decide(TENANT, req(message_id="a1", user_id="a", channels=wa))
            ).decision == "send"
    clock.value = NOON_NY + 3_600_000
    assert (await engine.decide(TENANT, req(message_id="b1", user_id="b", channels=wa))
            ).decision == "send"
    clock.value = NOON_NY + 2 * 3_600_000
    again = await engine.decide(TENANT, req(message_id="a2", user_id="a", channels=wa))
    assert again.decision == "send"  # inside a's open conversation: free
    third = await engine.decide(TENANT, req(message_id="c1", user_id="c", channels=wa))
    assert third.decision == "defer" and _ms(third.send_at) == NOON_NY + DAY_MS
    assert _pacing_reasons(third) == [("pacing.channels.whatsapp.unique_recipients_per_24h",
                                       NOON_NY + DAY_MS)]
    # a fourth recipient: a's slot is c's now, b's frees 1 h later
    fourth = await engine.decide(TENANT, req(message_id="d1", user_id="d", channels=wa))
    assert _ms(fourth.send_at) == NOON_NY + DAY_MS + 3_600_000


async def test_dry_runs_never_consume_capacity(engine: Engine,
                                               set_policy: Callable[..., Any]) -> None:
    await set_policy(pacing={"channels": {"sms": {"per_second": 1}}, "shards": 1})
    for i in range(3):
        probe = await engine.decide(TENANT, req(message_id=f"p{i}", user_id=f"p{i}",
                                                channels=["sms"], dry_run=True))
        assert probe.decision == "send" and probe.dry_run
    await engine.decide(TENANT, req(message_id="a", user_id="u1", channels=["sms"]))
    probe = await engine.decide(TENANT, req(message_id="p", user_id="p", channels=["sms"],
                                            dry_run=True))
    assert probe.decision == "defer" and _pacing_reasons(probe)
    b = await engine.decide(TENANT, req(message_id="b", user_id="u2", channels=["sms"]))
    assert _ms(b.send_at) == NOON_NY + 1000  # the probe took nothing


async def test_cancel_gives_back_a_token_not_yet_due(engine: Engine,
                                                     set_policy: Callable[..., Any],
                                                     redis_client: RedisClient) -> None:
    await set_policy(pacing={"channels": {"sms": {"per_second": 1}}, "shards": 1})
    await engine.decide(TENANT, req(message_id="a", user_id="u1", channels=["sms"]))
    b = await engine.decide(TENANT, req(message_id="b", user_id="u2", channels=["sms"]))
    assert _ms(b.send_at) == NOON_NY + 1000
    assert (await engine.cancel(TENANT, b.decision_id)).released
    c = await engine.decide(TENANT, req(message_id="c", user_id="u3", channels=["sms"]))
    assert _ms(c.send_at) == NOON_NY + 1000  # b's token was given back
    await engine.cancel(TENANT, b.decision_id)  # a second cancel releases nothing more
    assert await _counted(redis_client, "sms", 1, SECOND_MS) == {NOON_NY: 1, NOON_NY + 1000: 1}


async def test_redis_down_falls_back(engine: Engine, set_policy: Callable[..., Any]) -> None:
    await set_policy(pacing={"channels": {"sms": {"per_second": 1}}})

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("redis is down")

    engine.pacing.call = down  # type: ignore[method-assign]
    r = await engine.decide(TENANT, req(channels=["sms"]))
    assert [x.code for x in r.reasons] == ["policy_store_unavailable"]


# ------------------------------------------------------------------ the bound, concurrently


@pytest.fixture
async def workers(redis_settings: Settings, clock: FixedClock) -> AsyncIterator[list[Engine]]:
    settings = msgspec.structs.replace(redis_settings, redis_max_connections=16)
    clients = [make_redis(settings) for _ in range(WORKERS)]
    settings = msgspec.structs.replace(settings, id_key=TEST_ID_KEY)
    engines = [Engine(Store(c, max_in_flight=16), settings, clock) for c in clients]
    yield engines
    for c in clients:
        await c.aclose()


async def _set_policy(engines: list[Engine], clock: FixedClock, **fields: Any) -> Policy:
    policy = msgspec.convert(deterministic(fields), Policy)
    stored = await engines[0].store.put_policy(TENANT, policy, None, clock.now_ms())
    for engine in engines:
        engine.policies.put(TENANT, stored)
    return stored


async def test_overshoot_bound_under_concurrent_decisions(
        workers: list[Engine], clock: FixedClock, redis_client: RedisClient) -> None:
    """400 simultaneous decisions for distinct recipients on 4 workers, sms 50 per second
    over 8 shards: no second holds more than 50 sends (the bound: 0 over the limit), every
    send is counted exactly once, and the backlog drains at the full rate."""
    limit, shards, n = 50, 8, 400
    await _set_policy(workers, clock, pacing={"channels": {"sms": {"per_second": limit}},
                                              "shards": shards})
    rng = random.Random(11)
    answers = await asyncio.gather(*(
        rng.choice(workers).decide(TENANT, req(message_id=f"m{i}", user_id=f"user-{i}",
                                               channels=["sms"])) for i in range(n)))
    per_second = Counter((_ms(a.send_at) // 1000) * 1000 for a in answers)
    assert sum(per_second.values()) == n
    overshoot = max(per_second.values()) - limit
    print(f"\npacing overshoot (decisions): max {max(per_second.values())} sends in one second "
          f"for a limit of {limit} over {shards} shards -> overshoot {overshoot}; "
          f"{len(per_second)} seconds for {n} sends")
    assert overshoot <= 0
    assert await _counted(redis_client, "sms", shards, SECOND_MS) == per_second
    # fragmentation costs a little throughput, never correctness: each shard drains at its
    # share, so the backlog needs at most ceil(max shard load / smallest share) seconds
    loads = Counter(shard_of(f"user-{i}", shards) for i in range(n))
    assert len(per_second) <= -(-max(loads.values()) // (limit // shards))


async def test_overshoot_bound_with_thousands_of_concurrent_reserves(
        redis_client: RedisClient, clock: FixedClock) -> None:
    """3000 concurrent pace.lua reservations at one instant, 100 per second over 8 shards
    (12 or 13 each): the sum over shards never exceeds 100 in any second."""
    limit, shards, n = 100, 8, 3000
    policy = msgspec.convert({"pacing": {"channels": {"sms": {"per_second": limit}},
                                         "shards": shards}}, Policy)
    pacer = Pacer(Store(redis_client), IdKey(TEST_ID_KEY))
    now = clock.now_ms()

    async def one(i: int) -> int:
        limits = limits_for(policy, "sms", f"user-{i}")
        assert limits is not None
        reply = await pacer.call(TENANT, f"user-{i}", limits, "reserve", now, now + DAY_MS, now)
        assert reply.status == "ok"
        return reply.at

    granted = await asyncio.gather(*(one(i) for i in range(n)))
    per_second = Counter((t // 1000) * 1000 for t in granted)
    overshoot = max(per_second.values()) - limit
    print(f"\npacing overshoot (raw reserves): {n} concurrent reserves, max "
          f"{max(per_second.values())} in one second for a limit of {limit} -> overshoot "
          f"{overshoot}")
    assert overshoot <= 0 and sum(per_second.values()) == n
    assert await _counted(redis_client, "sms", shards, SECOND_MS) == per_second


async def test_same_recipient_races_never_overshoot(
        workers: list[Engine], clock: FixedClock, redis_client: RedisClient) -> None:
    """Concurrent decisions for the *same* recipients, with a per-user cap that their
    commits race for: a real commit can find the ledger changed since the dry commit pacing
    planned with. commit.lua then writes nothing (``moved``) and pacing reserves where it
    lands: no second ever holds more than the limit, the counters equal the sends, and
    no token leaked. A decision whose rounds all ran out answers a retryable 409
    (counted and printed: it is rare)."""
    limit, users, per_user = 5, 6, 10
    await _set_policy(workers, clock, quiet_hours=[], caps=[
        {"id": "three-an-hour", "limit": 3, "window_minutes": 60}],
        pacing={"channels": {"sms": {"per_second": limit}}, "shards": 2})
    rng = random.Random(5)
    with capture_logs() as logs:
        results = await asyncio.gather(*(
            rng.choice(workers).decide(TENANT, req(message_id=f"m{u}-{k}", user_id=f"u{u}",
                                                   channels=["sms"]))
            for u in range(users) for k in range(per_user)), return_exceptions=True)
    answers = [a for a in results if isinstance(a, DecisionResponse)]
    refused = [e for e in results if not isinstance(e, DecisionResponse)]
    assert all(isinstance(e, ConflictError) and e.code == "concurrent_update"
               for e in refused), refused
    sends = [a for a in answers if a.send_at is not None]
    per_second = Counter((_ms(a.send_at) // 1000) * 1000 for a in sends)
    overshoot = max(per_second.values()) - limit
    print(f"\npacing overshoot (same-recipient races): max {max(per_second.values())} in one "
          f"second for a limit of {limit} -> overshoot {overshoot}; "
          f"{sum(1 for e in logs if e['event'] == 'pacing_rounds_exhausted')} rounds "
          f"exhausted, {len(refused)} retryable 409s of {len(results)}")
    assert overshoot <= 0
    assert await _counted(redis_client, "sms", 2, SECOND_MS) == per_second


async def test_a_scored_slot_that_is_full_yields_to_the_next_best(
        engine: Engine, set_policy: Callable[..., Any], redis_client: RedisClient) -> None:
    """With the model in the loop the commit walks ranked slots: a full second at the best
    slot blocks that slot only, the decision takes the next one the ranking allows, and the
    counters still hold exactly the two sends."""
    from tests.integration.test_scoring import evening_events

    await set_policy(quiet_hours=[], caps=[], send_time={"exploration_rate": 0.0},
                     pacing={"channels": {"sms": {"per_second": 1}}, "shards": 1})
    for user in ("u1", "u2"):
        await engine.record_events(TENANT, evening_events(user))
    first = await engine.decide(TENANT, req(message_id="a", user_id="u1", channels=["sms"]))
    second = await engine.decide(TENANT, req(message_id="b", user_id="u2", channels=["sms"]))
    assert first.score is not None and first.decision == "defer"
    assert _ms(first.send_at) // 1000 != _ms(second.send_at) // 1000
    assert await _counted(redis_client, "sms", 1, SECOND_MS) == Counter(
        (_ms(a.send_at) // 1000) * 1000 for a in (first, second))


async def test_no_capacity_before_the_deadline_suppresses_and_says_why(
        engine: Engine, set_policy: Callable[..., Any]) -> None:
    await set_policy(pacing={"channels": {"sms": {"per_second": 1}}, "shards": 1})
    deadline = dt.datetime.fromtimestamp((NOON_NY + 1500) / 1000, dt.UTC)
    for i in range(2):
        await engine.decide(TENANT, req(message_id=f"m{i}", user_id=f"u{i}", channels=["sms"]))
    late = await engine.decide(TENANT, req(message_id="late", user_id="u9", channels=["sms"],
                                           deadline=deadline))
    assert late.decision == "suppress"
    assert [x.code for x in late.reasons] == ["channel_pacing", "deadline_exceeded"]


async def test_concurrent_retries_of_one_message_take_one_token(
        workers: list[Engine], clock: FixedClock, redis_client: RedisClient) -> None:
    """20 simultaneous copies of one message: one decision, the same answer for all, and
    the tokens every loser held are given back."""
    await _set_policy(workers, clock, pacing={"channels": {"sms": {"per_second": 3}},
                                              "shards": 1})
    answers = await asyncio.gather(*(
        workers[i % WORKERS].decide(TENANT, req(message_id="same", user_id="u1",
                                                channels=["sms"])) for i in range(20)))
    assert len({(a.decision_id, a.send_at) for a in answers}) == 1
    assert await _counted(redis_client, "sms", 1, SECOND_MS) == {NOON_NY: 1}


async def test_a_commit_that_would_land_elsewhere_writes_nothing_and_is_paced_again(
        engine: Engine, set_policy: Callable[..., Any], redis_client: RedisClient) -> None:
    """A deterministic same-recipient race: right after pacing reserved b's instant, another
    decision for the same recipient takes the hourly cap slot. b's real commit would now
    land an hour later, outside its token: commit.lua answers ``moved`` and writes nothing,
    the token goes back, pacing reserves the new instant and the next commit lands there."""
    await set_policy(quiet_hours=[], caps=[{"id": "hourly", "limit": 1, "window_minutes": 60}],
                     pacing={"channels": {"sms": {"per_second": 1}}, "shards": 1},
                     send_time={"spread_minutes": 0})
    call, commit = engine.pacing.call, engine.store.commit
    statuses: list[str] = []
    raced: list[DecisionResponse] = []

    async def racing_call(*args: Any, **kwargs: Any) -> Any:
        reply = await call(*args, **kwargs)
        if not raced and args[3] == "reserve":
            raced.append(await engine.decide(TENANT, req(message_id="a", channels=["email"])))
        return reply

    async def recording(*args: Any, **kwargs: Any) -> Any:
        reply = await commit(*args, **kwargs)
        statuses.append(reply.status)
        return reply

    engine.pacing.call = racing_call  # type: ignore[method-assign]
    engine.store.commit = recording  # type: ignore[method-assign]
    b = await engine.decide(TENANT, req(message_id="b", channels=["sms"]))
    assert raced[0].decision == "send" and raced[0].channel == "email"
    assert "moved" in statuses
    assert b.decision == "defer" and _ms(b.send_at) == NOON_NY + 3_600_000
    # the token taken at noon went back: the counters hold b's instant only
    assert await _counted(redis_client, "sms", 1, SECOND_MS) == {NOON_NY + 3_600_000: 1}


def test_unpaced_plans_do_not_carry_the_expectation() -> None:
    """``Plan.pe`` is encoded only when pacing sets it: unpaced commits pay nothing."""
    plan = msgspec.convert({"now": 0, "rev": "0", "lo": 0, "keep": 0, "ttl": 1,
                            "msg": {"cat": "promotional", "camp": "", "tags": [], "oid": "",
                                    "og": ""}, "caps": [], "cw": 0,
                            "blocks": [], "cands": [], "mode": "earliest",
                            "endr": {"c": "max_defer_exceeded", "r": "x"}, "dry": 0}, Plan)
    assert len(decode_lua_plan(encode_plan(plan)[0])[0]) == PLAN_FIELDS.index("pe")
    paced = msgspec.structs.replace(plan, pe=PaceExpect(["sms"], "sms", 1000, 2000))
    assert decode_lua_plan(encode_plan(paced)[0])[0][PLAN_FIELDS.index("pe")] == [
        ["sms"], "sms", 1000, 2000, {}]


@settings(max_examples=300, deadline=None)
@given(per_second=st.one_of(st.none(), st.integers(1, 100)),
       per_minute=st.one_of(st.none(), st.integers(1, 1000)),
       unique=st.one_of(st.none(), st.integers(1, 100)),
       held=st.integers(0, 10 * MINUTE_MS), offset=st.integers(-2 * MINUTE_MS, 2 * MINUTE_MS))
def test_the_expected_span_is_exactly_what_the_token_covers(
        per_second: int | None, per_minute: int | None, unique: int | None, held: int,
        offset: int) -> None:
    """commit.lua accepts a paced send inside ``token_span`` only; that span must be
    exactly the instants ``same_token`` says the held token covers."""
    if per_second is None and per_minute is None and unique is None:
        per_second = 1
    policy = msgspec.convert({"pacing": {"channels": {"sms": {
        k: v for k, v in (("per_second", per_second), ("per_minute", per_minute),
                          ("unique_recipients_per_24h", unique)) if v is not None}}}}, Policy)
    limits = limits_for(policy, "sms", "u1")
    assert limits is not None
    lo, hi = token_span(limits, held)
    at_ = held + offset
    assert (lo <= at_ < hi) == limits.same_token(held, at_)


async def test_a_shadow_evaluation_never_touches_the_counters(
        engine: Engine, set_policy: Callable[..., Any], redis_client: RedisClient) -> None:
    """A shadow policy is evaluated with a dry commit only (api/shadow.py): it takes no
    token, and its answers do not model pacing (the live decision deferred by a full
    second is a ``send`` in the shadow)."""
    fields = {"pacing": {"channels": {"sms": {"per_second": 1}}, "shards": 1}}
    live = await set_policy(**fields)
    await engine.shadow.install(engine, TENANT, msgspec.structs.replace(live, version=0), 1.0,
                                None)
    answers = [await engine.decide(TENANT, req(message_id=f"m{i}", user_id=f"u{i}",
                                               channels=["sms"])) for i in range(2)]
    assert [a.decision for a in answers] == ["send", "defer"]
    assert await _counted(redis_client, "sms", 1, SECOND_MS) == {NOON_NY: 1, NOON_NY + 1000: 1}
    report = await engine.shadow.report(engine, TENANT)
    assert report is not None and report.evaluated == 2
    assert report.transitions == {"send": {"send": 1}, "defer": {"send": 1}}
