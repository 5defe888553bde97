"""StateCache on its own: age bound, size bound, what it never holds (a clock under test,
no sleeping). Its exactness against Redis is tests/integration/test_state_cache.py."""

from __future__ import annotations

import msgspec

from api.schemas import Preferences
from api.statecache import StateCache
from api.userstate import CommitCheck, UserState, parse_read_reply


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _state(**fields: object) -> UserState:
    base: dict[str, object] = {"preferences": Preferences(), "revision": "3",
                               "event_opt_outs": {}, "record": None, "converted_at": None}
    return msgspec.structs.replace(UserState(**base), **fields)  # type: ignore[arg-type]


def test_an_entry_lives_the_ttl_from_its_read_not_from_its_last_use() -> None:
    clock = Clock()
    cache = StateCache(5.0, 10, clock)
    read_at = cache.now()
    clock.t += 1  # the read took a second: the entry's age counts from its start
    cache.put("t", "u", None, _state(), read_at)
    clock.t = read_at + 4.9
    assert cache.get("t", "u", None) is not None
    cache.confirm("t", "u", None, None)  # a confirming commit does not extend it
    clock.t = read_at + 5.0
    assert cache.get("t", "u", None) is None
    assert len(cache) == 0


def test_least_recently_used_goes_first_when_full() -> None:
    clock = Clock()
    cache = StateCache(5.0, 2, clock)
    for user in ("a", "b"):
        cache.put("t", user, None, _state(), clock())
    assert cache.get("t", "a", None) is not None  # a is now the most recent
    cache.put("t", "c", None, _state(), clock())
    assert cache.get("t", "b", None) is None
    assert cache.get("t", "a", None) is not None and cache.get("t", "c", None) is not None


def test_never_holds_a_record_or_a_merged_id_and_zero_is_off() -> None:
    clock = Clock()
    cache = StateCache(5.0, 10, clock)
    cache.put("t", "u", None, _state(record=b"ctx\nout"), clock())
    hit = cache.get("t", "u", None)
    assert hit is not None and hit.record is None
    cache.put("t", "old", None, _state(moved_into="new"), clock())
    assert cache.get("t", "old", None) is None
    for off in (StateCache(0, 10, clock), StateCache(5.0, 0, clock)):
        off.put("t", "u", None, _state(), clock())
        assert not off.enabled and off.get("t", "u", None) is None


def test_conversions_are_known_per_campaign_and_others_assumed_not_converted() -> None:
    clock = Clock()
    cache = StateCache(5.0, 10, clock)
    cache.put("t", "u", "c1", _state(converted_at=7), clock())
    assert cache.get("t", "u", "c1").converted_at == 7  # type: ignore[union-attr]
    assert cache.get("t", "u", "c2").converted_at is None  # type: ignore[union-attr]
    assert cache.get("t", "u", None).converted_at is None  # type: ignore[union-attr]
    cache.confirm("t", "u", "c2", 9)
    assert cache.get("t", "u", "c2").converted_at == 9  # type: ignore[union-attr]
    cache.drop("t", "u")
    assert cache.get("t", "u", "c1") is None


def test_the_commit_check_carries_the_hash_as_read() -> None:
    flat = [b"doc", b"{}", b"rev", b"4", b"optout:sms", b"1"]
    state = parse_read_reply([flat, None, b"123", None])
    check = CommitCheck.of(state, "c1")
    assert check.args() == [*flat, "c1", "123", b"", "3"]
    assert CommitCheck.of(state, None).args()[-4:] == ["", "123", b"", "3"]
    empty = parse_read_reply([[], None, None, b"\x03profile"])
    assert CommitCheck.of(empty, "c1").args() == ["c1", "", b"\x03profile", "0"]


def test_expired_entries_at_the_cold_end_go_on_the_next_put() -> None:
    clock = Clock()
    cache = StateCache(5.0, 100, clock)
    for user in ("a", "b", "c"):
        cache.put("t", user, None, _state(), clock())
        clock.t += 1
    clock.t = 100 + 5.5  # a (read at 100) expired, b and c not
    cache.put("t", "d", None, _state(), clock())
    assert len(cache) == 3 and cache.get("t", "a", None) is None


def test_an_entry_gives_back_the_state_it_was_given_and_costs_the_collector_nothing() -> None:
    """Entries are kept as bytes in an untracked struct (module docstring): what ``get``
    returns must still equal, field for field, the state ``put`` was given."""
    import gc

    doc = (b'{"timezone":"Europe/Paris","phone":"+33612345678","country":"FR",'
           b'"channels":{"sms":{"consent":"opted_in"},"email":{"consent":"opted_out"}},'
           b'"frequency_limits":[{"limit":2,"calendar":"day","channels":["sms"]},'
           b'{"limit":5,"window_minutes":10080}],'
           b'"quiet_hours":[{"start":"21:30","end":"08:00","weekdays":[0,1,2,3,4]}],'
           b'"topic_opt_outs":["sports"]}')
    flat = [b"doc", doc, b"rev", b"17", b"optout:push", b"1790000000000"]
    state = parse_read_reply([flat, None, b"1790000000123", b"\x03profile-bytes"])
    assert state.preferences.quiet_hours and state.event_opt_outs  # a rich state
    clock = Clock()
    cache = StateCache(5.0, 10, clock)
    cache.put("t", "u", "c1", state, clock())
    assert cache.get("t", "u", "c1") == state
    assert cache.get("t", "u", None) == msgspec.structs.replace(state, converted_at=None)
    entry = cache._entries[("t", "u")]
    gc.collect()  # CPython untracks a dict of atomic values when the collector sees it
    assert not gc.is_tracked(entry) and not gc.is_tracked(entry.conversions)
