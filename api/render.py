"""Turn a stored context plus the commit's outcome into the public answer (pure, but for
the warning an unreadable record logs where a view shows it without its decision).

The idempotency record holds exactly these two inputs, so a retried request is rendered
by the same function from the same bytes: the same answer, byte for byte. A format-3
record (api/plan.py: encode_context) leaves out the ids its reader knows anyway; the
reader passes them as the record's ``RecordOwner`` (tenant, the user of the records hash,
the message id, the id key), and the decision id is sealed again, the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from zoneinfo import ZoneInfo

import msgspec
import structlog

from api.errors import ConflictError
from api.localtime import ms_to_utc as utc
from api.plan import (
    Context,
    RecordOwner,
    adopt_context,
    decode_context,
    decode_member,
    is_format_4,
    is_msgpack,
    member_priority,
)
from api.reasons import ReasonCode
from api.record_codes import channel_name, decision_name, reason_name, rule_name
from api.schemas import (
    DecisionResponse,
    DecisionState,
    DecisionStatus,
    Offer,
    Reason,
    TimelineEntry,
)

log = structlog.get_logger("sendwise.records")


class Outcome(msgspec.Struct, frozen=True):
    d: str
    ch: str | None
    t: int | None
    r: list[tuple[str, str, int | None, str | None]]
    #: the reserved candidate's [score, score now, propensity] (api/scoring.py)
    s: tuple[float, float, float] | None = None
    #: decision ids this decision displaced (preemption)
    x: list[str] = []
    #: 1: this outcome replaced a reservation a higher-priority message displaced
    p: int = 0


def _default(f: msgspec.structs.FieldInfo) -> object:
    return f.default_factory() if f.default_factory is not msgspec.NODEFAULT else f.default


#: ``Outcome`` as commit.lua writes it: a displaced decision is its id when its record
#: stores one (context formats 1 and 2), else ``[message id, key tag]`` (formats 3, 4, same
#: user) or ``[message id, key tag, user]`` (formats 3, 4, a record that moved with a merge)
_Stored = msgspec.defstruct("StoredOutcome", [
    (f.name, list[str | list[str]] if f.name == "x" else f.type, _default(f))
    for f in msgspec.structs.fields(Outcome)], frozen=True)
#: the outcome of a format-3 record (commit.lua: a context that is a JSON array gets an
#: outcome that is one): ``Outcome``'s fields by position in this order, trailing defaults
#: left out, ``s`` as [score, propensity] when the score now equals the score. Positions
#: never change once records exist: a new field is appended.
_OUTCOME3_ORDER = ("d", "ch", "t", "s", "r", "x", "p")


def _stored3_type() -> type[msgspec.Struct]:
    fields = {f.name: f for f in msgspec.structs.fields(_Stored)}
    if set(_OUTCOME3_ORDER) != set(fields):
        raise TypeError("Outcome's fields and _OUTCOME3_ORDER differ: append the new field")
    return msgspec.defstruct("StoredOutcome3", [
        (name, list[float] | None if name == "s" else fields[name].type,
         [] if name == "r" else _default(fields[name]))
        for name in _OUTCOME3_ORDER], array_like=True, frozen=True)


_Stored3 = _stored3_type()
_STORED3_DEFAULTS = [_default(f) for f in msgspec.structs.fields(_Stored3)]
#: the outcome of a format-4 record (its context starts with a number; so does the
#: outcome commit.lua writes for it): format 3's positions, with the decision, the
#: channels and the reason codes as numbers (api/record_codes.py; a name the lists do
#: not hold stays a string). Format 5's outcome is the byte ``5`` and then this array,
#: with the rules by number too where ``RULES`` holds them and every instant (``t``, each
#: reason's ``until``) as milliseconds after its context's: ~30 B less per record
#: (docs/benchmarks.md, "Record format 5"). Rules are read as numbers in format 4 as well:
#: a format-5 commit that re-decides a message preemption displaced writes its rules so.
_Stored4 = msgspec.defstruct("StoredOutcome4", [
    (f.name, {"d": int | str, "ch": int | str | None,
              "r": list[tuple[int | str, int | str, int | None, int | str | None]]}.get(
                  f.name, f.type),
     _default(f))
    for f in msgspec.structs.fields(_Stored3)], array_like=True, frozen=True)
#: how a format-5 outcome line starts (commit.lua writes it)
OUTCOME_5 = b"5"
_outcome_decoder = msgspec.json.Decoder(Outcome)
_json = msgspec.json.Encoder()
_pack = msgspec.msgpack.Encoder()
_stored_decoder = msgspec.json.Decoder(_Stored)
_stored3_decoder = msgspec.json.Decoder(_Stored3)
_stored4_decoder = msgspec.json.Decoder(_Stored4)
#: format 6's outcome: format 5's values as MessagePack (its instants relative too)
_stored6_decoder = msgspec.msgpack.Decoder(_Stored4)
#: a format-6 record: the MessagePack array [context, outcome(, cancelled at)]
_parts6_decoder = msgspec.msgpack.Decoder(list[msgspec.Raw])


class Slot(msgspec.Struct, frozen=True):
    """Where an outcome reserved: its channel and instant (None: nothing reserved)."""

    ch: str | None
    t: int | None


class _Slot3(msgspec.Struct, frozen=True, array_like=True):
    d: int | str
    ch: int | str | None
    t: int | None


_slot_decoder = msgspec.json.Decoder(Slot)
_slot3_decoder = msgspec.json.Decoder(_Slot3)
_slot6_decoder = msgspec.msgpack.Decoder(_Slot3)


def _base(base: int | None) -> int:
    """What a format-5 outcome's instants count from: its context's instant."""
    if base is None:
        raise ValueError("a format-5 outcome needs its context's instant to be decoded")
    return base


def _array(line: bytes) -> tuple[bool, bytes]:
    """An outcome line as (is it format 5, the line without format 5's marker): the one
    place that knows the marker, for every reader below."""
    return (True, line[1:]) if line.startswith(OUTCOME_5) else (False, line)


class UnreadableRecordError(ConflictError, ValueError):
    """A stored idempotency record this worker cannot read: damaged, or framed by a newer
    release this one does not know (a rolling upgrade that skipped its
    ``SENDWISE_RECORD_FORMAT``). Its message may have been sent, so a retry is not decided
    again: the answer is this 409, naming the message (``field`` says where the request
    named it). Its reservation, if it holds one, still counts against the caps and a cancel
    still releases it; the timeline and the export show the ledger entry without the
    decision (docs/architecture.md, "Unreadable records")."""

    code = "record_unreadable"

    def __init__(self, message_id: str | None, *, field: str = "message_id") -> None:
        named = "a message" if message_id is None else f"message_id {message_id!r}"
        super().__init__(
            f"the stored decision of {named} cannot be read (damaged, or written by a newer "
            "release); it is not decided again (it may have been sent) while the record "
            "lives, its reservation still counts, and a cancel releases it", field=field)
        self.message_id = message_id


#: what reading damaged bytes raises: msgspec's DecodeError and ValidationError, a number
#: or a code that does not parse, a line or an element that is not there, a code no table
#: holds (api/record_codes.py), a zone no database holds, an instant out of range
_DAMAGE = (ValueError, IndexError, KeyError, OverflowError)


@contextmanager
def reading_record(message_id: str | None) -> Iterator[None]:
    """Whatever damaged bytes make a reader raise, as the one ``UnreadableRecordError``,
    so callers decide what an unreadable record means for them in one ``except``."""
    try:
        yield
    except UnreadableRecordError:
        raise
    except _DAMAGE as exc:
        raise UnreadableRecordError(message_id) from exc


def record_parts(record: bytes) -> tuple[bytes, bytes, int | None]:
    """A stored record (without the expiry in front of it) as its context, its outcome and
    the instant cancel.lua appended (None: not cancelled): the only Python code that knows
    how a record is framed. JSON formats: lines; format 6: one MessagePack array (commit.lua
    writes its header and two elements, cancel.lua makes it three), so no value needs to
    avoid a newline. A worker of a release before format 6 that cancels such a record
    appends a line, ``\n<ms>``, as it does to its own: read as that cancellation (cancel.lua
    sees it too), so a rolling upgrade without ``SENDWISE_RECORD_FORMAT=5`` leaves no record
    unreadable."""
    if is_msgpack(record):
        cancelled: int | None = None
        try:
            parts = _parts6_decoder.decode(record)
        except msgspec.DecodeError:
            head, _, tail = record.rpartition(b"\n")
            if not (head and tail.isdigit()):
                raise
            parts, cancelled = _parts6_decoder.decode(head), int(tail)
            if len(parts) != 2:
                raise ValueError("a format-6 record cancelled twice") from None
        if len(parts) not in (2, 3):
            raise ValueError(f"a format-6 record of {len(parts)} elements")
        if len(parts) > 2:
            cancelled = msgspec.msgpack.decode(parts[2], type=int)
        return bytes(parts[0]), bytes(parts[1]), cancelled
    lines = record.split(b"\n")
    return lines[0], lines[1], int(lines[2]) if len(lines) > 2 else None


def join_record(context: bytes, outcome: bytes, cancelled: int | None, *, packed: bool) -> bytes:
    """``record_parts``' inverse: a record framed as format 6 (``packed``, the MessagePack
    array commit.lua and cancel.lua write) or as lines."""
    if packed:
        return (b"\x92" + context + outcome if cancelled is None
                else b"\x93" + context + outcome + _pack.encode(cancelled))
    return b"\n".join([context, outcome] + ([] if cancelled is None else [str(cancelled).encode()]))


def decode_slot(raw: bytes | str, base: int | None = None) -> Slot:
    """An outcome's channel and instant alone (channel pacing): needs no owner, whatever
    the outcome names in ``x``; any layout. ``base``: the instant of its context (the
    decision's ``now``), which a format-5 outcome's instant counts from."""
    five, data = _array(raw.encode() if isinstance(raw, str) else raw)
    six = is_msgpack(data)
    if six or data.startswith(b"["):
        slot = (_slot6_decoder if six else _slot3_decoder).decode(data)
        t = slot.t + _base(base) if (five or six) and slot.t is not None else slot.t
        return Slot(channel_name(slot.ch), t)
    return _slot_decoder.decode(data)


def _names_by_message(outcome: bytes) -> bool:
    """Does the outcome name a displaced decision by message id (a list inside ``x``)?
    Decision ids are base64url, so in a list of ids no ``[`` follows ``[`` or ``,``."""
    rest = outcome.partition(b'"x":')[2]
    return b'[["' in rest or b',["' in rest


def decode_outcome(raw: bytes | str, owner: RecordOwner | None = None,
                   base: int | None = None) -> Outcome:
    """An outcome line, an object (records of context formats 1 and 2) or the positional
    array of format 3, 4 or 5, or format 6's MessagePack array; ``owner`` (where its record
    was read, or the commit that wrote it) re-seals the ids of displaced decisions that
    commit.lua names by message id; ``base``, the instant of the record's context, is what
    the instants of a format-5 or 6 outcome count from."""
    five, data = _array(raw.encode() if isinstance(raw, str) else raw)
    six = is_msgpack(data)
    if six or data.startswith(b"["):
        if six or five or is_format_4(data):
            relative = five or six
            fields = msgspec.structs.asdict(
                (_stored6_decoder if six else _stored4_decoder).decode(data))
            shift = _base(base) if relative else 0
            fields["d"] = decision_name(fields["d"])
            fields["ch"] = channel_name(fields["ch"])
            if relative and fields["t"] is not None:
                fields["t"] += shift
            fields["r"] = [(reason_name(code), rule_name(rule),
                            None if until is None else until + shift, channel_name(channel))
                           for code, rule, until, channel in fields["r"]]
        else:
            fields = msgspec.structs.asdict(_stored3_decoder.decode(data))
        note = fields["s"]
        if note is not None:
            fields["s"] = (note[0], note[0], note[1]) if len(note) == 2 else tuple(note)
        if not fields["x"]:
            return Outcome(**fields)
    elif not _names_by_message(data):
        return _outcome_decoder.decode(data)
    else:
        fields = msgspec.structs.asdict(_stored_decoder.decode(data))
    x: list[str] = []
    for ref in fields["x"]:
        if isinstance(ref, str):
            x.append(ref)
            continue
        if owner is None or len(ref) < 2:
            raise ValueError("a displaced decision named by message id needs its owner")
        x.append(owner.ids.decision_id(owner.tenant, ref[2] if len(ref) > 2 else owner.user,
                                       ref[0], ref[1]))
    fields["x"] = x
    return Outcome(**fields)


def render(ctx: Context, outcome: Outcome, *, replayed: bool = False,
           cancelled_at: int | None = None) -> DecisionResponse:
    pre = [Reason(code=p.code, rule=p.rule,
                  until=None if p.until is None else utc(p.until), channel=p.channel)
           for p in ctx.pre]
    committed = [Reason(code=code, rule=rule, until=None if until is None else utc(until),
                        channel=channel)
                 for code, rule, until, channel in outcome.r]
    # a displaced decision (moved or suppressed) leads with why it changed, `preempted`
    # (commit.lua writes it first), then the rest as for any decision
    if committed and committed[0].code == ReasonCode.PREEMPTED:
        reasons = committed[:1] + pre + committed[1:]
    else:
        reasons = pre + committed
    send_at = None if outcome.t is None else utc(outcome.t)
    note = outcome.s if outcome.s is not None else ctx.s
    return DecisionResponse(
        decision_id=ctx.did,
        message_id=ctx.mid,
        decision=outcome.d,  # type: ignore[arg-type]
        channel=outcome.ch,
        send_at=send_at,
        local_send_at=None if send_at is None else send_at.astimezone(ZoneInfo(ctx.zone)),
        timezone=ctx.zone,
        reasons=reasons,
        policy_version=ctx.pv,
        decided_at=utc(ctx.now),
        score=None if note is None else note[0],
        score_now=None if note is None else note[1],
        propensity=None if note is None else note[2],
        model_version=ctx.mv,
        features_source=ctx.fs,
        dry_run=ctx.dry,
        replayed=replayed,
        cancelled_at=None if cancelled_at is None else utc(cancelled_at),
        displaced=list(outcome.x),
    )


def _read(record: bytes, owner: RecordOwner) -> tuple[Context, Outcome, DecisionResponse]:
    """The one reading of a stored record every reader below shares: its context, its
    outcome and the answer they render, with a cancellation instant if any
    (``record_parts``); an unreadable record raises ``UnreadableRecordError``."""
    with reading_record(owner.mid):
        context, line, cancelled = record_parts(record)
        ctx = decode_context(context, owner)
        outcome = decode_outcome(line, owner, ctx.now)
        return ctx, outcome, render(ctx, outcome, replayed=True, cancelled_at=cancelled)


def decision_status(record: bytes, owner: RecordOwner) -> DecisionStatus:
    """A stored record as ``GET /v1/decisions/{id}`` shows it: the live state (a cancel
    line or a preemption overrides the answer's decision) and the reservation's instant.
    An unreadable record raises ``UnreadableRecordError``."""
    _, outcome, answer = _read(record, owner)
    state: DecisionState = ("cancelled" if answer.cancelled_at is not None
                            else "preempted" if outcome.p else answer.decision)
    live = state in ("send", "defer")
    return DecisionStatus(
        decision_id=answer.decision_id, message_id=answer.message_id, state=state,
        channel=answer.channel if live else None, send_at=answer.send_at if live else None,
        local_send_at=answer.local_send_at if live else None, timezone=answer.timezone,
        reasons=answer.reasons, decided_at=answer.decided_at,
        cancelled_at=answer.cancelled_at)


def render_record(record: bytes, owner: RecordOwner) -> tuple[Context, DecisionResponse]:
    """A stored record: its context and its answer (``_read``). ``owner``: where it was
    read (tenant, the user of the records hash, the message id), which a format-3 record
    leaves out (api/plan.py: encode_context). An unreadable record raises
    ``UnreadableRecordError``."""
    ctx, _, answer = _read(record, owner)
    return ctx, answer


def readable_answer(record: bytes, owner: RecordOwner) -> DecisionResponse | None:
    """A record's answer for the views that list a recipient's ledger (timeline, export):
    an unreadable record shows its entry without the decision (None, as once the record
    has expired) rather than failing the whole view; it is logged."""
    try:
        return render_record(record, owner)[1]
    except UnreadableRecordError as exc:
        log.warning("record_unreadable", message_id=owner.mid, error=str(exc.__cause__))
        return None


def adopt_record(record: bytes, user: str) -> bytes:
    """A record moving from ``user``'s records hash to another's (merge_apply.lua copies it
    verbatim): what formats 3 and 4 leave implicit as "the user of this hash" is written out, in
    the context line (api/plan.py: adopt_context) and in the displaced decisions the
    outcome names by message id, so it renders the same answer under its new owner. An
    unreadable record raises ``UnreadableRecordError``."""
    with reading_record(None):
        return _adopted(record, user)


def _adopted(record: bytes, user: str) -> bytes:
    six = is_msgpack(record)
    context, line, cancelled = record_parts(record)
    context = adopt_context(context, user)
    five, data = _array(line)
    positional = six or data.startswith(b"[")
    if positional or _names_by_message(data):
        decoder = (_stored6_decoder if six else _stored4_decoder if five or is_format_4(data)
                   else _stored3_decoder) if positional else _stored_decoder
        stored = decoder.decode(data)
        fields = msgspec.structs.asdict(stored)
        refs = fields["x"]
        if any(isinstance(r, list) and len(r) == 2 for r in refs):
            fields["x"] = [[*r, user] if isinstance(r, list) and len(r) == 2 else r
                           for r in refs]
            if positional:
                values = [fields[name] for name in _OUTCOME3_ORDER]
                while values and values[-1] == _STORED3_DEFAULTS[len(values) - 1]:
                    values.pop()
                line = _pack.encode(values) if six else \
                    (OUTCOME_5 if five else b"") + _json.encode(values)
            else:
                line = _json.encode(msgspec.structs.replace(stored, x=fields["x"]))
    return join_record(context, line, cancelled, packed=six)


def timeline_entry(member: bytes, score: int, zone: ZoneInfo, now: int, decision_id: str,
                   answer: DecisionResponse | None) -> TimelineEntry:
    """One ledger entry as the timeline and the export show it: the decoded member, its
    instant in UTC and in the recipient's zone, and the decision it came from (``answer``,
    from the idempotency record while that lives)."""
    entry = decode_member(member)
    send_at = utc(score)
    return TimelineEntry(
        message_id=entry[0], channel=entry[1], category=entry[2],
        campaign_id=entry[3] or None, tags=list(entry[4] or []),
        offer=Offer(id=entry[5], group=entry[6]) if entry[5] else None,
        send_at=send_at, local_send_at=send_at.astimezone(zone),
        status="sent" if score <= now else "scheduled", decision_id=decision_id,
        decision=None if answer is None else answer.decision,
        reasons=None if answer is None else answer.reasons, priority=member_priority(entry))
