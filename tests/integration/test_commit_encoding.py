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
from typing import Any

import msgspec
import pytest

import api.plan
from api.clock import FixedClock
from api.engine import Engine
from api.keys import user_keys
from api.plan import Plan
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


async def test_shipped_caps_answer_like_every_cap(engine: Engine, clock: FixedClock,
                                                  set_policy: Callable[..., Any],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    await set_policy(categories=["transactional", "promotional", "news"], caps=CAPS,
                     preemption={"enabled": True, "max_displaced": 2},
                     conflict_groups=[{"group": "*", "window_minutes": 120}])
    plans: list[Plan] = []
    shipped = api.plan._lua_caps

    def recording(plan: Plan) -> list[dict[str, object]]:
        plans.append(plan)
        return shipped(plan)

    monkeypatch.setattr(api.plan, "_lua_caps", recording)
    store = engine.store
    real = store._commit
    compared = filtered_out = 0

    async def checked(*, keys: list[Any], args: list[Any]) -> Any:
        nonlocal compared, filtered_out
        core = msgspec.msgpack.decode(args[0])
        full = dict(core, dry=1, caps=[msgspec.structs.asdict(c) for c in plans[-1].caps])
        lean = dict(core, dry=1)
        filtered_out += len(full["caps"]) - len(lean["caps"])
        answers = [await real(keys=keys, args=[msgspec.msgpack.encode(p), *args[1:]])
                   for p in (full, lean)]
        assert answers[0] == answers[1]
        compared += 1
        return await real(keys=keys, args=args)

    monkeypatch.setattr(store, "_commit", checked)
    rng = random.Random(7)
    for i in range(80):
        offer = ({"id": f"o{rng.randrange(3)}", "group": "g"} if rng.random() < 0.2 else None)
        await engine.decide(TENANT, req(
            message_id=f"m{i}", user_id=f"u{rng.randrange(3)}",
            channels=rng.sample(["email", "sms", "push"], rng.randint(1, 3)),
            category=rng.choice(["promotional", "news", "transactional"]),
            campaign_id=rng.choice(["c1", "c2", None]),
            tags=rng.sample(["a", "b"], rng.randint(0, 2)),
            priority=rng.randint(0, 10), offer=offer))
        clock.advance(rng.choice([0, 7, 45, 300]) * MIN)
    assert compared >= 80 and filtered_out > 0


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
