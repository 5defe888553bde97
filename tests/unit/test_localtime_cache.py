"""The memoised calendar-cap boundaries (``local_day_starts``/``local_week_starts``) are
exactly what the uncached search (``_first_instant_of_days``) returns, for any range, cold
or warm, across DST changes and skipped dates."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from api.localtime import (
    DAY_MS,
    _first_instant_of_days,
    local_day_starts,
    local_week_starts,
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
