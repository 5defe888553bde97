"""The memoised local-time answers are exactly what the uncached searches return, for any
range, cold or warm, across DST changes and skipped dates: calendar-cap boundaries
(``local_day_starts``/``local_week_starts``) and daily windows (``window_intervals``)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from api.localtime import (
    DAY_MS,
    LocalWindow,
    _first_instant_of_days,
    _window_intervals_uncached,
    local_day_starts,
    local_week_starts,
    parse_hhmm,
    window_intervals,
)

ZONES = ["UTC", "America/New_York", "Europe/Paris", "America/Santiago", "Pacific/Apia",
         "Australia/Lord_Howe", "Asia/Kolkata", "Africa/Casablanca"]
T2010 = 1_262_304_000_000
T2030 = 1_893_456_000_000


@settings(max_examples=200, deadline=None)
@given(zone_name=st.sampled_from(ZONES), lo=st.integers(T2010, T2030),
       length=st.integers(-DAY_MS, 35 * DAY_MS), first_weekday=st.none() | st.integers(0, 6))
def test_cached_boundaries_equal_the_uncached_search(zone_name: str, lo: int, length: int,
                                                      first_weekday: int | None) -> None:
    zone = ZoneInfo(zone_name)
    hi = lo + length
    weekday = first_weekday
    expected = _first_instant_of_days(
        zone, lo, hi, lambda day: weekday is None or (day + 3) % 7 == weekday)
    for _ in range(2):  # cold, then from the cache
        if first_weekday is None:
            assert local_day_starts(zone, lo, hi) == expected
        else:
            assert local_week_starts(zone, lo, hi, first_weekday) == expected


times = st.builds(dt.time, st.integers(0, 23), st.sampled_from([0, 15, 30, 59]))
windows = st.builds(LocalWindow, times, times,
                    st.none() | st.frozensets(st.integers(0, 6), min_size=1))


@settings(max_examples=200, deadline=None)
@given(zone_name=st.sampled_from(ZONES), window=windows, lo=st.integers(T2010, T2030),
       length=st.integers(-DAY_MS, 10 * DAY_MS))
def test_cached_window_intervals_equal_the_direct_search(zone_name: str, window: LocalWindow,
                                                         lo: int, length: int) -> None:
    zone = ZoneInfo(zone_name)
    expected = _window_intervals_uncached(zone, window, lo, lo + length)
    for _ in range(2):  # cold, then from the cache
        assert window_intervals(zone, window, lo, lo + length) == expected


def test_parse_hhmm_is_memoised_and_still_refuses() -> None:
    assert parse_hhmm("22:30") is parse_hhmm("22:30") == dt.time(22, 30)
    for bad in ("24:00", "7", None, ["22:00"]):
        try:
            parse_hhmm(bad)  # type: ignore[arg-type]
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")
