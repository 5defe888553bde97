"""The recipient-state cache (api/statecache.py) against a real Redis: a recipient decided
again within the TTL costs one round trip, and whatever another worker changed in between
(preferences, opt-outs, conversions, a merge, an erasure) is honoured exactly, because the
commit re-checks the state the cached decision planned with."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator

import msgspec
import pytest

from api.clock import FixedClock
from api.engine import Engine
from api.errors import InvalidRequestError
from api.keys import user_keys
from api.lifecycle import erase, merge
from api.policy import Policy
from api.reasons import ReasonCode
from api.redis_client import RedisClient, make_redis
from api.schemas import DecisionResponse, Event, Preferences
from api.settings import Settings
from api.statecache import StateCache
from api.store import Store
from tests.integration.conftest import NOON_NY, TENANT, req, spy_store

HOUR = 3_600_000


@pytest.fixture
async def pair(redis_client: RedisClient, redis_settings: Settings,
               clock: FixedClock) -> AsyncIterator[list[Engine]]:
    """Two API workers on the same (flushed) Redis, each with its own connections and state
    cache."""
    clients = [make_redis(redis_settings) for _ in range(2)]
    engines = [Engine(Store(c), redis_settings, clock) for c in clients]
    assert all(e.state_cache.enabled for e in engines)  # the default: on
    policy = msgspec.convert({"send_time": {"exploration_rate": 0.0}, "quiet_hours": []},
                             Policy)
    stored = await engines[0].store.put_policy(TENANT, policy, None, clock.now_ms())
    for engine in engines:
        engine.policies.put(TENANT, stored)
    yield engines
    for c in clients:
        await c.aclose()


def _counts(engine: Engine) -> dict[str, float]:
    return {result: engine.metrics.registry.get_sample_value(
                "sendwise_state_cache_total", {"result": result}) or 0.0
            for result in ("hit", "miss", "stale")}


def _codes(answer: DecisionResponse) -> set[str]:
    return {reason.code for reason in answer.reasons}


def _utc(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


async def test_a_recipient_decided_again_costs_one_round_trip(
        pair: list[Engine], monkeypatch: pytest.MonkeyPatch) -> None:
    a = pair[0]
    calls = spy_store(a, monkeypatch)
    first = await a.decide(TENANT, req(message_id="m1"))
    assert calls == ["read_user", "commit"]
    calls.clear()
    second = await a.decide(TENANT, req(message_id="m2"))
    assert calls == ["commit"]
    assert first.decision == "send" and second.decision in ("send", "defer")
    assert _counts(a) == {"hit": 1, "miss": 1, "stale": 0}
    assert len(await a.store.ledger(TENANT, "u1")) == 2


async def test_a_preference_change_by_another_worker_is_honoured(
        pair: list[Engine], monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = pair
    assert (await a.decide(TENANT, req(message_id="m1"))).decision == "send"
    await b.store.put_preferences(TENANT, "u1", msgspec.convert(
        {"channels": {"email": {"consent": "opted_out"}}}, Preferences))
    calls = spy_store(a, monkeypatch)
    answer = await a.decide(TENANT, req(message_id="m2"))
    assert answer.decision == "suppress"
    assert ReasonCode.NO_CONSENT in _codes(answer)
    assert calls == ["commit", "read_user", "commit"]  # the cached attempt went stale
    assert _counts(a) == {"hit": 1, "miss": 1, "stale": 1}


async def test_an_opt_out_event_handled_by_another_worker_is_honoured(
        pair: list[Engine]) -> None:
    a, b = pair
    await a.decide(TENANT, req(message_id="m1"))
    await b.record_events(TENANT, [Event(type="unsubscribed", user_id="u1",
                                         at=_utc(NOON_NY), channel="email")])
    answer = await a.decide(TENANT, req(message_id="m2"))
    assert answer.decision == "suppress"
    assert _counts(a)["stale"] == 1


async def test_a_conversion_by_another_worker_suppresses(pair: list[Engine]) -> None:
    a, b = pair
    await a.decide(TENANT, req(message_id="m1", campaign_id="c1"))
    await b.record_events(TENANT, [Event(type="converted", user_id="u1", at=_utc(NOON_NY),
                                         campaign_id="c1")])
    answer = await a.decide(TENANT, req(message_id="m2", campaign_id="c1"))
    assert answer.decision == "suppress"
    assert ReasonCode.ALREADY_CONVERTED in _codes(answer)


async def test_a_campaign_the_cache_has_not_seen_is_checked_by_the_commit(
        pair: list[Engine], monkeypatch: pytest.MonkeyPatch) -> None:
    """c2 converted before the state was read: nothing changes afterwards (the preferences
    revision stays), but the entry only knows c1. The cached attempt assumes c2 did not
    convert; the commit's conversion check says otherwise, and the re-read suppresses."""
    a, b = pair
    await b.record_events(TENANT, [Event(type="converted", user_id="u1",
                                         at=_utc(NOON_NY - HOUR), campaign_id="c2")])
    await a.decide(TENANT, req(message_id="m1", campaign_id="c1"))
    calls = spy_store(a, monkeypatch)
    answer = await a.decide(TENANT, req(message_id="m2", campaign_id="c2"))
    assert answer.decision == "suppress"
    assert ReasonCode.ALREADY_CONVERTED in _codes(answer)
    assert calls == ["commit", "read_user", "commit"]
    # the entry now knows c2: the next c2 message is one round trip, still suppressed
    calls.clear()
    again = await a.decide(TENANT, req(message_id="m3", campaign_id="c2"))
    assert again.decision == "suppress" and calls == ["commit"]


async def test_an_expired_conversion_no_longer_suppresses(pair: list[Engine],
                                                          redis_client: RedisClient) -> None:
    """The conversions hash expires without touching the preferences: the cached
    "converted" must not outlive it (the commit compares the conversion itself)."""
    a, b = pair
    await b.record_events(TENANT, [Event(type="converted", user_id="u1",
                                         at=_utc(NOON_NY - HOUR), campaign_id="c1")])
    first = await a.decide(TENANT, req(message_id="m1", campaign_id="c1"))
    assert first.decision == "suppress"
    await redis_client.delete(user_keys(TENANT, "u1").conv)  # as its TTL would
    answer = await a.decide(TENANT, req(message_id="m2", campaign_id="c1"))
    assert answer.decision == "send"
    assert _counts(a)["stale"] == 1


async def test_a_merge_by_another_worker_is_followed(pair: list[Engine],
                                                     clock: FixedClock) -> None:
    a, b = pair
    await a.decide(TENANT, req(message_id="m1", user_id="old"))
    await b.store.put_preferences(TENANT, "new", msgspec.convert(
        {"channels": {"push": {"consent": "opted_out"}}}, Preferences))
    await merge(b.store, TENANT, "old", "new", clock.now_ms())
    answer = await a.decide(TENANT, req(message_id="m2", user_id="old",
                                        channels=["push", "email"]))
    assert answer.channel == "email"  # the person's opt-out, found under the new id
    assert [m for m, _ in await a.store.ledger(TENANT, "old")] == []
    assert len(await a.store.ledger(TENANT, "new")) == 2  # m1 moved, m2 reserved there
    # a merged id is never cached: each decision follows the tombstone afresh
    assert (TENANT, "old") not in a.state_cache._entries


async def test_an_erasure_then_the_same_revision_is_not_mistaken_for_the_cached_one(
        pair: list[Engine]) -> None:
    """Erasure deletes the preferences hash, so its revision starts over: one write later
    the revision is the cached one again, with another document. The commit compares the
    whole hash, not just the revision."""
    a, b = pair
    await b.store.put_preferences(TENANT, "u1", msgspec.convert(
        {"channels": {"email": {"consent": "opted_in"}}}, Preferences))
    before = await a.decide(TENANT, req(message_id="m1"))
    assert before.decision == "send"
    rev = (await b.store.get_preferences(TENANT, "u1")).revision
    await erase(b.store, TENANT, "u1", b.clock.now_ms())
    await b.store.put_preferences(TENANT, "u1", msgspec.convert(
        {"channels": {"email": {"consent": "opted_out"}}}, Preferences))
    assert (await b.store.get_preferences(TENANT, "u1")).revision == rev
    answer = await a.decide(TENANT, req(message_id="m2"))
    assert answer.decision == "suppress"
    assert ReasonCode.NO_CONSENT in _codes(answer)


async def test_retries_replay_the_first_answer_from_either_worker(
        pair: list[Engine], monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = pair
    await a.decide(TENANT, req(message_id="m0"))  # u1's state is now cached by a
    first = await a.decide(TENANT, req(message_id="m1"))
    calls = spy_store(a, monkeypatch)
    again = await a.decide(TENANT, req(message_id="m1"))
    assert calls == ["commit"]  # the record check is the commit's first step
    elsewhere = await b.decide(TENANT, req(message_id="m1"))
    dry = await a.decide(TENANT, req(message_id="m1", dry_run=True))
    for answer in (again, elsewhere, dry):
        assert (answer.decision_id, answer.decision, answer.channel, answer.send_at) == (
            first.decision_id, first.decision, first.channel, first.send_at)
    assert dry.dry_run
    assert len(await a.store.ledger(TENANT, "u1")) == 2  # m0 and m1, each once
    with pytest.raises(Exception, match="different message"):
        await a.decide(TENANT, req(message_id="m1", channels=["push"]))


async def test_events_and_preference_writes_on_this_worker_drop_the_entry(
        pair: list[Engine], monkeypatch: pytest.MonkeyPatch) -> None:
    """The profile is the one input the commit does not check: this worker re-reads a
    recipient it saw an event for (other workers' entries age out within the TTL)."""
    a = pair[0]
    await a.decide(TENANT, req(message_id="m1"))
    assert (TENANT, "u1") in a.state_cache._entries
    await a.record_events(TENANT, [Event(type="opened", user_id="u1", at=_utc(NOON_NY),
                                         message_id="m1", channel="email")])
    assert (TENANT, "u1") not in a.state_cache._entries
    calls = spy_store(a, monkeypatch)
    await a.decide(TENANT, req(message_id="m2"))
    assert calls == ["read_user", "commit"]


async def test_a_request_judged_invalid_by_cached_preferences_is_judged_again(
        pair: list[Engine]) -> None:
    """A bare region is checked against the country the recipient resolves to, which can
    come from the stored preferences: an error must never come from a cached state."""
    a, b = pair
    await b.store.put_preferences(TENANT, "u1", msgspec.convert({"country": "FR"},
                                                                Preferences))
    await a.decide(TENANT, req(message_id="m0", timezone=None))
    with pytest.raises(InvalidRequestError):
        await a.decide(TENANT, req(message_id="m1", timezone=None, region="CA"))
    await b.store.put_preferences(TENANT, "u1", msgspec.convert({"country": "US"},
                                                                Preferences))
    answer = await a.decide(TENANT, req(message_id="m2", timezone=None, region="CA"))
    assert answer.decision in ("send", "defer")


async def test_concurrent_decisions_for_one_recipient_never_exceed_a_cap(
        pair: list[Engine], clock: FixedClock) -> None:
    """200 simultaneous messages for one recipient over two cached workers, 5 per 24 h:
    exactly 5 reserved, whatever each worker's cache held (the commit counts the ledger)."""
    policy = msgspec.convert({"send_time": {"exploration_rate": 0.0}, "quiet_hours": [],
                              "caps": [{"id": "five", "limit": 5, "window_minutes": 1440}]},
                             Policy)
    stored = await pair[0].store.put_policy(TENANT, policy, 1, clock.now_ms())
    for engine in pair:
        engine.policies.put(TENANT, stored)
    for engine in pair:  # both workers hold u1's state before the burst
        await engine.decide(TENANT, req(message_id=f"warm-{id(engine)}", dry_run=True))
    deadline = _utc(NOON_NY + HOUR)
    answers = await asyncio.gather(*(
        pair[i % 2].decide(TENANT, req(message_id=f"m{i}", deadline=deadline))
        for i in range(200)))
    assert sum(a.decision == "send" for a in answers) == 5
    assert sum(a.decision == "suppress" for a in answers) == 195
    assert len(await pair[0].store.ledger(TENANT, "u1")) == 5
    assert sum(_counts(e)["hit"] for e in pair) >= 150  # the burst ran on cached state


async def test_off_when_the_ttl_is_zero(redis_client: RedisClient, redis_settings: Settings,
                                        clock: FixedClock,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = msgspec.structs.replace(redis_settings, state_cache_seconds=0.0)
    engine = Engine(Store(redis_client), settings, clock)
    assert not engine.state_cache.enabled
    calls = spy_store(engine, monkeypatch)
    for mid in ("m1", "m2"):
        await engine.decide(TENANT, req(message_id=mid))
    assert calls == ["read_user", "commit"] * 2
    assert _counts(engine) == {"hit": 0, "miss": 0, "stale": 0}
    assert isinstance(engine.state_cache, StateCache) and len(engine.state_cache) == 0


async def test_pacing_running_out_of_rounds_retries_without_blaming_the_cached_state(
        pair: list[Engine], monkeypatch: pytest.MonkeyPatch) -> None:
    """``contended`` (api/pacing.py: its rounds ran out) is contention, not a stale state:
    the engine decides again from a fresh read, counts no ``stale`` and keeps the entry."""
    from api.store import CommitReply

    a = pair[0]
    await a.decide(TENANT, req(message_id="m1"))  # caches u1's state
    real = a.pacing.commit
    answers: list[str] = []

    async def once_contended(*args: object, **kwargs: object) -> CommitReply:
        if not answers:
            answers.append("contended")
            return CommitReply("contended", b"")
        reply = await real(*args, **kwargs)  # type: ignore[arg-type]
        answers.append(reply.status)
        return reply

    monkeypatch.setattr(a.pacing, "commit", once_contended)
    calls = spy_store(a, monkeypatch)
    answer = await a.decide(TENANT, req(message_id="m2"))
    assert answers == ["contended", "new"]
    assert calls == ["read_user", "commit"]  # the retry read afresh, then committed
    assert answer.decision in ("send", "defer")
    assert _counts(a) == {"hit": 1, "miss": 1, "stale": 0}
    assert a.state_cache.get(TENANT, "u1", None) is not None


async def test_an_erasure_by_another_worker_is_never_scored_from_the_cache(
        pair: list[Engine], monkeypatch: pytest.MonkeyPatch) -> None:
    """A recipient without preferences but with a send-time history, cached by ``a``, is
    erased through ``b``: nothing ``a`` cached survives in Redis, so the preferences check
    alone would pass. The commit compares the profile too, so ``a``'s next decision reads
    again and scores from the tenant prior, never from the erased history."""
    a, b = pair
    await b.record_events(TENANT, [Event(type="activity", user_id="u1",
                                         at=_utc(NOON_NY - k * 24 * HOUR - 3 * HOUR))
                                   for k in range(1, 9)])
    first = await a.decide(TENANT, req(message_id="m1"))
    assert first.features_source == "profile"
    await erase(b.store, TENANT, "u1", b.clock.now_ms())
    calls = spy_store(a, monkeypatch)
    answer = await a.decide(TENANT, req(message_id="m2"))
    assert calls == ["commit", "read_user", "commit"]  # stale, then a fresh read
    assert answer.features_source == "prior"
    assert _counts(a)["stale"] == 1
