"""api/log_entry.py: a log entry's two stream fields decode to every name of its layout."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.log_entry import DECISION_FIELDS, EVENT_FIELDS, decode_entry, encode_entry, entry_user

_TEXT = st.text(st.characters(codec="utf-8"), max_size=30)


def _stored(flat: tuple[str | bytes, ...]) -> dict[bytes, bytes]:
    """The fields as Redis gives them back (bytes)."""
    raw = [x.encode() if isinstance(x, str) else x for x in flat]
    return dict(zip(raw[::2], raw[1::2], strict=True))


@given(st.sampled_from(["decision", "event"]), _TEXT, st.data())
def test_an_entry_decodes_to_its_layouts_names_and_values(kind: str, user: str,
                                                          data: st.DataObject) -> None:
    names = DECISION_FIELDS if kind == "decision" else EVENT_FIELDS
    given_names = data.draw(st.sets(st.sampled_from(names)))
    fields = {name: data.draw(_TEXT) for name in given_names}
    flat = encode_entry(kind, user, fields)
    assert len(flat) == 4  # two stream fields, however many values
    stored = _stored(flat)
    assert decode_entry(stored) == {"kind": kind, "user_id": user,
                                    **{name: fields.get(name, "") for name in names}}
    assert entry_user(stored) == user.encode()


def test_trailing_empty_values_are_left_out() -> None:
    flat = encode_entry("event", "u1", {"type": "activity", "at": "5", "timezone": ""})
    assert flat[3] == b'["activity","5"]'
    assert decode_entry(_stored(flat))["timezone"] == ""


def test_a_name_outside_the_layout_is_refused() -> None:
    with pytest.raises(ValueError, match="not in the event entry layout: \\['reason'\\]"):
        encode_entry("event", "u1", {"type": "activity", "reason": "preempted"})


def test_an_entry_of_the_earlier_layout_reads_as_stored() -> None:
    old = {b"kind": b"decision", b"user_id": b"u1", b"message_id": b"m1", b"reason": b"preempted"}
    assert decode_entry(old) == {"kind": "decision", "user_id": "u1", "message_id": "m1",
                                 "reason": "preempted"}
    assert entry_user(old) == b"u1"
