"""api/plan.py: ledger members, fingerprints, pre-checks and the plan handed to Lua."""

from __future__ import annotations

import datetime as dt
import re
import struct
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import api.plan
from api.locale import Location
from api.plan import (
    CAND_RECORD,
    DAY_MS,
    LOOKAHEAD_MS,
    MINUTE_MS,
    PLAN_FIELDS,
    Block,
    Candidate,
    PreReason,
    build_plan,
    commit_members,
    commit_notes,
    decode_lua_plan,
    decode_member,
    encode_plan,
    fingerprint,
    ledger_member,
    member_prefix,
    member_priority,
    member_tail,
    pre_checks,
    spread_offset,
)
from api.policy import DEFAULT_POLICY, Policy
from api.reasons import ReasonCode
from api.record_codes import rule_code
from api.schemas import (
    CHANNELS,
    DEFAULT_PRIORITY,
    ChannelPreference,
    DecisionRequest,
    FrequencyLimit,
    Preferences,
    QuietHours,
)
from api.userstate import UserState

NY = ZoneInfo("America/New_York")
#: Wednesday 2026-06-10 12:00 in New York (EDT)
NOON = int(dt.datetime(2026, 6, 10, 16, 0, tzinfo=dt.UTC).timestamp() * 1000)
HOUR = 60 * MINUTE_MS


def request(**fields: Any) -> DecisionRequest:
    base: dict[str, Any] = {"message_id": "m1", "user_id": "u1", "channels": ["email"],
                            "timezone": "America/New_York"}
    base.update(fields)
    return msgspec.convert(base, DecisionRequest)


def state(prefs: Preferences | None = None, *, opt_outs: dict[str, int] | None = None,
          converted_at: int | None = None) -> UserState:
    return UserState(preferences=prefs or Preferences(), revision="0",
                     event_opt_outs=opt_outs or {}, record=None, converted_at=converted_at)


def location(*zones: str, country: str | None = None, region: str | None = None) -> Location:
    return Location(zones=zones or ("America/New_York",), zone_source="request", country=country,
                    region=region, country_source="request" if country else "default")


def policy(**fields: Any) -> Policy:
    return msgspec.convert(fields, Policy)


def plan_for(req: DecisionRequest, pol: Policy = DEFAULT_POLICY, st_: UserState | None = None,
             loc: Location | None = None, now: int = NOON, pre_suppressed: bool = False) -> Any:
    return build_plan(req, pol, st_ or state(), loc or location(), now=now,
                      idempotency_ttl_ms=3_600_000, candidate_channels=list(req.channels),
                      pre_suppressed=pre_suppressed)


def local_ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=NY).timestamp() * 1000)


def covered(blocks: list[tuple[int, int]], t: int) -> bool:
    return any(a <= t < b for a, b in blocks)


# --------------------------------------------------------------------- ledger members

ids = st.text(alphabet=st.characters(codec="utf-8", min_codepoint=0x20), min_size=1,
              max_size=30) | st.sampled_from(['"', '",', '\\', '\\u0000', '"\\u0000"', '["a",',
                                               "a,b", "é😀", "}{", "null"])
tags = st.lists(st.text(alphabet=st.characters(codec="utf-8", min_codepoint=0x20), min_size=1,
                        max_size=10) | st.sampled_from(['"', '\\u0000', "\\", "]"]), max_size=4)


@given(mid=ids, campaign=st.none() | ids, tag_list=tags,
       offer=st.none() | st.tuples(ids, ids),
       channel=st.sampled_from(["email", "sms", "push", "whatsapp", "in_app", "web_push"]),
       priority=st.integers(0, 10))
def test_ledger_member_round_trips(mid: str, campaign: str | None, tag_list: list[str],
                                   offer: tuple[str, str] | None, channel: str,
                                   priority: int) -> None:
    fields: dict[str, Any] = {"message_id": mid, "campaign_id": campaign, "tags": tag_list,
                              "channels": [channel], "priority": priority}
    if offer is not None:
        fields["offer"] = {"id": offer[0], "group": offer[1]}
    member = ledger_member(request(**fields), channel)
    entry = decode_member(member)
    assert entry == [mid, channel, "promotional", campaign or "", tag_list,
                     offer[0] if offer else "", offer[1] if offer else "", priority]
    assert member_priority(entry) == priority
    assert member.startswith(member_prefix(mid))


def test_a_member_without_priority_has_the_default_one() -> None:
    """Members written before priorities were recorded (7 elements) still decode."""
    old = msgspec.msgpack.encode(["m", "email", "promotional", "", [], "", ""])
    assert member_priority(decode_member(old)) == DEFAULT_PRIORITY
    # the scripts match a message's members from the second byte on: both layouts agree
    assert old[1:].startswith(member_prefix("m")[1:])


def test_spread_offset_is_deterministic_and_inside_the_window() -> None:
    offsets = [spread_offset("acme", f"m{i}", 30) for i in range(500)]
    assert offsets == [spread_offset("acme", f"m{i}", 30) for i in range(500)]
    assert all(0 <= o < 30 * 60_000 for o in offsets)
    assert max(offsets) - min(offsets) > 25 * 60_000  # spread, not clumped
    assert spread_offset("acme", "m1", 0) == 0
    assert spread_offset("other", "m1", 30) != spread_offset("acme", "m1", 30)


def test_cap_reserve_lowers_the_limit_below_its_priority() -> None:
    pol = msgspec.convert({"caps": [{"id": "daily", "limit": 3, "window_minutes": 1440,
                                     "reserve": {"below_priority": 5, "limit": 2}}]}, Policy)
    low = plan_for(request(priority=4), pol, state())
    high = plan_for(request(priority=5), pol, state())
    assert [c.n for c in low.caps] == [2]
    assert [c.n for c in high.caps] == [3]


@given(a=ids, b=ids)
def test_member_prefix_matches_only_its_own_message(a: str, b: str) -> None:
    member = ledger_member(request(message_id=b), "email")
    assert member.startswith(member_prefix(a)) == (a == b)


def test_ledger_member_with_a_nul_tag() -> None:
    """The API refuses control characters in tags (400); the encoding is robust anyway."""
    req = msgspec.structs.replace(request(), tags=["\x00", '"\u0000"'])
    assert decode_member(ledger_member(req, "email"))[4] == ["\x00", '"\u0000"']


def test_encode_plan_ships_binary_parts_as_separate_arguments() -> None:
    req = request(channels=["email", "sms"])
    p = plan_for(req, policy(), state())
    args = encode_plan(p)
    packed, prefix, tail, notes = args
    assert tail == member_tail(req)
    fields, cands = decode_lua_plan(packed)
    core = dict(zip(PLAN_FIELDS, fields, strict=False))
    assert "mid" not in core and "tail" not in core
    assert prefix == member_prefix("m1") and notes == b""
    # commit.lua builds a candidate's member from the prefix, its channel and the tail
    assert commit_members(args) == [ledger_member(req, "email"), ledger_member(req, "sms")]
    assert commit_notes(args) == [None, None]
    assert [c[0] for c in cands] == ["email", "sms"] and core["cands"] == ["email", "sms"]
    # a quiet-hours block shared by both channels is shipped once
    assert cands[0][3] == cands[1][3]
    # record format 6 (the default) and 5: rules this release names itself by number, and
    # the plan says which (``of``); format 4's plan names them and leaves ``of`` out
    assert [b[1] for b in core["blocks"]] == [rule_code("default-quiet-hours")] == [0]
    assert core["of"] == 6
    fields5, _ = decode_lua_plan(encode_plan(p, record_format=5)[0])
    core5 = dict(zip(PLAN_FIELDS, fields5, strict=False))
    assert core5["of"] == 5 and core5["blocks"] == core["blocks"]
    fields4, _ = decode_lua_plan(encode_plan(p, record_format=4)[0])
    core4 = dict(zip(PLAN_FIELDS, fields4, strict=False))
    assert [b[1] for b in core4["blocks"]] == ["default-quiet-hours"] and "of" not in core4


@given(st.sampled_from(sorted(CHANNELS)), st.lists(st.text(max_size=40), max_size=4),
       st.text(max_size=300), st.integers(-(2**31), 2**31 - 1))
def test_a_member_is_its_prefix_channel_and_tail(channel: str, tags: list[str], campaign: str,
                                                 priority: int) -> None:
    """``ledger_member`` is the 8-element MessagePack array the layout names, and it is
    ``member_prefix`` + the packed channel + ``member_tail``, the parts commit.lua joins."""
    req = msgspec.structs.replace(request(), tags=tags, campaign_id=campaign or None,
                                  priority=priority)
    member = ledger_member(req, channel)
    assert member == msgspec.msgpack.encode([
        req.message_id, channel, req.category, req.campaign_id or "", req.tags, "", "",
        req.priority])
    assert member == member_prefix(req.message_id) + msgspec.msgpack.encode(channel) \
        + member_tail(req)


_CANDIDATES = st.lists(st.builds(
    Candidate, ch=st.sampled_from(["email", "sms", "push", "whatsapp", "in_app"]),
    a=st.integers(-(2**53) + 1, 2**53 - 1), b=st.integers(-(2**53) + 1, 2**53 - 1),
    pb=st.lists(st.integers(0, 6), max_size=3), s=st.integers(0, 1),
    why=st.sampled_from([[], ["better_send_time", "model"], ["exploration", "explore"]])),
    max_size=40)


@given(_CANDIDATES, st.data())
def test_candidates_ship_as_records_commit_lua_reads_back(cands: list[Candidate],
                                                          data: st.DataObject) -> None:
    """The packed plan's candidate records (``CAND_RECORD``) give back each candidate:
    its channel by name, its instants exactly, its block list and its reason pair through
    the shared, deduplicated lists, and its own annotation out of the joined notes."""
    p = msgspec.structs.replace(plan_for(request(channels=["email"]), policy(), state()),
                                cands=cands)
    notes = data.draw(st.one_of(st.just([]), st.lists(
        st.binary(min_size=1, max_size=60), min_size=len(cands), max_size=len(cands))))
    args = encode_plan(p, notes)
    fields, decoded = decode_lua_plan(args[0])
    core = dict(zip(PLAN_FIELDS, fields, strict=False))
    assert core["cands"] == list(dict.fromkeys(c.ch for c in cands))
    assert len(decoded) == len(cands)
    for (ch, a, b, pb, s, why, _, _), c in zip(decoded, cands, strict=True):
        assert (ch, a, b, s) == (c.ch, c.a, c.b, c.s)
        assert core["pbs"][pb] == c.pb
        assert (core["whys"][why] if why is not None else []) == c.why
    assert len(core["pbs"]) == len({tuple(c.pb) for c in cands})
    expected: list[bytes | None] = [*notes] if notes else [None] * len(cands)
    assert commit_notes(args) == expected


def test_encode_plan_refuses_notes_that_do_not_match_the_candidates() -> None:
    p = plan_for(request(channels=["email", "sms"]), policy(), state())
    with pytest.raises(ValueError, match="1 notes for 2 candidates"):
        encode_plan(p, [b"[1,1,1]"])


def test_commit_lua_reads_the_records_python_writes() -> None:
    """commit.lua's record size and ``struct`` formats are ``CAND_RECORD``'s: the
    candidate's first 22 bytes, then its note's place (Lua's struct spells a 64-bit
    integer ``i8`` and a 32-bit unsigned one ``I4`` where Python's spells them ``q``, ``I``)."""
    source = resources.files("api").joinpath("lua", "commit.lua").read_text(encoding="utf-8")
    size = re.search(r"^local CAND_SIZE = (\d+)$", source, re.MULTILINE)
    head = re.findall(r"struct\.unpack\('>([^']*)', ARGV\[1\], 3 \+ CAND_SIZE \* \(i - 1\)\)",
                      source)
    note = re.findall(r"struct\.unpack\('>([^']*)', ARGV\[1\], 3 \+ CAND_SIZE \* \(i - 1\) \+ (\d+)\)",
                      source)
    assert size is not None and int(size.group(1)) == CAND_RECORD.size
    assert len(head) == 1 and len(note) == 1
    assert struct.calcsize(">" + head[0].replace("i8", "q")) == int(note[0][1])
    lua = ">" + head[0] + note[0][0]
    assert lua == CAND_RECORD.format.replace("q", "i8").replace("I", "I4")


def test_encode_plan_is_positional_with_flat_intervals() -> None:
    """commit.lua reads the plan by position (``PLAN_FIELDS``), each block's intervals
    flat, and a cap's empty scope lists as nil."""
    p = plan_for(request(channels=["email", "sms"]), policy(), state())
    core, cands = decode_lua_plan(encode_plan(p)[0])
    assert core[:PLAN_FIELDS.index("msg")] == [p.now, p.rev, p.lo, p.keep, p.ttl]
    assert "pe" not in PLAN_FIELDS[:len(core)]  # unpaced: not shipped
    block = p.blocks[0]
    shipped = core[PLAN_FIELDS.index("blocks")][0]
    assert shipped == [block.c, rule_code(block.r), [x for iv in block.iv for x in iv]]
    # candidates point at their pb list (shared: both channels have the same blocks)
    pbs = core[PLAN_FIELDS.index("pbs")]
    assert [c[3] for c in cands] == [0, 0]
    assert pbs == [p.cands[0].pb] and core[PLAN_FIELDS.index("whys")] == []
    caps = core[PLAN_FIELDS.index("caps")]
    assert caps and all(len(cap) == 10 for cap in caps)
    assert [cap[0] for cap in caps] == [rule_code(c.id) for c in api.plan._lua_caps(p)]
    for cap, compiled in zip(caps, api.plan._lua_caps(p), strict=True):
        assert cap[5:] == [compiled.ch or None, compiled.cat or None, compiled.xcat or None,
                           compiled.camp or None, compiled.tag or None]


# ------------------------------------------------------------------------ fingerprint


def test_fingerprint_ignores_dry_run() -> None:
    assert fingerprint(request(dry_run=True)) == fingerprint(request())


@pytest.mark.parametrize("change", [
    {"message_id": "m2"}, {"user_id": "u2"}, {"channels": ["sms"]},
    {"channels": ["email", "sms"]}, {"category": "transactional"}, {"campaign_id": "c"},
    {"tags": ["x"]}, {"offer": {"id": "o", "group": "g"}}, {"priority": 9},
    {"not_before": "2026-06-10T20:00:00Z"}, {"deadline": "2026-06-11T00:00:00Z"},
    {"timezone": "Europe/Paris"}, {"phone": "+33612345678"}, {"country": "FR"},
    {"country": "US", "region": "FL"},
])
def test_fingerprint_covers_every_other_field(change: dict[str, Any]) -> None:
    assert fingerprint(request(**change)) != fingerprint(request())
    assert fingerprint(request(**change, dry_run=True)) == fingerprint(request(**change))


def test_fingerprint_distinguishes_channel_order() -> None:
    assert fingerprint(request(channels=["email", "sms"])) != fingerprint(
        request(channels=["sms", "email"]))


# ------------------------------------------------------------------------- pre-checks

DAYS = DAY_MS


@pytest.mark.parametrize(("req_fields", "user", "expected"), [
    pytest.param({"category": "promotional"},
                 state(Preferences(topic_opt_outs=["promotional"])),
                 ([], [PreReason("topic_opted_out", "preferences.topic_opt_outs:promotional")], True),
                 id="topic-by-category"),
    pytest.param({"tags": ["sale", "sports"]}, state(Preferences(topic_opt_outs=["sports"])),
                 ([], [PreReason("topic_opted_out", "preferences.topic_opt_outs:sports")], True),
                 id="topic-by-tag"),
    pytest.param({"tags": ["sale"]}, state(Preferences(topic_opt_outs=["sports"])),
                 (["email"], [], False), id="other-topic"),
    pytest.param({"campaign_id": "spring"}, state(converted_at=NOON - 1 * DAYS),
                 ([], [PreReason("already_converted", "events.converted:spring",
                                 NOON + 29 * DAYS)], True), id="converted-inside-window"),
    pytest.param({"campaign_id": "spring"}, state(converted_at=NOON - 30 * DAYS),
                 (["email"], [], False), id="converted-window-just-ended"),
    pytest.param({"campaign_id": "spring"}, state(converted_at=NOON - 30 * DAYS + 1),
                 ([], [PreReason("already_converted", "events.converted:spring", NOON + 1)],
                  True), id="converted-last-ms"),
    pytest.param({}, state(converted_at=NOON), (["email"], [], False),
                 id="conversion-without-campaign"),
    pytest.param({"channels": ["email", "sms"]},
                 state(Preferences(channels={"email": ChannelPreference(consent="opted_out")})),
                 (["sms"], [PreReason("no_consent", "preferences.channels.email", None, "email")],
                  False), id="consent-opted-out"),
    pytest.param({"channels": ["email"]}, state(opt_outs={"email": NOON - 5}),
                 ([], [PreReason("no_consent", "events.unsubscribed", None, "email"),
                       PreReason("no_channel_available", "request.channels")], True),
                 id="event-opt-out"),
    pytest.param({"channels": ["email", "sms"]},
                 state(Preferences(channels={"email": ChannelPreference(consent="unknown"),
                                             "sms": ChannelPreference(consent="opted_in")})),
                 (["email", "sms"], [], False), id="unknown-and-opted-in"),
    pytest.param({"channels": ["whatsapp", "sms"]}, state(),
                 (["sms"], [PreReason("opt_in_required", "policy.opt_in_only_channels", None,
                                      "whatsapp")], False), id="whatsapp-unknown"),
    pytest.param({"channels": ["whatsapp"]},
                 state(Preferences(channels={"whatsapp": ChannelPreference(consent="opted_in")})),
                 (["whatsapp"], [], False), id="whatsapp-opted-in"),
    pytest.param({"channels": ["whatsapp"]},
                 state(Preferences(channels={"whatsapp": ChannelPreference(consent="opted_out")})),
                 ([], [PreReason("no_consent", "preferences.channels.whatsapp", None, "whatsapp"),
                       PreReason("no_channel_available", "request.channels")], True),
                 id="whatsapp-opted-out"),
])
def test_pre_checks(req_fields: dict[str, Any], user: UserState,
                    expected: tuple[list[str], list[PreReason], bool]) -> None:
    assert pre_checks(request(**req_fields), DEFAULT_POLICY, user, NOON) == expected


def test_pre_checks_opt_in_only_channels_come_from_policy() -> None:
    pol = policy(opt_in_only_channels=["sms"])
    assert pre_checks(request(channels=["whatsapp", "sms"]), pol, state(), NOON) == (
        ["whatsapp"], [PreReason("opt_in_required", "policy.opt_in_only_channels", None, "sms")],
        False)


def test_pre_checks_conversion_window_follows_policy() -> None:
    pol = policy(converted_suppression_days=0)
    assert pre_checks(request(campaign_id="c"), pol, state(converted_at=NOON), NOON)[2] is False
    pol = policy(converted_suppression_days=2)
    assert pre_checks(request(campaign_id="c"), pol, state(converted_at=NOON - DAYS), NOON)[1] \
        == [PreReason("already_converted", "events.converted:c", NOON + DAYS)]


# ------------------------------------------------------------------------- build_plan


def test_exempt_category_has_no_caps_and_no_quiet_blocks() -> None:
    night = local_ms("2026-06-10T23:30")
    pol = policy(caps=[{"id": "one", "limit": 1, "window_minutes": 60}])
    prefs = Preferences(quiet_hours=[QuietHours(start="22:00", end="09:00")],
                        frequency_limits=[FrequencyLimit(limit=0)])
    p = plan_for(request(category="transactional", channels=["sms", "email"]), pol,
                 state(prefs), location(country="US", region="FL"), now=night)
    assert p.caps == []
    assert [p.blocks_of(c) for c in p.cands] == [[], []]
    promo = plan_for(request(channels=["sms", "email"]), pol, state(prefs),
                     location(country="US", region="FL"), now=night)
    assert {c.id for c in promo.caps} == {"one", "us-fl-ftsa@2026.1"}
    assert {b.c for b in promo.blocks_of(promo.cands[0])} == {"quiet_hours", "user_quiet_hours",
                                                "user_frequency_limit", "jurisdiction_window"}


def test_quiet_hours_block_the_local_night() -> None:
    p = plan_for(request())
    (block,) = p.blocks_of(p.cands[0])
    assert (block.c, block.r) == ("quiet_hours", "default-quiet-hours")
    assert (local_ms("2026-06-10T21:00"), local_ms("2026-06-11T08:00")) in block.iv
    assert not covered(block.iv, local_ms("2026-06-10T20:59"))
    assert all(NOON <= a < b <= p.cands[0].b + LOOKAHEAD_MS for a, b in block.iv)


def test_quiet_hours_scoped_by_channel_and_category() -> None:
    pol = policy(categories=["promotional", "news", "transactional"], quiet_hours=[
        {"id": "sms-night", "start": "20:00", "end": "09:00", "channels": ["sms"]},
        {"id": "news-night", "start": "22:00", "end": "07:00", "categories": ["news"]}])
    p = plan_for(request(channels=["email", "sms"]), pol)
    assert [[b.r for b in p.blocks_of(c)] for c in p.cands] == [[], ["sms-night"]]
    p = plan_for(request(channels=["email", "sms"], category="news"), pol)
    assert [[b.r for b in p.blocks_of(c)] for c in p.cands] == [["news-night"], ["sms-night", "news-night"]]


def test_quiet_hours_hold_in_every_candidate_zone() -> None:
    p = plan_for(request(), loc=location("America/New_York", "America/Los_Angeles"))
    (block,) = p.blocks_of(p.cands[0])
    # from 21:00 in New York to 08:00 in Los Angeles (11:00 in New York)
    assert (local_ms("2026-06-10T21:00"), local_ms("2026-06-11T11:00")) in block.iv


def test_not_before_blocks_until_then() -> None:
    nb = NOON + 90 * MINUTE_MS
    p = plan_for(request(not_before=dt.datetime.fromtimestamp(nb / 1000, dt.UTC)),
                 policy(quiet_hours=[]))
    assert p.blocks_of(p.cands[0]) == [Block("not_before", "request.not_before", [(NOON, nb)])]
    past = plan_for(request(not_before=dt.datetime.fromtimestamp((NOON - 1000) / 1000, dt.UTC)),
                    policy(quiet_hours=[]))
    assert past.blocks_of(past.cands[0]) == []


def test_deadline_sets_the_end_inclusive() -> None:
    deadline = NOON + 3 * HOUR
    p = plan_for(request(deadline=dt.datetime.fromtimestamp(deadline / 1000, dt.UTC)))
    assert [(c.a, c.b) for c in p.cands] == [(NOON, deadline + 1)]
    assert (p.endr.c, p.endr.r) == (ReasonCode.DEADLINE_EXCEEDED, "request.deadline")


def test_without_deadline_max_defer_sets_the_end() -> None:
    p = plan_for(request(channels=["email", "push"]), policy(max_defer_minutes=90))
    assert [(c.ch, c.a, c.b) for c in p.cands] == [("email", NOON, NOON + 90 * MINUTE_MS),
                                                   ("push", NOON, NOON + 90 * MINUTE_MS)]
    assert (p.endr.c, p.endr.r) == (ReasonCode.MAX_DEFER_EXCEEDED, "policy.max_defer_minutes")


def test_deadline_beyond_max_defer_is_treated_as_the_horizon() -> None:
    deadline = NOON + 5 * DAYS
    p = plan_for(request(deadline=dt.datetime.fromtimestamp(deadline / 1000, dt.UTC)),
                 policy(max_defer_minutes=60))
    assert p.cands[0].b == NOON + 60 * MINUTE_MS
    assert (p.endr.c, p.endr.r) == (ReasonCode.MAX_DEFER_EXCEEDED, "policy.max_defer_minutes")
    inside = plan_for(request(deadline=dt.datetime.fromtimestamp((NOON + 30 * MINUTE_MS) / 1000,
                                                                 dt.UTC)),
                      policy(max_defer_minutes=60))
    assert inside.cands[0].b == NOON + 30 * MINUTE_MS + 1
    assert (inside.endr.c, inside.endr.r) == (ReasonCode.DEADLINE_EXCEEDED, "request.deadline")


def _work(p: Any) -> int:
    """What a plan made the calendar code build: every interval of every time block and every
    calendar-cap boundary (each one a window computed from zone rules or holidays)."""
    return sum(len(b.iv) for b in p.blocks) + sum(len(c.b) for c in p.caps)


def _heavy_plan(deadline: dt.datetime | None) -> Any:
    """The most calendar work a request can ask for: every rule kind in force at once."""
    prefs = msgspec.convert({
        "quiet_hours": [{"start": "12:00", "end": "13:00"}, {"start": "18:00", "end": "19:00"}],
        "frequency_limits": [{"limit": 2, "calendar": "day"}, {"limit": 5, "calendar": "week"}],
    }, Preferences)
    pol = policy(caps=[{"id": "daily", "limit": 3, "calendar": "day"},
                       {"id": "weekly", "limit": 9, "calendar": "week"}],
                 quiet_hours=[{"id": "night", "start": "21:00", "end": "08:00"}],
                 max_defer_minutes=43_200)
    return plan_for(request(channels=["sms", "email", "push"], deadline=deadline), pol,
                    state(prefs), location("America/New_York", "America/Chicago",
                                           country="US", region="FL"))


@pytest.mark.parametrize("deadline", [
    "9999-12-31T23:59:59+00:00", "9999-12-31T23:59:59-23:59", "2100-01-01T00:00:00+00:00"])
def test_calendar_work_is_bounded_by_the_horizon_whatever_the_deadline(deadline: str) -> None:
    """Regression: a deadline in 9999 used to expand quiet hours, jurisdiction windows and
    holidays day by day up to that year (61-65 s of CPU in the event loop, then a 500)."""
    far = _heavy_plan(dt.datetime.fromisoformat(deadline))
    at_horizon = _heavy_plan(None)  # no deadline: exactly the policy's horizon (30 days)
    assert _work(far) == _work(at_horizon)
    # 30 days of horizon + 3 of lookahead + 8 of history, a few windows per local day
    assert _work(far) < 41 * 40


@given(st.integers(min_value=0, max_value=(253402300799 * 1000 - NOON) // MINUTE_MS))
def test_work_never_exceeds_the_work_at_the_horizon(minutes_ahead: int) -> None:
    deadline = dt.datetime.fromtimestamp((NOON + minutes_ahead * MINUTE_MS) / 1000, dt.UTC)
    assert _work(_heavy_plan(deadline)) <= _work(_heavy_plan(None))


def test_rolling_and_calendar_caps_compile() -> None:
    pol = policy(caps=[
        {"id": "hourly", "limit": 2, "window_minutes": 60,
         "scope": {"channels": ["sms", "email"], "tags": ["b", "a", "a"]}},
        {"id": "daily", "limit": 3, "calendar": "day", "scope": {"categories": ["promotional"]}},
        {"id": "weekly", "limit": 5, "calendar": "week"}])
    start = local_ms("2026-03-05T12:00")  # the US spring-forward is on Sunday 2026-03-08
    p = plan_for(request(), pol, now=start)
    hourly, daily, weekly = p.caps
    assert (hourly.code, hourly.n, hourly.w, hourly.b) == ("frequency_cap", 2, HOUR, [])
    assert (hourly.ch, hourly.tag, hourly.xcat) == (["email", "sms"], ["a", "b"], ["transactional"])
    assert (daily.w, daily.cat) == (0, ["promotional"])
    hi = p.cands[0].b + LOOKAHEAD_MS
    for cap, length in ((daily, {23, 24, 25}), (weekly, {167, 168, 169})):
        assert cap.b[0] <= start - 8 * DAYS and cap.b[-1] > hi
        for t in cap.b:
            wall = dt.datetime.fromtimestamp(t / 1000, NY)
            assert (wall.hour, wall.minute) == (0, 0)
            if cap is weekly:
                assert wall.weekday() == 0
        gaps = {(b - a) // HOUR for a, b in zip(cap.b, cap.b[1:], strict=False)}
        assert gaps <= length
    assert 23 in {(b - a) // HOUR for a, b in zip(daily.b, daily.b[1:], strict=False)}
    assert p.keep == 8 * DAYS and p.lo == start - p.keep


def test_exempt_messages_count_toward_caps_only_when_the_policy_says_so() -> None:
    cap = [{"id": "c", "limit": 1, "window_minutes": 60}]
    assert plan_for(request(), policy(caps=cap)).caps[0].xcat == ["transactional"]
    counted = plan_for(request(), policy(caps=cap, exempt_count_toward_caps=True))
    assert counted.caps[0].xcat == []


def test_user_frequency_limits() -> None:
    prefs = Preferences(frequency_limits=[
        FrequencyLimit(limit=2, window_minutes=120, channels=["sms"]),
        FrequencyLimit(limit=0, channels=["push"]),
        FrequencyLimit(limit=1, calendar="day")])
    p = plan_for(request(channels=["email", "push"]), policy(quiet_hours=[], caps=[]),
                 state(prefs))
    assert [(c.id, c.code, c.n, c.w, c.ch) for c in p.caps] == [
        ("preferences.frequency_limits[0]", "user_frequency_limit", 2, 120 * MINUTE_MS, ["sms"]),
        ("preferences.frequency_limits[2]", "user_frequency_limit", 1, 0, [])]
    assert p.caps[1].b
    email, push = p.cands
    assert p.blocks_of(email) == []
    assert p.blocks_of(push) == [Block("user_frequency_limit", "preferences.frequency_limits[1]",
                             [(NOON, push.b + LOOKAHEAD_MS)])]


def test_florida_packs_block_sms_but_not_email() -> None:
    evening = local_ms("2026-06-10T20:30")
    p = plan_for(request(channels=["sms", "email"]), policy(quiet_hours=[], caps=[]),
                 loc=location(country="US", region="FL"), now=local_ms("2026-06-10T12:00"))
    sms, email = p.cands
    assert p.blocks_of(email) == []
    rules = {b.r: b for b in p.blocks_of(sms)}
    assert set(rules) == {"us-tcpa@2026.1", "us-fl-ftsa@2026.1"}
    assert all(b.c == "jurisdiction_window" for b in p.blocks_of(sms))
    assert covered(rules["us-fl-ftsa@2026.1"].iv, evening)
    assert not covered(rules["us-tcpa@2026.1"].iv, evening)
    (cap,) = p.caps
    assert (cap.id, cap.code, cap.n, cap.w, cap.ch) == (
        "us-fl-ftsa@2026.1", "jurisdiction_cap", 3, 1440 * MINUTE_MS, ["sms"])
    # another state: only the federal pack; no country: none at all
    tx = plan_for(request(channels=["sms"]), policy(quiet_hours=[], caps=[]),
                  loc=location(country="US", region="TX"))
    assert [b.r for b in tx.blocks_of(tx.cands[0])] == ["us-tcpa@2026.1"] and tx.caps == []
    unknown = plan_for(request(channels=["sms"]), policy(quiet_hours=[], caps=[]))
    assert unknown.cands[0].pb == [] and unknown.caps == []


def test_disabled_packs_do_not_apply() -> None:
    pol = policy(quiet_hours=[], caps=[], jurisdictions={"enabled": ["us-tcpa"]})
    p = plan_for(request(channels=["sms"]), pol, loc=location(country="US", region="FL"))
    assert [b.r for b in p.blocks_of(p.cands[0])] == ["us-tcpa@2026.1"] and p.caps == []


def test_offer_and_message_facts() -> None:
    p = plan_for(request(campaign_id="spring", tags=["a"], offer={"id": "o1", "group": "g"}))
    assert p.cw == 72 * HOUR
    assert p.keep == 8 * DAYS and p.lo == NOON - p.keep
    assert (p.msg.cat, p.msg.camp, p.msg.tags, p.msg.oid, p.msg.og) == (
        "promotional", "spring", ["a"], "o1", "g")
    long = plan_for(request(offer={"id": "o1", "group": "g"}),
                    policy(conflict_groups=[{"group": "g", "window_minutes": 43_200}]))
    assert long.cw == long.keep == 30 * DAYS
    assert plan_for(request()).cw == 0


def test_pre_suppressed_and_dry_run() -> None:
    assert plan_for(request(), pre_suppressed=True).cands == []
    assert plan_for(request(dry_run=True)).dry == 1
    assert plan_for(request()).dry == 0
