"""loadtests/bench_commit.py: script A of a paired replay gets the arguments of its time."""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from api.plan import PLAN_FIELDS, Plan, _lua_caps, encode_plan, ledger_member
from api.schemas import DecisionRequest
from loadtests.bench_commit import _RECORD_BEFORE_NOTES, args_for_a
from tests.unit.test_plan import plan_for, request


def _script_args(annotations: list[bytes]) -> tuple[list[Any], Plan, DecisionRequest]:
    req = request(channels=["email", "sms", "push"])
    plan = plan_for(req)
    assert len(plan.cands) == 3
    encoded = encode_plan(plan, annotations)
    # as Store.commit sends them: the plan, the context, then the rest (a state check last)
    return [encoded[0], b"ctx", *encoded[1:], b"check"], plan, req


def test_per_candidate_args_are_the_layout_before_the_member_tail() -> None:
    notes = [b"[0.1,0.1,1.0]", b"[0.2,0.2,1.0]", b"[0.3,0.3,1.0]"]
    args, plan, req = _script_args(notes)
    old = args_for_a(args, plan, _lua_caps(plan), "per-candidate-args")
    (count,) = struct.unpack_from(">H", old[0])
    assert count == 3
    records = [_RECORD_BEFORE_NOTES.unpack_from(old[0], 2 + i * _RECORD_BEFORE_NOTES.size)
               for i in range(count)]
    fields = msgspec.msgpack.decode(old[0][2 + count * _RECORD_BEFORE_NOTES.size:])
    channels = fields[PLAN_FIELDS.index("cands")]
    assert [channels[r[0] - 1] for r in records] == [c.ch for c in plan.cands]
    assert old[1:3] == [b"ctx", args[2]]
    assert old[3:6] == [ledger_member(req, c.ch) for c in plan.cands]
    assert old[6:9] == notes and old[9:] == [b"check"]


def test_without_annotations_no_notes_are_sent() -> None:
    args, plan, _ = _script_args([])
    old = args_for_a(args, plan, _lua_caps(plan), "msgpack-cands")
    assert len(old) == 3 + 3 + 1  # plan, context, prefix, three members, the check
    current = args_for_a(args, plan, _lua_caps(plan), "current")
    assert current == args
