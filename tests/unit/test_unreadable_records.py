"""Damaged idempotency records, read by every reader (api/render.py): whatever the damage,
a reader either reads the record or raises the one ``UnreadableRecordError`` (a 409
``record_unreadable``), never another exception (a 500)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.errors import ConflictError
from api.plan import encode_context, encode_context_v2, encode_context_v4, encode_context_v6
from api.render import (
    UnreadableRecordError,
    adopt_record,
    decision_status,
    decode_context,
    join_record,
    reading_record,
    render_record,
)
from tests.unit.test_context_format import IDS, LEGACY, OUTCOME, OWNER

_CTX = msgspec.structs.replace(decode_context(LEGACY.split(b"\n")[0]),
                               did=IDS.decision_id("t", "u-1", "m-1"))
_FIVE = b'5[1,0,600000,[0.041,0.039,0.95],[[0,"caps[0]",600000,0]]]'
#: a readable record of each format, its context and outcome as that format writes them
RECORDS: dict[str, bytes] = {
    "format-2": join_record(encode_context_v2(_CTX), OUTCOME, None, packed=False),
    "format-3": join_record(encode_context(_CTX, user="u-1", tag=IDS.tag),
                            b'["defer","email",1781112600000,[0.041,0.95]]', None,
                            packed=False),
    "format-4": join_record(encode_context_v4(_CTX, user="u-1", tag=IDS.tag),
                            b"[1,0,1781112600000,[0.041,0.95]]", None, packed=False),
    "format-5": join_record(encode_context_v4(_CTX, user="u-1", tag=IDS.tag, rules=True),
                            _FIVE, 1781107300000, packed=False),
    "format-6": join_record(encode_context_v6(_CTX, user="u-1", tag=IDS.tag),
                            msgspec.msgpack.encode(json.loads(_FIVE[1:])), None, packed=True),
    "format-6-cancelled": join_record(encode_context_v6(_CTX, user="u-1", tag=IDS.tag),
                                      msgspec.msgpack.encode(json.loads(_FIVE[1:])),
                                      1781107300000, packed=True),
}
READERS: list[Callable[[bytes], object]] = [
    lambda r: render_record(r, OWNER), lambda r: decision_status(r, OWNER),
    lambda r: adopt_record(r, "u-2")]


def _damaged(record: bytes, data: st.DataObject) -> bytes:
    """Cut, overwritten, grown or spliced: what a bug, a partial copy or a hand edit does."""
    at = data.draw(st.integers(0, len(record)))
    kind = data.draw(st.sampled_from(["cut", "byte", "insert", "tail"]))
    if kind == "cut":
        return record[:at]
    if kind == "byte":
        return record[:at] + data.draw(st.binary(min_size=1, max_size=1)) + record[at + 1:]
    if kind == "insert":
        return record[:at] + data.draw(st.binary(min_size=1, max_size=8)) + record[at:]
    return record[:at] + data.draw(st.sampled_from([b"\n", b"\n\n", b"\nx", b"\x92", b"\xc1"]))


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_each_format_reads_before_it_is_damaged(name: str) -> None:
    answer = render_record(RECORDS[name], OWNER)[1]
    assert (answer.decision, answer.channel, answer.message_id) == ("defer", "email", "m-1")
    assert decision_status(RECORDS[name], OWNER).message_id == "m-1"


@pytest.mark.parametrize("name", sorted(RECORDS))
@given(data=st.data())
def test_a_damaged_record_reads_or_is_unreadable_never_a_crash(name: str,
                                                               data: st.DataObject) -> None:
    damaged = _damaged(RECORDS[name], data)
    for read in READERS:
        with contextlib.suppress(UnreadableRecordError):  # any other exception fails
            read(damaged)


def test_the_error_is_a_409_with_its_own_code() -> None:
    error = UnreadableRecordError("m-1")
    assert isinstance(error, ConflictError)
    assert (error.status, error.code) == (409, "record_unreadable")


def test_the_error_names_the_message_and_where_the_request_named_it() -> None:
    with pytest.raises(UnreadableRecordError) as caught:
        render_record(b"\x92\xc1", OWNER)
    assert caught.value.field == "message_id" and "'m-1'" in caught.value.message
    assert isinstance(caught.value.__cause__, ValueError)
    status = UnreadableRecordError("m-1", field="decision_id")
    assert status.body().field == "decision_id"
    # what is not damage stays what it is: a bug is not turned into a 409
    with pytest.raises(RuntimeError), reading_record("m-1"):
        raise RuntimeError("a bug")
