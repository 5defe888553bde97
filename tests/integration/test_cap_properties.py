"""Property tests of the decision core against a real Redis (invariants 1 and 3 of docs/architecture.md).

Hypothesis draws a policy (1-3 cap rules: rolling windows in whole minutes or a local
calendar day, scoped by channel/category/campaign/tag), quiet hours (off or a random
wall-clock window, optionally per channel), optionally a Florida recipient (the built-in
FTSA + TCPA packs), and a sequence of decisions while the clock advances by whole minutes.

Every answer is then checked against a pure-Python reference written from the definitions
in docs/architecture.md, not from api/ code:

* caps hold exactly: every half-open window of length W holds <= limit counted sends
  (brute force over windows starting at each entry), every local day <= limit;
* a send happens at ``decided_at``;
* a deferred ``send_at`` is feasible and minimal: every earlier whole minute is infeasible
  on every requested channel (and earlier-listed channels are infeasible at ``send_at``);
* a suppression only when no whole minute up to the deadline/horizon is feasible.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.clock import FixedClock
from api.engine import Engine
from api.plan import decode_member
from api.policy import Policy, validate_policy
from api.redis_client import RedisClient
from api.settings import Settings
from api.store import Store
from tests.conftest import TEST_ID_KEY
from tests.integration.conftest import TENANT, req

MIN = 60_000
CHANNELS = ["email", "sms", "push"]
CATEGORIES = ["promotional", "news", "transactional"]
EXEMPT = {"transactional"}
TAGS = ["a", "b", "c"]
CAMPAIGNS = ["c1", "c2"]
ZONES = ["America/New_York", "Europe/Berlin", "Asia/Kolkata", "Australia/Lord_Howe",
         "America/St_Johns"]


def _ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).timestamp() * 1000)


#: ordinary days and the evenings before DST transitions (US, EU, Lord Howe)
STARTS = [_ms("2026-06-10T16:00:00+00:00"), _ms("2026-03-07T22:00:00+00:00"),
          _ms("2026-10-31T22:00:00+00:00"), _ms("2026-03-28T18:00:00+00:00"),
          _ms("2026-10-24T18:00:00+00:00"), _ms("2026-04-04T09:00:00+00:00")]


# ---------------------------------------------------------------------------- reference


@dataclass(frozen=True)
class Rule:
    """A cap as the reference sees it: a filter plus either a rolling window or a day."""

    id: str
    limit: int
    window_ms: int | None  # None: calendar day in the recipient's zone
    channels: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()
    campaigns: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Quiet:
    start: int  # wall minute of day, inclusive
    end: int  # exclusive; end <= start wraps midnight
    channels: frozenset[str] = frozenset()  # empty: every channel

    def covers(self, wall_minute: int) -> bool:
        if self.start < self.end:
            return self.start <= wall_minute < self.end
        return wall_minute >= self.start or wall_minute < self.end


@dataclass(frozen=True)
class Sent:
    t: int
    ch: str
    cat: str
    camp: str | None
    tags: tuple[str, ...]


@dataclass(frozen=True)
class Ask:
    advance: int  # minutes the clock moves before this decision
    channels: tuple[str, ...]
    cat: str
    camp: str | None
    tags: tuple[str, ...]
    deadline: int | None  # minutes after now
    not_before: int | None  # minutes after now


@dataclass
class World:
    zone: ZoneInfo
    rules: list[Rule]
    quiet: list[Quiet]
    max_defer: int  # minutes
    ledger: list[Sent] = field(default_factory=list)


def counts(rule: Rule, e: Sent) -> bool:
    """Whether a committed send counts toward ``rule`` (exempt categories never count)."""
    return (e.cat not in EXEMPT
            and (not rule.channels or e.ch in rule.channels)
            and (not rule.categories or e.cat in rule.categories)
            and (not rule.campaigns or e.camp in rule.campaigns)
            and (not rule.tags or bool(rule.tags & set(e.tags))))


def local(world: World, t: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(t / 1000, world.zone)


def caps_hold(world: World, entries: list[Sent]) -> list[str]:
    """Invariant 1 by brute force: the violations (empty when the caps hold)."""
    bad = []
    for rule in world.rules:
        times = sorted(e.t for e in entries if counts(rule, e))
        if rule.window_ms is not None:
            for s in times:  # the fullest window starts at an entry
                n = sum(1 for t in times if s <= t < s + rule.window_ms)
                if n > rule.limit:
                    bad.append(f"{rule.id}: {n} sends in [{s}, {s + rule.window_ms})")
        else:
            per_day = Counter(local(world, t).date() for t in times)
            bad.extend(f"{rule.id}: {n} sends on {day}" for day, n in per_day.items()
                       if n > rule.limit)
    return bad


class Feasibility:
    """Is a send of one message at minute m on channel c allowed, given the ledger so far?

    Windows that do not contain m are unchanged by adding m (and hold, checked by
    ``caps_hold``), so only the windows containing m are counted.
    """

    def __init__(self, world: World, ask: Ask, now: int) -> None:
        self.world = world
        self.ask = ask
        self.exempt = ask.cat in EXEMPT
        self.nb = None if ask.not_before is None else now + ask.not_before * MIN
        self.rolling: dict[str, list[tuple[int, int, list[int]]]] = {}
        self.daily: dict[str, list[tuple[int, Counter[dt.date]]]] = {}
        for ch in ask.channels:
            probe = Sent(0, ch, ask.cat, ask.camp, ask.tags)
            self.rolling[ch], self.daily[ch] = [], []
            if self.exempt:
                continue
            for rule in world.rules:
                if not counts(rule, probe):
                    continue
                times = sorted(e.t for e in world.ledger if counts(rule, e))
                if rule.window_ms is not None:
                    self.rolling[ch].append((rule.limit, rule.window_ms, times))
                else:
                    self.daily[ch].append(
                        (rule.limit, Counter(local(world, t).date() for t in times)))

    def allowed(self, m: int, ch: str, wall: dt.datetime) -> bool:
        if self.nb is not None and m < self.nb:
            return False
        if self.exempt:
            return True
        minute = wall.hour * 60 + wall.minute
        for q in self.world.quiet:
            if (not q.channels or ch in q.channels) and q.covers(minute):
                return False
        for limit, w, times in self.rolling[ch]:
            # the fullest window [s, s + w) containing m can be slid right until it starts
            # at a send (still containing m, losing nothing): s = m or an entry in (m - w, m]
            starts = [m, *times[bisect.bisect_right(times, m - w):bisect.bisect_right(times, m)]]
            for s in starts:
                n = bisect.bisect_left(times, s + w) - bisect.bisect_left(times, s)
                if n + 1 > limit:
                    return False
        return all(per_day[wall.date()] + 1 <= limit for limit, per_day in self.daily[ch])

    def first_allowed(self, lo: int, hi: int) -> tuple[int, str] | None:
        """The earliest whole minute in [lo, hi) allowed on some channel (request order
        breaks ties), by walking every minute."""
        for m in range(lo, hi, MIN):
            wall = local(self.world, m)
            for ch in self.ask.channels:
                if self.allowed(m, ch, wall):
                    return m, ch
        return None


# ---------------------------------------------------------------------------- strategies


def _subset(values: list[str]) -> st.SearchStrategy[list[str]]:
    return st.one_of(st.just([]), st.lists(st.sampled_from(values), min_size=1,
                                           max_size=len(values), unique=True))


@st.composite
def cap_rules(draw: st.DrawFn, i: int) -> dict[str, Any]:
    rule: dict[str, Any] = {"id": f"cap{i}", "limit": draw(st.integers(1, 4))}
    if draw(st.booleans()) or draw(st.booleans()):
        rule["window_minutes"] = draw(st.integers(10, 600))
    else:
        rule["calendar"] = "day"
    rule["scope"] = {"channels": draw(_subset(CHANNELS)),
                     "categories": draw(_subset(["promotional", "news"])),
                     "campaigns": draw(st.one_of(st.just([]), _subset(CAMPAIGNS))),
                     "tags": draw(st.one_of(st.just([]), _subset(TAGS)))}
    return rule


@st.composite
def quiet_rules(draw: st.DrawFn) -> list[dict[str, Any]]:
    kind = draw(st.sampled_from(["off", "default", "random"]))
    if kind == "off":
        return []
    if kind == "default":
        return [{"id": "q", "start": "21:00", "end": "08:00"}]
    start = draw(st.integers(0, 23 * 60 + 59))
    length = draw(st.integers(30, 14 * 60))
    end = (start + length) % (24 * 60)
    return [{"id": "q", "start": f"{start // 60:02d}:{start % 60:02d}",
             "end": f"{end // 60:02d}:{end % 60:02d}", "channels": draw(_subset(CHANNELS))}]


@st.composite
def asks(draw: st.DrawFn) -> Ask:
    channels = draw(st.lists(st.sampled_from(CHANNELS), min_size=1, max_size=3, unique=True))
    deadline = draw(st.one_of(st.none(), st.integers(0, 240)))
    not_before = draw(st.one_of(st.none(), st.none(), st.none(), st.integers(1, 120)))
    if deadline is not None and not_before is not None:
        not_before = min(not_before, deadline)
    return Ask(
        advance=draw(st.one_of(st.integers(0, 10), st.integers(0, 180))), channels=tuple(channels),
        cat=draw(st.sampled_from(["promotional", "promotional", "news", "transactional"])),
        camp=draw(st.sampled_from([None, *CAMPAIGNS])),
        tags=tuple(draw(st.lists(st.sampled_from(TAGS), max_size=2, unique=True))),
        deadline=deadline, not_before=not_before)


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    n_rules = draw(st.integers(1, 3))
    return {
        "zone": draw(st.sampled_from(ZONES)),
        "start": draw(st.sampled_from(STARTS)),
        "caps": [draw(cap_rules(i)) for i in range(n_rules)],
        "quiet_hours": draw(quiet_rules()),
        "max_defer": draw(st.integers(30, 900)),
        "florida": draw(st.booleans()) and draw(st.booleans()),
        "asks": [draw(asks()) for _ in range(draw(st.integers(5, 40)))],
    }


def _reference_rules(caps: list[dict[str, Any]]) -> list[Rule]:
    out = []
    for cap in caps:
        scope = cap["scope"]
        window = cap.get("window_minutes")
        out.append(Rule(cap["id"], cap["limit"], None if window is None else window * MIN,
                        frozenset(scope["channels"]), frozenset(scope["categories"]),
                        frozenset(scope["campaigns"]), frozenset(scope["tags"])))
    return out


def _hhmm(text: str) -> int:
    return int(text[:2]) * 60 + int(text[3:])


def _utc(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def _ms_of(value: dt.datetime) -> int:
    return round(value.timestamp() * 1000)


# ---------------------------------------------------------------------------- the property


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sc=scenarios())
async def test_caps_quiet_hours_and_minimality(redis_client: RedisClient,
                                               sc: dict[str, Any]) -> None:
    await redis_client.flushdb()
    clock = FixedClock(sc["start"])
    engine = Engine(Store(redis_client), Settings(redis_url="unused", log_decisions=False,
                                                  id_key=TEST_ID_KEY), clock)
    policy = msgspec.convert({"categories": CATEGORIES, "caps": sc["caps"],
                              "quiet_hours": sc["quiet_hours"],
                              "max_defer_minutes": sc["max_defer"],
                              # minimality: the earliest allowed instant itself, unspread,
                              # and no decision explores a later slot
                              "send_time": {"spread_minutes": 0, "exploration_rate": 0.0}},
                             Policy)
    validate_policy(policy)
    engine.policies.put(TENANT, await engine.store.put_policy(TENANT, policy, None, clock.now_ms()))

    rules = _reference_rules(sc["caps"])
    quiet = [Quiet(_hhmm(q["start"]), _hhmm(q["end"]), frozenset(q.get("channels", [])))
             for q in sc["quiet_hours"]]
    where: dict[str, Any] = {}
    if sc["florida"]:
        # FTSA (08:00-20:00 and 3 per 24 h) and TCPA (08:00-21:00), both sms-only
        where = {"country": "US", "region": "FL"}
        rules.append(Rule("us-fl-ftsa@2026.1", 3, 1440 * MIN, frozenset({"sms"})))
        quiet.append(Quiet(20 * 60, 8 * 60, frozenset({"sms"})))
    world = World(ZoneInfo(sc["zone"]), rules, quiet, sc["max_defer"])

    for i, ask in enumerate(sc["asks"]):
        clock.advance(ask.advance * MIN)
        now = clock.now_ms()
        fields: dict[str, Any] = {
            "message_id": f"m{i}", "channels": list(ask.channels), "category": ask.cat,
            "tags": list(ask.tags), "timezone": sc["zone"], **where}
        if ask.camp is not None:
            fields["campaign_id"] = ask.camp
        if ask.deadline is not None:
            fields["deadline"] = _utc(now + ask.deadline * MIN)
        if ask.not_before is not None:
            fields["not_before"] = _utc(now + ask.not_before * MIN)
        r = await engine.decide(TENANT, req(**fields))

        assert _ms_of(r.decided_at) == now
        # the horizon is the deadline, but never past max_defer_minutes (plan.decision_horizon)
        horizon = now + world.max_defer * MIN
        if ask.deadline is not None:
            horizon = min(horizon, now + ask.deadline * MIN + 1)
        ref = Feasibility(world, ask, now)
        context = f"decision {i} ({ask}) at {_utc(now)}: {r}"
        if r.decision == "suppress":
            assert r.send_at is None and r.channel is None, context
            found = ref.first_allowed(now, horizon)
            assert found is None, f"suppressed but {found} is allowed; {context}"
            assert r.reasons[-1].code in {"deadline_exceeded", "max_defer_exceeded"}, context
            continue
        assert r.send_at is not None and r.channel is not None, context
        t = _ms_of(r.send_at)
        if r.decision == "send":
            assert t == now, context
        else:
            assert r.decision == "defer" and t > now, context
            assert r.reasons, context
        assert t % MIN == 0 and now <= t < horizon, context
        # minimality: nothing earlier on any channel, nothing at t on an earlier-listed channel
        expected = ref.first_allowed(now, t + MIN)
        assert expected == (t, r.channel), f"reference says {expected}; {context}"
        assert r.local_send_at is not None and r.local_send_at.utcoffset() == \
            local(world, t).utcoffset(), context
        world.ledger.append(Sent(t, r.channel, ask.cat, ask.camp, ask.tags))
        violations = caps_hold(world, world.ledger)
        assert not violations, f"{violations}; {context}"

    # the ledger in Redis is exactly what was answered, and it holds every cap too
    stored = await engine.store.ledger(TENANT, "u1")
    entries = []
    for member, score in stored:
        mid, ch, cat, camp, tags, *_ = decode_member(member)
        entries.append(Sent(int(score), ch, cat, camp or None, tuple(tags)))
        assert mid.startswith("m")
    assert Counter(entries) == Counter(world.ledger)
    assert not caps_hold(world, entries)
