"""Wall-clock windows in a recipient's IANA time zone, exact across DST transitions.

Invariant 3 (docs/architecture.md) defines quiet hours by the recipient's *wall clock*: an instant is inside a
local window iff what a clock on the recipient's wall shows at that instant falls in the window.
Consequences that this module implements exactly:

* spring forward: a boundary at a skipped wall time (02:30 America/New_York on 2026-03-08) takes
  effect at the transition instant, the first instant whose wall time is >= the boundary;
* fall back: in the repeated hour the wall clock passes the same times twice, so a window can be
  entered twice.

How: the range is split into *segments* of constant UTC offset.  Inside a segment the wall clock
is ``t + offset`` (a bijection), so the preimage of a wall-clock window is plain arithmetic.  The
segment boundaries (offset transitions) are found to the second: ``zoneinfo`` does not expose its
transition table, so we sample the offset every hour and bisect where it changes.  Transitions are
cached per (zone, 32-day bucket), which keeps a 7-day ``window_intervals`` call in the tens of
microseconds after the first call for a bucket.

All instants are int epoch milliseconds (UTC); every result is a normalized list of half-open
intervals (see :mod:`api.intervals`).

"Wall ms" below means a naive local datetime expressed as milliseconds since 1970-01-01 00:00
(naive); its day number ``wall_ms // DAY_MS`` is the local date and ``(day + 3) % 7`` its
weekday (1970-01-01 was a Thursday).
"""

from __future__ import annotations

import bisect
import datetime
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from zoneinfo import ZoneInfo

from api.intervals import Interval, intersect, normalize

__all__ = [
    "LocalWindow",
    "day_intervals",
    "local_day_starts",
    "local_week_starts",
    "ms_to_utc",
    "parse_hhmm",
    "to_local",
    "utc_to_ms",
    "window_intervals",
]

DAY_MS = 86_400_000
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()
_MS = datetime.timedelta(milliseconds=1)

# Transition search parameters.  Offsets are sampled every _STEP_S seconds; two transitions closer
# than that (an out-and-back within an hour) would be missed, and no zone in the tz database since
# 1970 has one.  Buckets of _BUCKET_S seconds are the cache unit.
_STEP_S = 3600
_BUCKET_S = 32 * 86_400

Segment = tuple[int, int, int]  # (start_ms, end_ms, utc_offset_ms): constant offset on [start, end)


@dataclass(frozen=True, slots=True)
class LocalWindow:
    """A daily wall-clock window, optionally limited to some weekdays.

    ``start`` is inclusive and ``end`` exclusive; ``end <= start`` wraps past midnight (21:00-08:00
    is the night) and ``start == end`` means the whole day (24 hours of wall clock from
    ``start``: with 00:00-00:00 exactly the local date, which is what weekday filters want).
    ``weekdays`` (0 = Monday) keeps only the windows that *start* on those local dates, so a
    Friday 21:00-08:00 window covers Friday night into Saturday morning; ``None`` means every
    day.
    """

    start: datetime.time
    end: datetime.time
    weekdays: frozenset[int] | None = None


# --------------------------------------------------------------------------------------------
# conversions


def ms_to_utc(ms: int) -> datetime.datetime:
    """Aware UTC datetime for an epoch-ms instant (exact integer arithmetic, no float rounding)."""
    return _EPOCH + datetime.timedelta(milliseconds=ms)


def utc_to_ms(dt: datetime.datetime) -> int:
    """Epoch ms for an aware datetime (floored to the millisecond); naive datetimes are refused
    because guessing their zone is exactly the bug this module exists to prevent."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(
            f"naive datetime {dt.isoformat()} has no time zone; an aware one is needed"
        )
    return (dt - _EPOCH) // _MS


def to_local(ms: int, zone: ZoneInfo) -> datetime.datetime:
    """The instant as an aware datetime in ``zone`` (``fold`` set correctly in repeated hours)."""
    return ms_to_utc(ms).astimezone(zone)


_HHMM = re.compile(r"(\d{1,2}):(\d{2})")


def parse_hhmm(text: str) -> datetime.time:
    """Parse a wall-clock time "HH:MM" (00:00-23:59).

    24:00 is refused rather than silently mapped: an end of 00:00 already means "until
    midnight" because windows with ``end <= start`` wrap.  Memoised (a ``datetime.time`` is
    immutable): ``build_plan`` parses the policy's quiet hours for every decision.
    """
    if not isinstance(text, str):
        return _parse_hhmm(text)  # the error, uncached (it may not be hashable)
    return _parse_hhmm_cached(text)


@lru_cache(maxsize=1024)
def _parse_hhmm_cached(text: str) -> datetime.time:
    return _parse_hhmm(text)


def _parse_hhmm(text: str) -> datetime.time:
    m = _HHMM.fullmatch(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"invalid time {text!r}: expected HH:MM, e.g. '08:00' or '21:30'")
    hour, minute = int(m.group(1)), int(m.group(2))
    if hour == 24 and minute == 0:
        raise ValueError(
            "invalid time '24:00': use '00:00' (a window whose end is not after its start "
            "wraps past midnight)"
        )
    if hour > 23 or minute > 59:
        raise ValueError(f"invalid time {text!r}: hours must be 00-23 and minutes 00-59")
    return datetime.time(hour, minute)


# --------------------------------------------------------------------------------------------
# offset segments


def _offset_s(zone: ZoneInfo, t_s: int) -> int:
    """UTC offset in seconds of ``zone`` at the epoch second ``t_s``."""
    off = datetime.datetime.fromtimestamp(t_s, zone).utcoffset()
    assert off is not None  # noqa: S101 - a ZoneInfo always yields an offset
    return off.days * 86_400 + off.seconds


@lru_cache(maxsize=4096)
def _bucket(zone: ZoneInfo, index: int) -> tuple[int, tuple[tuple[int, int], ...]]:
    """Offset at the bucket start and the transitions ``(instant_s, new_offset_s)`` inside it.

    Transitions happen on whole seconds, so bisecting on seconds finds them exactly.
    """
    b0 = index * _BUCKET_S
    b1 = b0 + _BUCKET_S
    first = _offset_s(zone, b0)
    transitions: list[tuple[int, int]] = []
    prev_t, prev_off = b0, first
    t = b0
    while t < b1:
        t = min(t + _STEP_S, b1)
        off = _offset_s(zone, t)
        if off != prev_off:
            lo, hi = prev_t, t  # offset(lo) == prev_off, offset(hi) != prev_off
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset_s(zone, mid) == prev_off:
                    lo = mid
                else:
                    hi = mid
            if hi < b1:  # a change exactly at b1 belongs to the next bucket
                transitions.append((hi, off))
            prev_off = off
        prev_t = t
    return first, tuple(transitions)


def _segments(zone: ZoneInfo, start_ms: int, end_ms: int) -> list[Segment]:
    """Split ``[start_ms, end_ms)`` into maximal pieces of constant UTC offset."""
    if end_ms <= start_ms:
        return []
    first_b = (start_ms // 1000) // _BUCKET_S
    last_b = ((end_ms - 1) // 1000) // _BUCKET_S
    cur_off, _ = _bucket(zone, first_b)
    segs: list[Segment] = []
    cur_start = start_ms
    for b in range(first_b, last_b + 1):
        _, transitions = _bucket(zone, b)
        for t_s, off in transitions:
            t_ms = t_s * 1000
            if t_ms <= start_ms:
                cur_off = off
                continue
            if t_ms >= end_ms:
                break
            segs.append((cur_start, t_ms, cur_off * 1000))
            cur_start, cur_off = t_ms, off
    segs.append((cur_start, end_ms, cur_off * 1000))
    return segs


def _time_ms(t: datetime.time) -> int:
    return ((t.hour * 60 + t.minute) * 60 + t.second) * 1000 + t.microsecond // 1000


# --------------------------------------------------------------------------------------------
# windows


def window_intervals(
    zone: ZoneInfo, window: LocalWindow, start_ms: int, end_ms: int
) -> list[Interval]:
    """Exactly the instants in ``[start_ms, end_ms)`` whose wall clock in ``zone`` is in
    ``window``: the whole UTC days around the range (``_window_days``, memoised: every
    decision of a zone asks about the same days) clipped to it.  A set of instants has one
    normalized form, so clipping the wider answer is the very list the direct search
    (``_window_intervals_uncached``) returns."""
    if end_ms <= start_ms:
        return []
    days = _window_days(zone, window, start_ms // DAY_MS, (end_ms - 1) // DAY_MS)
    return intersect(days, [(start_ms, end_ms)])


@lru_cache(maxsize=8192)
def _window_days(zone: ZoneInfo, window: LocalWindow, first_day: int,
                 last_day: int) -> tuple[Interval, ...]:
    return tuple(_window_intervals_uncached(zone, window, first_day * DAY_MS,
                                            (last_day + 1) * DAY_MS))


def _window_intervals_uncached(
    zone: ZoneInfo, window: LocalWindow, start_ms: int, end_ms: int
) -> list[Interval]:
    """Exactly the instants in ``[start_ms, end_ms)`` whose wall clock in ``zone`` is in
    ``window`` (normalized).

    Per constant-offset segment, every daily occurrence of the window is a wall-ms interval;
    subtracting the offset maps it back to instants, and intersecting with the segment keeps only
    the instants whose wall clock really reads that (a skipped time simply has no preimage, a
    repeated one has one per segment).
    """
    ws = _time_ms(window.start)
    we = _time_ms(window.end)
    if we <= ws:
        we += DAY_MS  # wraps (or, when equal, the whole day starting at ``start``)
    weekdays = window.weekdays
    out: list[Interval] = []
    for a, b, off in _segments(zone, start_ms, end_ms):
        wa, wb = a + off, b + off  # wall range of this segment
        # windows starting the day before can still be open on the first day
        for day in range(wa // DAY_MS - 1, (wb - 1) // DAY_MS + 1):
            if weekdays is not None and (day + 3) % 7 not in weekdays:
                continue
            base = day * DAY_MS
            s = max(base + ws, wa)
            e = min(base + we, wb)
            if s < e:
                out.append((s - off, e - off))
    return normalize(out)


def day_intervals(
    zone: ZoneInfo,
    predicate: Callable[[datetime.date], bool],
    start_ms: int,
    end_ms: int,
) -> list[Interval]:
    """Instants in range whose local wall *date* satisfies ``predicate`` (Sundays, holidays).

    A local day is whatever instants show that date on the wall, so it is 23 or 25 hours long on
    DST days, and a date skipped entirely (Pacific/Apia 2011-12-30) contributes nothing.
    """
    memo: dict[int, bool] = {}
    out: list[Interval] = []
    for a, b, off in _segments(zone, start_ms, end_ms):
        wa, wb = a + off, b + off
        for day in range(wa // DAY_MS, (wb - 1) // DAY_MS + 1):
            hit = memo.get(day)
            if hit is None:
                hit = memo[day] = bool(predicate(datetime.date.fromordinal(day + _EPOCH_ORDINAL)))
            if hit:
                out.append((max(a, day * DAY_MS - off), min(b, (day + 1) * DAY_MS - off)))
    return normalize(out)


def _first_instant_of_days(
    zone: ZoneInfo, start_ms: int, end_ms: int, keep: Callable[[int], bool]
) -> list[int]:
    """Bucket boundaries: for each local date D (a day number) with ``keep(D)``, the first
    instant whose wall date is >= D.  Returns the last boundary <= ``start_ms`` (the start of the
    bucket containing it), then each later one, through the first boundary > ``end_ms``.

    Searches from 9 days before ``start_ms`` to 9 days after ``end_ms``: a week boundary is
    always within that margin.  (The reference the cached ``local_day_starts`` and
    ``local_week_starts`` are tested against.)
    """
    lo = start_ms - 9 * DAY_MS
    hi = max(end_ms, start_ms) + 9 * DAY_MS
    return _bracket(_boundaries(zone, lo, hi, keep), start_ms, end_ms)


def _boundaries(zone: ZoneInfo, lo: int, hi: int, keep: Callable[[int], bool]) -> list[int]:
    """Every boundary (see ``_first_instant_of_days``) of the days after the one containing
    ``lo``, up to ``hi``.  A boundary depends only on the zone and its day, not on the range
    searched, so boundaries found from a wider range are the same instants."""
    segs = _segments(zone, lo, hi)
    boundaries: list[int] = []
    # Walk segments in time order.  A day's boundary lies in the first segment whose wall range
    # reaches past that day's midnight; the wall clock may step back at a fall-back transition,
    # so only days beyond the last one already settled are looked at.  Days skipped entirely by
    # a forward jump get the segment start (the transition instant), deduplicated below.
    done_day = (segs[0][0] + segs[0][2]) // DAY_MS
    for a, b, off in segs:
        last_day = (b + off - 1) // DAY_MS  # last day whose midnight is inside this wall range
        for day in range(done_day + 1, last_day + 1):
            if keep(day):
                t = max(a, day * DAY_MS - off)
                if not boundaries or t > boundaries[-1]:
                    boundaries.append(t)
        done_day = max(done_day, last_day)
    return boundaries


def _bracket(boundaries: Sequence[int], start_ms: int, end_ms: int) -> list[int]:
    """The last boundary <= ``start_ms`` (or the first one), then each later one through the
    first boundary > ``end_ms``."""
    i = max(bisect.bisect_right(boundaries, start_ms) - 1, 0)
    return list(boundaries[i:max(bisect.bisect_right(boundaries, end_ms) + 1, i + 1)])


@lru_cache(maxsize=8192)
def _day_boundaries(zone: ZoneInfo, first_weekday: int | None, first_day: int,
                    last_day: int) -> tuple[int, ...]:
    """The boundaries ``_first_instant_of_days`` searches for any range starting on UTC day
    ``first_day`` and ending on UTC day ``last_day`` (a superset of its 9-day margins),
    memoised: every decision compiles its calendar caps for the same few (zone, day) pairs,
    and the walk over offset segments was most of ``build_plan``'s time.  The DST
    arithmetic stays in ``_boundaries``; this only remembers its answers."""
    def keep(day: int) -> bool:
        return first_weekday is None or (day + 3) % 7 == first_weekday

    return tuple(_boundaries(zone, (first_day - 9) * DAY_MS, (last_day + 10) * DAY_MS, keep))


def local_day_starts(zone: ZoneInfo, start_ms: int, end_ms: int) -> list[int]:
    """Calendar-day bucket boundaries for calendar caps ("at most 2 per local day").

    The first instant of the local day containing ``start_ms``, then each following local
    midnight (the first instant whose wall date is the next date: the transition instant when
    midnight itself is skipped, as in America/Santiago), through the first boundary > ``end_ms``.
    Consecutive boundaries are 23, 24 or 25 hours apart around DST.
    """
    hi = max(end_ms, start_ms)
    return _bracket(_day_boundaries(zone, None, start_ms // DAY_MS, hi // DAY_MS),
                    start_ms, end_ms)


def local_week_starts(
    zone: ZoneInfo, start_ms: int, end_ms: int, first_weekday: int = 0
) -> list[int]:
    """Like :func:`local_day_starts`, for weeks starting on ``first_weekday`` (0 = Monday)."""
    if not 0 <= first_weekday <= 6:
        raise ValueError(f"first_weekday must be 0..6, got {first_weekday}")
    hi = max(end_ms, start_ms)
    return _bracket(_day_boundaries(zone, first_weekday, start_ms // DAY_MS, hi // DAY_MS),
                    start_ms, end_ms)
