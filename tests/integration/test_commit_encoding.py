"""commit.lua's cheaper paths change no answer (docs/benchmarks.md, "Redis CPU per
decision: commit.lua").

The plan encode_plan ships leaves out the caps that cannot match the message (and empty
scope lists): every commit of a varied sequence is first run dry twice against the same
real ledger, once with the shipped caps and once with every compiled cap in full (the
encoding before), and the two outcomes must be byte-identical; then the real commit runs,
so the ledgers later decisions meet hold sends, deferrals, preemptions and calendar-day
buckets. The ledger trim now runs only when the commit saw a member old enough to trim."""

from __future__ import annotations

import random
from collections.abc import Callable
from importlib import resources
from typing import Any

import msgspec
import pytest

import api.plan
from api.clock import FixedClock
from api.engine import Engine
from api.keys import user_keys
from api.plan import CompiledCap, Plan, decode_member, lua_plan
from tests.integration.conftest import TENANT, req

MIN = 60_000
CAPS: list[dict[str, Any]] = [
    {"id": "promo-daily", "limit": 2, "window_minutes": 1440,
     "scope": {"categories": ["promotional"]}},
    {"id": "sms-day", "limit": 1, "calendar": "day", "scope": {"channels": ["sms"]}},
    {"id": "c1-hourly", "limit": 1, "window_minutes": 60, "scope": {"campaigns": ["c1"]}},
    {"id": "tag-a", "limit": 2, "window_minutes": 720, "scope": {"tags": ["a"]}},
    {"id": "push-news", "limit": 1, "window_minutes": 240,
     "scope": {"channels": ["push"], "categories": ["news"]}},
    {"id": "all-weekly", "limit": 6, "window_minutes": 10080},
]


#: encode_plan's cap filter as imported (the tests put a recording wrapper in its place)
SHIPPED = api.plan._lua_caps


def _record_plans(monkeypatch: pytest.MonkeyPatch) -> list[Plan]:
    """Every plan the engine encodes from now on, in order: the last is the one whose
    commit is running."""
    plans: list[Plan] = []

    def recording(plan: Plan) -> list[CompiledCap]:
        plans.append(plan)
        return SHIPPED(plan)

    monkeypatch.setattr(api.plan, "_lua_caps", recording)
    return plans


async def _decide_at_random(engine: Engine, clock: FixedClock, *, seed: int, count: int,
                            users: int, categories: list[str], offer_share: float,
                            steps_minutes: list[int], priorities: bool = False,
                            long_ids: bool = False) -> None:
    """A varied sequence of decisions for a few recipients while the clock advances."""
    rng = random.Random(seed)
    for i in range(count):
        offer = ({"id": f"o{rng.randrange(3)}", "group": "g"} if rng.random() < offer_share
                 else None)
        # drawn in this order, so a seed keeps giving the same sequence
        fields: dict[str, Any] = {
            "message_id": f"m{i}" + ("-" * rng.choice([0, 40]) if long_ids else ""),
            "user_id": f"u{rng.randrange(users)}",
            "channels": rng.sample(["email", "sms", "push"], rng.randint(1, 3)),
            "category": rng.choice(categories),
            "campaign_id": rng.choice(["c1", "c2", None]),
            "tags": rng.sample(["a", "b"], rng.randint(0, 2))}
        if priorities:
            fields["priority"] = rng.randint(0, 10)
        await engine.decide(TENANT, req(**fields, offer=offer))
        clock.advance(rng.choice(steps_minutes) * MIN)


async def test_shipped_caps_answer_like_every_cap(engine: Engine, clock: FixedClock,
                                                  set_policy: Callable[..., Any],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    await set_policy(categories=["transactional", "promotional", "news"], caps=CAPS,
                     preemption={"enabled": True, "max_displaced": 2},
                     conflict_groups=[{"group": "*", "window_minutes": 120}])
    plans = _record_plans(monkeypatch)
    store = engine.store
    real = store._commit
    compared = filtered_out = 0

    async def checked(*, keys: list[Any], args: list[Any]) -> Any:
        nonlocal compared, filtered_out
        plan = msgspec.structs.replace(plans[-1], dry=1)
        lean_caps = SHIPPED(plan)
        filtered_out += len(plan.caps) - len(lean_caps)
        answers = [await real(keys=keys, args=[lua_plan(plan, caps), *args[1:]])
                   for caps in (plan.caps, lean_caps)]
        assert answers[0] == answers[1]
        compared += 1
        return await real(keys=keys, args=args)

    monkeypatch.setattr(store, "_commit", checked)
    await _decide_at_random(engine, clock, seed=7, count=80, users=3,
                            categories=["promotional", "news", "transactional"],
                            offer_share=0.2, steps_minutes=[0, 7, 45, 300], priorities=True)
    assert compared >= 80 and filtered_out > 0


@pytest.mark.parametrize("exempt_counted", [False, True])
async def test_skimmed_ledgers_answer_like_fully_decoded_ones(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any],
        monkeypatch: pytest.MonkeyPatch, exempt_counted: bool) -> None:
    """A ledger over commit.lua's SKIM_FROM entries is skimmed (docs/benchmarks.md,
    "commit.lua on long ledgers"): every commit of a sequence that gives two recipients
    long ledgers, mostly transactional, is first run dry by the script and by a copy of it
    that never skims, and the two answers must be byte-identical; then the real commit
    runs. Offers (a conflict window: no skim) and ids packed as fixstr and str8 mixed in."""
    await set_policy(categories=["transactional", "promotional", "news"], caps=CAPS,
                     exempt_count_toward_caps=exempt_counted,
                     conflict_groups=[{"group": "*", "window_minutes": 120}])
    plans = _record_plans(monkeypatch)
    store = engine.store
    real = store._commit
    source = resources.files("api").joinpath("lua", "commit.lua").read_text(encoding="utf-8")
    assert source.count("local SKIM_FROM = 8\n") == 1
    never = store.client.register_script(source.replace("local SKIM_FROM = 8\n",
                                                        "local SKIM_FROM = 1e9\n"))
    compared = long_ledgers = 0

    async def checked(*, keys: list[Any], args: list[Any]) -> Any:
        nonlocal compared, long_ledgers
        plan = msgspec.structs.replace(plans[-1], dry=1)
        dry = [lua_plan(plan, SHIPPED(plan)), *args[1:]]
        skimmed = await real(keys=keys, args=dry)
        decoded = await never(keys=keys, args=dry)
        assert skimmed == decoded
        compared += 1
        long_ledgers += await store.client.zcard(keys[0]) > 8
        return await real(keys=keys, args=args)

    monkeypatch.setattr(store, "_commit", checked)
    await _decide_at_random(engine, clock, seed=11, count=120, users=2,
                            categories=["transactional"] * 3 + ["promotional", "news"],
                            offer_share=0.15, steps_minutes=[0, 7, 45], long_ids=True)
    assert compared >= 120 and long_ledgers > 60


def _ids(entries: list[tuple[bytes, float]]) -> list[str]:
    return [msgspec.msgpack.decode(member)[0] for member, _ in entries]


async def test_trim_only_when_stale_and_aged_out_members_count_for_nothing(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any]) -> None:
    """commit.lua reads the ledger from -inf to learn whether the trim has anything to
    remove: a member older than the longest window (8 days here) still counts for nothing,
    not even as the same message, and the next reserving commit removes it."""
    await set_policy()
    store = engine.store
    first = await engine.decide(TENANT, req(message_id="m1"))
    assert first.decision == "send"
    clock.advance(9 * 24 * 60 * MIN)
    # its record gone (as after its TTL): the aged-out member is not "the same message"
    await store.client.delete(user_keys(TENANT, "u1").records)
    again = await engine.decide(TENANT, req(message_id="m1", dry_run=True))
    assert not again.replayed and again.decision == "send"
    assert _ids(await store.ledger(TENANT, "u1")) == ["m1"]  # dry: nothing written
    await engine.decide(TENANT, req(message_id="m2"))
    assert _ids(await store.ledger(TENANT, "u1")) == ["m2"]  # trimmed by a reservation
    await engine.decide(TENANT, req(message_id="m3"))
    assert _ids(await store.ledger(TENANT, "u1")) == ["m2", "m3"]  # nothing stale: kept


#: Rewrites a stored re-decision plan (``sw:{t:u}:rp:<id>``) into the layout commit.lua
#: wrote before the positional one: maps, each block's intervals as [start, end] pairs, a
#: cap without its empty scope lists. Done in Redis' own Lua because the members inside
#: are binary strings that MessagePack tools outside it read as (invalid) text.
TO_V1 = """
local R = cmsgpack.unpack(redis.call('GET', KEYS[1]))
assert(R[1] == 2, 'not the positional layout')
local c, b, k = {}, {}, {}
for i, x in ipairs(R[2]) do c[i] = {ch = x[1], a = x[2], b = x[3], pb = x[4]} end
for i, blk in ipairs(R[3]) do
  local iv = {}
  for j = 1, #blk[3], 2 do iv[#iv + 1] = {blk[3][j], blk[3][j + 1]} end
  b[i] = {c = blk[1], r = blk[2], iv = iv}
end
local names = {'id', 'code', 'n', 'w', 'b', 'ch', 'cat', 'xcat', 'camp', 'tag'}
for i, cap in ipairs(R[4]) do
  local m = {}
  for j, name in ipairs(names) do
    if cap[j] ~= nil then m[name] = cap[j] end
  end
  k[i] = m
end
local m = R[6]
redis.call('SET', KEYS[1], cmsgpack.pack({
  c = c, b = b, k = k, w = R[5],
  m = {cat = m[1], camp = m[2], tags = m[3], oid = m[4], og = m[5], pr = m[6]},
  e = {c = R[7][1], r = R[7][2]}, s = R[8], mem = R[9]}), 'KEEPTTL')
return 1
"""


async def test_stored_plans_of_the_old_layout_are_still_read(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any],
        redis_client: Any) -> None:
    """Re-decision plans outlive a deploy: a deferral stored by the commit.lua before the
    positional layout is re-decided exactly like one stored by the current one. The same
    sequence runs for two recipients, the second one's stored plans rewritten into the
    old layout before the preempting decision; the displaced messages land on the same
    instants with the same reasons (quiet hours, a conflict group, a cap scoped by
    channel and campaign, two candidate channels)."""
    await set_policy(caps=[{"id": "daily", "limit": 1, "window_minutes": 1440},
                           {"id": "sms-c1", "limit": 1, "window_minutes": 2880,
                            "scope": {"channels": ["sms"], "campaigns": ["c1"]}}],
                     preemption={"enabled": True, "max_displaced": 2},
                     conflict_groups=[{"group": "*", "window_minutes": 120}],
                     send_time={"spread_minutes": 30})
    night = 1_781_146_800_000  # 2026-06-10T23:00:00-04:00: promotional mail waits for 08:00
    outcomes: list[list[Any]] = []
    for user, old_layout in (("u-new", False), ("u-old", True)):
        clock.value = night
        lows = [await engine.decide(TENANT, req(
            message_id=f"low{i}", user_id=user, priority=i + 1, channels=["email", "sms"],
            campaign_id="c1", offer={"id": f"o{i}", "group": "g"})) for i in range(2)]
        keys = user_keys(TENANT, user)
        for i in range(2):
            stored = keys.replan_prefix + f"low{i}"
            assert await redis_client.exists(stored)
            if old_layout:
                await redis_client.eval(TO_V1, 1, stored)
                head = (await redis_client.get(stored))[:1]
                assert 0x80 <= head[0] <= 0x8F  # a fixmap: the old layout
        high = await engine.decide(TENANT, req(message_id="high", user_id=user, priority=9,
                                               channels=["email"]))
        assert len(high.displaced) >= 1
        statuses = [await engine.status(TENANT, low.decision_id) for low in lows]
        outcomes.append([
            [(s.state, s.channel, s.send_at, [(r.code, r.rule, r.until) for r in s.reasons])
             for s in statuses],
            sorted((decode_member(m)[0], s) for m, s in await engine.store.ledger(TENANT, user))])
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0][0][3][0][0] == "preempted"
