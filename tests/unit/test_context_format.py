"""The idempotency record's context in its formats: the original one (the struct's own
names), format 2 (short names, omitted defaults), format 3 (format 2 without what a reader
recomputes: the decision id, the message id and the user of the records hash), 4 and 5
(codes and numbers) and 6 (format 5's values as MessagePack). Records of every format
replay the same answer, byte for byte."""

from __future__ import annotations

import json
from collections.abc import Callable

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.ids import IdKey, Secret
from api.plan import (
    Context,
    PreReason,
    RecordOwner,
    adopt_context,
    encode_context,
    encode_context_v2,
    encode_context_v4,
    encode_context_v6,
    is_msgpack,
)
from api.record_codes import FEATURE_SOURCES, REASONS, RULES, ZONES
from api.render import (
    adopt_record,
    decode_context,
    decode_outcome,
    decode_slot,
    record_parts,
    render_record,
)
from api.schemas import CHANNELS

NOW = 1_781_107_200_000
DID = "d_2hVSsobYtKylZ81beWuOgjYWXrl1_tRCUKCYXwoeqr_WNNlFqrkp0jrUe3Ochg"
OUTCOME = (b'{"d":"defer","ch":"email","t":1781112600000,"r":[["frequency_cap","caps[0]",'
           b'1781112600000,"email"]],"s":[0.041,0.039,0.95]}')
#: a record exactly as the previous format wrote it (the struct's own names)
LEGACY = (b'{"v":1,"did":"' + DID.encode() + b'","mid":"m-1","uid":"u-1","pv":"7",'
          b'"zone":"America/New_York","now":1781107200000,"fp":"0123456789abcdef0123",'
          b'"dry":false,"pre":[["no_consent","preferences.channels.sms",null,"sms"]],'
          b'"mv":"heuristic-v2","fs":"profile"}\n' + OUTCOME)
#: what that record rendered before the compact format existed (a golden answer)
#: (computed at the commit before it, 47f5423, by render_record)
LEGACY_ANSWER = (
    b'{"decision_id":"' + DID.encode() + b'","message_id":"m-1","decision":"defer","channel":"email","sen'
    b'd_at":"2026-06-10T17:30:00Z","local_send_at":"2026-06-10T13:30:00-04:00","timezo'
    b'ne":"America/New_York","reasons":[{"code":"no_consent","rule":"preferences.chann'
    b'els.sms","channel":"sms"},{"code":"frequency_cap","rule":"caps[0]","until":"2026'
    b'-06-10T17:30:00Z","channel":"email"}],"policy_version":"7","decided_at":"2026-06'
    b'-10T16:00:00Z","score":0.041,"score_now":0.039,"model_version":"heuristic-v2","f'
    b'eatures_source":"profile","propensity":0.95,"dry_run":false,"replayed":true,"can'
    b'celled_at":null,"displaced":[]}')


#: the same record as format 2 wrote it (the previous release, 75c4ffc: encode_context)
COMPACT_V2 = (b'{"did":"' + DID.encode() + b'","m":"m-1","u":"u-1","p":"7","z":"America/New_York",'
              b'"n":1781107200000,"f":"0123456789abcdef0123","r":[["no_consent","preferences.'
              b'channels.sms",null,"sms"]],"mv":"heuristic-v2","fs":"profile"}\n' + OUTCOME)
#: what it rendered cancelled (cancel.lua's third line), at 75c4ffc
CANCELLED_ANSWER = LEGACY_ANSWER.replace(b'"cancelled_at":null',
                                         b'"cancelled_at":"2026-06-10T16:13:20Z"')
IDS = IdKey(Secret(b"s" * 32))
OWNER = RecordOwner("t", "u-1", "m-1", IDS)


def test_legacy_record_replays_byte_identically() -> None:
    ctx, answer = render_record(LEGACY, OWNER)
    assert msgspec.json.encode(answer) == LEGACY_ANSWER
    # and a cancelled legacy record (cancel.lua appends a third line) too
    cancelled = render_record(LEGACY + b"\n1781108000000", OWNER)[1]
    assert msgspec.json.encode(cancelled) == CANCELLED_ANSWER
    # a format-2 record of the previous release renders the same bytes
    assert msgspec.json.encode(render_record(COMPACT_V2, OWNER)[1]) == LEGACY_ANSWER
    assert msgspec.json.encode(render_record(COMPACT_V2 + b"\n1781108000000", OWNER)[1]) == \
        CANCELLED_ANSWER
    # format 2 is still what SENDWISE_RECORD_FORMAT=2 writes
    assert encode_context_v2(ctx) + b"\n" + OUTCOME == COMPACT_V2


def test_format_3_leaves_out_what_the_reader_recomputes() -> None:
    ctx = decode_context(LEGACY.split(b"\n")[0])
    # the id this key seals for (tenant, user, message): what the engine puts in ctx.did
    ctx = msgspec.structs.replace(ctx, did=IDS.decision_id("t", "u-1", "m-1"))
    raw = encode_context(ctx, user="u-1", tag=IDS.tag)
    assert raw.startswith(b'["' + IDS.tag.encode() + b'",') and b"\n" not in raw
    assert json.loads(raw) == [IDS.tag, "7", "America/New_York", 1781107200000,
                               "ASNFZ4mrze8BIw",  # the fingerprint, base64url
                               "heuristic-v2", "profile", None, False,
                               [["no_consent", "preferences.channels.sms", None, "sms"]]]
    assert b"m-1" not in raw and b"u-1" not in raw and b"d_" not in raw
    assert len(raw) == len(COMPACT_V2.split(b"\n")[0]) - 112  # 264 -> 152 B
    record = raw + b"\n" + OUTCOME
    answer = msgspec.json.encode(render_record(record, OWNER)[1])
    assert answer == LEGACY_ANSWER.replace(DID.encode(), ctx.did.encode())
    assert render_record(record, OWNER)[0] == ctx
    with pytest.raises(ValueError, match="owner"):  # not readable without where it was
        decode_context(raw)


def test_format_3_after_an_id_key_rotation() -> None:
    """The record keeps the tag of the secret that sealed its answer's id: a replay after a
    rotation (that secret now a previous one) renders the same id, byte for byte."""
    ctx = msgspec.structs.replace(decode_context(LEGACY.split(b"\n")[0]),
                                  did=IDS.decision_id("t", "u-1", "m-1"))
    record = encode_context(ctx, user="u-1", tag=IDS.tag) + b"\n" + OUTCOME
    before = msgspec.json.encode(render_record(record, OWNER)[1])
    rotated = IdKey(Secret(b"n" * 32), previous=[Secret(b"s" * 32)])
    assert rotated.tag != IDS.tag
    after = render_record(record, OWNER._replace(ids=rotated))[1]
    assert msgspec.json.encode(after) == before
    assert rotated.parse_decision_id("t", after.decision_id) == ("u-1", "m-1")


def test_a_merged_record_keeps_its_user() -> None:
    """A record decided for u-1 moves to u-2's hash with a merge (merge_apply.lua copies it
    verbatim after lifecycle.adopt_record): it still renders u-1's decision id, and so do
    the decisions its outcome displaced, which commit.lua named by message id."""
    ctx = msgspec.structs.replace(decode_context(LEGACY.split(b"\n")[0]),
                                  did=IDS.decision_id("t", "u-1", "m-1"))
    out = OUTCOME[:-1] + b',"x":["' + DID.encode() + b'",["m-0","' + IDS.tag.encode() + b'"]]}'
    record = encode_context(ctx, user="u-1", tag=IDS.tag) + b"\n" + out + b"\n1781108000000"
    first = render_record(record, OWNER)[1]
    assert first.displaced == [DID, IDS.decision_id("t", "u-1", "m-0")]
    moved = adopt_record(record, "u-1")
    assert moved.endswith(b"\n1781108000000")
    assert json.loads(moved.split(b"\n")[0])[7] == "u-1"  # the user, 8th
    assert adopt_record(moved, "u-9") == moved  # a second merge keeps the first user
    merged = render_record(moved, RecordOwner("t", "u-2", "m-1", IDS))
    assert merged[0].uid == "u-1"
    assert msgspec.json.encode(merged[1]) == msgspec.json.encode(first)
    # decided for a merged id: written with its user from the start
    raw = encode_context(ctx, user="u-2", tag=IDS.tag)
    assert adopt_context(raw, "u-2") == raw
    assert decode_context(raw, RecordOwner("t", "u-2", "m-1", IDS)) == ctx
    # the older formats carry their ids: copied as they are
    assert adopt_record(LEGACY, "u-1") == LEGACY and adopt_record(COMPACT_V2, "u-1") == COMPACT_V2


def test_displaced_ids_need_an_owner() -> None:
    out = b'{"d":"send","ch":"email","t":1,"r":[],"x":[["m-0","abc","u-7"]]}'
    with pytest.raises(ValueError, match="owner"):
        decode_outcome(out)
    assert decode_outcome(out, OWNER).x == [IDS.decision_id("t", "u-7", "m-0", "abc")]
    plain = b'{"d":"send","ch":"email","t":1,"r":[["a","b",null,"c"]],"x":["d_1"]}'
    assert decode_outcome(plain).x == ["d_1"]


texts = st.text(min_size=0, max_size=30)
pre_reasons = st.builds(PreReason, texts, texts, st.none() | st.integers(0, 2**53),
                        st.none() | texts)
contexts = st.builds(
    Context, did=texts, mid=texts, uid=texts, pv=texts, zone=texts,
    now=st.integers(0, 2**53), fp=texts, dry=st.booleans(),
    pre=st.lists(pre_reasons, max_size=3), mv=st.none() | texts,
    fs=st.none() | st.sampled_from(["profile", "prior"]), v=st.integers(0, 3))


@given(contexts, texts)
def test_every_format_decodes_to_the_same_context(ctx: Context, user: str) -> None:
    ctx = msgspec.structs.replace(ctx, did=IDS.decision_id("t", ctx.uid, ctx.mid))
    v2 = encode_context_v2(ctx)
    v3 = encode_context(ctx, user=user, tag=IDS.tag)
    legacy = msgspec.json.encode(ctx)
    assert b"\n" not in v2 and json.loads(v2)["did"] == ctx.did
    assert b"\n" not in v3 and json.loads(v3)[0] == IDS.tag
    owner = RecordOwner("t", user, ctx.mid, IDS)
    assert decode_context(v3, owner) == decode_context(v2) == ctx == decode_context(legacy)
    assert decode_context(adopt_context(v3, user), RecordOwner("t", "other", ctx.mid, IDS)) \
        == ctx
    assert len(v3) < len(v2) <= len(legacy)
    v4 = encode_context_v4(ctx, user=user, tag=IDS.tag)
    assert b"\n" not in v4 and json.loads(v4)[:2] == [ctx.now, IDS.tag]
    assert decode_context(v4, owner) == ctx
    assert decode_context(adopt_context(v4, user), RecordOwner("t", "other", ctx.mid, IDS)) \
        == ctx
    assert len(v4) <= len(v3)
    v5 = encode_context_v4(ctx, user=user, tag=IDS.tag, rules=True)  # format 5's context
    assert b"\n" not in v5 and decode_context(v5, owner) == ctx
    assert decode_context(adopt_context(v5, user), RecordOwner("t", "other", ctx.mid, IDS)) \
        == ctx
    assert len(v5) <= len(v4)
    v6 = encode_context_v6(ctx, user=user, tag=IDS.tag)  # format 5's values, MessagePack
    assert is_msgpack(v6) and msgspec.msgpack.decode(v6) == json.loads(v5)
    assert decode_context(v6, owner) == ctx
    adopted = adopt_context(v6, user)
    assert is_msgpack(adopted)
    assert decode_context(adopted, RecordOwner("t", "other", ctx.mid, IDS)) == ctx
    assert len(v6) < len(v5)


def test_format_5_writes_this_releases_rules_as_numbers() -> None:
    """The context of format 5 numbers the pre-commit reasons' rules the list holds (a
    consent rule here); any other rule stays its name."""
    ctx = msgspec.structs.replace(decode_context(LEGACY.split(b"\n")[0]),
                                  did=IDS.decision_id("t", "u-1", "m-1"))
    ctx = msgspec.structs.replace(ctx, pre=[*ctx.pre, PreReason("holdout", "tenant-rule")])
    stored = json.loads(encode_context_v4(ctx, user="u-1", tag=IDS.tag, rules=True))
    assert [p[1] for p in stored[9]] == [RULES.index("preferences.channels.sms"), "tenant-rule"]
    assert json.loads(encode_context_v4(ctx, user="u-1", tag=IDS.tag))[9][0][1] == \
        "preferences.channels.sms"


@given(contexts.map(lambda c: msgspec.structs.replace(
    c, zone=ZONES[len(c.zone) % len(ZONES)],
    pre=[PreReason(REASONS[len(p.code) % len(REASONS)], p.rule, p.until,
                   None if p.channel is None else CHANNELS[len(p.channel) % len(CHANNELS)])
         for p in c.pre])))
def test_format_4_writes_known_names_as_numbers(ctx: Context) -> None:
    """Zones, features sources, reason codes and channels its lists hold are numbers in
    format 4, and read back as the names."""
    ctx = msgspec.structs.replace(ctx, did=IDS.decision_id("t", ctx.uid, ctx.mid))
    stored = json.loads(encode_context_v4(ctx, user=ctx.uid, tag=IDS.tag))
    assert stored[3] == ZONES.index(ctx.zone)
    assert (None if len(stored) < 7 or stored[6] is None else FEATURE_SOURCES[stored[6]]) \
        == ctx.fs
    if ctx.pre:
        assert [(p[0], p[3]) for p in stored[9]] == [
            (REASONS.index(p.code), None if p.channel is None else CHANNELS.index(p.channel))
            for p in ctx.pre]
    raw = encode_context_v4(ctx, user=ctx.uid, tag=IDS.tag)
    assert decode_context(raw, RecordOwner("t", ctx.uid, ctx.mid, IDS)) == ctx


def test_the_positional_outcome_of_format_4() -> None:
    """commit.lua writes a format-4 record's outcome with the decision, the channels and
    the reason codes as numbers; a name its tables lack stays a string. It decodes to
    the same Outcome as formats 3 and the object; a number no list holds (a newer
    release's) is an error, not a wrong answer."""
    obj = decode_outcome(OUTCOME)
    assert decode_outcome(b'[1,0,1781112600000,[0.041,0.039,0.95],[[0,"caps[0]",'
                          b'1781112600000,0]]]') == obj
    assert decode_outcome(b'[1,"email",1781112600000,[0.041,0.039,0.95],[["frequency_cap",'
                          b'"caps[0]",1781112600000,"email"]]]') == obj
    assert decode_outcome(b'[2,null,null,null,[[20,"cap",null,1]],[],1]') == decode_outcome(
        b'["suppress",null,null,null,[["preempted","cap",null,"sms"]],[],1]')
    assert decode_slot(b'[0,5,7]') == decode_slot(b'["send","web_push",7]')
    with pytest.raises(ValueError, match="newer release"):
        decode_outcome(b'[0,6,1,[0.5,1.0]]')
    with pytest.raises(ValueError, match="newer release"):
        decode_outcome(b'[0,0,1,[0.5,1.0],[[23,"r",null,null]]]')
    displacing = b'[0,1,1,null,[],["' + DID.encode() + b'",["m-0","' + \
        IDS.tag.encode() + b'"]]]'
    moved = _displacing_record_moves(encode_context_v4, displacing)
    assert json.loads(moved.split(b"\n")[0])[7] == "u-1"


def _displacing_record_moves(encode: Callable[..., bytes], displacing: bytes) -> bytes:
    """A record whose outcome displaced ``m-0`` (``displacing``, the outcome as commit.lua
    writes it, context by ``encode``): it names the displaced decision for its owner, and
    moved by a merge, the displaced decision's user is written out, the rest kept, and it
    renders the same under its new owner. Returns the moved record."""
    assert decode_outcome(displacing, OWNER, NOW).x == [DID, IDS.decision_id("t", "u-1", "m-0")]
    ctx = msgspec.structs.replace(decode_context(LEGACY.split(b"\n")[0]),
                                  did=IDS.decision_id("t", "u-1", "m-1"))
    record = encode(ctx, user="u-1", tag=IDS.tag) + b"\n" + displacing
    moved = adopt_record(record, "u-1")
    assert moved.split(b"\n")[1] == displacing[:-3] + b',"u-1"]]]'
    merged = RecordOwner("t", "u-2", "m-1", IDS)
    assert render_record(moved, merged)[1] == render_record(record, OWNER)[1]
    return moved


def test_the_positional_outcome_of_format_3() -> None:
    """commit.lua writes a format-3 record's outcome as [d, ch, t, s, r, x, p] without its
    trailing defaults (api/render.py); it decodes to the same Outcome as the object."""
    obj = decode_outcome(OUTCOME)
    assert decode_outcome(b'["defer","email",1781112600000,[0.041,0.039,0.95],[["frequency_cap",'
                          b'"caps[0]",1781112600000,"email"]]]') == obj
    assert decode_outcome(b'["send","sms",1,[0.5,0.5,1.0]]') == \
        decode_outcome(b'{"d":"send","ch":"sms","t":1,"r":[],"s":[0.5,0.5,1.0]}') == \
        decode_outcome(b'["send","sms",1,[0.5,1.0]]')  # the score once: score now = score
    assert decode_outcome(b'["send","sms",1,[0.5,0.25,1.0]]').s == (0.5, 0.25, 1.0)
    suppressed = b'["suppress",null,null,null,[["preempted","cap",null,"sms"]],[],1]'
    assert decode_outcome(suppressed) == decode_outcome(
        b'{"d":"suppress","ch":null,"t":null,"r":[["preempted","cap",null,"sms"]],"p":1}')
    displacing = b'["send","sms",1,null,[],["' + DID.encode() + b'",["m-0","' + \
        IDS.tag.encode() + b'"]]]'
    with pytest.raises(ValueError, match="owner"):
        decode_outcome(displacing)
    _displacing_record_moves(encode_context, displacing)


def test_the_positional_outcome_of_format_5() -> None:
    """Format 5's outcome is the byte 5 and format 4's array, with its instants counted
    from its context's and this release's rules by number: the same Outcome as format 4
    once the reader adds the context's instant back, which it must be given."""
    base = 1781112000000
    obj = decode_outcome(OUTCOME)
    assert decode_outcome(b'5[1,0,600000,[0.041,0.039,0.95],[[0,"caps[0]",600000,0]]]',
                          base=base) == obj
    quiet = decode_outcome(b'5[1,1,5,null,[[3,0,4,1],[3,"own-rule",null,1]]]', base=base)
    assert (quiet.t, quiet.r) == (base + 5, [("quiet_hours", "default-quiet-hours", base + 4,
                                              "sms"), ("quiet_hours", "own-rule", None, "sms")])
    assert decode_outcome(b'5[2,null,null,null,[[20,"cap",null,1]],[],1]', base=base) == \
        decode_outcome(b'[2,null,null,null,[[20,"cap",null,1]],[],1]')
    assert decode_slot(b'5[0,5,7]', 10) == decode_slot(b'[0,5,17]')
    # a rule number format 4 records may hold too (a format-5 commit re-decided them)
    assert decode_outcome(b'[1,1,5,null,[[3,0,4,1]]]').r[0][1] == "default-quiet-hours"
    for missing in (lambda: decode_outcome(b'5[0,0,1]'), lambda: decode_slot(b'5[0,0,1]')):
        with pytest.raises(ValueError, match="context's instant"):
            missing()
    with pytest.raises(ValueError, match="newer release"):
        decode_outcome(b'5[1,1,5,null,[[3,%d,4,1]]]' % len(RULES), base=base)
    displacing = b'5[0,1,1,null,[],["' + DID.encode() + b'",["m-0","' + \
        IDS.tag.encode() + b'"]]]'

    def five(ctx: Context, *, user: str, tag: str) -> bytes:
        return encode_context_v4(ctx, user=user, tag=tag, rules=True)

    moved = _displacing_record_moves(five, displacing)
    assert moved.split(b"\n")[1].startswith(b"5[0,1,1,")


def test_the_outcome_and_framing_of_format_6() -> None:
    """Format 6 holds format 5's values as MessagePack: the same Outcome, the same slot,
    and a record framed as one array [context, outcome(, cancelled at)], so no value needs
    to avoid a newline. A merge writes the displaced decision's user out and keeps the
    cancellation; the moved record renders the same under its new owner."""
    base = 1781112000000
    five = b'5[1,0,600000,[0.041,0.039,0.95],[[0,"caps[0]",600000,0]]]'
    six = msgspec.msgpack.encode(json.loads(five[1:]))
    assert is_msgpack(six) and not is_msgpack(five) and not is_msgpack(OUTCOME)
    assert decode_outcome(six, base=base) == decode_outcome(five, base=base) == \
        decode_outcome(OUTCOME)
    assert decode_slot(msgspec.msgpack.encode([0, 5, 7]), 10) == decode_slot(b'5[0,5,7]', 10)
    with pytest.raises(ValueError, match="context's instant"):
        decode_outcome(six)
    # Lua has one number type: a propensity of 1.0 arrives as the integer 1
    assert decode_outcome(msgspec.msgpack.encode([0, 0, 0, [0.5, 1]]), base=base).s == \
        (0.5, 0.5, 1.0)
    ctx = msgspec.structs.replace(decode_context(LEGACY.split(b"\n")[0]),
                                  did=IDS.decision_id("t", "u-1", "m-1"))
    context = encode_context_v6(ctx, user="u-1", tag=IDS.tag)
    displacing = msgspec.msgpack.encode([0, 1, 1, None, [], [DID, ["m-0", IDS.tag]]])
    record = b"\x92" + context + displacing
    assert record_parts(record) == (context, displacing, None)
    assert render_record(record, OWNER)[1].displaced == [DID, IDS.decision_id("t", "u-1", "m-0")]
    cancelled = b"\x93" + context + displacing + msgspec.msgpack.encode(NOW)
    assert record_parts(cancelled) == (context, displacing, NOW)
    merged = RecordOwner("t", "u-2", "m-1", IDS)
    for stored in (record, cancelled):
        moved = adopt_record(stored, "u-1")
        moved_context, moved_outcome, at = record_parts(moved)
        assert moved[:1] == stored[:1] and at == record_parts(stored)[2]
        assert msgspec.msgpack.decode(moved_context)[7] == "u-1"
        assert msgspec.msgpack.decode(moved_outcome)[5][1] == ["m-0", IDS.tag, "u-1"]
        assert render_record(moved, merged)[1] == render_record(stored, OWNER)[1]
    assert render_record(cancelled, OWNER)[1].cancelled_at is not None
    for damaged in (b"\x91" + context, b"\x94" + context + displacing + b"\x01\x02"):
        with pytest.raises(ValueError, match="format-6 record"):
            record_parts(damaged)
