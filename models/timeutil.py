"""Vectorised local-time arithmetic for many instants in one IANA zone.

Serving scores ~100 candidate instants per request and training millions of rows, so
converting each instant with ``datetime.fromtimestamp(t, zone)`` (about 1 µs each, plus
Python overhead) is too slow. UTC offsets are piecewise constant and change only at
transitions, which modern tzdata places on 15-minute UTC boundaries; we find the pieces
by bisection with a handful of ``zoneinfo`` calls and then map every instant with numpy.
"""

from __future__ import annotations

import functools
from datetime import UTC, date, datetime
from importlib import resources
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt

Int64Array = npt.NDArray[np.int64]

#: Offsets are constant on these UTC buckets (every tzdata transition since 1970 is aligned).
_BUCKET_SECONDS = 900
#: Two transitions are never closer than this, so equal offsets at both ends of a shorter
#: span mean "no transition inside" (Morocco's Ramadan suspensions are ~30 days apart).
_MAX_FLAT_SPAN_SECONDS = 20 * 86400
#: 1970-01-01 was a Thursday; adding 3 days makes weekday 0 = Monday.
_EPOCH_WEEKDAY_SHIFT = 3
HOURS_PER_WEEK = 168


class UnknownTimeZoneError(ValueError):
    """A time-zone name that the IANA database (tzdata) does not know."""


@functools.lru_cache(maxsize=4096)
def zone(name: str) -> ZoneInfo:
    """Return the cached ``ZoneInfo`` for ``name`` or raise ``UnknownTimeZoneError``."""
    if not name or name != name.strip():
        raise UnknownTimeZoneError(f"unknown time zone {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise UnknownTimeZoneError(f"unknown time zone {name!r}") from exc


def is_known_zone(name: str) -> bool:
    """True when ``name`` is an IANA zone the installed tzdata knows."""
    try:
        zone(name)
    except UnknownTimeZoneError:
        return False
    return True


def _offset_at(tz: ZoneInfo, seconds: int) -> int:
    offset = datetime.fromtimestamp(seconds, UTC).astimezone(tz).utcoffset()
    return 0 if offset is None else int(offset.total_seconds())


@functools.lru_cache(maxsize=16384)
def _breakpoints(tz: ZoneInfo, lo: int, hi: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Bucket indices where the offset starts a new piece, and each piece's offset.

    Memoised per (zone, first bucket, last bucket): serving asks the same zone about the
    same 15-minute buckets for every recipient there (the request instant and the hour
    starts of the horizon), and each fresh answer costs two or more ``zoneinfo`` calls
    (~6 µs). The answer is a pure function of its arguments, so the cache is exact."""
    starts: list[int] = [lo]
    offsets: list[int] = [_offset_at(tz, lo * _BUCKET_SECONDS)]
    # Explicit stack of (lo, hi, off_lo, off_hi) segments, processed left to right.
    stack = [(lo, hi, offsets[0], _offset_at(tz, hi * _BUCKET_SECONDS))]
    while stack:
        a, b, off_a, off_b = stack.pop()
        if off_a == off_b and (b - a) * _BUCKET_SECONDS < _MAX_FLAT_SPAN_SECONDS:
            continue
        if b - a <= 1:
            if off_a != off_b:
                starts.append(b)
                offsets.append(off_b)
            continue
        mid = (a + b) // 2
        off_mid = _offset_at(tz, mid * _BUCKET_SECONDS)
        stack.append((mid, b, off_mid, off_b))  # right half popped after the left one
        stack.append((a, mid, off_a, off_mid))
    return tuple(starts), tuple(offsets)


def utc_offset(tz: ZoneInfo, instant: int) -> int:
    """``utc_offsets`` of one epoch-second instant, as a plain int (serving's "offset at the
    window start": no array at all)."""
    bucket = instant // _BUCKET_SECONDS
    return _breakpoints(tz, bucket, bucket)[1][0]


def utc_offsets(tz: ZoneInfo, instants: Int64Array) -> Int64Array:
    """UTC offset in seconds (local = utc + offset) for each epoch-second instant."""
    if instants.size == 0:
        return np.zeros(0, dtype=np.int64)
    if instants.size == 1:  # no array arithmetic for a single instant
        return np.full(instants.shape, utc_offset(tz, int(instants.item())), dtype=np.int64)
    buckets = instants // _BUCKET_SECONDS
    lo, hi = int(buckets.min()), int(buckets.max())
    starts, offsets = _breakpoints(tz, lo, hi)
    if len(offsets) == 1:
        return np.full(instants.shape, offsets[0], dtype=np.int64)
    piece = np.searchsorted(np.asarray(starts, dtype=np.int64), buckets, side="right") - 1
    result: Int64Array = np.asarray(offsets, dtype=np.int64)[piece]
    return result


def local_seconds(tz: ZoneInfo, instants: Int64Array) -> Int64Array:
    """Wall-clock seconds since the local epoch (so ``// 86400`` is the local day)."""
    result: Int64Array = instants + utc_offsets(tz, instants)
    return result


def hour_of_week(local: Int64Array) -> Int64Array:
    """Local hour-of-week, 0 = Monday 00:00-01:00, 167 = Sunday 23:00-24:00."""
    day = local // 86400
    weekday = (day + _EPOCH_WEEKDAY_SHIFT) % 7
    result: Int64Array = weekday * 24 + (local % 86400) // 3600
    return result


def weekday(local: Int64Array) -> Int64Array:
    """Local weekday, 0 = Monday."""
    result: Int64Array = (local // 86400 + _EPOCH_WEEKDAY_SHIFT) % 7
    return result


@functools.lru_cache(maxsize=1)
def _zone_countries() -> dict[str, str]:
    """IANA zone -> ISO 3166 country code, from tzdata's own ``zone.tab``."""
    mapping: dict[str, str] = {}
    text = resources.files("tzdata").joinpath("zoneinfo", "zone.tab").read_text("utf-8")
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) >= 3:
            mapping[parts[2]] = parts[0]
    return mapping


def country_of_zone(name: str) -> str | None:
    """Best-effort country of a zone (``Europe/Paris`` -> ``FR``); None for ``UTC`` etc."""
    return _zone_countries().get(name)


@functools.lru_cache(maxsize=1024)
def _holiday_days(country: str, first_year: int, last_year: int) -> Int64Array:
    """Sorted local day numbers (days since 1970-01-01) of public holidays."""
    import holidays  # ~0.1 s import: only paid when a holiday flag is first needed

    try:
        calendar = holidays.country_holidays(country, years=range(first_year, last_year + 1))
    except NotImplementedError:
        return np.zeros(0, dtype=np.int64)
    epoch = date(1970, 1, 1)
    return np.array(sorted((day - epoch).days for day in calendar), dtype=np.int64)


@functools.lru_cache(maxsize=4096)
def _holidays_between(country: str, first_day: int, last_day: int) -> Int64Array:
    """The holidays (local day numbers) of ``country`` from ``first_day`` to ``last_day``,
    memoised: serving asks about the same few days for every recipient of a country, and
    deriving the years and searching the calendar was most of ``holiday_flags``' time.
    The result is read-only (it is shared by every caller)."""
    first = datetime.fromtimestamp(first_day * 86400, UTC).year
    last = datetime.fromtimestamp(last_day * 86400, UTC).year
    days = _holiday_days(country, first, last)
    inside = days[(days >= first_day) & (days <= last_day)]
    inside.flags.writeable = False
    return inside


def holiday_flags(country: str | None, local: Int64Array) -> npt.NDArray[np.bool_]:
    """True where the local calendar day is a public holiday in ``country``."""
    if country is None or local.size == 0:
        return np.zeros(local.shape, dtype=np.bool_)
    days = local // 86400
    holiday_days = _holidays_between(country, int(days.min()), int(days.max()))
    if holiday_days.size == 0:  # the usual case: no holiday in a serving horizon
        return np.zeros(local.shape, dtype=np.bool_)
    position = np.minimum(np.searchsorted(holiday_days, days), holiday_days.size - 1)
    result: npt.NDArray[np.bool_] = holiday_days[position] == days
    return result
