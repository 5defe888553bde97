"""api/render.py: a stored record renders the same answer byte for byte, in local time."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.ids import IdKey, Secret
from api.plan import Context, PreReason, RecordOwner, encode_context
from api.render import Outcome, decode_context, decode_outcome, render, render_record, utc

NOW = int(dt.datetime(2026, 6, 10, 16, 0, tzinfo=dt.UTC).timestamp() * 1000)
MIN = 60_000
IDS = IdKey(Secret(b"k" * 32))


def ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).timestamp() * 1000)


def context(zone: str = "America/New_York", now: int = NOW, pre: list[PreReason] | None = None,
            mid: str = "m1", uid: str = "u1", dry: bool = False) -> Context:
    return Context(did=IDS.decision_id("t", uid, mid), mid=mid, uid=uid, pv="3", zone=zone, now=now,
                   fp="f" * 20, dry=dry, pre=pre or [])


def lua_outcome(d: str, ch: str | None, t: int | None,
                reasons: list[tuple[str, str, int | None, str | None]]) -> bytes:
    """The outcome line exactly as commit.lua writes it (no spaces, integers as %.0f)."""
    def enc(x: object) -> str:
        return "null" if x is None else msgspec.json.encode(x).decode()

    parts = ",".join(f"[{enc(c)},{enc(r)},{enc(u)},{enc(h)}]" for c, r, u, h in reasons)
    return (f'{{"d":"{d}","ch":{enc(ch)},"t":{enc(t)},"r":[{parts}]}}').encode()


def owner(ctx: Context) -> RecordOwner:
    """Where ``record(ctx, ...)`` is read: tenant "t", the user's own records hash."""
    return RecordOwner("t", ctx.uid, ctx.mid, IDS)


def record(ctx: Context, outcome: bytes, cancelled_at: int | None = None) -> bytes:
    raw = encode_context(ctx, user=ctx.uid, tag=IDS.tag) + b"\n" + outcome
    return raw if cancelled_at is None else raw + b"\n" + str(cancelled_at).encode()


def test_replay_is_byte_identical() -> None:
    ctx = context(pre=[PreReason("no_consent", "preferences.channels.sms", None, "sms")])
    out = lua_outcome("defer", "email", NOW + 90 * MIN,
                      [("frequency_cap", "cap0", NOW + 90 * MIN, "email")])
    first = render(ctx, decode_outcome(out))
    stored = record(ctx, out)
    _, replay1 = render_record(stored, owner(ctx))
    _, replay2 = render_record(stored, owner(ctx))
    assert msgspec.json.encode(replay1) == msgspec.json.encode(replay2)
    assert replay1.replayed and not first.replayed
    assert msgspec.json.encode(msgspec.structs.replace(replay1, replayed=False)) == \
        msgspec.json.encode(first)
    assert [(r.code, r.channel) for r in first.reasons] == [("no_consent", "sms"),
                                                            ("frequency_cap", "email")]
    assert first.reasons[1].until == utc(NOW + 90 * MIN)


zones = st.sampled_from(["America/New_York", "Europe/Berlin", "Australia/Lord_Howe",
                         "Asia/Kolkata", "Pacific/Chatham", "UTC", "America/St_Johns"])
instants = st.integers(ms("2020-01-01T00:00:00+00:00"), ms("2035-01-01T00:00:00+00:00"))
texts = st.text(alphabet=st.characters(codec="utf-8", min_codepoint=0x20), min_size=1,
                max_size=20)
reason = st.tuples(st.sampled_from(["quiet_hours", "frequency_cap", "deadline_exceeded"]), texts,
                   st.none() | instants, st.none() | st.sampled_from(["email", "sms"]))


@given(zone=zones, now=instants, delay=st.integers(0, 10 * 24 * 60) | st.none(),
       mid=texts, uid=texts, reasons=st.lists(reason, max_size=4),
       cancelled=st.none() | instants, dry=st.booleans())
def test_any_record_replays_identically(zone: str, now: int, delay: int | None, mid: str,
                                        uid: str, reasons: list[tuple[str, str, int | None,
                                                                      str | None]],
                                        cancelled: int | None, dry: bool) -> None:
    ctx = context(zone=zone, now=now, mid=mid, uid=uid, dry=dry,
                  pre=[PreReason("no_consent", "events.unsubscribed", None, "push")])
    t = None if delay is None else now + delay * MIN
    d = "suppress" if t is None else "send" if t == now else "defer"
    out = lua_outcome(d, None if t is None else "email", t, reasons)
    stored = record(ctx, out, cancelled)
    decoded, a = render_record(stored, owner(ctx))
    _, b = render_record(stored, owner(ctx))
    assert decoded == ctx == decode_context(encode_context(ctx, user=uid, tag=IDS.tag), owner(ctx))
    assert msgspec.json.encode(a) == msgspec.json.encode(b)
    assert a == render(ctx, decode_outcome(out), replayed=True, cancelled_at=cancelled)
    assert a.decision_id == IDS.decision_id("t", uid, mid) and a.message_id == mid
    assert a.decided_at == utc(now) and a.dry_run is dry and a.replayed
    assert a.cancelled_at == (None if cancelled is None else utc(cancelled))
    if t is None:
        assert (a.send_at, a.local_send_at, a.channel) == (None, None, None)
    else:
        assert a.send_at == utc(t) and a.send_at.utcoffset() == dt.timedelta(0)
        # the same instant; compared in UTC because PEP 495 makes any cross-zone `==`
        # False for a local time inside a repeated hour (Chatham's fall-back found it)
        assert a.local_send_at is not None
        assert a.local_send_at.astimezone(dt.UTC) == a.send_at
        assert a.local_send_at is not None and str(a.local_send_at.tzinfo) == zone
    # the wire form round-trips to the same instants
    wire = msgspec.json.decode(msgspec.json.encode(a))
    if t is not None:
        assert dt.datetime.fromisoformat(wire["local_send_at"]) == utc(t)


@pytest.mark.parametrize(("zone", "t", "offset", "wall"), [
    # US spring forward 2026-03-08 02:00 EST -> 03:00 EDT (07:00Z)
    ("America/New_York", "2026-03-08T06:59:00+00:00", -5 * 60, "01:59"),
    ("America/New_York", "2026-03-08T07:00:00+00:00", -4 * 60, "03:00"),
    # US fall back 2026-11-01 02:00 EDT -> 01:00 EST (06:00Z): 01:30 happens twice
    ("America/New_York", "2026-11-01T05:30:00+00:00", -4 * 60, "01:30"),
    ("America/New_York", "2026-11-01T06:30:00+00:00", -5 * 60, "01:30"),
    # EU 2026-03-29 01:00Z, 2026-10-25 01:00Z
    ("Europe/Berlin", "2026-03-29T00:59:00+00:00", 60, "01:59"),
    ("Europe/Berlin", "2026-03-29T01:00:00+00:00", 120, "03:00"),
    ("Europe/Berlin", "2026-10-25T00:30:00+00:00", 120, "02:30"),
    ("Europe/Berlin", "2026-10-25T01:30:00+00:00", 60, "02:30"),
    # Lord Howe moves by half an hour (2026-04-05 02:00 +11 -> 01:30 +10:30)
    ("Australia/Lord_Howe", "2026-04-04T14:59:00+00:00", 11 * 60, "01:59"),
    ("Australia/Lord_Howe", "2026-04-04T15:00:00+00:00", 10 * 60 + 30, "01:30"),
])
def test_local_send_at_across_dst(zone: str, t: str, offset: int, wall: str) -> None:
    at = ms(t)
    r = render(context(zone=zone, now=at - 60 * MIN), decode_outcome(
        lua_outcome("defer", "email", at, [("quiet_hours", "q", at, "email")])))
    assert r.send_at == utc(at)
    assert r.local_send_at is not None
    assert r.local_send_at.utcoffset() == dt.timedelta(minutes=offset)
    assert r.local_send_at.strftime("%H:%M") == wall
    assert r.timezone == zone
    sign = "+" if offset >= 0 else "-"
    suffix = f"{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
    assert msgspec.json.decode(msgspec.json.encode(r))["local_send_at"].endswith(suffix)


def test_repeated_hour_replays_with_the_same_offset() -> None:
    """The second 01:30 of a fall-back night must not come back as the first."""
    at = ms("2026-11-01T06:30:00+00:00")
    ctx = context(now=at)
    out = lua_outcome("send", "sms", at, [])
    _, r = render_record(record(ctx, out), owner(ctx))
    assert r.local_send_at is not None and r.local_send_at.utcoffset() == dt.timedelta(hours=-5)
    assert b'"local_send_at":"2026-11-01T01:30:00-05:00"' in msgspec.json.encode(r)


def test_cancelled_record() -> None:
    ctx = context()
    out = lua_outcome("defer", "email", NOW + 60 * MIN, [("quiet_hours", "q", NOW + 60 * MIN,
                                                          "email")])
    plain_ctx, plain = render_record(record(ctx, out), owner(ctx))
    _, cancelled = render_record(record(ctx, out, NOW + 5 * MIN), owner(ctx))
    assert plain.cancelled_at is None and plain_ctx == ctx
    assert cancelled.cancelled_at == utc(NOW + 5 * MIN)
    assert msgspec.structs.replace(cancelled, cancelled_at=None) == plain
    encoded = msgspec.json.encode(cancelled)
    assert encoded == msgspec.json.encode(render_record(record(ctx, out, NOW + 5 * MIN), owner(ctx))[1])
    assert b'"cancelled_at":"2026-06-10T16:05:00Z"' in encoded


def test_suppression_renders_without_instants() -> None:
    out = lua_outcome("suppress", None, None, [("frequency_cap", "cap0", NOW + MIN, "email"),
                                               ("deadline_exceeded", "request.deadline", None,
                                                None)])
    r = render(context(pre=[PreReason("already_converted", "events.converted:c", NOW + 1)]),
               decode_outcome(out))
    assert (r.decision, r.channel, r.send_at, r.local_send_at) == ("suppress", None, None, None)
    assert [x.code for x in r.reasons] == ["already_converted", "frequency_cap",
                                           "deadline_exceeded"]
    assert r.reasons[0].until == utc(NOW + 1)
    wire = msgspec.json.decode(msgspec.json.encode(r))
    assert wire["reasons"][2] == {"code": "deadline_exceeded", "rule": "request.deadline"}


def test_outcome_decoding_is_strict() -> None:
    assert decode_outcome(b'{"d":"send","ch":"email","t":1,"r":[]}') == Outcome("send", "email",
                                                                                1, [])
    with pytest.raises(msgspec.ValidationError):
        decode_outcome(b'{"d":"send","ch":"email","t":"soon","r":[]}')
