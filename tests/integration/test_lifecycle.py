"""Merge crash-safety and concurrency against every Redis target (the cluster node rejects
any script whose keys span two slots, so each step is proven single-slot)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api import lifecycle
from api.clock import FixedClock
from api.engine import Engine
from api.errors import ConflictError
from api.keys import user_keys
from api.log_entry import decode_entry
from api.plan import decode_member
from api.redis_client import RedisClient
from api.schemas import (
    ChannelPreference,
    DecisionRequest,
    DecisionResponse,
    FrequencyLimit,
    Preferences,
    QuietHours,
)
from tests.integration.conftest import NOON_NY, TENANT, req

HOUR = 3_600_000


async def _ledger_ids(engine: Engine, user: str) -> list[str]:
    return sorted(decode_member(m)[0] for m, _ in await engine.store.ledger(TENANT, user))


async def _keys_of(redis_client: RedisClient, user: str) -> list[bytes]:
    pattern = user_keys(TENANT, user).pattern
    return sorted([k async for k in redis_client.scan_iter(match=pattern, count=1000)])


async def _seed(engine: Engine, clock: FixedClock) -> None:
    await engine.store.put_preferences(TENANT, "anon", Preferences(
        quiet_hours=[QuietHours(start="02:00", end="03:00")], topic_opt_outs=["x"]))
    for i in range(3):
        await engine.decide(TENANT, req(user_id="anon", message_id=f"a{i}"))
        await engine.decide(TENANT, req(user_id="known", message_id=f"k{i}", channels=["push"]))
        clock.advance(60_000)


async def _interrupted(engine: Engine, clock: FixedClock, *, steps: int) -> None:
    """Run the first ``steps`` steps of a merge of anon into known, then "crash"."""
    store = engine.store
    assert await store.mark_merge(TENANT, "anon", "known") == (True, None)
    if steps >= 2:
        dump = await lifecycle.snapshot(store, TENANT, "anon", clock.now_ms())
        await lifecycle._apply(store, TENANT, dump, "anon", "known", clock.now_ms())


async def test_merge_interrupted_after_the_apply_is_completed_by_a_retry(
        engine: Engine, clock: FixedClock, redis_client: RedisClient) -> None:
    await _seed(engine, clock)
    await _interrupted(engine, clock, steps=2)
    # the crash left the source's copy behind, but the person already decides as one
    assert await _ledger_ids(engine, "anon") == ["a0", "a1", "a2"]
    assert await _ledger_ids(engine, "known") == ["a0", "a1", "a2", "k0", "k1", "k2"]
    r = await engine.decide(TENANT, req(user_id="anon", message_id="a0"))
    assert r.replayed
    before = await engine.store.get_preferences(TENANT, "known")

    moved = await lifecycle.merge(engine.store, TENANT, "anon", "known", clock.now_ms())
    assert (moved.ledger_entries, moved.decisions) == (0, 0)  # all there already
    assert await _ledger_ids(engine, "known") == ["a0", "a1", "a2", "k0", "k1", "k2"]
    after = await engine.store.get_preferences(TENANT, "known")
    assert after.preferences == before.preferences
    assert after.preferences.topic_opt_outs == ["x"]
    assert await _keys_of(redis_client, "anon") == [user_keys(TENANT, "anon").prefs.encode()]
    fields = await engine.store.preference_fields(TENANT, "anon")
    assert set(fields) == {b"rev", b"moved_into"}


async def test_merge_interrupted_after_the_mark_is_completed_by_a_retry(
        engine: Engine, clock: FixedClock) -> None:
    await _seed(engine, clock)
    await _interrupted(engine, clock, steps=1)
    # marked, not copied: the old id's decisions go to the target already
    r = await engine.decide(TENANT, req(user_id="anon", message_id="during"))
    assert r.decision == "defer"  # known's own 3 sends fill the default 3-a-day cap
    assert "during" in await _ledger_ids(engine, "known")
    # a different target is refused while the first merge is unfinished
    with pytest.raises(ConflictError) as refused:
        await lifecycle.merge(engine.store, TENANT, "anon", "elsewhere", clock.now_ms())
    assert refused.value.code == "already_merged"
    moved = await lifecycle.merge(engine.store, TENANT, "anon", "known", clock.now_ms())
    assert (moved.ledger_entries, moved.decisions) == (3, 3)
    assert await _ledger_ids(engine, "known") == ["a0", "a1", "a2", "during", "k0", "k1", "k2"]
    assert await _ledger_ids(engine, "anon") == []


async def test_an_unfinished_merge_completes_after_its_target_moved_on(
        engine: Engine, clock: FixedClock, redis_client: RedisClient) -> None:
    """anon -> known crashed after the apply; known -> person merged since. The retry of
    anon -> known finishes the first merge (into where known went) instead of refusing."""
    await _seed(engine, clock)
    await _interrupted(engine, clock, steps=2)
    await lifecycle.merge(engine.store, TENANT, "known", "person", clock.now_ms())
    await lifecycle.merge(engine.store, TENANT, "anon", "known", clock.now_ms())
    assert await _ledger_ids(engine, "person") == ["a0", "a1", "a2", "k0", "k1", "k2"]
    assert await _keys_of(redis_client, "anon") == [user_keys(TENANT, "anon").prefs.encode()]
    assert await lifecycle.resolve(engine.store, TENANT, "anon") == "person"
    r = await engine.decide(TENANT, req(user_id="anon", message_id="a1"))
    assert r.replayed


async def test_a_preference_change_racing_the_apply_is_merged_not_overwritten(
        engine: Engine, clock: FixedClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The document is merged against the target's revision: a PUT landing between the
    read and the apply makes the apply recompute, so neither side's opt-outs are lost."""
    await engine.store.put_preferences(TENANT, "anon", Preferences(topic_opt_outs=["a"]))
    original = engine.store.apply_merge
    raced: list[bool] = []

    async def apply_after_a_put(*args: Any) -> list[Any]:
        if not raced:
            raced.append(True)
            await engine.store.put_preferences(TENANT, "known", Preferences(topic_opt_outs=["k"]))
        return await original(*args)

    monkeypatch.setattr(engine.store, "apply_merge", apply_after_a_put)
    await lifecycle.merge(engine.store, TENANT, "anon", "known", clock.now_ms())
    stored = await engine.store.get_preferences(TENANT, "known")
    assert stored.preferences.topic_opt_outs == ["k", "a"]


async def test_a_target_merged_away_during_the_merge_refuses_and_unmarks(
        engine: Engine, clock: FixedClock, monkeypatch: pytest.MonkeyPatch) -> None:
    await _seed(engine, clock)
    original = engine.store.apply_merge

    async def target_moves_first(*args: Any) -> list[Any]:
        monkeypatch.setattr(engine.store, "apply_merge", original)
        await lifecycle.merge(engine.store, TENANT, "known", "person", clock.now_ms())
        return await original(*args)

    monkeypatch.setattr(engine.store, "apply_merge", target_moves_first)
    with pytest.raises(ConflictError) as refused:
        await lifecycle.merge(engine.store, TENANT, "anon", "known", clock.now_ms())
    assert refused.value.code == "merge_target_moved"
    assert await engine.store.moved_into(TENANT, "anon") is None  # step 1 undone
    assert await _ledger_ids(engine, "anon") == ["a0", "a1", "a2"]  # nothing moved
    assert await _ledger_ids(engine, "person") == ["k0", "k1", "k2"]
    await lifecycle.merge(engine.store, TENANT, "anon", "known", clock.now_ms())  # a retry
    assert await _ledger_ids(engine, "person") == ["a0", "a1", "a2", "k0", "k1", "k2"]


async def test_ids_with_glob_characters_erase_only_themselves(
        engine: Engine, redis_client: RedisClient) -> None:
    """SCAN MATCH patterns are escaped: erasing ``a*`` or ``a[b]`` never touches ``ab``."""
    users = ["a*", "a?", "a[b]", "a\\", "ab", "a"]
    for user in users:
        await engine.decide(TENANT, req(user_id=user, message_id="m"))
    for user in ["a*", "a?", "a[b]", "a\\"]:
        erased = await lifecycle.erase(engine.store, TENANT, user, engine.clock.now_ms())
        assert (erased.erased.ledger_entries, erased.erased.decisions) == (1, 1), user
        assert await _keys_of(redis_client, user) == []
    for user in ["ab", "a"]:
        assert len(await _keys_of(redis_client, user)) == 2  # ledger and record remain
    keys = [k async for k in redis_client.scan_iter(count=1000)]  # every node
    assert len([k for k in keys if not k.startswith(b"sw:log:")]) == 4
    # the decision log keeps the survivors' entries only
    logged = [decode_entry(fields)["user_id"] for k in keys if k.startswith(b"sw:log:")
              for _, fields in await redis_client.xrange(k)]
    assert sorted(logged) == ["a", "ab"]


async def test_erasing_an_intermediate_id_keeps_older_ids_reaching_the_person(
        engine: Engine, clock: FixedClock) -> None:
    """anon -> mid, then mid -> known: anon's tombstone is re-pointed at known, so erasing
    the alias ``mid`` alone does not cut anon off from the person."""
    first = await engine.decide(TENANT, req(user_id="anon", message_id="a1"))
    await lifecycle.merge(engine.store, TENANT, "anon", "mid", clock.now_ms())
    await lifecycle.merge(engine.store, TENANT, "mid", "known", clock.now_ms())
    assert await engine.store.moved_into(TENANT, "anon") == "known"
    erased = await lifecycle.erase(engine.store, TENANT, "mid", clock.now_ms())
    assert erased.merged_ids == []
    replay = await engine.decide(TENANT, req(user_id="anon", message_id="a1"))
    assert replay.replayed and replay.send_at == first.send_at
    fields = await engine.store.preference_fields(TENANT, "known")
    assert sorted(k for k in fields if k.startswith(b"merged_from:")) == [b"merged_from:anon"]


async def test_decisions_racing_a_merge_are_neither_lost_nor_counted_twice(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any],
        redis_client: RedisClient) -> None:
    """What the merge promises to decisions running at the same time: a source decision
    committed before the mark is copied, one after it is redirected (the commit's revision
    check forces a re-read), so every reservation ends up in the target's ledger exactly
    once and every answer still replays."""
    await set_policy(quiet_hours=[], caps=[], send_time={"exploration_rate": 0.0})
    done, started = asyncio.Event(), asyncio.Event()
    results: list[tuple[DecisionRequest, DecisionResponse]] = []

    async def lane(user: str, name: str) -> None:
        """Decides one new message after another: before, during and after the merge."""
        after_merge, i = 3, 0
        while after_merge:
            if done.is_set():
                after_merge -= 1
            r = req(user_id=user, message_id=f"{name}-{i}")
            i += 1
            results.append((r, await engine.decide(TENANT, r)))
            if len(results) >= 6:
                started.set()

    async def merge_midway() -> lifecycle.MergeMoved:
        await started.wait()
        moved = await lifecycle.merge(engine.store, TENANT, "anon", "known", clock.now_ms())
        done.set()
        return moved

    *_, moved = await asyncio.gather(lane("anon", "a"), lane("anon", "b"), lane("known", "k"),
                                     merge_midway())
    asked_as_anon = sum(r.user_id == "anon" for r, _ in results)
    assert 0 < moved.ledger_entries < asked_as_anon  # some copied, the later ones redirected
    assert all(a.decision == "send" for _, a in results)
    assert await _ledger_ids(engine, "known") == sorted(r.message_id for r, _ in results)
    assert await _keys_of(redis_client, "anon") == [user_keys(TENANT, "anon").prefs.encode()]
    replays = await asyncio.gather(*(engine.decide(TENANT, r) for r, _ in results))
    assert all(a.replayed for a in replays)
    assert [a.send_at for a in replays] == [a.send_at for _, a in results]


async def test_target_decisions_racing_the_apply_see_all_or_nothing(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any]) -> None:
    """Cap 3 per day; the source holds 3. Target decisions racing the merge either ran
    before the atomic apply (and saw an empty ledger) or after it (and saw all 3): so the
    target gets at most 3 sends, and once the merge has returned, nothing more."""
    await set_policy(quiet_hours=[], caps=[{"id": "three", "limit": 3, "window_minutes": 1440}])
    for i in range(3):
        await engine.decide(TENANT, req(user_id="anon", message_id=f"a{i}"))
    deadline = dt.datetime.fromtimestamp((NOON_NY + HOUR) / 1000, dt.UTC)

    async def merge_midway() -> None:
        await asyncio.sleep(0)
        await lifecycle.merge(engine.store, TENANT, "anon", "known", clock.now_ms())

    racing = [engine.decide(TENANT, req(user_id="known", message_id=f"k{i}", deadline=deadline))
              for i in range(20)]
    answers = await asyncio.gather(*racing, merge_midway())
    sent = [a.message_id for a in answers[:-1] if a.decision == "send"]
    assert len(sent) <= 3
    assert await _ledger_ids(engine, "known") == sorted(["a0", "a1", "a2", *sent])
    late = await engine.decide(TENANT, req(user_id="known", message_id="late", deadline=deadline))
    assert late.decision == "suppress"


# ------------------------------------------------- the document merge is a join (pure)

_channel_prefs = st.dictionaries(
    st.sampled_from(["email", "sms", "push", "whatsapp"]),
    st.builds(ChannelPreference, consent=st.sampled_from(["opted_in", "opted_out", "unknown"])),
    max_size=4)
_documents = st.builds(
    Preferences,
    timezone=st.sampled_from([None, "Europe/Paris", "Asia/Tokyo"]),
    country=st.sampled_from([None, "US", "FR"]),
    channels=_channel_prefs,
    frequency_limits=st.lists(st.builds(FrequencyLimit, limit=st.integers(0, 3),
                                        window_minutes=st.sampled_from([60, 1440])), max_size=3),
    quiet_hours=st.lists(st.builds(QuietHours, start=st.sampled_from(["21:00", "12:00"]),
                                   end=st.sampled_from(["08:00", "13:00"])), max_size=2),
    topic_opt_outs=st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=3, unique=True))
_RANK = {"unknown": 0, "opted_in": 1, "opted_out": 2}


@settings(max_examples=200, deadline=None)
@given(target=_documents, source=_documents)
def test_document_merge_is_idempotent_and_most_restrictive(target: Preferences,
                                                           source: Preferences) -> None:
    merged = lifecycle.merge_preferences(target, source)
    assert lifecycle.merge_preferences(merged, source) == merged  # a retry changes nothing
    for channel in ("email", "sms", "push", "whatsapp"):
        ranks = [_RANK[d.channels[channel].consent] for d in (target, source)  # type: ignore[index]
                 if channel in d.channels]
        got = merged.channels.get(channel)  # type: ignore[call-overload]
        assert (got is None) == (not ranks)
        if got is not None:
            assert _RANK[got.consent] == max(ranks)
    for field in ("frequency_limits", "quiet_hours", "topic_opt_outs"):
        every = [*getattr(target, field), *getattr(source, field)]
        assert all(item in getattr(merged, field) for item in every)
        assert all(item in every for item in getattr(merged, field))
    assert merged.timezone == (target.timezone or source.timezone)
