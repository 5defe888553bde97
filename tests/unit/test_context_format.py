"""The idempotency record's context line: the compact format (short names, omitted
defaults) and the original one must both replay the same answer, byte for byte."""

from __future__ import annotations

import json

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from api.plan import Context, PreReason, encode_context
from api.render import decode_context, render_record

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


def test_legacy_record_replays_byte_identically() -> None:
    ctx, answer = render_record(LEGACY)
    assert msgspec.json.encode(answer) == LEGACY_ANSWER
    # the same context stored in the compact format renders the same bytes
    compact = encode_context(ctx) + b"\n" + OUTCOME
    assert len(compact) < len(LEGACY)
    assert msgspec.json.encode(render_record(compact)[1]) == LEGACY_ANSWER
    # and a cancelled legacy record (cancel.lua appends a third line) too
    cancelled = render_record(LEGACY + b"\n1781108000000")[1]
    assert cancelled.cancelled_at is not None


def test_compact_context_is_one_json_line_with_did() -> None:
    ctx = decode_context(LEGACY.split(b"\n")[0])
    raw = encode_context(ctx)
    assert raw.startswith(b'{"did":') and b"\n" not in raw
    assert json.loads(raw)["did"] == DID  # what commit.lua reads of displaced records
    assert b'"dry"' not in raw and b'"v"' not in raw


texts = st.text(min_size=0, max_size=30)
pre_reasons = st.builds(PreReason, texts, texts, st.none() | st.integers(0, 2**53),
                        st.none() | texts)
contexts = st.builds(
    Context, did=texts, mid=texts, uid=texts, pv=texts, zone=texts,
    now=st.integers(0, 2**53), fp=texts, dry=st.booleans(),
    pre=st.lists(pre_reasons, max_size=3), mv=st.none() | texts,
    fs=st.none() | st.sampled_from(["profile", "prior"]), v=st.integers(0, 3))


@given(contexts)
def test_both_formats_decode_to_the_same_context(ctx: Context) -> None:
    compact = encode_context(ctx)
    legacy = msgspec.json.encode(ctx)
    assert b"\n" not in compact and json.loads(compact)["did"] == ctx.did
    assert decode_context(compact) == ctx == decode_context(legacy)
    assert len(compact) <= len(legacy)
