"""Engine properties over random histories (every Redis target).

Hypothesis draws a policy (caps, quiet hours, one conflict window), three recipients in
different zones, and a history mixing decisions (channels incl. opt-in-only WhatsApp,
categories incl. exempt transactional, campaigns, tags, offers of two conflict groups,
deadlines, not_before), cancels, preference documents (consent, own frequency limits,
own quiet hours, topic opt-outs), events (unsubscribed, converted) and identity merges
(after which the old id's decisions, cancels and events are the person's) while a
``FixedClock`` advances. A pure model of what the recipient allowed *at decision time*
then judges every send/defer answer:

* caps and quiet hours: ``Feasibility.allowed`` of ``test_cap_properties`` (the brute-force
  reference) with the policy's caps plus the recipient's own limits in force then, against
  the recipient's ledger then: no window of length W holds more than N matching entries,
  no instant in a quiet window of the recipient's wall clock;
* consent: never a channel opted out then (document or event), WhatsApp only when opted
  in, nothing when a topic is opted out or the campaign converted;
* conflicts: two different offers of one group are never within the group's window;
* priorities and preemption (enabled in half the histories): a message displaces only
  reservations of strictly lower priority that were not yet due; each displaced one is
  either suppressed (``preempted``) or moved to a later instant that its own rules (as
  they were when it was decided) allow against the ledger then.

Finally the ledger in Redis is exactly the model's (sends and defers minus cancels, each
under the person's current id).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from api import lifecycle
from api.clock import FixedClock
from api.engine import Engine
from api.errors import ConflictError, InvalidRequestError, NotFoundError
from api.plan import decode_member
from api.policy import Policy, validate_policy
from api.redis_client import RedisClient
from api.schemas import Event, Preferences
from api.settings import Settings
from api.store import Store, UserMergedError
from tests.integration.conftest import TENANT, req
from tests.integration.test_cap_properties import (
    MIN,
    STARTS,
    ZONES,
    Ask,
    Feasibility,
    Quiet,
    Rule,
    Sent,
    World,
    _hhmm,
    _ms_of,
    _reference_rules,
    _utc,
    cap_rules,
    local,
    quiet_rules,
)

USERS = ["ann", "bob", "cy"]
CHANNELS = ["email", "sms", "push", "whatsapp"]
CATEGORIES = ["promotional", "news", "transactional"]
TAGS = ["a", "b"]
CAMPAIGNS = ["c1", "c2"]
OFFERS = ["o1", "o2", "o3"]
GROUPS = ["g1", "g2"]
CONVERTED_DAYS = 30


# ------------------------------------------------------------------------- history


@dataclass(frozen=True)
class Decide:
    user: int
    ask: Ask
    offer: tuple[str, str] | None
    priority: int = 5


@dataclass(frozen=True)
class Cancel:
    pick: int  # an earlier decision, modulo how many there were


@dataclass(frozen=True)
class PutPrefs:
    user: int
    doc: dict[str, Any]


@dataclass(frozen=True)
class Unsubscribe:
    user: int
    channel: str | None  # None: every channel


@dataclass(frozen=True)
class Convert:
    user: int
    campaign: str


@dataclass(frozen=True)
class Merge:
    source: int
    into: int


Op = Decide | Cancel | PutPrefs | Unsubscribe | Convert | Merge


@st.composite
def _asks(draw: st.DrawFn) -> Ask:
    deadline = draw(st.one_of(st.none(), st.integers(0, 240)))
    not_before = draw(st.one_of(st.none(), st.none(), st.none(), st.integers(1, 120)))
    if deadline is not None and not_before is not None:
        not_before = min(not_before, deadline)
    return Ask(
        advance=draw(st.one_of(st.integers(0, 5), st.integers(0, 30), st.integers(0, 240))),
        channels=tuple(draw(st.lists(st.sampled_from([*CHANNELS[:3]] * 3 + ["whatsapp"]),
                                     min_size=1, max_size=3, unique=True))),
        cat=draw(st.sampled_from(["promotional", "promotional", "news", "transactional"])),
        camp=draw(st.sampled_from([None, *CAMPAIGNS])),
        tags=tuple(draw(st.lists(st.sampled_from(TAGS), max_size=2, unique=True))),
        deadline=deadline, not_before=not_before)


@st.composite
def _documents(draw: st.DrawFn) -> dict[str, Any]:
    consent = st.sampled_from(["opted_in", "opted_out", "unknown"])
    limits = []
    for _ in range(draw(st.integers(0, 2))):
        limit: dict[str, Any] = {"limit": draw(st.integers(0, 3)),
                                 "channels": draw(st.lists(st.sampled_from(CHANNELS),
                                                           max_size=2, unique=True))}
        if draw(st.booleans()):
            limit["window_minutes"] = draw(st.integers(10, 600))
        else:
            limit["calendar"] = "day"
        limits.append(limit)
    quiet = []
    if draw(st.booleans()):
        start = draw(st.integers(0, 23 * 60 + 59))
        end = (start + draw(st.integers(30, 12 * 60))) % (24 * 60)
        quiet.append({"start": f"{start // 60:02d}:{start % 60:02d}",
                      "end": f"{end // 60:02d}:{end % 60:02d}"})
    return {"channels": draw(st.dictionaries(st.sampled_from(CHANNELS),
                                             st.builds(lambda c: {"consent": c}, consent),
                                             max_size=3)),
            "frequency_limits": limits, "quiet_hours": quiet,
            "topic_opt_outs": draw(st.lists(st.sampled_from(["news", *TAGS]), max_size=1))}


def _ops() -> st.SearchStrategy[Op]:
    user = st.integers(0, len(USERS) - 1)
    offer = st.one_of(st.none(), st.tuples(st.sampled_from(OFFERS), st.sampled_from(GROUPS)))
    priority = st.integers(0, 10)
    return st.one_of(
        st.builds(Decide, user, _asks(), offer, priority),
        st.builds(Decide, user, _asks(), offer, priority),
        st.builds(Decide, user, _asks(), offer, priority),
        st.builds(Cancel, st.integers(0, 1000)),
        st.builds(PutPrefs, user, _documents()),
        st.builds(Unsubscribe, user, st.one_of(st.none(), st.sampled_from(CHANNELS))),
        st.builds(Convert, user, st.sampled_from(CAMPAIGNS)),
        st.builds(Merge, user, user),
    )


@st.composite
def histories(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "zones": [draw(st.sampled_from(ZONES)) for _ in USERS],
        "start": draw(st.sampled_from(STARTS)),
        "caps": [draw(cap_rules(i)) for i in range(draw(st.integers(1, 2)))],
        "quiet_hours": draw(quiet_rules()),
        "conflict_minutes": draw(st.integers(30, 600)),
        "preempt": draw(st.booleans()),
        "ops": draw(st.lists(_ops(), min_size=5, max_size=40)),
    }


# ------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Entry:
    mid: str
    t: int
    ch: str
    cat: str
    camp: str | None
    tags: tuple[str, ...]
    offer: tuple[str, str] | None


@dataclass
class Person:
    doc: dict[str, Any] = field(default_factory=dict)
    event_opt_outs: set[str] = field(default_factory=set)
    converted: dict[str, int] = field(default_factory=dict)
    ledger: dict[str, Entry] = field(default_factory=dict)

    def consent(self, channel: str) -> str:
        if channel in self.event_opt_outs:
            return "opted_out"
        pref = self.doc.get("channels", {}).get(channel)
        return "unknown" if pref is None else str(pref["consent"])

    def absorb(self, other: Person) -> None:
        """The merge's conflict rules, restated: the most restrictive consent per channel,
        every limit, quiet window and topic of both, every opt-out, every conversion (the
        latest), both ledgers."""
        rank = {"unknown": 0, "opted_in": 1, "opted_out": 2}
        channels = dict(self.doc.get("channels", {}))
        for ch, pref in other.doc.get("channels", {}).items():
            if ch not in channels or rank[pref["consent"]] > rank[channels[ch]["consent"]]:
                channels[ch] = pref
        doc = {"channels": channels}
        for key in ("frequency_limits", "quiet_hours", "topic_opt_outs"):
            doc[key] = [*self.doc.get(key, []), *other.doc.get(key, [])]
        self.doc = doc
        self.event_opt_outs |= other.event_opt_outs
        for campaign, at in other.converted.items():
            self.converted[campaign] = max(at, self.converted.get(campaign, at))
        self.ledger.update(other.ledger)

    def world(self, zone: ZoneInfo, rules: list[Rule], quiet: list[Quiet]) -> World:
        """The policy's rules plus this recipient's own, in force now, in the zone the
        request names."""
        own_rules = [Rule(f"own{i}", limit["limit"],
                          limit["window_minutes"] * MIN if "window_minutes" in limit else None,
                          frozenset(limit["channels"]))
                     for i, limit in enumerate(self.doc.get("frequency_limits", []))]
        own_quiet = [Quiet(_hhmm(q["start"]), _hhmm(q["end"]))
                     for q in self.doc.get("quiet_hours", [])]
        world = World(zone, [*rules, *own_rules], [*quiet, *own_quiet], max_defer=0)
        world.ledger = [Sent(e.t, e.ch, e.cat, e.camp, e.tags) for e in self.ledger.values()]
        return world


def _check_answer(person: Person, zone: ZoneInfo, op: Decide, answer: Any, now: int,
                  rules: list[Rule], quiet: list[Quiet], conflict_ms: int) -> Entry | None:
    """Judge one answer against the model at decision time; the new entry, if reserved."""
    ask = op.ask
    context = f"{op} at {_utc(now)} -> {answer}"
    if answer.decision == "suppress":
        return None
    assert answer.channel in ask.channels and answer.send_at is not None, context
    t, ch = _ms_of(answer.send_at), answer.channel
    assert now <= t, context
    # consent, topics, conversions, as the recipient had them at decision time
    assert person.consent(ch) != "opted_out", f"no consent on {ch}: {context}"
    if ch == "whatsapp":
        assert person.consent(ch) == "opted_in", f"whatsapp without opt-in: {context}"
    topics = set(person.doc.get("topic_opt_outs", []))
    assert not topics & {ask.cat, *ask.tags}, f"topic opted out: {context}"
    if ask.camp is not None and ask.camp in person.converted:
        assert now >= person.converted[ask.camp] + CONVERTED_DAYS * 24 * 60 * MIN, context
    # caps (policy's and own) and quiet hours (policy's and own), by brute force
    feasible = Feasibility(person.world(zone, rules, quiet), ask, now)
    assert feasible.allowed(t, ch, local(feasible.world, t)), f"cap or quiet hours: {context}"
    # conflicting offers: never two different offers of one group within the window
    if op.offer is not None:
        for e in person.ledger.values():
            if e.offer is not None and e.offer[1] == op.offer[1] and e.offer[0] != op.offer[0]:
                assert abs(e.t - t) >= conflict_ms, f"conflicts with {e}: {context}"
    return Entry(answer.message_id, t, ch, ask.cat, ask.camp, ask.tags, op.offer)


# ------------------------------------------------------------------------- the property


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(h=histories())
async def test_random_histories_keep_every_invariant(redis_client: RedisClient,
                                                     h: dict[str, Any]) -> None:
    await redis_client.flushdb()
    clock = FixedClock(h["start"])
    engine = Engine(Store(redis_client), Settings(redis_url="unused", log_decisions=False), clock)
    conflict_ms = h["conflict_minutes"] * MIN
    policy = msgspec.convert({
        "categories": CATEGORIES, "caps": h["caps"], "quiet_hours": h["quiet_hours"],
        "conflict_groups": [{"group": "*", "window_minutes": h["conflict_minutes"]}],
        "converted_suppression_days": CONVERTED_DAYS,
        "preemption": {"enabled": h["preempt"], "max_displaced": 2}}, Policy)
    validate_policy(policy)
    engine.policies.put(TENANT, await engine.store.put_policy(TENANT, policy, None, clock.now_ms()))
    rules = _reference_rules(h["caps"])
    quiet = [Quiet(_hhmm(q["start"]), _hhmm(q["end"]), frozenset(q.get("channels", [])))
             for q in h["quiet_hours"]]
    people = [Person() for _ in USERS]
    owner = list(range(len(USERS)))  # user id (index) -> the person it names now
    merged_away: set[int] = set()  # user ids that are merge tombstones
    decided: list[tuple[int, str, str]] = []  # (user index, message id, decision id)
    #: decision id -> (message id, the request, when, the recipient's document then, zone)
    asked: dict[str, tuple[str, Decide, int, dict[str, Any], str]] = {}

    def person_of(user: int) -> Person:
        return people[owner[user]]

    for i, op in enumerate(h["ops"]):
        now = clock.now_ms()
        if isinstance(op, Decide):
            clock.advance(op.ask.advance * MIN)
            now = clock.now_ms()
            person, ask = person_of(op.user), op.ask
            fields: dict[str, Any] = {
                "message_id": f"m{i}", "user_id": USERS[op.user], "channels": list(ask.channels),
                "category": ask.cat, "tags": list(ask.tags), "timezone": h["zones"][op.user]}
            if ask.camp is not None:
                fields["campaign_id"] = ask.camp
            if op.offer is not None:
                fields["offer"] = {"id": op.offer[0], "group": op.offer[1]}
            if ask.deadline is not None:
                fields["deadline"] = _utc(now + ask.deadline * MIN)
            if ask.not_before is not None:
                fields["not_before"] = _utc(now + ask.not_before * MIN)
            answer = await engine.decide(TENANT, req(**fields, priority=op.priority))
            event(f"decision: {answer.decision}")  # coverage, with --hypothesis-show-statistics
            for code in {str(r.code) for r in answer.reasons}:
                event(f"reason: {code}")
            # the displaced reservations left the ledger before this answer was judged
            displaced = [(did, person.ledger.pop(asked[did][0])) for did in answer.displaced]
            entry = _check_answer(person, ZoneInfo(h["zones"][op.user]), op, answer, now, rules,
                                  quiet, conflict_ms)
            if entry is not None:
                person.ledger[entry.mid] = entry
            for did, old in displaced:
                event("preempted")
                _, victim, at, doc, zone = asked[did]
                assert victim.priority < op.priority and old.t > now, (victim, op)
                status = await engine.status(TENANT, did)
                assert status.reasons[0].code == "preempted", status
                if status.state == "preempted":
                    continue
                event("preempted: moved")
                assert status.state == "defer" and status.send_at is not None, status
                assert status.channel is not None
                t = _ms_of(status.send_at)
                assert t >= old.t, status
                then = Person(doc=doc, ledger=person.ledger)
                feasible = Feasibility(then.world(ZoneInfo(zone), rules, quiet), victim.ask, at)
                assert feasible.allowed(t, status.channel, local(feasible.world, t)), status
                if old.offer is not None:
                    for e in person.ledger.values():
                        if (e.offer is not None and e.offer[1] == old.offer[1]
                                and e.offer[0] != old.offer[0]):
                            assert abs(e.t - t) >= conflict_ms, (e, status)
                person.ledger[old.mid] = Entry(old.mid, t, status.channel, old.cat, old.camp,
                                               old.tags, old.offer)
            decided.append((op.user, answer.message_id, answer.decision_id))
            asked[answer.decision_id] = (answer.message_id, op, now, dict(person.doc),
                                         h["zones"][op.user])
        elif isinstance(op, Cancel):
            if decided:
                user, mid, did = decided[op.pick % len(decided)]
                try:
                    released = (await engine.cancel(TENANT, did)).released
                except NotFoundError:  # its record expired and it holds no reservation
                    released = False
                assert released == (mid in person_of(user).ledger)
                person_of(user).ledger.pop(mid, None)
        elif isinstance(op, PutPrefs):
            doc = msgspec.convert(op.doc, Preferences)
            if op.user in merged_away:
                with pytest.raises(UserMergedError):
                    await engine.store.put_preferences(TENANT, USERS[op.user], doc)
                continue
            await engine.store.put_preferences(TENANT, USERS[op.user], doc)
            person = person_of(op.user)
            person.doc = op.doc
            person.event_opt_outs -= {ch for ch, p in op.doc["channels"].items()
                                      if p["consent"] == "opted_in"}
        elif isinstance(op, Unsubscribe):
            await engine.store.apply_events(TENANT, [Event(
                type="unsubscribed", user_id=USERS[op.user], at=_utc(now), channel=op.channel)])
            person_of(op.user).event_opt_outs |= {op.channel} if op.channel else set(CHANNELS)
        elif isinstance(op, Convert):
            await engine.store.apply_events(TENANT, [Event(
                type="converted", user_id=USERS[op.user], at=_utc(now),
                campaign_id=op.campaign)])
            person_of(op.user).converted[op.campaign] = now
        else:
            await _merge(engine, op, owner, merged_away, people, now)

    # the ledgers in Redis are exactly the model's (a merged-away id holds nothing)
    for user, name in enumerate(USERS):
        stored: Counter[tuple[str, int, str, str]] = Counter()
        for member, score in await engine.store.ledger(TENANT, name):
            mid, ch, cat, *_ = decode_member(member)
            stored[(mid, int(score), ch, cat)] += 1
        model = [] if user in merged_away else list(person_of(user).ledger.values())
        assert stored == Counter((e.mid, e.t, e.ch, e.cat) for e in model)


async def _merge(engine: Engine, op: Merge, owner: list[int], merged_away: set[int],
                 people: list[Person], now: int) -> None:
    """A merge, and what the model expects of it: refused into itself, into an id of the
    same person that this one is the current id of (a cycle), or for an id already merged
    into another person; a no-op for an id already part of the target's person."""
    src, dst = op.source, op.into
    call = lifecycle.merge(engine.store, TENANT, USERS[src], USERS[dst], now)
    if src == dst:
        with pytest.raises(InvalidRequestError):
            await call
    elif owner[src] == owner[dst] and src not in merged_away:
        with pytest.raises(ConflictError, match="merged into") as refused:
            await call
        assert refused.value.code == "merge_cycle"
    elif owner[src] != owner[dst] and src in merged_away:
        with pytest.raises(ConflictError) as refused:
            await call
        assert refused.value.code == "already_merged"
    elif owner[src] == owner[dst]:
        moved = await call  # a repeat: everything is there already
        assert (moved.ledger_entries, moved.decisions) == (0, 0)
    else:
        await call
        event("merge")
        gone, into = owner[src], owner[dst]
        people[into].absorb(people[gone])
        for user, person in enumerate(owner):
            if person == gone:
                owner[user] = into
        merged_away.add(src)
