"""The compact per-user aggregate that features are computed from.

Serving keeps one ``Profile`` per user in Redis and updates it from events; training
replays the logs through the very same methods. It keeps two memories of when the user
is active, because real activity is sparse (the median household of the real sample in
``docs/model.md`` has 33 trips in nine months; a 21-day half-life alone keeps only the
last few weeks' handful of trips to rank 24 hours with):

* **long memory** ``counts``: plain (undecayed) event counts by local hour-of-week since
  the first event (``first_seen``): the user's stable rhythm;
* **short memory**: exponentially decayed counts (recent behaviour, channel rates).

The decayed update rule is: an event at instant ``t`` with weight ``w`` contributes
``w * 2 ** (-(T - t) / HALF_LIFE_SECONDS)`` to a counter read at instant ``T``. Because
that is a plain sum, the order of updates does not matter (out-of-order events are folded
in at their own instant) and folding events one by one equals the closed-form batch sum
``profile_from_events`` up to float32 rounding (``tests/models/test_profile.py``).

Contents (all instants are integer UTC epoch seconds, 0 = never):

* ``counts``: undecayed engagement counts by local hour-of-week (168 bins, float32 so
  they stay exact up to 2**24 events), and ``first_seen``, the first event's instant.
* ``hist``: decayed engagement counts over the user's local hour-of-week (168 bins).
  Activity events and message engagements (first open/click of a message) both count.
* per channel: decayed sends, decayed engaged sends, last send, last engagement.
* the last activity of any kind, and the 16 most recent sends (instant + channel) so the
  fatigue counters "sends in the 24 h / 7 days before a candidate instant" are exact up
  to 16 (more is saturated fatigue anyway).

Serialised size: ``SERIALIZED_SIZE`` = 1,521 bytes, within the 2 KB per-user Redis budget
(the two 168-bin float32 histograms dominate; float16 would halve the decayed one but
its 3-digit precision drifts when a value is decayed and re-rounded at every event).
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import numpy.typing as npt

from models.timeutil import HOURS_PER_WEEK
from models.vocab import CHANNELS

HALF_LIFE_SECONDS = 21 * 86400
RECENT_SENDS = 16
N_CHANNELS = len(CHANNELS)
SENDS_OFFSET = HOURS_PER_WEEK
ENGAGEMENTS_OFFSET = HOURS_PER_WEEK + N_CHANNELS
DECAYED_SIZE = HOURS_PER_WEEK + 2 * N_CHANNELS
FORMAT_VERSION = 2
#: ``to_compact_bytes``: the format-2 record, zlib-deflated (read since this version)
COMPACT_FORMAT_VERSION = 3
#: Per-user budget in Redis (``docs/model.md``); a test holds the layout to it.
MAX_SERIALIZED_SIZE = 2048

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I8 = npt.NDArray[np.int8]

_LAYOUT: tuple[tuple[str, str, int], ...] = (
    ("ref", "<i8", 1),
    ("decayed", "<f4", DECAYED_SIZE),
    ("counts", "<f4", HOURS_PER_WEEK),
    ("first_seen", "<u4", 1),
    ("last_send", "<u4", N_CHANNELS),
    ("last_engagement", "<u4", N_CHANNELS),
    ("last_active", "<u4", 1),
    ("recent_at", "<u4", RECENT_SENDS),
    ("recent_channel", "<u1", RECENT_SENDS),
)
SERIALIZED_SIZE = 1 + sum(np.dtype(dtype).itemsize * count for _, dtype, count in _LAYOUT)
#: ``_LAYOUT`` with each field's dtype and byte offset, computed once for ``from_bytes``
_FIELDS: tuple[tuple[str, np.dtype[Any], int, int], ...] = tuple(
    (name, np.dtype(dtype), count,
     1 + sum(np.dtype(d).itemsize * c for _, d, c in _LAYOUT[:i]))
    for i, (name, dtype, count) in enumerate(_LAYOUT))


class ProfileFormatError(ValueError):
    """Bytes that are not a profile of the supported format version."""


def decay(seconds: float | npt.NDArray[np.floating[Any]] | npt.NDArray[np.integer[Any]]) -> F64:
    """Weight of something ``seconds`` old: halves every ``HALF_LIFE_SECONDS``."""
    return np.exp2(-np.asarray(seconds, dtype=np.float64) / HALF_LIFE_SECONDS)


class Profile:
    """One user's aggregate; mutable, updated in place by the ``record_*`` methods."""

    __slots__ = ("counts", "decayed", "first_seen", "last_active", "last_engagement",
                 "last_send", "recent_at", "recent_channel", "ref")

    def __init__(self) -> None:
        #: Instant the decayed counters are expressed at (the latest event seen).
        self.ref = 0
        self.decayed: F32 = np.zeros(DECAYED_SIZE, dtype=np.float32)
        #: Undecayed engagement/activity counts by local hour-of-week (long memory).
        self.counts: F32 = np.zeros(HOURS_PER_WEEK, dtype=np.float32)
        #: Instant of the first engagement/activity event (0 = none yet).
        self.first_seen = 0
        self.last_send: I64 = np.zeros(N_CHANNELS, dtype=np.int64)
        self.last_engagement: I64 = np.zeros(N_CHANNELS, dtype=np.int64)
        self.last_active = 0
        self.recent_at: I64 = np.zeros(RECENT_SENDS, dtype=np.int64)
        self.recent_channel: I8 = np.zeros(RECENT_SENDS, dtype=np.int8)

    # -- reading ---------------------------------------------------------------------
    def is_blank(self) -> bool:
        """Nothing recorded at all: every field ``models.features`` reads is zero, so this
        profile's feature rows are those of ``Profile()`` and depend on the candidates
        alone (serving memoises the scores of such users' candidates)."""
        return (self.ref == 0 and self.first_seen == 0 and self.last_active == 0
                and not self.counts.any() and not self.decayed.any()
                and not self.last_send.any() and not self.last_engagement.any()
                and not self.recent_at.any())

    @property
    def hist(self) -> F32:
        """Decayed engagement counts by local hour-of-week, as of ``ref``."""
        return self.decayed[:HOURS_PER_WEEK]

    @property
    def sends(self) -> F32:
        return self.decayed[SENDS_OFFSET:ENGAGEMENTS_OFFSET]

    @property
    def engagements(self) -> F32:
        return self.decayed[ENGAGEMENTS_OFFSET:]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Profile):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (f"Profile(ref={self.ref}, events={float(self.counts.sum()):.0f}, "
                f"mass={float(self.hist.sum()):.3f}, "
                f"sends={self.sends.tolist()}, engagements={self.engagements.tolist()})")

    # -- updating --------------------------------------------------------------------
    def _add(self, at: int, index: int) -> None:
        if self.ref == 0:
            self.ref = at
        if at >= self.ref:
            if at > self.ref:
                factor = np.float64(2.0 ** (-(at - self.ref) / HALF_LIFE_SECONDS))
                self.decayed = (self.decayed * factor).astype(np.float32)
                self.ref = at
            self.decayed[index] = np.float32(float(self.decayed[index]) + 1.0)
        else:  # late event: fold it in at its own instant
            late = float(self.decayed[index]) + 2.0 ** (-(self.ref - at) / HALF_LIFE_SECONDS)
            self.decayed[index] = np.float32(late)

    def record_send(self, at: int, channel: int) -> None:
        """A message was sent (or reserved and then sent) on ``channel`` at ``at``."""
        self._add(at, SENDS_OFFSET + channel)
        self.last_send[channel] = max(int(self.last_send[channel]), at)
        self._remember_send(at, channel)

    def record_engagement(self, at: int, channel: int, how: int) -> None:
        """The user engaged with a message (call once per message: its first open/click).

        ``how`` is the local hour-of-week of ``at`` (``models.timeutil.hour_of_week``).
        """
        self._add(at, ENGAGEMENTS_OFFSET + channel)
        self._count(at, how)
        self.last_engagement[channel] = max(int(self.last_engagement[channel]), at)

    def record_activity(self, at: int, how: int) -> None:
        """The user was active (session, visit, purchase...) at ``at`` (local ``how``)."""
        self._count(at, how)

    def _count(self, at: int, how: int) -> None:
        """One sign of life at local hour-of-week ``how``: both memories, recency."""
        self._add(at, how)
        self.counts[how] = np.float32(float(self.counts[how]) + 1.0)
        self.first_seen = at if self.first_seen == 0 else min(self.first_seen, at)
        self.last_active = max(self.last_active, at)

    def _remember_send(self, at: int, channel: int) -> None:
        # Keep the RECENT_SENDS largest (instant, channel) pairs, ascending; empty slots
        # are (0, 0) so they are always the smallest.
        if (at, channel) >= (int(self.recent_at[-1]), int(self.recent_channel[-1])):
            self.recent_at[:-1] = self.recent_at[1:]  # the usual case: the newest send
            self.recent_channel[:-1] = self.recent_channel[1:]
            self.recent_at[-1] = at
            self.recent_channel[-1] = channel
            return
        if (at, channel) > (int(self.recent_at[0]), int(self.recent_channel[0])):
            self.recent_at[0] = at
            self.recent_channel[0] = channel
            order = np.lexsort((self.recent_channel, self.recent_at))
            self.recent_at = self.recent_at[order]
            self.recent_channel = self.recent_channel[order]

    def absorb(self, other: Profile) -> None:
        """Fold ``other``'s events into this profile, as if they had been recorded here
        (two ids of one person merged). Counts add; decayed counters are brought to the
        later ``ref`` and added, which is the same sum ``profile_from_events`` computes
        over both event sets; last instants take the maximum, ``first_seen`` the minimum,
        and the recent sends keep the ``RECENT_SENDS`` latest of both."""
        if other.ref == 0 and other.first_seen == 0 and not other.recent_at.any():
            return
        ref = max(self.ref, other.ref)
        mine = self.decayed.astype(np.float64) * (decay(ref - self.ref) if self.ref else 0.0)
        theirs = other.decayed.astype(np.float64) * (decay(ref - other.ref) if other.ref
                                                     else 0.0)
        self.decayed = (mine + theirs).astype(np.float32)
        self.ref = ref
        self.counts = (self.counts.astype(np.float64) + other.counts).astype(np.float32)
        firsts = [x for x in (self.first_seen, other.first_seen) if x]
        self.first_seen = min(firsts) if firsts else 0
        self.last_send = np.maximum(self.last_send, other.last_send)
        self.last_engagement = np.maximum(self.last_engagement, other.last_engagement)
        self.last_active = max(self.last_active, other.last_active)
        at = np.concatenate([self.recent_at, other.recent_at])
        channel = np.concatenate([self.recent_channel, other.recent_channel])
        order = np.lexsort((channel, at))[-RECENT_SENDS:]
        self.recent_at = at[order].astype(np.int64)
        self.recent_channel = channel[order].astype(np.int8)

    # -- storage ---------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Fixed-size little-endian record (``SERIALIZED_SIZE`` bytes) for Redis."""
        values = {
            "ref": self.ref, "decayed": self.decayed, "counts": self.counts,
            "first_seen": self.first_seen, "last_send": self.last_send,
            "last_engagement": self.last_engagement, "last_active": self.last_active,
            "recent_at": self.recent_at, "recent_channel": self.recent_channel,
        }
        parts = [bytes([FORMAT_VERSION])]
        parts.extend(np.asarray(values[name]).astype(dtype).tobytes()
                     for name, dtype, _ in _LAYOUT)
        return b"".join(parts)

    def to_compact_bytes(self) -> bytes:
        """The same record, deflated (format ``COMPACT_FORMAT_VERSION``): version byte, then
        zlib of ``to_bytes()[1:]``. Lossless, so every reader gets the very float32 bits;
        most users are sparse and their 1,521 bytes are mostly zeros (docs/benchmarks.md,
        "Memory": 24-90 bytes for a new or sparse user, ~570 for 80 events). ``from_bytes``
        reads both formats. api/profiles.py writes this format since the release after
        the one that first read it: a reader of format 2 alone would score such a user as
        new, and its next write would drop their history."""
        return bytes([COMPACT_FORMAT_VERSION]) + zlib.compress(self.to_bytes()[1:], 1)

    @classmethod
    def from_bytes(cls, data: bytes) -> Profile:
        """A stored profile, ``to_bytes`` or ``to_compact_bytes`` format."""
        if data[:1] == bytes([COMPACT_FORMAT_VERSION]):
            data = _inflate(data)
        if len(data) != SERIALIZED_SIZE or data[0] != FORMAT_VERSION:
            raise ProfileFormatError(
                f"expected a version-{FORMAT_VERSION} profile of {SERIALIZED_SIZE} bytes, "
                f"got {len(data)} bytes (version byte {data[:1]!r})")
        profile = cls.__new__(cls)  # every slot is set below: no zero arrays to discard
        fields = {name: np.frombuffer(data, dtype=dtype, count=count, offset=offset)
                  for name, dtype, count, offset in _FIELDS}
        profile.ref = int(fields["ref"][0])
        profile.decayed = fields["decayed"].astype(np.float32)
        profile.counts = fields["counts"].astype(np.float32)
        profile.first_seen = int(fields["first_seen"][0])
        profile.last_send = fields["last_send"].astype(np.int64)
        profile.last_engagement = fields["last_engagement"].astype(np.int64)
        profile.last_active = int(fields["last_active"][0])
        profile.recent_at = fields["recent_at"].astype(np.int64)
        profile.recent_channel = fields["recent_channel"].astype(np.int8)
        return profile


def _inflate(data: bytes) -> bytes:
    """Format-3 bytes back to format 2; bounded (never inflates past one record) and
    strict (a truncated stream or trailing bytes are a format error, not a profile)."""
    inflater = zlib.decompressobj()
    try:
        body = inflater.decompress(data[1:], SERIALIZED_SIZE)
    except zlib.error as exc:
        raise ProfileFormatError(f"corrupt compact profile: {exc}") from exc
    if not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
        raise ProfileFormatError("corrupt compact profile: not one complete record")
    return bytes([FORMAT_VERSION]) + body


def profile_from_events(
    *,
    send_at: I64, send_channel: npt.NDArray[np.integer],
    engagement_at: I64, engagement_channel: npt.NDArray[np.integer],
    engagement_how: npt.NDArray[np.integer],
    activity_at: I64, activity_how: npt.NDArray[np.integer],
) -> Profile:
    """Closed-form batch computation of the profile after all the given events.

    The reference the incremental updates must match: every decayed counter is the sum of
    ``decay(ref - t)`` over its events, with ``ref`` the latest event instant.
    """
    profile = Profile()
    instants = np.concatenate([send_at, engagement_at, activity_at]).astype(np.int64)
    if instants.size == 0:
        return profile
    ref = int(instants.max())
    decayed = np.zeros(DECAYED_SIZE, dtype=np.float64)
    np.add.at(decayed, SENDS_OFFSET + np.asarray(send_channel, np.int64), decay(ref - send_at))
    np.add.at(decayed, ENGAGEMENTS_OFFSET + np.asarray(engagement_channel, np.int64),
              decay(ref - engagement_at))
    np.add.at(decayed, np.asarray(engagement_how, np.int64), decay(ref - engagement_at))
    np.add.at(decayed, np.asarray(activity_how, np.int64), decay(ref - activity_at))
    profile.ref = ref
    profile.decayed = decayed.astype(np.float32)
    hows = np.concatenate([np.asarray(engagement_how, np.int64), np.asarray(activity_how, np.int64)])
    profile.counts = np.bincount(hows, minlength=HOURS_PER_WEEK).astype(np.float32)
    for channel in range(N_CHANNELS):
        sent = send_at[send_channel == channel]
        engaged = engagement_at[engagement_channel == channel]
        profile.last_send[channel] = int(sent.max()) if sent.size else 0
        profile.last_engagement[channel] = int(engaged.max()) if engaged.size else 0
    active = np.concatenate([engagement_at, activity_at])
    profile.last_active = int(active.max()) if active.size else 0
    profile.first_seen = int(active.min()) if active.size else 0
    order = np.lexsort((send_channel, send_at))[-RECENT_SENDS:]
    kept = order.size
    profile.recent_at[RECENT_SENDS - kept:] = send_at[order]
    profile.recent_channel[RECENT_SENDS - kept:] = np.asarray(send_channel)[order]
    return profile


class ProfileBatch:
    """Many profiles as stacked arrays (row ``i`` = one profile), for vectorised features.

    Serving wraps its single profile (``Profile.to_batch``); training fills one row per
    training example with the replayed profile as of that example's instant.
    """

    __slots__ = ("counts", "decayed", "first_seen", "last_active", "last_engagement",
                 "last_send", "recent_at", "recent_channel", "ref")

    def __init__(self, size: int) -> None:
        self.ref: I64 = np.zeros(size, dtype=np.int64)
        self.decayed: F32 = np.zeros((size, DECAYED_SIZE), dtype=np.float32)
        self.counts: F32 = np.zeros((size, HOURS_PER_WEEK), dtype=np.float32)
        self.first_seen: I64 = np.zeros(size, dtype=np.int64)
        self.last_send: I64 = np.zeros((size, N_CHANNELS), dtype=np.int64)
        self.last_engagement: I64 = np.zeros((size, N_CHANNELS), dtype=np.int64)
        self.last_active: I64 = np.zeros(size, dtype=np.int64)
        self.recent_at: I64 = np.zeros((size, RECENT_SENDS), dtype=np.int64)
        self.recent_channel: I8 = np.zeros((size, RECENT_SENDS), dtype=np.int8)

    def __len__(self) -> int:
        return int(self.ref.shape[0])

    def put(self, row: int, profile: Profile) -> None:
        """Copy ``profile`` into row ``row`` (a snapshot: later updates do not leak in)."""
        self.ref[row] = profile.ref
        self.decayed[row] = profile.decayed
        self.counts[row] = profile.counts
        self.first_seen[row] = profile.first_seen
        self.last_send[row] = profile.last_send
        self.last_engagement[row] = profile.last_engagement
        self.last_active[row] = profile.last_active
        self.recent_at[row] = profile.recent_at
        self.recent_channel[row] = profile.recent_channel

    def take(self, rows: npt.NDArray[np.integer]) -> ProfileBatch:
        """A new batch of the given rows (in that order)."""
        out = ProfileBatch(0)
        for name in self.__slots__:
            setattr(out, name, getattr(self, name)[rows])
        return out

    @classmethod
    def view(cls, profile: Profile) -> ProfileBatch:
        """A batch of one row that *shares* ``profile``'s arrays (no copies): serving
        reads it within one call, where ``of``'s nine allocations and copies were a
        measurable part of the feature build. The dtypes are those ``put`` converts to."""
        batch = cls.__new__(cls)
        batch.ref = np.array([profile.ref], dtype=np.int64)
        batch.decayed = np.asarray(profile.decayed, dtype=np.float32)[None]
        batch.counts = np.asarray(profile.counts, dtype=np.float32)[None]
        batch.first_seen = np.array([profile.first_seen], dtype=np.int64)
        batch.last_send = np.asarray(profile.last_send, dtype=np.int64)[None]
        batch.last_engagement = np.asarray(profile.last_engagement, dtype=np.int64)[None]
        batch.last_active = np.array([profile.last_active], dtype=np.int64)
        batch.recent_at = np.asarray(profile.recent_at, dtype=np.int64)[None]
        batch.recent_channel = np.asarray(profile.recent_channel, dtype=np.int8)[None]
        return batch

    @classmethod
    def of(cls, profile: Profile) -> ProfileBatch:
        batch = cls(1)
        batch.put(0, profile)
        return batch
