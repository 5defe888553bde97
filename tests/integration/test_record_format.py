"""Idempotency records in context formats 3 to 6 (api/plan.py: encode_context,
encode_context_v4, encode_context_v6): no decision id, message id or user id stored, each
recomputed where the record is read; format 4 also writes the zone, the decision, the
channels and the reason codes as numbers (api/record_codes.py), format 5 the instants
relative and the rules by number, format 6 format 5's values as MessagePack. Golden
values: the records and answers of the previous release (75c4ffc, format 2) and of the
release that wrote format 3 (dadbade) for the same requests at the same instants with the
same id key, so a record either wrote must replay here byte for byte, and
``SENDWISE_RECORD_FORMAT=2`` / ``3`` must write exactly what it wrote (a rolling upgrade,
docs/architecture.md)."""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from api import lifecycle
from api.clock import FixedClock
from api.engine import Engine
from api.keys import user_keys
from api.redis_client import RedisClient
from api.render import record_parts
from api.schemas import Preferences
from api.settings import Settings
from api.store import Store
from tests.conftest import TEST_ID_KEY
from tests.integration.conftest import EXACT, NOON_NY, TENANT, at, req
from tests.integration.test_scoring import evening_events

#: previous release, default policy, NOON_NY: req(message_id="g1")
A_RECORD = (b'1781366400000 {"did":"d_kB8x6hK7mXVaGecNGrDtqcszo3kkDXU","m":"g1","u":"u1",'
            b'"p":"0","z":"America/New_York","n":1781107200000,"f":"c68b976bc7b51a01e4f8",'
            b'"mv":"heuristic-v2","fs":"prior"}\n{"d":"send","ch":"email","t":1781107200000,'
            b'"r":[],"s":[0.089621,0.089621,0.953846]}')
A_ANSWER = (b'{"decision_id":"d_kB8x6hK7mXVaGecNGrDtqcszo3kkDXU","message_id":"g1","decision'
            b'":"send","channel":"email","send_at":"2026-06-10T16:00:00Z","local_send_at":"20'
            b'26-06-10T12:00:00-04:00","timezone":"America/New_York","reasons":[],"policy_ve'
            b'rsion":"0","decided_at":"2026-06-10T16:00:00Z","score":0.089621,"score_now":0.0'
            b'89621,"model_version":"heuristic-v2","features_source":"prior","propensity":0.9'
            b'53846,"dry_run":false,"replayed":false,"cancelled_at":null,"displaced":[]}')
#: previous release, PREEMPTING policy, 23:00 New York: req(user_id="u2", message_id="low",
#: priority=2, channels=["sms"])
B_RECORD = (b'1781438400000 {"did":"d_2n2z1iRmbLwQvEIWh_RhVS7tQiE9Rru2","m":"low","u":"u2",'
            b'"p":"1","z":"America/New_York","n":1781146800000,"f":"80eda42a84c17809313f",'
            b'"mv":"heuristic-v2","fs":"prior"}\n{"d":"defer","ch":"sms","t":1781179200000,'
            b'"r":[["quiet_hours","default-quiet-hours",1781179200000,"sms"]],'
            b'"s":[0.125111,0.125111,1.0]}')
B_ANSWER = (b'{"decision_id":"d_2n2z1iRmbLwQvEIWh_RhVS7tQiE9Rru2","message_id":"low","decisi'
            b'on":"defer","channel":"sms","send_at":"2026-06-11T12:00:00Z","local_send_at":"2'
            b'026-06-11T08:00:00-04:00","timezone":"America/New_York","reasons":[{"code":"qui'
            b'et_hours","rule":"default-quiet-hours","until":"2026-06-11T12:00:00Z","channel"'
            b':"sms"}],"policy_version":"1","decided_at":"2026-06-11T03:00:00Z","score":0.125'
            b'111,"score_now":0.125111,"model_version":"heuristic-v2","features_source":"pri'
            b'or","propensity":1.0,"dry_run":false,"replayed":false,"cancelled_at":null,"dis'
            b'placed":[]}')
#: the same decision as A_RECORD, as dadbade wrote it (format 3)
A3_RECORD = (b'1781366400000 ["uSQ","0","America/New_York",1781107200000,'
             b'"xouXa8e1GgHk-A","heuristic-v2","prior"]\n'
             b'["send","email",1781107200000,[0.089621,0.953846]]')
#: and as format 4 writes it: the instant first; zone, features source, decision and channel
#: as numbers
A4_RECORD = (b'1781366400000 [1781107200000,"uSQ","0",170,"xouXa8e1GgHk-A","heuristic-v2",'
             b'1]\n[0,0,1781107200000,[0.089621,0.953846]]')
PREEMPTING: dict[str, Any] = {"caps": [{"id": "daily", "limit": 1, "window_minutes": 1440}],
                              **EXACT, "preemption": {"enabled": True, "max_displaced": 2}}
LATE = at("2026-06-10T23:00:00-04:00")
#: caps of every kind for the comparison of formats 4 and 5
CAPS_FOR_FORMATS: list[dict[str, Any]] = [
    {"id": "promo-daily", "limit": 2, "window_minutes": 1440,
     "scope": {"categories": ["promotional"]}},
    {"id": "sms-day", "limit": 1, "calendar": "day", "scope": {"channels": ["sms"]}},
    {"id": "all-weekly", "limit": 6, "window_minutes": 10080},
]


def _replayed(answer: bytes) -> bytes:
    return answer.replace(b'"replayed":false', b'"replayed":true')


def _writing(engine: Engine, record_format: int) -> Engine:
    """The same store, clock and policies, writing ``record_format``
    (``SENDWISE_RECORD_FORMAT``)."""
    if record_format == engine.settings.record_format:
        return engine
    old = Engine(engine.store, msgspec.structs.replace(engine.settings,
                                                       record_format=record_format),
                 engine.clock, ids=engine.ids)
    old.policies = engine.policies
    return old


def _v2(engine: Engine) -> Engine:
    return _writing(engine, 2)


def _decoded(part: bytes) -> Any:
    """A context or an outcome: JSON (format 5's outcome after its marker) or MessagePack."""
    if part[:1] in b"[{":
        return json.loads(part)
    if part[:1] == b"5":
        return json.loads(part[1:])
    return msgspec.msgpack.decode(part)


def _context(value: bytes) -> list[Any]:
    """The context of a stored value, decoded (formats 3 to 6: an array)."""
    decoded: list[Any] = _decoded(record_parts(value.partition(b" ")[2])[0])
    return decoded


def _cancelled(value: bytes, at: int) -> bytes:
    """A stored value as cancel.lua leaves it: a third line, or format 6's third element."""
    expiry, _, record = value.partition(b" ")
    if record[:1] == b"\x92":
        return expiry + b" \x93" + record[1:] + msgspec.msgpack.encode(at)
    return value + b"\n" + str(at).encode()


async def _value(redis_client: RedisClient, user: str, mid: str) -> bytes:
    raw = await redis_client.hget(user_keys(TENANT, user).records, mid)
    assert raw is not None
    return bytes(raw)


@pytest.mark.parametrize("record_format", [3, 4])
async def test_formats_3_and_4_store_no_ids_and_answer_as_before(
        engine: Engine, redis_client: RedisClient, record_format: int) -> None:
    engine = _writing(engine, record_format)
    first = await engine.decide(TENANT, req(message_id="g1"))
    assert msgspec.json.encode(first) == A_ANSWER  # the same answer as the previous release
    value = await _value(redis_client, "u1", "g1")
    expiry, _, record = value.partition(b" ")
    assert expiry == A_RECORD.partition(b" ")[0]
    assert record.startswith(b"[") and b"d_" not in record
    assert b'"g1"' not in record and b'"u1"' not in record
    # the same decision as A_RECORD: 268 -> 149 B in format 3 (this test's ids are short),
    # 117 B in format 4; the score note [score, score now, propensity] with score now =
    # score is [score, propensity]. SENDWISE_RECORD_FORMAT=3 writes what dadbade wrote.
    assert value == (A3_RECORD if record_format == 3 else A4_RECORD)
    again = await engine.decide(TENANT, req(message_id="g1"))
    assert msgspec.json.encode(again) == _replayed(A_ANSWER)
    status = await engine.status(TENANT, first.decision_id)
    assert (status.decision_id, status.message_id, status.state) == (
        first.decision_id, "g1", "send")
    timeline = await engine.timeline(TENANT, "u1")
    assert [(e.decision_id, e.decision) for e in timeline.entries] == [
        (first.decision_id, "send")]


async def test_format_2_is_what_the_previous_release_wrote(
        engine: Engine, clock: FixedClock, redis_client: RedisClient,
        set_policy: Callable[..., Any]) -> None:
    old = _v2(engine)
    assert msgspec.json.encode(await old.decide(TENANT, req(message_id="g1"))) == A_ANSWER
    assert await _value(redis_client, "u1", "g1") == A_RECORD
    await set_policy(**PREEMPTING)
    clock.value = LATE
    low = await old.decide(TENANT, req(user_id="u2", message_id="low", priority=2,
                                       channels=["sms"]))
    assert msgspec.json.encode(low) == B_ANSWER
    assert await _value(redis_client, "u2", "low") == B_RECORD


@pytest.mark.parametrize("stored_format", [2, 3, 4, 5, 6])
async def test_a_previous_releases_record_replays_byte_for_byte(
        engine: Engine, clock: FixedClock, redis_client: RedisClient,
        stored_format: int) -> None:
    """A record of each format replays, shows its status, exports and cancels (cancel.lua
    appends in the record's own framing) whatever format this engine writes."""
    stored = {2: A_RECORD, 3: A3_RECORD, 4: A4_RECORD, 5: _as_format_5(A3_RECORD),
              6: _as_format_6(A3_RECORD)}[stored_format]
    keys = user_keys(TENANT, "u1")
    await redis_client.hset(keys.records, "g1", stored)
    await redis_client.zadd(keys.ledger, {b"\x98\xa2g1\xa5email\xabpromotional\xa0\x90\xa0\xa0\x05":
                                          NOON_NY})
    again = await engine.decide(TENANT, req(message_id="g1"))
    assert msgspec.json.encode(again) == _replayed(A_ANSWER)
    did = again.decision_id
    assert (await engine.status(TENANT, did)).state == "send"
    dump = await lifecycle.snapshot(engine.store, TENANT, "u1", clock.now_ms())
    export = lifecycle.render_export(dump, TENANT, "u1", "America/New_York", clock.now_ms(),
                                     engine.ids)
    assert [d.decision_id for d in export.decisions] == [did]
    cancelled = await engine.cancel(TENANT, did)
    assert await _value(redis_client, "u1", "g1") == _cancelled(stored, clock.now_ms())
    status = await engine.status(TENANT, did)
    assert (status.state, status.cancelled_at) == ("cancelled", cancelled.cancelled_at)


@pytest.mark.parametrize("format_of_high", [4, 5, 6])
@pytest.mark.parametrize("format_of_low", [2, 3, 4, 5, 6])
async def test_a_displaced_record_of_any_format_names_its_decision(
        engine: Engine, clock: FixedClock, redis_client: RedisClient,
        set_policy: Callable[..., Any], format_of_low: int, format_of_high: int) -> None:
    await set_policy(**PREEMPTING)
    clock.value = LATE
    writer = _writing(engine, format_of_low)
    engine = _writing(engine, format_of_high)
    low = await writer.decide(TENANT, req(message_id="low", priority=2, channels=["sms"]))
    high = await engine.decide(TENANT, req(message_id="high", priority=8))
    assert high.displaced == [low.decision_id]
    again = await engine.decide(TENANT, req(message_id="high", priority=8))
    assert msgspec.json.encode(msgspec.structs.replace(again, replayed=False)) == \
        msgspec.json.encode(high)
    status = await engine.status(TENANT, low.decision_id)
    assert status.state == "defer" and status.decision_id == low.decision_id
    assert status.send_at == dt.datetime.fromisoformat("2026-06-12T08:00:00-04:00")
    assert status.reasons[0].code == "preempted"
    # the displaced record keeps its context; its new outcome is in format 6 when the
    # record is (MessagePack framing), else in format 5 when the commit that displaced it
    # writes format 5 or 6 (counted from the record's own instant), else in the record's
    # own format
    context, outcome, cancelled = record_parts(
        (await _value(redis_client, "u1", "low")).partition(b" ")[2])
    assert cancelled is None
    assert context.startswith({2: b'{"did":', 3: b'["', 4: b"[1781", 5: b"[1781",
                               6: b"\x97\xcf"}[format_of_low])
    relative = int(status.send_at.timestamp() * 1000) - int(clock.now_ms())
    if format_of_low == 6:
        assert outcome[:1] == b"\x95"
        values = msgspec.msgpack.decode(outcome)
        assert values[:3] == [1, 1, relative] and values[4][0][0] == 20
    elif format_of_high >= 5:
        assert outcome.startswith(b"5[1,1,%d," % relative) and outcome.count(b"[20,") == 1
    else:
        assert outcome.startswith({2: b'{"d":"defer","ch":"sms"', 3: b'["defer","sms"',
                                   4: b"[1,1,", 5: b"[1,1,"}[format_of_low])
        assert b'"preempted"' in outcome if format_of_low < 4 else \
            outcome.count(b"[20,") == 1


@pytest.mark.parametrize("record_format", [3, 4, 6])
async def test_merged_format_3_and_4_records_keep_their_ids(
        engine: Engine, clock: FixedClock, redis_client: RedisClient,
        set_policy: Callable[..., Any], record_format: int) -> None:
    """A format-3 or 4 record leaves its user out: merged into another user's hash it
    must still render the source's decision ids, its own and the ones its outcome
    displaced."""
    engine = _writing(engine, record_format)
    await set_policy(**PREEMPTING)
    clock.value = LATE
    low = await engine.decide(TENANT, req(user_id="anon", message_id="low", priority=2,
                                          channels=["sms"]))
    high = await engine.decide(TENANT, req(user_id="anon", message_id="high", priority=8))
    assert high.displaced == [low.decision_id]
    moved = await lifecycle.merge(engine.store, TENANT, "anon", "known", clock.now_ms())
    assert moved.decisions == 2
    assert _context(await _value(redis_client, "known", "high"))[7] == "anon"
    again = await engine.decide(TENANT, req(user_id="anon", message_id="high", priority=8))
    assert msgspec.json.encode(msgspec.structs.replace(again, replayed=False)) == \
        msgspec.json.encode(high)
    assert (await engine.status(TENANT, low.decision_id)).decision_id == low.decision_id
    dump = await lifecycle.snapshot(engine.store, TENANT, "known", clock.now_ms())
    export = lifecycle.render_export(dump, TENANT, "known", "America/New_York",
                                     clock.now_ms(), engine.ids)
    assert sorted(d.decision_id for d in export.decisions) == sorted(
        [low.decision_id, high.decision_id])
    # a decision for the merged id is made on the target's hash and names its own user
    later = await engine.decide(TENANT, req(user_id="anon", message_id="after", priority=9))
    assert _context(await _value(redis_client, "known", "after"))[7] == "anon"
    assert (await engine.status(TENANT, later.decision_id)).message_id == "after"
    # and the record of a decision for the target itself does not
    own = await engine.decide(TENANT, req(user_id="known", message_id="own", priority=9))
    assert len(_context(await _value(redis_client, "known", "own"))) == 7  # no user
    assert (await engine.status(TENANT, own.decision_id)).message_id == "own"


async def test_engine_of_a_store_settings(redis_client: RedisClient, clock: FixedClock) -> None:
    """``record_format`` comes from the environment: 6 unless set to 2, 3, 4 or 5."""
    assert Settings.from_env({}).record_format == 6
    for older in (2, 3, 4, 5):
        assert Settings.from_env({"SENDWISE_RECORD_FORMAT": str(older)}).record_format == older
    for bad in ("1", "7", "x"):
        with pytest.raises(ValueError, match="SENDWISE_RECORD_FORMAT"):
            Settings.from_env({"SENDWISE_RECORD_FORMAT": bad})
    engine = Engine(Store(redis_client), Settings(redis_url="unused", id_key=TEST_ID_KEY,
                                                  record_format=2), clock)
    await engine.decide(TENANT, req(message_id="g1"))
    assert await _value(redis_client, "u1", "g1") == A_RECORD


async def test_a_scored_deferral_keeps_both_scores(
        engine: Engine, redis_client: RedisClient, set_policy: Callable[..., Any]) -> None:
    """The stored note drops the score now only when it equals the score (commit.lua): a
    deferral to a better send time keeps both, and replays them."""
    await set_policy(quiet_hours=[], send_time={"exploration_rate": 0.0, "spread_minutes": 0})
    await engine.record_events(TENANT, evening_events("u1"))
    first = await engine.decide(TENANT, req(message_id="m1", category="promotional"))
    assert [r.code for r in first.reasons] == ["better_send_time"]
    assert first.score is not None and first.score_now is not None
    assert first.score != first.score_now
    outcome = record_parts((await _value(redis_client, "u1", "m1")).partition(b" ")[2])[1]
    assert outcome[:1] == b"\x95"  # format 6: MessagePack
    note = msgspec.msgpack.decode(outcome)[3]
    assert note == [first.score, first.score_now, first.propensity]
    again = await engine.decide(TENANT, req(message_id="m1", category="promotional"))
    assert msgspec.json.encode(msgspec.structs.replace(again, replayed=False)) == \
        msgspec.json.encode(first)


#: what dadbade (format 3) stored for PREEMPTING at LATE: "low" (priority 2, sms), then
#: "high" (priority 8) displacing it, and the answer to "high"
B3_LOW = (b'1781438400000 ["uSQ","1","America/New_York",1781146800000,"gO2kKoTBeAkxPw",'
          b'"heuristic-v2","prior"]\n["defer","sms",1781179200000,[0.125111,1.0],'
          b'[["quiet_hours","default-quiet-hours",1781179200000,"sms"]]]')
B3_LOW_DISPLACED = (b'1781524800000 ["uSQ","1","America/New_York",1781146800000,'
                    b'"gO2kKoTBeAkxPw","heuristic-v2","prior"]\n["defer","sms",1781265600000,'
                    b'null,[["preempted","daily",null,"sms"],["frequency_cap","daily",'
                    b'1781265600000,"sms"]]]')
B3_HIGH = (b'1781438400000 ["uSQ","1","America/New_York",1781146800000,"byzUln79s91sPg",'
           b'"heuristic-v2","prior"]\n["defer","email",1781179200000,[0.062556,1.0],'
           b'[["quiet_hours","default-quiet-hours",1781179200000,"email"]],[["low","uSQ"]]]')
HIGH_ANSWER = (b'{"decision_id":"d_1s1iYzO4HFTQJ8JvbPYa141S2Gimc80H2w","message_id":"high","de'
               b'cision":"defer","channel":"email","send_at":"2026-06-11T12:00:00Z","local_sen'
               b'd_at":"2026-06-11T08:00:00-04:00","timezone":"America/New_York","reasons":[{"'
               b'code":"quiet_hours","rule":"default-quiet-hours","until":"2026-06-11T12:00:00'
               b'Z","channel":"email"}],"policy_version":"1","decided_at":"2026-06-11T03:00:00'
               b'Z","score":0.062556,"score_now":0.062556,"model_version":"heuristic-v2","feat'
               b'ures_source":"prior","propensity":1.0,"dry_run":false,"replayed":false,"canc'
               b'elled_at":null,"displaced":["d_2n2z1iRmbLwQvEIWh_RhVS7tQiE9Rru2"]}')


def _as_format_4(record: bytes) -> bytes:
    """A format-3 value rewritten as format 4 writes it: the instant first, then the
    zone (170: America/New_York), the features source, the decision, the channels and the
    reason codes as their numbers in api/record_codes.py's lists."""
    expiry, _, rest = record.partition(b" ")
    context, outcome = (json.loads(line) for line in rest.split(b"\n"))
    codes = {"quiet_hours": 3, "frequency_cap": 0, "preempted": 20}
    channels = {"email": 0, "sms": 1}
    context = [context[3], *context[:2], 170, *context[4:6], {"prior": 1}[context[6]],
               *context[7:]]
    outcome[:2] = [{"send": 0, "defer": 1}[outcome[0]], channels[outcome[1]]]
    if len(outcome) > 4:
        outcome[4] = [[codes[c], rule, until, channels[ch]]
                      for c, rule, until, ch in outcome[4]]
    return expiry + b" " + b"\n".join(json.dumps(part, separators=(",", ":")).encode()
                                      for part in (context, outcome))


def _as_format_5(record: bytes) -> bytes:
    """A format-3 value rewritten as format 5 writes it: format 4, and the outcome line
    the byte 5 then its array with the instants counted from the context's (its first
    element) and the rules this release names itself by number (0: the default quiet
    hours; a tenant's cap, "daily", stays a name)."""
    expiry, _, rest = _as_format_4(record).partition(b" ")
    context_line, outcome_line = rest.split(b"\n")
    base = json.loads(context_line)[0]
    outcome = json.loads(outcome_line)
    outcome[2] -= base
    if len(outcome) > 4:
        outcome[4] = [[c, {"default-quiet-hours": 0}.get(rule, rule),
                       None if until is None else until - base, ch]
                      for c, rule, until, ch in outcome[4]]
    return expiry + b" " + context_line + b"\n5" + json.dumps(
        outcome, separators=(",", ":")).encode()


def _lua_number(value: Any) -> Any:
    """A number as commit.lua packs it: Lua has one number type, so a whole number (a
    propensity of 1.0) is written as an integer."""
    if isinstance(value, list):
        return [_lua_number(v) for v in value]
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _as_format_6(record: bytes) -> bytes:
    """A format-3 value rewritten as format 6 writes it: format 5's context and outcome
    values, MessagePack, after the array header of a two-element record (0x92); the
    outcome's score note as commit.lua packs numbers."""
    expiry, _, rest = _as_format_5(record).partition(b" ")
    context_line, outcome_line = rest.split(b"\n")
    outcome = json.loads(outcome_line[1:])
    if len(outcome) > 3 and outcome[3] is not None:
        outcome[3] = _lua_number(outcome[3])
    return (expiry + b" \x92" + msgspec.msgpack.encode(json.loads(context_line))
            + msgspec.msgpack.encode(outcome))


@pytest.mark.parametrize("record_format", [3, 4, 5, 6])
async def test_a_preemption_stores_each_format_and_answers_the_same(
        engine: Engine, clock: FixedClock, redis_client: RedisClient,
        set_policy: Callable[..., Any], record_format: int) -> None:
    """Format 3 is byte for byte what dadbade wrote, through a deferral, a displacement and
    the displaced record's new outcome; formats 4 and 5 hold the same values with their
    numbers; the answers do not depend on the format."""
    engine = _writing(engine, record_format)
    written = {3: lambda r: r, 4: _as_format_4, 5: _as_format_5,
               6: _as_format_6}[record_format]
    await set_policy(**PREEMPTING)
    clock.value = LATE
    await engine.decide(TENANT, req(user_id="u2", message_id="low", priority=2,
                                    channels=["sms"]))
    assert await _value(redis_client, "u2", "low") == written(B3_LOW)
    high = await engine.decide(TENANT, req(user_id="u2", message_id="high", priority=8))
    assert msgspec.json.encode(high) == HIGH_ANSWER
    assert await _value(redis_client, "u2", "low") == written(B3_LOW_DISPLACED)
    assert await _value(redis_client, "u2", "high") == written(B3_HIGH)
    again = await engine.decide(TENANT, req(user_id="u2", message_id="high", priority=8))
    assert msgspec.json.encode(again) == _replayed(HIGH_ANSWER)
    status = await engine.status(TENANT, high.displaced[0])
    assert [r.code for r in status.reasons] == ["preempted", "frequency_cap"]


@pytest.mark.parametrize(("newer", "older"), [(5, 4), (6, 5)])
async def test_a_format_answers_like_the_one_before(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any], newer: int,
        older: int) -> None:
    """The same varied sequence decided twice, once per format, for two tenants with the
    same policy and preferences: caps, preemption (re-decided records), conflicting
    offers, priorities, quiet hours, a preference centre's limits and quiet hours, a
    jurisdiction. Every answer, its replay and every decision's status are the same but
    for the ids, which seal the tenant: format 5's relative instants and rule numbers
    read back as format 4's absolute instants and names, format 6's MessagePack as
    format 5's JSON."""
    five = _writing(engine, newer)
    four = _writing(engine, older)
    other = TENANT + "-4"
    policy = await set_policy(categories=["transactional", "promotional", "news"],
                              caps=CAPS_FOR_FORMATS,
                              preemption={"enabled": True, "max_displaced": 2},
                              conflict_groups=[{"group": "*", "window_minutes": 120}],
                              **EXACT)  # the spread hashes the tenant: none
    four.policies.put(other, await engine.store.put_policy(other, policy, None,
                                                           clock.now_ms()))
    prefs = msgspec.convert({"country": "US", "region": "FL", "timezone": "America/New_York",
                             "frequency_limits": [{"limit": 2, "calendar": "day"}],
                             "quiet_hours": [{"start": "12:00", "end": "13:30"}]},
                            Preferences)
    for tenant in (TENANT, other):
        await engine.store.put_preferences(tenant, "u0", prefs)

    def same(answer: Any, tenant: str) -> dict[str, Any]:
        shown = msgspec.to_builtins(answer)
        for name in ("decision_id",):
            shown[name] = engine.ids.parse_decision_id(tenant, shown[name])
        if "displaced" in shown:
            shown["displaced"] = [engine.ids.parse_decision_id(tenant, d)
                                  for d in shown["displaced"]]
        return shown

    rng = random.Random(5)
    asked: list[Any] = []
    rules: set[str] = set()
    codes: set[str] = set()
    displaced = 0
    for i in range(60):
        offer = {"id": f"o{rng.randrange(3)}", "group": "g"} if rng.random() < 0.2 else None
        request = req(message_id=f"m{i}", user_id=f"u{rng.randrange(3)}",
                      channels=rng.sample(["email", "sms", "push"], rng.randint(1, 3)),
                      category=rng.choice(["promotional", "news", "transactional"]),
                      campaign_id=rng.choice(["c1", None]), priority=rng.randint(0, 10),
                      offer=offer)
        a5, a4 = await five.decide(TENANT, request), await four.decide(other, request)
        assert same(a5, TENANT) == same(a4, other), i
        rules |= {r.rule for r in a5.reasons}
        codes |= {r.code for r in a5.reasons}
        displaced += len(a5.displaced)
        asked.append(request)
        clock.advance(rng.choice([0, 7, 45, 120]) * 60_000)  # within the records' TTL
    for request in asked:
        a5, a4 = await five.decide(TENANT, request), await four.decide(other, request)
        assert a5.replayed and same(a5, TENANT) == same(a4, other)
        s5 = await five.status(TENANT, a5.decision_id)
        s4 = await four.status(other, a4.decision_id)
        assert same(s5, TENANT) == same(s4, other)
    # the sequence reached rules format 5 numbers, rules it keeps as names (a tenant's
    # caps, a conflict group), the outcome commit.lua writes before it evaluates (a
    # duplicate offer) and re-decided records (preemption)
    assert {"default-quiet-hours", "preferences.frequency_limits[0]",
            "preferences.quiet_hours[0]", "us-fl-ftsa@2026.1", "policy.max_defer_minutes",
            "promo-daily", "conflict_group:g"} <= rules
    assert {"duplicate_offer", "conflicting_offer", "jurisdiction_window"} <= codes
    assert displaced > 0


async def test_a_format_6_record_an_older_release_cancelled_reads_as_cancelled(
        engine: Engine, clock: FixedClock, redis_client: RedisClient) -> None:
    """A worker of a release before format 6 cancels any record by appending a line
    ("\\n<ms>", its cancel.lua) after removing the reservation: a format-6 record it
    cancelled during a rolling upgrade reads as cancelled at that instant (status, retry),
    and this release's cancel answers that it already was, writing nothing."""
    first = await engine.decide(TENANT, req(message_id="g1"))
    keys = user_keys(TENANT, "u1")
    value = await _value(redis_client, "u1", "g1")
    assert value.partition(b" ")[2][:1] == b"\x92"
    clock.advance(60_000)
    older = value + b"\n" + str(clock.now_ms()).encode()
    await redis_client.hset(keys.records, "g1", older)
    assert await redis_client.delete(keys.ledger) == 1
    status = await engine.status(TENANT, first.decision_id)
    assert status.state == "cancelled" and status.cancelled_at is not None
    assert int(status.cancelled_at.timestamp() * 1000) == clock.now_ms()
    clock.advance(60_000)
    again = await engine.cancel(TENANT, first.decision_id)
    assert not again.released and again.cancelled_at == status.cancelled_at
    assert await _value(redis_client, "u1", "g1") == older
    replay = await engine.decide(TENANT, req(message_id="g1"))
    assert replay.replayed and replay.cancelled_at == status.cancelled_at
