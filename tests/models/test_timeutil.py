"""Vectorised offsets agree with zoneinfo, including DST gaps and half-hour zones."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.timeutil import (
    UnknownTimeZoneError,
    country_of_zone,
    holiday_flags,
    hour_of_week,
    local_seconds,
    utc_offsets,
    zone,
)

ZONES = ["Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata",
         "Africa/Casablanca", "America/Santiago", "Pacific/Chatham", "UTC"]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(ZONES),
       st.lists(st.integers(1_500_000_000, 1_900_000_000), min_size=1, max_size=50))
def test_offsets_match_zoneinfo(name: str, instants: list[int]) -> None:
    tz = zone(name)
    got = utc_offsets(tz, np.array(instants, dtype=np.int64))
    expected = [datetime.fromtimestamp(t, UTC).astimezone(tz).utcoffset() for t in instants]
    assert got.tolist() == [int(e.total_seconds()) for e in expected if e is not None]


def test_hour_of_week_is_monday_based() -> None:
    monday_9am_paris = int(datetime(2025, 3, 3, 8, 0, tzinfo=UTC).timestamp())
    local = local_seconds(zone("Europe/Paris"), np.array([monday_9am_paris]))
    assert hour_of_week(local).tolist() == [9]


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "europe/paris ", "../etc/passwd"])
def test_unknown_zone_is_refused(name: str) -> None:
    with pytest.raises(UnknownTimeZoneError):
        zone(name)


def test_holidays_follow_the_zone_country() -> None:
    assert country_of_zone("Europe/Paris") == "FR"
    new_year = int(datetime(2026, 1, 1, 12, tzinfo=UTC).timestamp())
    flags = holiday_flags("FR", np.array([new_year, new_year + 86400]))
    assert flags.tolist() == [True, False]
