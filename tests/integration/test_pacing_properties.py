"""Property test of pace.lua against a real Redis and a brute-force reference written from
the definitions in docs/pacing.md (not from the script):

* a shard's count in any aligned second/minute never exceeds its share, and the shares
  sum to the limit, so the tenant's total never exceeds the limit;
* a shard's conversation starts: no half-open 24 h window holds more than its share; a
  recipient with a conversation open at the instant (a start s with s <= t < s + 24 h)
  costs nothing;
* a release (cancel) gives back the rate tokens of a send not yet due;
* the instant granted is feasible and minimal: every instant in [asked, granted) where
  feasibility could change (bucket starts, starts + 24 h, the recipient's own starts, the
  asked instant) is infeasible.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.clock import FixedClock
from api.ids import IdKey
from api.pacing import DAY_MS, Pacer, ShardLimits, limits_for
from api.policy import Policy
from api.redis_client import RedisClient
from api.store import Store
from tests.conftest import TEST_ID_KEY
from tests.integration.conftest import NOON_NY, TENANT

USERS = [f"user-{i}" for i in range(6)]
ADVANCES = [0, 0, 250, 1000, 30_000, 3_600_000, 6 * 3_600_000, 20 * 3_600_000]
OFFSETS = [0, 0, 400, 1500, 61_000, 5 * 3_600_000]


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    limits: dict[str, int] = {}
    if draw(st.booleans()):
        limits["per_second"] = draw(st.integers(1, 4))
    if draw(st.booleans()):
        limits["per_minute"] = draw(st.integers(1, 8))
    if draw(st.booleans()) or not limits:
        limits["unique_recipients_per_24h"] = draw(st.integers(1, 4))
    asks = draw(st.lists(st.tuples(st.sampled_from(USERS), st.sampled_from(ADVANCES),
                                   st.sampled_from(OFFSETS), st.booleans()),
                         min_size=1, max_size=25))
    return {"limits": limits, "shards": draw(st.integers(1, 3)), "asks": asks}


class Shard:
    """The reference state of one shard: its reservations and conversation starts."""

    def __init__(self, limits: ShardLimits) -> None:
        self.limits = limits
        self.sends: list[int] = []
        self.starts: list[tuple[int, str]] = []

    def covered(self, user: str, x: int) -> bool:
        return any(u == user and s <= x < s + DAY_MS for s, u in self.starts)

    def feasible(self, user: str, x: int) -> bool:
        for g, cap, _ in self.limits.rates:
            if sum(1 for t in self.sends if t // g == x // g) >= cap:
                return False
        if self.limits.unique is None or self.covered(user, x):
            return True
        cap = self.limits.unique[1]
        times = sorted([s for s, _ in self.starts] + [x])
        return all(sum(1 for t in times if z <= t < z + DAY_MS) <= cap for z in times)

    def boundaries(self, user: str, lo: int, hi: int) -> set[int]:
        """Every instant in [lo, hi) at which feasibility can switch on."""
        out = {lo}
        for g, _, _ in self.limits.rates:
            out.update(range((lo // g + 1) * g, hi, g) if (hi - lo) // g < 10_000 else [])
        for s, u in self.starts:
            out.add(s + DAY_MS)
            if u == user:
                out.add(s)
        return {b for b in out if lo <= b < hi}

    def record(self, user: str, x: int) -> None:
        self.sends.append(x)
        if self.limits.unique is not None and not self.covered(user, x):
            self.starts.append((x, user))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sc=scenarios())
async def test_pace_script_against_the_reference(redis_client: RedisClient,
                                                 sc: dict[str, Any]) -> None:
    await redis_client.flushdb()
    policy = msgspec.convert({"pacing": {"channels": {"whatsapp": sc["limits"]},
                                         "shards": sc["shards"]}}, Policy)
    pacer = Pacer(Store(redis_client), IdKey(TEST_ID_KEY))
    clock = FixedClock(NOON_NY)
    shards: dict[int, Shard] = {}
    for user, advance, offset, cancel in sc["asks"]:
        clock.advance(advance)
        now = clock.now_ms()
        limits = limits_for(policy, "whatsapp", user)
        assert limits is not None
        shard = shards.setdefault(limits.shard, Shard(limits))
        due_later = [t for t in shard.sends if t > now]
        if cancel and due_later:  # a cancel gives the rate tokens back, not the start
            await pacer.call(TENANT, user, limits, "release", due_later[-1],
                             due_later[-1] + 1, now)
            shard.sends.remove(due_later[-1])
            continue
        asked, end = now + offset, now + offset + 30 * DAY_MS
        reply = await pacer.call(TENANT, user, limits, "reserve", asked, end, now)
        assert reply.status == "ok", (sc, user, asked - NOON_NY, now - NOON_NY, reply)
        assert shard.feasible(user, reply.at), (user, reply.at - asked)
        for b in sorted(shard.boundaries(user, asked, reply.at)):
            assert not shard.feasible(user, b), ("not minimal", b - asked, reply.at - asked)
        shard.record(user, reply.at)

    # the tenant-wide bound: the sum over shards, per aligned bucket, never over the limit
    for name, g in (("per_second", 1000), ("per_minute", 60_000)):
        if name in sc["limits"]:
            per_bucket: dict[int, int] = defaultdict(int)
            for shard in shards.values():
                for t in shard.sends:
                    per_bucket[t // g] += 1
            assert max(per_bucket.values(), default=0) <= sc["limits"][name]
