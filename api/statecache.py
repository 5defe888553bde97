"""A per-worker, bounded, short-lived cache of recipients' read state (read.lua's reply).

Why: a decision costs two Redis round trips, the read (read.lua) and the commit
(commit.lua). A recipient this worker decided a moment ago needs no read: the decision
plans from the state it read then and commits directly, one round trip.

Why that stays exact: the cache is never trusted for anything a decision depends on. The
commit re-checks, atomically with the reservation, everything the plan took from the read
(``api.userstate.CommitCheck``): the idempotency record of the message, the whole
preferences hash (document, event opt-outs, ``moved_into``, ``rev``) field by field, the
campaign's conversion, and the send-time profile byte for byte. A difference answers
``stale``; the engine drops the entry, reads and plans again (the uncached path). Caps,
conflicts and pacing are the commit's own reads of the ledger and the counters, cached
nowhere. The profile is compared too (one HGET and a string comparison inside the script)
so that a decision never scores with a history that changed, or was erased through another
worker, since its read.

An entry lives ``ttl_seconds`` from the moment its state was read, never longer (a commit
confirming the state does not extend it). This worker drops a recipient's entry when it
handles events or a preference write for them, which saves the ``stale`` round trip.

What is not cached: the idempotency record (per message: an entry says "no record", the
commit checks), and a merged id (its state lives under another id; it is read each time).
A campaign the entry has not seen is assumed not converted; the commit checks that too.

An entry keeps the state as MessagePack bytes, not as the decoded structs: thousands of
entries live for seconds, long enough to survive the collector's young generation, and as
objects (state, preferences, their lists and dicts: ~5 tracked containers each) every
generation-1 pass walked them all again. As bytes in an untracked struct they cost the
collector nothing; decoding one on a hit costs a few microseconds (docs/benchmarks.md,
"Garbage collector and the state cache").
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import msgspec

from api.userstate import UserState

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(UserState).decode


class _Entry(msgspec.Struct, gc=False):
    """Never part of a reference cycle (bytes, a dict of str -> int | None, a float), so the
    cyclic collector need not track it (``gc=False``)."""

    #: the state as read, without the message's record (``record`` None), as MessagePack
    state: bytes
    #: the state's converted-at: the conversion of the campaign the read was for
    converted_at: int | None
    #: campaign id -> converted-at (ms) or None, as read or as a commit confirmed it (str
    #: keys and int/None values only: CPython leaves such a dict untracked)
    conversions: dict[str, int | None]
    #: monotonic deadline (seconds): the read's start + the TTL
    expires: float


class StateCache:
    """LRU of ``(tenant, user id)`` -> read state, at most ``max_entries`` entries, each at
    most ``ttl_seconds`` old. ``ttl_seconds`` or ``max_entries`` 0 disables it. Not
    thread-safe; a worker's event loop is single-threaded."""

    def __init__(self, ttl_seconds: float, max_entries: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 and self.max_entries > 0

    def __len__(self) -> int:
        return len(self._entries)

    def now(self) -> float:
        """Read this before the read starts: the entry's age counts from there."""
        return self.clock()

    def get(self, tenant: str, user_id: str, campaign_id: str | None) -> UserState | None:
        """The cached state for a decision about ``campaign_id``, or None (miss or expired)."""
        key = (tenant, user_id)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self.clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        converted = entry.conversions.get(campaign_id) if campaign_id else None
        state = _decode(entry.state)
        if converted == entry.converted_at:
            return state
        return msgspec.structs.replace(state, converted_at=converted)

    def put(self, tenant: str, user_id: str, campaign_id: str | None, state: UserState,
            read_at: float) -> None:
        """Remember a state just read (``read_at``: ``now()`` before the read). Merged ids
        are not cached: their state is another id's."""
        if not self.enabled or state.moved_into is not None:
            return
        key = (tenant, user_id)
        # only what this read saw: another campaign's conversion as an older read saw it
        # may have changed since (the commit would catch it, at the cost of a re-read)
        conversions = {campaign_id: state.converted_at} if campaign_id else {}
        if state.record is not None:
            state = msgspec.structs.replace(state, record=None)
        self._entries[key] = _Entry(_encode(state), state.converted_at, conversions,
                                    read_at + self.ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        # expired entries at the cold end go now, so memory follows the recipients decided
        # within the TTL rather than the size bound (amortised O(1): each goes once)
        now = self.clock()
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.expires > now:
                break
            self._entries.popitem(last=False)

    def confirm(self, tenant: str, user_id: str, campaign_id: str | None,
                converted_at: int | None) -> None:
        """A commit checked the entry's state and the campaign's conversion: keep both (the
        entry's deadline stays: the profile was not checked)."""
        entry = self._entries.get((tenant, user_id))
        if entry is not None and campaign_id:
            entry.conversions[campaign_id] = converted_at

    def drop(self, tenant: str, user_id: str) -> None:
        self._entries.pop((tenant, user_id), None)

    def clear(self) -> None:
        self._entries.clear()
