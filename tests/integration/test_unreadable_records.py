"""A damaged idempotency record where commit.lua and a merge meet it: a preemption still
displaces its reservation (nothing named, nothing failed), and a merge moves it as it is,
still unreadable, still keeping its message from being decided again."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from api import lifecycle
from api.clock import FixedClock
from api.engine import Engine
from api.keys import user_keys
from api.localtime import utc_to_ms
from api.redis_client import RedisClient
from api.render import UnreadableRecordError
from tests.integration.conftest import TENANT, req
from tests.integration.test_record_format import LATE, PREEMPTING, _writing

#: damage to a record (without its expiry), by the record format that wrote it
DAMAGE: list[tuple[int, bytes]] = [(6, b"\x92\xc1"), (6, b"\x92\x01"), (5, b"[17,\n5[0]"),
                                   (5, b'"text"\n5[0]'), (6, b"\x92\x91\xa1x\x90"),
                                   (5, b'["x"]\n5[0]')]
#: a context commit.lua reads (its instant, its key tag) but no reader can render: a zone
#: number no release has (api/record_codes.py)
BAD_ZONE = b"\x92" + msgspec.msgpack.encode(
    [1781146800000, "uSQ", "1", 99_999, "xouXa8e1GgHk-A", "heuristic-v2", 1]) + \
    msgspec.msgpack.encode([1, 1, 0])


async def _damage(redis_client: RedisClient, user: str, mid: str, damaged: bytes) -> bytes:
    key = user_keys(TENANT, user).records
    stored = await redis_client.hget(key, mid)
    assert stored is not None
    value = bytes(stored).partition(b" ")[0] + b" " + damaged
    await redis_client.hset(key, mid, value)
    return value


@pytest.mark.parametrize(("record_format", "damaged"), [*DAMAGE, (6, BAD_ZONE)])
async def test_a_preemption_displaces_a_reservation_whose_record_is_damaged(
        engine: Engine, clock: FixedClock, redis_client: RedisClient,
        set_policy: Callable[..., Any], record_format: int, damaged: bytes) -> None:
    engine = _writing(engine, record_format)
    await set_policy(**PREEMPTING)
    clock.value = LATE
    low = await engine.decide(TENANT, req(user_id="u2", message_id="low", priority=2,
                                          channels=["sms"]))
    assert low.decision == "defer"
    value = await _damage(redis_client, "u2", "low", damaged)
    high = await engine.decide(TENANT, req(user_id="u2", message_id="high", priority=8))
    assert high.decision == "defer" and high.channel == "email"
    # the displaced decision is named when its context still tells its key tag
    assert high.displaced == ([low.decision_id] if damaged == BAD_ZONE else [])
    # moved a day on by the daily cap, as a readable record's reservation is
    ledger = await redis_client.zrange(user_keys(TENANT, "u2").ledger, 0, -1, withscores=True)
    day = 86_400_000
    assert [(b"low" in member, score) for member, score in ledger] == [
        (False, utc_to_ms(high.send_at)), (True, utc_to_ms(high.send_at) + day)]
    stored = await redis_client.hget(user_keys(TENANT, "u2").records, "low")
    if damaged == BAD_ZONE:  # re-decided: the context kept, the new outcome after it
        assert stored is not None and stored.partition(b" ")[2].startswith(damaged[:-4])
        assert stored != value
    else:  # left as it is
        assert stored == value
    with pytest.raises(UnreadableRecordError):
        await engine.status(TENANT, low.decision_id)
    timeline = (await engine.timeline(TENANT, "u2")).entries
    assert [(e.message_id, e.decision) for e in timeline] == [("high", "defer"), ("low", None)]


@pytest.mark.parametrize(("record_format", "damaged"), DAMAGE[:1] + DAMAGE[2:3])
async def test_a_merge_moves_a_damaged_record_as_it_is(
        engine: Engine, clock: FixedClock, redis_client: RedisClient, record_format: int,
        damaged: bytes) -> None:
    engine = _writing(engine, record_format)
    first = await engine.decide(TENANT, req(user_id="anon", message_id="m1"))
    await engine.decide(TENANT, req(user_id="anon", message_id="m2"))
    value = await _damage(redis_client, "anon", "m1", damaged)
    moved = await lifecycle.merge(engine.store, TENANT, "anon", "known", clock.now_ms())
    assert moved.decisions == 2
    assert await redis_client.hget(user_keys(TENANT, "known").records, "m1") == value
    with pytest.raises(UnreadableRecordError) as caught:
        await engine.decide(TENANT, req(user_id="anon", message_id="m1"))
    assert caught.value.field == "message_id"
    with pytest.raises(UnreadableRecordError) as caught:
        await engine.status(TENANT, first.decision_id)
    assert caught.value.field == "decision_id"
    dump = await lifecycle.snapshot(engine.store, TENANT, "known", clock.now_ms())
    export = lifecycle.render_export(dump, TENANT, "known", "America/New_York",
                                     clock.now_ms(), engine.ids)
    assert [d.message_id for d in export.decisions] == ["m2"]
    assert sorted(e.message_id for e in export.ledger) == ["m1", "m2"]


async def test_a_paced_preemption_keeps_the_token_of_a_record_it_cannot_read(
        engine: Engine, clock: FixedClock, redis_client: RedisClient,
        set_policy: Callable[..., Any]) -> None:
    """Channel pacing settles each displaced message's token from its record; one it cannot
    read keeps its token where it was (a conservative error: a token held, never a paced
    send uncounted) and the decision stands."""
    await set_policy(**PREEMPTING, pacing={"channels": {"sms": {"per_minute": 1}}, "shards": 1})
    clock.value = LATE
    low = await engine.decide(TENANT, req(user_id="u2", message_id="low", priority=2,
                                          channels=["sms"]))
    await _damage(redis_client, "u2", "low", BAD_ZONE)
    high = await engine.decide(TENANT, req(user_id="u2", message_id="high", priority=8,
                                           channels=["sms"]))
    assert high.decision == "defer" and high.displaced == [low.decision_id]
    with pytest.raises(UnreadableRecordError):
        await engine.status(TENANT, low.decision_id)
