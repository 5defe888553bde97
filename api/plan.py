"""Turn one request into the plan the commit script executes (pure, no I/O).

Python owns what needs the calendar: time zones, quiet hours, jurisdiction windows,
calendar-cap bucket boundaries, consent. The Lua commit owns what needs the ledger: cap
counts, conflicting offers, idempotency. The plan is the hand-over: per candidate channel
the time blocks (each named by the rule that makes it), plus the compiled cap rules.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import msgspec

from api import intervals
from api.holdout import held_out_rule
from api.ids import IdKey
from api.intervals import Interval
from api.jurisdictions import JurisdictionPack, applicable_packs, blocked_intervals
from api.locale import Location
from api.localtime import (
    LocalWindow,
    local_day_starts,
    local_week_starts,
    parse_hhmm,
    utc_to_ms,
    window_intervals,
)
from api.policy import Policy, active_packs, conflict_window_minutes
from api.reasons import ReasonCode
from api.record_codes import (
    RECORD_FORMAT,
    channel_code,
    channel_name,
    reason_code,
    reason_name,
    rule_code,
    rule_name,
    source_code,
    source_name,
    zone_code,
    zone_name,
)
from api.schemas import DEFAULT_PRIORITY, DecisionRequest
from api.userstate import UserState

MINUTE_MS = 60_000
DAY_MS = 24 * 60 * MINUTE_MS
#: quiet windows are computed this far past the deadline so `until` is the true end
LOOKAHEAD_MS = 3 * DAY_MS


class Block(msgspec.Struct, frozen=True):
    c: str
    r: str
    iv: list[tuple[int, int]]


class Candidate(msgspec.Struct, frozen=True):
    ch: str
    a: int
    b: int
    #: indices (0-based) into Plan.blocks: the time rules that apply on this channel
    pb: list[int]
    #: 1: a scored slot [a, a + 1) of mode "ranked" (api/scoring.py), 0: a channel window
    s: int = 0
    #: [code, rule] cited when this slot is reserved later than now (a better send time,
    #: exploration); empty for none
    why: list[str] = []


class CompiledCap(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    code: str
    n: int
    w: int
    b: list[int] = []
    ch: list[str] = []
    cat: list[str] = []
    xcat: list[str] = []
    camp: list[str] = []
    tag: list[str] = []


class MessageFacts(msgspec.Struct, frozen=True):
    cat: str
    camp: str
    tags: list[str]
    oid: str
    og: str
    #: priority (0-10): preemption displaces only strictly lower priorities
    pr: int = DEFAULT_PRIORITY


class EndReason(msgspec.Struct, frozen=True):
    c: str
    r: str


class DisplacedPace(msgspec.Struct, frozen=True):
    """Pacing for one message preemption displaces: the token held for its new instant
    (channel ``ch``, span ``[lo, hi)``; ``ch`` empty: none) and, per channel, the full
    pacing spans found so far, a ``channel_pacing`` time rule of its re-decision."""

    ch: str = ""
    lo: int = 0
    hi: int = 0
    bl: dict[str, Block] = {}


class PaceExpect(msgspec.Struct, frozen=True):
    """What channel pacing reserved before the real commit (api/pacing.py): a send or
    deferral the commit would write on one of the paced channels ``pc`` must land on
    channel ``ch`` inside ``[lo, hi)`` (the span the held token covers; ``ch`` empty: no
    token held), and a displaced message moved to a paced channel inside the token of
    ``dx[its message id]``. Otherwise commit.lua writes nothing and answers ``moved`` (or
    ``repace``), so a paced send is never written without its token and the pacing bound
    stays exact."""

    pc: list[str]
    ch: str = ""
    lo: int = 0
    hi: int = 0
    dx: dict[str, DisplacedPace] = {}


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    now: int
    rev: str
    lo: int
    keep: int
    ttl: int
    msg: MessageFacts
    caps: list[CompiledCap]
    cw: int
    blocks: list[Block]
    cands: list[Candidate]
    mode: str
    endr: EndReason
    dry: int
    #: spread: a deferred instant t moves to t + sp (ms) when still allowed then
    sp: int = 0
    #: preemption: at most pk lower-priority future reservations displaced (0: off)
    pk: int = 0
    #: categories never displaced (exempt ones) and the priority of ledger members written
    #: without one
    xc: list[str] = []
    dp: int = DEFAULT_PRIORITY
    #: binary parts, sent as raw script arguments (Redis 6.2's cmsgpack has no bin type):
    #: the prefix of this message's ledger members (``member_prefix``) and what follows a
    #: member's channel (``member_tail``): a candidate's member is both around its channel
    mid: bytes = b""
    tail: bytes = b""
    #: channel pacing's expectation of a real commit (None: not paced; not even encoded)
    pe: PaceExpect | None = None

    def blocks_of(self, candidate: Candidate) -> list[Block]:
        """The time blocks a candidate points at (for tests and debugging)."""
        return [self.blocks[i] for i in candidate.pb]


class PreReason(msgspec.Struct, frozen=True, array_like=True):
    """A reason decided before the commit (consent, topic, conversion)."""

    code: str
    rule: str
    until: int | None = None
    channel: str | None = None


class Context(msgspec.Struct, frozen=True, kw_only=True):
    """Stored verbatim in the idempotency record, so a replay renders the same answer."""

    v: int = 1
    did: str
    mid: str
    uid: str
    pv: str
    zone: str
    now: int
    fp: str
    dry: bool
    pre: list[PreReason]
    #: the model version that scored the candidates and where their features came from
    #: ("profile" / "prior"); None in records written before scoring existed
    mv: str | None = None
    fs: str | None = None
    #: [score, score now, propensity] of a decision the model suppressed before the commit
    #: (``send_time.min_expected_value``): no candidate was reserved to carry it
    s: tuple[float, float, float] | None = None


_json = msgspec.json.Encoder()


def fingerprint(request: DecisionRequest) -> str:
    """What makes two requests "the same message" (dry_run aside). A field added to the
    request after records were written is left out while it has its default, so a retry
    across that upgrade still matches its record."""
    canonical = msgspec.structs.asdict(msgspec.structs.replace(request, dry_run=False))
    if canonical["channel_selection"] == "best":
        del canonical["channel_selection"]
    return hashlib.sha256(_json.encode(canonical)).hexdigest()[:20]


_pack = msgspec.msgpack.Encoder()
_unpack = msgspec.msgpack.Decoder()
#: MessagePack header of the 8-element ledger member array. Members written before
#: priorities were recorded have 7 elements (header 0x97): the scripts compare members
#: from their second byte on, so both layouts match one prefix.
_MEMBER_HEADER = b"\x98"


def ledger_member(request: DecisionRequest, channel: str) -> bytes:
    """The ledger member: MessagePack [mid, channel, category, campaign, tags, offer_id,
    group, priority]. Binary and length-prefixed, so Lua decodes it cheaply and no id or
    tag content can be confused with another field. The one source of truth of the
    layout: ``commit.lua`` (which builds a candidate's member from these three parts),
    ``render.timeline_entry`` and ``member_priority`` read it."""
    return member_prefix(request.message_id) + _pack.encode(channel) + member_tail(request)


def member_prefix(message_id: str) -> bytes:
    """The bytes every ledger member of this message starts with (dedup and cancel); the
    first byte (the array header) is not compared, see ``_MEMBER_HEADER``."""
    return _MEMBER_HEADER + _pack.encode(message_id)


def member_tail(request: DecisionRequest) -> bytes:
    """The bytes of a member after its channel: the message's facts, the same for every
    candidate. commit.lua gets them once and builds the member of the candidate it
    reserves (a member per candidate was ~13 script arguments per commit, each ~0.08 µs
    of Redis CPU: docs/benchmarks.md, "Fewer script arguments")."""
    return _pack.encode([
        request.category, request.campaign_id or "", request.tags,
        request.offer.id if request.offer else "",
        request.offer.group if request.offer else "", request.priority,
    ])[1:]  # without the header of this 6-element array


def decode_member(raw: bytes) -> list[Any]:
    entry: list[Any] = _unpack.decode(raw)
    return entry


def member_priority(entry: Sequence[Any]) -> int:
    """A decoded member's priority; members written before priorities were recorded have
    the default one."""
    return int(entry[7]) if len(entry) > 7 else DEFAULT_PRIORITY


def spread_offset(tenant: str, message_id: str, spread_minutes: int) -> int:
    """The message's spread offset in [0, spread_minutes) ms: a hash of tenant and message
    id, so a retry (or another worker) computes the same instant and messages deferred to
    one instant land uniformly over the window."""
    if spread_minutes <= 0:
        return 0
    digest = hashlib.sha256(f"{tenant}\x1fspread\x1f{message_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (spread_minutes * MINUTE_MS)


def _window_blocks(zones: Sequence[str], window: LocalWindow, lo: int, hi: int) -> list[Interval]:
    return intervals.union(*(window_intervals(ZoneInfo(z), window, lo, hi) for z in zones))


def _pack_blocks(pack: JurisdictionPack, zones: Sequence[str], lo: int, hi: int) -> list[Interval]:
    return intervals.union(*(blocked_intervals(pack, ZoneInfo(z), lo, hi) for z in zones))


def effective_consent(state: UserState, channel: str) -> str:
    if channel in state.event_opt_outs:
        return "opted_out"
    pref = state.preferences.channels.get(channel)  # type: ignore[call-overload]
    return pref.consent if pref is not None else "unknown"


def pre_checks(request: DecisionRequest, policy: Policy, state: UserState,
               now: int, *, tenant: str = "",
               user_id: str | None = None) -> tuple[list[str], list[PreReason], bool]:
    """Holdouts, consent, topic opt-outs and conversions: (permitted channels, reasons,
    suppress_all).

    The holdout comes first and alone: a held-out recipient's message is suppressed
    whatever else applies, so the held-out group stays a random sample of everyone asked
    about (with consent, caps and conversions as in the treated group). ``user_id`` is the
    id the decision is made for (a merged id's current one, ``api/holdout.py``); the engine
    passes it and ``tenant``, callers that only read per-channel reasons may omit them."""
    held = held_out_rule(policy.holdout, tenant=tenant, user_id=user_id or request.user_id,
                         campaign_id=request.campaign_id,
                         exempt=request.category in policy.exempt_categories)
    if held is not None:
        return [], [PreReason(ReasonCode.HOLDOUT, held)], True
    reasons: list[PreReason] = []
    topics = set(state.preferences.topic_opt_outs)
    hit = next((t for t in [request.category, *request.tags] if t in topics), None)
    if hit is not None:
        reasons.append(PreReason(ReasonCode.TOPIC_OPTED_OUT, f"preferences.topic_opt_outs:{hit}"))
        return [], reasons, True
    if state.converted_at is not None and request.campaign_id:
        until = state.converted_at + policy.converted_suppression_days * DAY_MS
        if now < until:
            reasons.append(PreReason(ReasonCode.ALREADY_CONVERTED,
                                     f"events.converted:{request.campaign_id}", until))
            return [], reasons, True
    permitted: list[str] = []
    for channel in request.channels:
        consent = effective_consent(state, channel)
        if consent == "opted_out":
            rule = ("events.unsubscribed" if channel in state.event_opt_outs
                    else f"preferences.channels.{channel}")
            reasons.append(PreReason(ReasonCode.NO_CONSENT, rule, None, channel))
        elif channel in policy.opt_in_only_channels and consent != "opted_in":
            reasons.append(PreReason(ReasonCode.OPT_IN_REQUIRED, "policy.opt_in_only_channels",
                                     None, channel))
        else:
            permitted.append(channel)
    if not permitted:
        reasons.append(PreReason(ReasonCode.NO_CHANNEL_AVAILABLE, "request.channels"))
    return permitted, reasons, not permitted


def _scope_lists(values: Iterable[str]) -> list[str]:
    return sorted(set(values))


def compile_caps(request: DecisionRequest, policy: Policy, state: UserState,
                 location: Location, packs: Sequence[JurisdictionPack], *,
                 lo: int, hi: int) -> tuple[list[CompiledCap], list[int]]:
    """Cap rules for Lua, and the window lengths (ms) that decide how long history is kept."""
    exempt = request.category in policy.exempt_categories
    not_counted = [] if policy.exempt_count_toward_caps else list(policy.exempt_categories)
    zone = ZoneInfo(location.zones[0])
    caps: list[CompiledCap] = []
    windows: list[int] = []

    def bounds(calendar: str | None) -> list[int]:
        if calendar == "day":
            return local_day_starts(zone, lo, hi)
        return local_week_starts(zone, lo, hi)

    for cap in policy.caps:
        windows.append((cap.window_minutes or 8 * 24 * 60) * MINUTE_MS)
        if exempt:
            continue
        caps.append(CompiledCap(
            id=cap.id, code=ReasonCode.FREQUENCY_CAP, n=cap.limit_for(request.priority),
            w=(cap.window_minutes or 0) * MINUTE_MS,
            b=[] if cap.calendar is None else bounds(cap.calendar),
            ch=_scope_lists(cap.scope.channels), cat=_scope_lists(cap.scope.categories),
            xcat=not_counted, camp=_scope_lists(cap.scope.campaigns),
            tag=_scope_lists(cap.scope.tags),
        ))
    for i, limit in enumerate(state.preferences.frequency_limits):
        windows.append((limit.window_minutes or 8 * 24 * 60) * MINUTE_MS)
        if exempt or limit.limit == 0 or (limit.window_minutes is None and limit.calendar is None):
            continue  # limit 0 is a block, handled as a time block in candidate building
        caps.append(CompiledCap(
            id=f"preferences.frequency_limits[{i}]", code=ReasonCode.USER_FREQUENCY_LIMIT,
            n=limit.limit, w=(limit.window_minutes or 0) * MINUTE_MS,
            b=[] if limit.calendar is None else bounds(limit.calendar),
            ch=_scope_lists(limit.channels), xcat=list(policy.exempt_categories),
        ))
    for pack in packs:
        if pack.cap is None:
            continue
        windows.append(pack.cap.window_minutes * MINUTE_MS)
        caps.append(CompiledCap(
            id=pack.rule_id, code=ReasonCode.JURISDICTION_CAP, n=pack.cap.limit,
            w=pack.cap.window_minutes * MINUTE_MS, ch=_scope_lists(pack.cap.channels),
            xcat=list(pack.exempt_categories),
        ))
    return caps, windows


def decision_horizon(request: DecisionRequest, policy: Policy, now: int) -> tuple[int, EndReason]:
    """The exclusive end of the instants a decision may choose, and the reason cited when
    nothing before it is allowed.

    Always at most ``policy.max_defer_minutes`` (at most 30 days) after ``now``: a deadline
    further out is treated as that horizon. Every calendar expansion of the plan (quiet hours,
    jurisdiction windows, holidays, calendar-cap boundaries) stops ``LOOKAHEAD_MS`` past this
    end, so the work of one decision is bounded whatever the request says (a deadline in the
    year 9999 costs what a deadline in a week costs)."""
    horizon = now + policy.max_defer_minutes * MINUTE_MS
    if request.deadline is not None:
        deadline = utc_to_ms(request.deadline)
        if deadline < horizon:
            return deadline + 1, EndReason(ReasonCode.DEADLINE_EXCEEDED, "request.deadline")
    return horizon, EndReason(ReasonCode.MAX_DEFER_EXCEEDED, "policy.max_defer_minutes")


def build_plan(request: DecisionRequest, policy: Policy, state: UserState, location: Location,
               *, now: int, idempotency_ttl_ms: int, candidate_channels: Sequence[str],
               pre_suppressed: bool, tenant: str = "") -> Plan:
    end, endr = decision_horizon(request, policy, now)
    hi = max(end, now) + LOOKAHEAD_MS
    history_lo = now - 8 * DAY_MS
    exempt = request.category in policy.exempt_categories
    packs = active_packs(policy)

    # which packs govern each requested channel here: computed once, used for the caps
    # (any channel) and for each candidate's time blocks
    packs_by_channel: dict[str, list[JurisdictionPack]] = {
        ch: applicable_packs(packs, location.country, location.region, ch, request.category)
        for ch in request.channels}
    location_packs = {p.id: p for found in packs_by_channel.values() for p in found}

    caps, windows = compile_caps(request, policy, state, location, list(location_packs.values()),
                                 lo=history_lo, hi=hi)
    offer_group = request.offer.group if request.offer else ""
    cw_minutes = conflict_window_minutes(policy, offer_group) if offer_group else None
    cw = (cw_minutes or 0) * MINUTE_MS
    keep = max([8 * DAY_MS, cw, *windows])

    cache: dict[object, list[Interval]] = {}
    cands: list[Candidate] = []
    # within one plan a (code, rule) pair always has the same intervals, whatever the
    # channel: ship each once and let candidates point at them
    interned: dict[tuple[str, str], int] = {}
    unique_blocks: list[Block] = []
    zones = location.zones
    channels: list[str] = [] if pre_suppressed else list(candidate_channels)
    for channel in channels:
        blocks: list[Block] = []
        if request.not_before is not None:
            nb = utc_to_ms(request.not_before)
            if nb > now:
                blocks.append(Block(ReasonCode.NOT_BEFORE, "request.not_before", [(now, nb)]))
        if not exempt:
            for rule in policy.quiet_hours:
                if rule.channels and channel not in rule.channels:
                    continue
                if rule.categories and request.category not in rule.categories:
                    continue
                key: tuple[str, object] = ("q", rule.id)
                if key not in cache:
                    window = LocalWindow(parse_hhmm(rule.start), parse_hhmm(rule.end),
                                         frozenset(rule.weekdays) if rule.weekdays else None)
                    cache[key] = _window_blocks(zones, window, now, hi)
                if cache[key]:
                    blocks.append(Block(ReasonCode.QUIET_HOURS, rule.id, cache[key]))
            for i, quiet in enumerate(state.preferences.quiet_hours):
                key = ("u", i)
                if key not in cache:
                    window = LocalWindow(parse_hhmm(quiet.start), parse_hhmm(quiet.end),
                                         frozenset(quiet.weekdays) if quiet.weekdays else None)
                    cache[key] = _window_blocks(zones, window, now, hi)
                if cache[key]:
                    blocks.append(Block(ReasonCode.USER_QUIET_HOURS,
                                        f"preferences.quiet_hours[{i}]", cache[key]))
            for i, limit in enumerate(state.preferences.frequency_limits):
                if limit.limit == 0 and (not limit.channels or channel in limit.channels):
                    blocks.append(Block(ReasonCode.USER_FREQUENCY_LIMIT,
                                        f"preferences.frequency_limits[{i}]", [(now, hi)]))
        for pack in packs_by_channel[channel]:
            key = ("j", pack.id)
            if key not in cache:
                cache[key] = _pack_blocks(pack, zones, now, hi)
            if cache[key]:
                blocks.append(Block(ReasonCode.JURISDICTION_WINDOW, pack.rule_id, cache[key]))
        indices = []
        for block in blocks:
            key2 = (block.c, block.r)
            if key2 not in interned:
                interned[key2] = len(unique_blocks)
                unique_blocks.append(block)
            indices.append(interned[key2])
        cands.append(Candidate(channel, now, end, indices))

    return Plan(
        now=now, rev=state.revision, lo=now - keep, keep=keep, ttl=idempotency_ttl_ms,
        mid=member_prefix(request.message_id),
        tail=member_tail(request),
        msg=MessageFacts(request.category, request.campaign_id or "", list(request.tags),
                         request.offer.id if request.offer else "", offer_group,
                         request.priority),
        caps=caps, cw=cw, blocks=unique_blocks, cands=cands, mode="earliest", endr=endr,
        dry=1 if request.dry_run else 0,
        sp=spread_offset(tenant, request.message_id, policy.send_time.spread_minutes),
        # exempt messages are never capped, so they never need to displace anything
        pk=policy.preemption.max_displaced if policy.preemption.enabled and not exempt else 0,
        xc=list(policy.exempt_categories),
    )


#: The plan as commit.lua gets it: one MessagePack array, this order (the script reads
#: ``plan[i]`` for field ``PLAN_FIELDS[i - 1]``). Positional arrays instead of maps, and
#: each block's intervals flat: decoding a map costs Redis' Lua a key string per field and
#: each ``[start, end]`` pair a table, and the decode was the largest part of the commit
#: (docs/benchmarks.md, "h-lua2"). Nested layouts (all arrays):
#:
#: - msg   ``[cat, camp, tags, oid, og, pr]``
#: - cap   ``[id, code, n, w, b, ch, cat, xcat, camp, tag]``, an empty list as nil
#: - block ``[c, r, [s1, e1, s2, e2, ...]]`` (sorted by start)
#: - cands ``[ch1, ch2, ...]``: the candidates' channels, each once. The candidates
#:   themselves are not in the MessagePack part (below)
#: - endr  ``[c, r]``
#: - pe    ``[pc, ch, lo, hi, dx]``, dx ``{message id: [ch, lo, hi, {channel: block}]}``
#:   (last: an unpaced plan ships nothing for it)
#: - of    5 or 6 when the commit writes record format 5 or 6 (``SENDWISE_RECORD_FORMAT``):
#:   its outcomes hold instants relative to their context's (format 5: a JSON line that
#:   starts with ``5``; format 6: MessagePack), and every rule above (caps', blocks',
#:   ``endr``'s, ``whys``') is its number in api/record_codes.py's ``RULES`` where the
#:   list holds it; absent (nil) otherwise
#:
#: The candidates are fixed-size binary records *before* the MessagePack part: the packed
#: plan is ``<count: uint16><count records of CAND_RECORD><MessagePack array>``. A record
#: is ``[ch, a, b, pb, s, why, note at, note length]``: ``ch`` the 1-based index of its
#: channel in ``cands``, ``a``/``b`` its instants (ms, signed 64-bit; Lua holds them as
#: numbers, exact below 2**53 like every instant it reads), ``pb`` the 0-based index
#: of its block list in ``pbs``, ``s``, ``why`` 0 for none or the 1-based index of its
#: pair in ``whys`` (the ranked slots of a channel share both lists), and where its JSON
#: annotation is in the notes argument (0-based offset and length; length 0: none).
#: commit.lua decodes a record when it first reads that candidate (``struct.unpack``), and
#: the note of the candidate it reserves only: a ranked plan holds ~13 slots on the
#: benchmark's mix, 30 at p90, and the commit usually reads the first few; a MessagePack
#: decode of them all was a third of the plan's decode (docs/benchmarks.md, "Redis CPU per
#: decision at saturation").
#:
#: The plan is only ever a script argument of the same release, so it carries no version;
#: the compact re-decision plans commit.lua stores (``sw:{t:u}:rp:<id>``) do.
PLAN_FIELDS = ("now", "rev", "lo", "keep", "ttl", "msg", "caps", "cw", "blocks", "cands",
               "mode", "endr", "dry", "sp", "pk", "xc", "dp", "pbs", "whys", "of", "pe")


def _cap_may_match(cap: CompiledCap, channels: set[str], msg: MessageFacts) -> bool:
    """commit.lua's ``matches(cap, channel, msg...)`` for some candidate channel: the only
    way the script reads a cap (evaluation, preemption, the re-decision plan it stores all
    pair a cap with this message's facts and one of its candidates' channels)."""
    return ((not cap.ch or not channels.isdisjoint(cap.ch))
            and (not cap.cat or msg.cat in cap.cat) and msg.cat not in cap.xcat
            and (not cap.camp or msg.camp in cap.camp)
            and (not cap.tag or any(t in cap.tag for t in msg.tags)))


def _lua_caps(plan: Plan) -> list[CompiledCap]:
    """The caps commit.lua gets: only those that can match this message (the others cost
    Redis a table each to unpack and a scope test per candidate, and change no answer)."""
    channels = {cand.ch for cand in plan.cands}
    return [cap for cap in plan.caps if _cap_may_match(cap, channels, plan.msg)]


def _flat(ivs: Sequence[tuple[int, int]]) -> list[int]:
    return [x for iv in ivs for x in iv]


#: how a plan writes a rule: its name, or (format 5) its number where it has one
RuleWriter = Callable[[str], int | str]


def _same(rule: str) -> int | str:
    return rule


def _lua_block(block: Block, rule: RuleWriter = _same) -> list[object]:
    return [block.c, rule(block.r), _flat(block.iv)]


def _lua_cap(cap: CompiledCap, rule: RuleWriter = _same) -> list[object]:
    # an empty scope list is nil: the script reads it like an empty one (no restriction)
    # and does not build a table for it
    return [rule(cap.id), cap.code, cap.n, cap.w, cap.b or None, cap.ch or None,
            cap.cat or None, cap.xcat or None, cap.camp or None, cap.tag or None]


def _lua_pace(pe: PaceExpect, rule: RuleWriter = _same) -> list[object]:
    return [pe.pc, pe.ch, pe.lo, pe.hi,
            {mid: [d.ch, d.lo, d.hi, {ch: _lua_block(b, rule) for ch, b in d.bl.items()}]
             for mid, d in pe.dx.items()}]


#: one candidate record of the packed plan (big-endian, no padding): ch, a, b, pb, s, why,
#: note at, note length
CAND_RECORD = struct.Struct(">BqqHBHIH")
_COUNT = struct.Struct(">H")


@functools.lru_cache(maxsize=512)
def _cand_records(count: int) -> struct.Struct:
    """The count and ``count`` candidate records as one ``Struct``: one C call packs them
    all (a ``pack`` per candidate cost ~1.5 µs more for 16 candidates)."""
    return struct.Struct(_COUNT.format + CAND_RECORD.format[1:] * count)


def lua_plan(plan: Plan, caps: Sequence[CompiledCap], notes: Sequence[bytes] = (), *,
             record_format: int = RECORD_FORMAT) -> bytes:
    """The packed plan commit.lua gets as ARGV[1] (the layout above) with the given caps
    (``encode_plan`` ships ``_lua_caps``; tests ship every compiled cap to show the filter
    changes no answer). ``notes``: one JSON annotation per candidate, or none; each record
    says where its note is in ``b"".join(notes)``. ``record_format`` 5 or 6: rules by
    number and field ``of`` set to it (the outcome's format); 4 and below: rules by name,
    as before."""
    msg = plan.msg
    pbs: dict[tuple[int, ...], int] = {}
    whys: dict[tuple[str, ...], int] = {}
    channels: dict[str, int] = {}
    count = len(plan.cands)
    if count > 0xFFFF:
        raise ValueError(f"{count} candidates: a plan ships at most 65,535")
    if notes and len(notes) != count:
        raise ValueError(f"{len(notes)} notes for {count} candidates")
    flat: list[int] = []
    at = 0
    for i, c in enumerate(plan.cands):
        pb = pbs.setdefault(tuple(c.pb), len(pbs))
        why = whys.setdefault(tuple(c.why), len(whys) + 1) if c.why else 0
        size = len(notes[i]) if notes else 0
        flat += (channels.setdefault(c.ch, len(channels) + 1), c.a, c.b, pb, c.s, why, at, size)
        at += size
    records = _cand_records(count).pack(count, *flat)
    five = record_format >= 5
    rule: RuleWriter = rule_code if five else _same
    fields: dict[str, object] = {
        "now": plan.now, "rev": plan.rev, "lo": plan.lo, "keep": plan.keep, "ttl": plan.ttl,
        "msg": [msg.cat, msg.camp, msg.tags, msg.oid, msg.og, msg.pr],
        "caps": [_lua_cap(cap, rule) for cap in caps], "cw": plan.cw,
        "blocks": [_lua_block(b, rule) for b in plan.blocks],
        "cands": list(channels),
        "mode": plan.mode, "endr": [plan.endr.c, rule(plan.endr.r)], "dry": plan.dry,
        "sp": plan.sp, "pk": plan.pk, "xc": plan.xc, "dp": plan.dp,
        "pbs": [list(pb) for pb in pbs],
        "whys": [[code, rule(name)] for code, name in whys],
        "of": record_format if five else None,
        # unpaced decisions do not pay for the field (the last one: nothing is shipped)
        "pe": None if plan.pe is None else _lua_pace(plan.pe, rule),
    }
    out = [fields[name] for name in PLAN_FIELDS]
    while out and out[-1] is None:
        out.pop()
    return records + _pack.encode(out)


def decode_lua_plan(packed: bytes) -> tuple[list[Any], list[list[Any]]]:
    """``lua_plan``'s output read back (tests and benchmarks): the MessagePack array, and
    each candidate as ``[ch, a, b, pb, s, why, note at, note length]`` the way commit.lua
    sees it (``ch`` the channel's name, ``why`` 0-based or None)."""
    (count,) = _COUNT.unpack_from(packed)
    end = _COUNT.size + count * CAND_RECORD.size
    fields: list[Any] = msgspec.msgpack.decode(packed[end:])
    names = fields[PLAN_FIELDS.index("cands")]
    cands = []
    for ch, a, b, pb, s, why, at, size in CAND_RECORD.iter_unpack(packed[_COUNT.size:end]):
        cands.append([names[ch - 1], a, b, pb, s, why - 1 if why else None, at, size])
    return fields, cands


def encode_plan(plan: Plan, annotations: Sequence[bytes] = (), *,
                record_format: int = RECORD_FORMAT) -> list[bytes]:
    """The commit script's arguments after the context: the plan, its candidates as
    binary records and the rest as MessagePack (Redis' Lua decodes it several times faster
    than JSON: no decimal number parsing; the layout is ``lua_plan``'s), then the member
    prefix and tail (raw strings; the script builds the member of the candidate it
    reserves), then the JSON annotations of the candidates (``[score, score_now,
    propensity]``, the reserved one's copied into its outcome), concatenated: four
    arguments however many candidates the plan holds. ``record_format``: the one the
    context line is written in (``lua_plan``)."""
    return [lua_plan(plan, _lua_caps(plan), annotations, record_format=record_format),
            plan.mid, plan.tail,
            b"".join(annotations)]


def commit_members(args: Sequence[bytes]) -> list[bytes]:
    """Each candidate's ledger member as commit.lua builds it from ``encode_plan``'s
    arguments (tests and benchmarks)."""
    _, cands = decode_lua_plan(args[0])
    return [args[1] + _pack.encode(c[0]) + args[2] for c in cands]


def commit_notes(args: Sequence[bytes]) -> list[bytes | None]:
    """Each candidate's annotation as commit.lua reads it from ``encode_plan``'s arguments
    (None: none), for tests and benchmarks."""
    _, cands = decode_lua_plan(args[0])
    return [args[3][c[6]:c[6] + c[7]] if c[7] else None for c in cands]


#: Short JSON names of the stored context (format 2). ``did`` keeps its name: commit.lua
#: reads ``cjson.decode(context).did`` of the records it displaces.
_CONTEXT_NAMES = {"mid": "m", "uid": "u", "pv": "p", "zone": "z", "now": "n", "fp": "f",
                  "dry": "y", "pre": "r"}
#: Defaults the compact formats omit (``dry`` false and no pre-commit reasons are the
#: common case); the other fields keep ``Context``'s own defaults, so ``v`` = 1 is omitted.
_CONTEXT_OMITTED = {"dry": False, "pre": []}


class RecordOwner(NamedTuple):
    """Where an idempotency record was read: what format 3 leaves out of its context.
    ``user`` is the user whose records hash holds it (its context names another user only
    when it moved there with a merge), ``mid`` the hash field (the message id), ``ids``
    the key that re-seals the decision id."""

    tenant: str
    user: str
    mid: str
    ids: IdKey


def _compact_context_type(name: str, drop: frozenset[str],
                          extra: Sequence[tuple[str, object, object]]) -> type[msgspec.Struct]:
    """``Context`` with short names and omitted defaults, derived from ``Context``'s own
    fields so a field added there is stored without touching this code: ``extra`` fields
    first (how ``decode_context`` tells the formats apart), then ``Context``'s fields but
    ``drop``; ``uid`` is optional (None, omitted) when ``drop`` names ``did``."""
    spec: list[tuple[str, object, object]] = list(extra)
    for f in sorted(msgspec.structs.fields(Context), key=lambda f: f.name != "did"):
        if f.name in drop:
            continue
        default = (_CONTEXT_OMITTED.get(f.name, f.default)
                   if f.default_factory is msgspec.NODEFAULT else f.default_factory())
        kind: object = f.type
        if f.name == "uid" and "did" in drop:
            kind, default = str | None, None
        spec.append((f.name, kind, msgspec.field(
            default=default, name=_CONTEXT_NAMES.get(f.name, f.encode_name))))
    return msgspec.defstruct(name, spec, kw_only=True, omit_defaults=True, frozen=True)


#: format 2: every field, short names, ``did`` first
_Context2 = _compact_context_type("Context2", frozenset(), ())
#: format 3: a JSON array, read by position in this order (the names ``Context``'s, but
#: ``tag``: the tag of the secret that sealed the decision id, api/ids.py), trailing
#: fields that hold their default left out. No ``did`` and no ``mid`` (the hash field);
#: ``uid`` only when it is not the user of the hash. A field added to ``Context`` must be
#: appended here (checked below): positions can never change once records exist.
_CONTEXT3_ORDER = ("tag", "pv", "zone", "now", "fp", "mv", "fs", "uid", "dry", "pre", "s",
                   "v")


def _context3_type() -> type[msgspec.Struct]:
    fields = {f.name: f for f in msgspec.structs.fields(Context)}
    if set(_CONTEXT3_ORDER) != set(fields) - {"did", "mid"} | {"tag"}:
        raise TypeError("Context's fields and _CONTEXT3_ORDER differ: append the new field")
    spec: list[tuple[str, object, object]] = []
    for name in _CONTEXT3_ORDER:
        if name == "tag":
            spec.append((name, str, msgspec.NODEFAULT))
            continue
        f = fields[name]
        default = (_CONTEXT_OMITTED.get(name, f.default)
                   if f.default_factory is msgspec.NODEFAULT else f.default_factory())
        spec.append((name, str | None, None) if name == "uid" else (name, f.type, default))
    return msgspec.defstruct("Context3", spec, array_like=True, frozen=True)


_Context3 = _context3_type()
#: the default of each format-3 position (NODEFAULT: always written)
_CONTEXT3_DEFAULTS = [f.default_factory() if f.default_factory is not msgspec.NODEFAULT
                      else f.default for f in msgspec.structs.fields(_Context3)]


class _PreReason4(msgspec.Struct, frozen=True, array_like=True):
    """``PreReason`` in a format-4 context: its code and channel by number
    (api/record_codes.py), or the string where the list holds no such name; written for
    format 5, its rule by number too where ``RULES`` holds it."""

    code: int | str
    rule: int | str
    until: int | None = None
    channel: int | str | None = None


#: format 4: format 3 with the decision's instant first (a number where format 3 has a
#: string: how readers tell them apart), the zone, the features source and the pre-commit
#: reasons' codes and channels by number (api/record_codes.py). The other fields keep
#: format 3's positions, so commit.lua finds the user 8th in both.
_CONTEXT4_ORDER = ("now", *(name for name in _CONTEXT3_ORDER if name != "now"))
_Context4 = msgspec.defstruct("Context4", [
    (f.name, int | str if f.name == "zone" else int | str | None if f.name == "fs" else
     list[_PreReason4] if f.name == "pre" else f.type,
     f.default if f.default_factory is msgspec.NODEFAULT else msgspec.field(
         default_factory=f.default_factory))
    for f in sorted(msgspec.structs.fields(_Context3), key=lambda f: _CONTEXT4_ORDER.index(
        f.name))], array_like=True, frozen=True)
_CONTEXT4_DEFAULTS = [f.default_factory() if f.default_factory is not msgspec.NODEFAULT
                      else f.default for f in msgspec.structs.fields(_Context4)]
_PREFIX_2 = b'{"did":'
_PREFIX_3 = b'["'
_decoder_2 = msgspec.json.Decoder(_Context2)
_decoder_3 = msgspec.json.Decoder(_Context3)
_decoder_4 = msgspec.json.Decoder(_Context4)
_decoder_6 = msgspec.msgpack.Decoder(_Context4)
_legacy_decoder = msgspec.json.Decoder(Context)
_FP_BYTES = 10  # api/plan.py fingerprint: 20 hex characters


def is_format_4(line: bytes) -> bool:
    """A format-4 line (context or outcome) is a JSON array whose first element is a
    number: the context's instant, the outcome's decision number."""
    return line[:1] == b"[" and line[1:2].isdigit()


def is_msgpack(value: bytes) -> bool:
    """A format-6 value (a record, its context or its outcome) is a MessagePack array of
    at most 15 elements (first byte 0x90-0x9f), never ``[``, ``{`` or ``5``, what every JSON
    format starts with (commit.lua's ``format_of`` reads the same byte)."""
    return 0x90 <= value[0] <= 0x9F if value else False


def _pack_fp(fp: str) -> str:
    """The fingerprint as base64url (14 characters instead of 20 hex); anything else (the
    fallback's empty one) behind ``=``, which base64url never starts with."""
    if len(fp) == 2 * _FP_BYTES and fp == fp.lower():
        try:
            return base64.urlsafe_b64encode(bytes.fromhex(fp)).rstrip(b"=").decode()
        except ValueError:
            pass
    return "=" + fp


def _unpack_fp(packed: str) -> str:
    if packed.startswith("="):
        return packed[1:]
    return base64.urlsafe_b64decode(packed + "=" * (-len(packed) % 4)).hex()


def _trimmed(values: list[Any], defaults: list[Any]) -> list[Any]:
    """A positional record without its trailing defaults (the first value stays)."""
    while len(values) > 1 and values[-1] == defaults[len(values) - 1]:
        values.pop()
    return values


def _encode_positional(values: list[Any], defaults: list[Any]) -> bytes:
    return _json.encode(_trimmed(values, defaults))


def _encode3(values: list[Any]) -> bytes:
    return _encode_positional(values, _CONTEXT3_DEFAULTS)


def _context4_values(ctx: Context, user: str, tag: str, rules: bool) -> list[Any]:
    fields = msgspec.structs.asdict(ctx)
    fields["tag"] = tag
    fields["fp"] = _pack_fp(ctx.fp)
    fields["zone"] = zone_code(ctx.zone)
    fields["fs"] = source_code(ctx.fs)
    fields["pre"] = [_PreReason4(reason_code(p.code), rule_code(p.rule) if rules else p.rule,
                                 p.until, channel_code(p.channel)) for p in ctx.pre]
    if fields["uid"] == user:
        fields["uid"] = None
    return _trimmed([fields[name] for name in _CONTEXT4_ORDER], _CONTEXT4_DEFAULTS)


def encode_context_v4(ctx: Context, *, user: str, tag: str, rules: bool = False) -> bytes:
    """The context line in format 4: format 3 (``encode_context``) with the instant first
    and the zone, the features source and the pre-commit reasons' codes and channels as
    numbers (api/record_codes.py). With the outcome commit.lua writes for it, ~50 B less
    per record than format 3 (docs/benchmarks.md, "Record format 4"). ``rules``: the
    pre-commit reasons' rules by number too, the context of format 5 (its outcome line is
    what sets it apart, api/render.py)."""
    return _json.encode(_context4_values(ctx, user, tag, rules))


def encode_context_v6(ctx: Context, *, user: str, tag: str) -> bytes:
    """The context of format 6 (the default): format 5's values (``encode_context_v4``
    with the rules by number) as MessagePack, which commit.lua stores after the record's
    array header and before the outcome (api/render.py: ``record_parts``): ~35 B less per
    record than format 5's JSON (docs/benchmarks.md, "Record format 6")."""
    return _pack.encode(_context4_values(ctx, user, tag, True))


def encode_context(ctx: Context, *, user: str, tag: str) -> bytes:
    """The context line of the idempotency record, format 3: a JSON array (the record's
    lines are split on newlines, so it must stay one line, and commit.lua decodes it with
    cjson to name a displaced decision; positions instead of names, trailing defaults left
    out, the fingerprint in base64url) holding nothing a reader can recompute: the decision
    id is the AES-SIV of (tenant, user, message) under the secret ``tag`` names
    (``ctx.did`` must be that id), the message id is the record's hash field, the user is
    the one whose records hash stores it (``user``; written only when the decision was made
    for another id, merged into ``user``). ~45% of format 2's bytes (docs/benchmarks.md,
    "Compact records")."""
    fields = msgspec.structs.asdict(ctx)
    fields["tag"] = tag
    fields["fp"] = _pack_fp(ctx.fp)
    if fields["uid"] == user:
        fields["uid"] = None
    return _encode3([fields[name] for name in _CONTEXT3_ORDER])


def encode_context_v2(ctx: Context) -> bytes:
    """The context line in format 2 (``did`` and every id stored): what the previous
    release writes and reads (``SENDWISE_RECORD_FORMAT=2``, a rolling upgrade)."""
    return _json.encode(_Context2(**msgspec.structs.asdict(ctx)))


def decode_context(raw: bytes | str, owner: RecordOwner | None = None) -> Context:
    """A stored context line, in any format: 4 (``encode_context_v4``) and 3
    (``encode_context``), which need ``owner``, where it was read, to recompute what they
    leave out; 2 (``encode_context_v2``) or the original one with the struct's own names
    (records written before either). Every format keeps replaying byte for byte until its
    TTL ends."""
    data = raw.encode() if isinstance(raw, str) else raw
    six = is_msgpack(data)
    four = six or is_format_4(data)
    if four or data.startswith(_PREFIX_3):
        if owner is None:
            raise ValueError("a format-3, 4 or 6 record context needs its owner to be decoded")
        if four:
            stored = msgspec.structs.asdict((_decoder_6 if six else _decoder_4).decode(data))
            stored["zone"] = zone_name(stored["zone"])
            stored["fs"] = source_name(stored["fs"])
            stored["pre"] = [PreReason(reason_name(p.code), rule_name(p.rule), p.until,
                                       channel_name(p.channel)) for p in stored["pre"]]
        else:
            stored = msgspec.structs.asdict(_decoder_3.decode(data))
        tag = stored.pop("tag")
        uid = stored.pop("uid")
        if uid is None:
            uid = owner.user
        stored["fp"] = _unpack_fp(stored["fp"])
        return Context(did=owner.ids.decision_id(owner.tenant, uid, owner.mid, tag),
                       mid=owner.mid, uid=uid, **stored)
    if data.startswith(_PREFIX_2):
        return Context(**msgspec.structs.asdict(_decoder_2.decode(data)))
    return _legacy_decoder.decode(data)


def adopt_context(raw: bytes, user: str) -> bytes:
    """A context line moving to another user's records hash (a merge, from ``user``'s):
    formats 3 and 4 gain the user it was decided for, unless they name one already; the
    older formats name it anyway and are returned as they are. Format 6 (MessagePack)
    stays MessagePack."""
    six = is_msgpack(raw)
    if six or is_format_4(raw):
        stored = msgspec.structs.asdict((_decoder_6 if six else _decoder_4).decode(raw))
        if stored["uid"] is not None:
            return raw
        stored["uid"] = user
        values = _trimmed([stored[name] for name in _CONTEXT4_ORDER], _CONTEXT4_DEFAULTS)
        return _pack.encode(values) if six else _json.encode(values)
    if not raw.startswith(_PREFIX_3):
        return raw
    stored = msgspec.structs.asdict(_decoder_3.decode(raw))
    if stored["uid"] is not None:
        return raw
    stored["uid"] = user
    return _encode3([stored[name] for name in _CONTEXT3_ORDER])
