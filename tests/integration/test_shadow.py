"""Shadow policies (api/shadow.py) against a real Redis: what the shadow would have changed
is counted exactly, and the live answers and ledger are exactly what they would be without
a shadow."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.clock import FixedClock
from api.engine import Engine
from api.keys import shadow_key, user_keys
from api.policy import Policy, validate_policy
from api.policy_cache import PolicyCache
from api.redis_client import RedisClient, make_redis
from api.schemas import DecisionResponse
from api.settings import Settings
from api.shadow import FLUSH_SECONDS, INVALID, ShadowReport, ShadowService, sampled
from api.statecache import StateCache
from api.store import PolicyConflictError, ShadowConflictError, Store
from tests.conftest import TEST_ID_KEY
from tests.integration.conftest import EXACT, NOON_NY, TENANT, deterministic, req, spy_store

HOUR = 3_600_000
#: exact instants (no spread) and no exploration: which messages are sent must not depend
#: on how concurrent decisions interleave
DETERMINISTIC = deterministic(EXACT)
LIVE = {"caps": [{"id": "promo-daily", "limit": 3, "window_minutes": 1440,
                  "scope": {"categories": ["promotional"]}}], **DETERMINISTIC}
STRICTER = {"caps": [{"id": "promo-daily", "limit": 1, "window_minutes": 1440,
                      "scope": {"categories": ["promotional"]}}], **DETERMINISTIC}


def _policy(fields: dict[str, Any]) -> Policy:
    policy = msgspec.convert(fields, Policy)
    validate_policy(policy)
    return policy


async def _live(engine: Engine, tenant: str, fields: dict[str, Any]) -> Policy:
    stored = await engine.store.put_policy(tenant, _policy(fields), None, engine.clock.now_ms())
    engine.policies.put(tenant, stored)
    return stored


async def _shadow(engine: Engine, fields: dict[str, Any], rate: float = 1.0,
                  tenant: str = TENANT) -> int:
    doc = await engine.shadow.install(engine, tenant, _policy(fields), rate, None)
    return doc.version


async def _report(engine: Engine, tenant: str = TENANT) -> ShadowReport:
    report = await engine.shadow.report(engine, tenant)
    assert report is not None
    return report


def _sample(engine: Engine, name: str, labels: dict[str, str]) -> float:
    value = engine.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_a_stricter_cap_counts_sends_that_would_defer(engine: Engine,
                                                            clock: FixedClock) -> None:
    await _live(engine, TENANT, LIVE)
    version = await _shadow(engine, STRICTER)
    answers = [await engine.decide(TENANT, req(message_id=f"m{i}")) for i in range(3)]
    assert [a.decision for a in answers] == ["send"] * 3  # the live policy decides
    assert all(a.policy_version == "1" for a in answers)

    report = await _report(engine)
    assert (report.version, report.installed_at.timestamp() * 1000) == (version, NOON_NY)
    assert (report.evaluated, report.changed, report.decision_changed) == (3, 2, 2)
    assert (report.channel_changed, report.instant_changed, report.errors) == (0, 2, 0)
    assert report.transitions == {"send": {"send": 1, "defer": 2}}
    assert [(r.code, r.decisions) for r in report.reasons_added] == [("frequency_cap", 2)]
    assert report.reasons_removed == []
    # newest first; the shadow defers until the first live send leaves the window
    assert [s.message_id for s in report.samples] == ["m2", "m1"]
    sample = report.samples[0]
    assert sample.decision_id == answers[2].decision_id
    assert (sample.live.decision, sample.shadow.decision) == ("send", "defer")
    assert sample.shadow.send_at is not None
    assert sample.shadow.send_at.timestamp() * 1000 == NOON_NY + 24 * HOUR
    assert sample.shadow.reasons == ["frequency_cap"] and sample.live.reasons == []

    labels = {"tenant": TENANT, "live": "send", "shadow": "defer", "changed": "true"}
    assert _sample(engine, "sendwise_shadow_decisions_total", labels) == 2
    assert _sample(engine, "sendwise_shadow_reasons_total",
                   {"tenant": TENANT, "change": "added", "reason": "frequency_cap"}) == 2


async def test_removed_reasons_and_a_policy_that_would_refuse(engine: Engine) -> None:
    """A laxer shadow removes the live cap's reason; a shadow without the request's
    category would have answered 400 (outcome ``invalid``); the live answer is unchanged."""
    await _live(engine, TENANT, STRICTER)
    await _shadow(engine, LIVE)
    first, second = [await engine.decide(TENANT, req(message_id=m)) for m in ("a", "b")]
    assert (first.decision, second.decision) == ("send", "defer")
    report = await _report(engine)
    assert report.transitions == {"send": {"send": 1}, "defer": {"send": 1}}
    assert [(r.code, r.decisions) for r in report.reasons_removed] == [("frequency_cap", 1)]

    await _shadow(engine, {"categories": ["transactional"], "caps": []})  # a new report
    answer = await engine.decide(TENANT, req(message_id="c"))
    assert answer.decision == "defer"
    report = await _report(engine)
    assert report.evaluated == 1 and report.transitions == {"defer": {INVALID: 1}}
    assert report.samples[0].shadow.decision == INVALID
    assert report.samples[0].shadow.field == "category"  # the field it would refuse
    assert report.reasons_added == report.reasons_removed == []


async def test_replays_and_dry_runs_are_not_evaluated(engine: Engine) -> None:
    await _shadow(engine, STRICTER)
    await engine.decide(TENANT, req(message_id="m1", dry_run=True))
    await engine.decide(TENANT, req(message_id="m1"))
    await engine.decide(TENANT, req(message_id="m1"))  # a retry: the stored answer
    assert (await _report(engine)).evaluated == 1


async def test_one_extra_round_trip_only_with_a_shadow(engine: Engine,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a shadow a decision makes its usual two round trips (read, commit); with
    one, one more: the dry commit (the shadow document is read once per version). The
    recipient-state cache is off here: each decision reads (the cached case is below)."""
    engine.state_cache = StateCache(0, 0)
    calls = spy_store(engine, monkeypatch, ("read_user", "commit", "get_shadow"))
    await engine.decide(TENANT, req(message_id="m1"))
    assert calls == ["read_user", "commit"]
    await _shadow(engine, STRICTER)
    for mid in ("m2", "m3"):
        calls.clear()
        await engine.decide(TENANT, req(message_id=mid))
        assert calls == ["read_user", "commit", "commit"]
    engine.shadow = ShadowService(engine.store, engine.policies)  # a worker that must load it
    calls.clear()
    await engine.decide(TENANT, req(message_id="m4"))
    assert calls == ["read_user", "get_shadow", "commit", "commit"]


async def test_a_cached_recipient_adds_only_the_dry_commit(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the recipient's state cached (api/statecache.py) a decision is one commit, and
    a shadow still adds exactly its dry commit."""
    calls = spy_store(engine, monkeypatch)
    await engine.decide(TENANT, req(message_id="m1"))
    assert calls == ["read_user", "commit"]
    calls.clear()
    await engine.decide(TENANT, req(message_id="m2"))
    assert calls == ["commit"]
    await _shadow(engine, STRICTER)
    calls.clear()
    await engine.decide(TENANT, req(message_id="m3"))
    assert calls == ["commit", "commit"]


async def test_sample_rate_is_deterministic_per_message(engine: Engine) -> None:
    await _shadow(engine, STRICTER, rate=0.25)
    ids = [f"m{i}" for i in range(80)]
    for i, mid in enumerate(ids):
        await engine.decide(TENANT, req(message_id=mid, user_id=f"u{i}"))
    expected = sum(sampled(mid, 0.25) for mid in ids)
    assert 5 < expected < 40  # the hash spreads
    report = await _report(engine)
    assert report.evaluated == expected and report.sample_rate == 0.25


async def test_a_failing_shadow_never_changes_the_live_answer(
        engine: Engine, redis_client: RedisClient) -> None:
    await _shadow(engine, STRICTER)
    engine.shadow = ShadowService(engine.store, engine.policies)  # a worker that must load it
    await redis_client.hset(shadow_key(TENANT), "doc", b"{not json")
    answer = await engine.decide(TENANT, req())
    assert answer.decision == "send"
    assert _sample(engine, "sendwise_shadow_errors_total", {"stage": "evaluate"}) == 1
    report = await _report(engine)
    assert (report.evaluated, report.errors) == (0, 1)


async def test_counts_are_batched_and_a_replaced_shadow_drops_old_counts(
        engine: Engine) -> None:
    """A worker flushes at most every FLUSH_SECONDS (its monotonic clock, moved here by
    hand): what a crash can lose. Counts of a replaced shadow never reach the new report."""
    ticker = [100.0]
    engine.shadow = ShadowService(engine.store, engine.policies, monotonic=lambda: ticker[0])
    await _shadow(engine, STRICTER)
    await engine.decide(TENANT, req(message_id="m1"))
    counts = await engine.store.shadow_counts(TENANT)
    assert counts is not None and counts.counts == {}  # batched in the worker
    ticker[0] += FLUSH_SECONDS
    await engine.decide(TENANT, req(message_id="m2"))
    counts = await engine.store.shadow_counts(TENANT)
    assert counts is not None and counts.counts["total"] == 2  # flushed by this decision

    await engine.decide(TENANT, req(message_id="m3"))  # pending in this worker...
    other = Engine(engine.store, engine.settings, engine.clock)
    await _shadow(other, LIVE)  # ...when another worker installs a new shadow
    await engine.shadow.flush(engine, TENANT)
    assert (await _report(other)).evaluated == 0


async def test_other_workers_see_a_shadow_on_their_policy_check(engine: Engine) -> None:
    ticker = [0.0]
    cache = PolicyCache(engine.store, monotonic=lambda: ticker[0])
    await cache.get(TENANT)
    assert cache.shadow_version(TENANT) == 0
    version = await _shadow(engine, STRICTER)
    await cache.get(TENANT)
    assert cache.shadow_version(TENANT) == 0  # within the refresh interval: unchanged
    ticker[0] += 1.0
    await cache.get(TENANT)  # the usual version check, no extra read
    assert cache.shadow_version(TENANT) == version
    await engine.shadow.remove(TENANT, None)
    ticker[0] += 1.0
    await cache.get(TENANT)
    assert cache.shadow_version(TENANT) == 0


async def test_promote_makes_the_shadow_live_in_one_step(engine: Engine,
                                                         clock: FixedClock) -> None:
    await _live(engine, TENANT, LIVE)
    version = await _shadow(engine, STRICTER)
    await engine.decide(TENANT, req(message_id="m1"))
    with pytest.raises(ShadowConflictError):
        await engine.shadow.promote(engine, TENANT, version + 1, None)
    with pytest.raises(PolicyConflictError):
        await engine.shadow.promote(engine, TENANT, version, 7)
    clock.advance(60_000)
    promoted = await engine.shadow.promote(engine, TENANT, version, 1)
    assert promoted is not None
    assert promoted.policy.version == 2 and promoted.policy.caps[0].limit == 1
    assert promoted.report.evaluated == 1  # the final report travels with the answer
    stored = await engine.store.get_policy(TENANT)
    assert stored == promoted.policy
    assert stored.updated_at is not None and stored.updated_at.timestamp() * 1000 == clock.value
    assert await engine.store.get_shadow(TENANT) is None
    assert await engine.store.shadow_counts(TENANT) is None
    assert await engine.shadow.promote(engine, TENANT, None, None) is None
    # in force at once on this worker: the stricter cap now defers the second message
    answer = await engine.decide(TENANT, req(message_id="m2"))
    assert (answer.policy_version, answer.decision) == ("2", "defer")
    # the shadow's version counter survives it: a new shadow is version 2, not 1 again
    assert await _shadow(engine, LIVE) == version + 1


async def test_concurrent_promotes_promote_once(engine: Engine) -> None:
    await _live(engine, TENANT, LIVE)
    await _shadow(engine, STRICTER)
    results = await asyncio.gather(*(engine.shadow.promote(engine, TENANT, None, None)
                                     for _ in range(10)))
    assert sum(r is not None for r in results) == 1
    stored = await engine.store.get_policy(TENANT)
    assert stored is not None and stored.version == 2


# ------------------------------------------------------------- concurrency


@pytest.fixture
async def workers(redis_settings: Settings, redis_client: RedisClient,
                  clock: FixedClock) -> AsyncIterator[list[Engine]]:
    settings = msgspec.structs.replace(redis_settings, redis_max_connections=16,
                                       id_key=TEST_ID_KEY, log_decisions=False)
    clients = [make_redis(settings) for _ in range(4)]
    yield [Engine(Store(c, max_in_flight=16), settings, clock) for c in clients]
    for c in clients:
        await c.aclose()


async def test_concurrent_decisions_on_many_workers_count_exactly(
        workers: list[Engine]) -> None:
    """200 simultaneous decisions for 10 users over 4 workers: the report counts each
    exactly once, and says what the workers' Prometheus counters say."""
    await _live(workers[0], TENANT, LIVE)
    version = await _shadow(workers[0], STRICTER)
    for w in workers:
        w.policies.put(TENANT, workers[0].policies.peek(TENANT))
        w.policies.put_shadow_version(TENANT, version)
    rng = random.Random(3)
    answers = await asyncio.gather(*(
        rng.choice(workers).decide(TENANT, req(message_id=f"m{i}", user_id=f"u{i % 10}"))
        for i in range(200)))
    assert sum(a.decision == "send" for a in answers) == 30  # 3 per user: the live cap
    for w in workers:
        await w.shadow.flush_all(w)
    report = await _report(workers[0])
    assert report.evaluated == 200
    assert sum(n for row in report.transitions.values() for n in row.values()) == 200
    changed = sum(_sample(w, "sendwise_shadow_decisions_total",
                          {"tenant": TENANT, "live": live, "shadow": shadow, "changed": "true"})
                  for w in workers for live in ("send", "defer", "suppress")
                  for shadow in ("send", "defer", "suppress"))
    assert report.changed == changed > 0
    assert sum(report.transitions["send"].values()) == 30
    assert len(report.samples) == min(20, report.changed)


# ------------------------------------------------------------- the property

ASK = st.tuples(st.integers(0, 9),                          # user
                st.sampled_from(["promotional", "transactional"]),
                st.sampled_from([["email"], ["sms"], ["email", "push"]]),
                st.integers(0, 180))                        # minutes the clock moves first

SHADOWS = [STRICTER,
           {"caps": [], "quiet_hours": []},
           {"caps": [{"id": "all", "limit": 2, "window_minutes": 600}],
            "quiet_hours": [{"id": "day", "start": "09:00", "end": "17:00"}]},
           {"categories": ["transactional"], "caps": []}]


def _public(answer: DecisionResponse) -> dict[str, Any]:
    """An answer without its decision id (sealed per tenant: two tenants never share one)."""
    data: dict[str, Any] = msgspec.to_builtins(answer)
    data.pop("decision_id")
    return data


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(asks=st.lists(ASK, min_size=1, max_size=12), shadow=st.sampled_from(SHADOWS))
async def test_live_outcome_is_identical_with_a_shadow(redis_client: RedisClient,
                                                       asks: list[tuple[int, str, list[str],
                                                                        int]],
                                                       shadow: dict[str, Any]) -> None:
    """The same sequence of decisions for a tenant with a shadow and one without: the same
    answers, byte-identical ledgers and the same keys (the dry commit writes nothing)."""
    await redis_client.flushdb()
    clock = FixedClock(NOON_NY)
    engine = Engine(Store(redis_client), Settings(redis_url="unused", log_decisions=False,
                                                  id_key=TEST_ID_KEY), clock)
    plain, shadowed = "plain", "shadowed"
    for tenant in (plain, shadowed):
        await _live(engine, tenant, LIVE)
    await _shadow(engine, shadow, tenant=shadowed)
    for i, (user, category, channels, advance) in enumerate(asks):
        clock.advance(advance * 60_000)
        request = req(message_id=f"m{i}", user_id=f"u{user}", category=category,
                      channels=channels)
        a, b = [await engine.decide(t, request) for t in (plain, shadowed)]
        assert _public(a) == _public(b)
    for user in {u for u, *_ in asks}:
        ledgers = [await redis_client.zrange(user_keys(t, f"u{user}").ledger, 0, -1,
                                             withscores=True) for t in (plain, shadowed)]
        assert ledgers[0] == ledgers[1]
        keys = [[k.split("}", 1)[1] for k in await engine.store.scan_user(t, f"u{user}")]
                for t in (plain, shadowed)]
        assert keys[0] == keys[1]
    assert (await _report(engine, shadowed)).evaluated == len(asks)
