"""Wall-clock windows (invariant 3): hypothesis properties against zoneinfo, plus DST edges.

The oracle is deliberately naive: convert each sampled instant with
``datetime.fromtimestamp(...).astimezone(zone)`` and read the wall clock.  Sampling includes every
output boundary and its neighbour 1 ms before, so an off-by-anything boundary is caught.
"""

from __future__ import annotations

import datetime as dt
import itertools
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.intervals import Interval, contains
from api.localtime import (
    DAY_MS,
    LocalWindow,
    _segments,
    day_intervals,
    local_day_starts,
    local_week_starts,
    ms_to_utc,
    parse_hhmm,
    to_local,
    utc_to_ms,
    window_intervals,
)

ZONES = [
    "America/New_York",
    "Europe/Paris",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "America/Santiago",
    "Pacific/Chatham",
    "Asia/Tehran",
    "America/St_Johns",
    "UTC",
    "Africa/Casablanca",
]
NY = ZoneInfo("America/New_York")
PARIS = ZoneInfo("Europe/Paris")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")
SANTIAGO = ZoneInfo("America/Santiago")

T2020 = utc_to_ms(dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
T2030 = utc_to_ms(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))


def utc(text: str) -> int:
    """'2026-03-08T07:00' (UTC) -> epoch ms."""
    return utc_to_ms(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC))


def wall(t_ms: int, zone: ZoneInfo) -> dt.datetime:
    """The oracle: what the recipient's clock shows at t_ms."""
    sec, milli = divmod(t_ms, 1000)
    # add the milliseconds in UTC: arithmetic on an aware local datetime would drop ``fold``
    return (dt.datetime.fromtimestamp(sec, dt.UTC) + dt.timedelta(milliseconds=milli)).astimezone(
        zone
    )


def in_window(local: dt.datetime, w: LocalWindow) -> bool:
    def day_ok(d: dt.date) -> bool:
        return w.weekdays is None or d.weekday() in w.weekdays

    t = local.time().replace(tzinfo=None)
    if w.start < w.end:
        return w.start <= t < w.end and day_ok(local.date())
    # wraps; start == end is a 24-hour window from ``start`` (the whole date when 00:00)
    if t >= w.start:
        return day_ok(local.date())
    if t < w.end or w.start == w.end:
        return day_ok(local.date() - dt.timedelta(days=1))
    return False


def samples(out: list[Interval], lo: int, hi: int, extra: list[int]) -> set[int]:
    pts = {lo, hi - 1, *extra}
    for s, e in out:
        pts.update((s - 1, s, e - 1, e))
    return {p for p in pts if lo <= p < hi}


times = st.builds(
    dt.time,
    st.integers(0, 23),
    st.sampled_from([0, 0, 15, 30, 45, 59]),
    st.sampled_from([0, 0, 0, 30]),
)


@settings(max_examples=300, deadline=None)
@given(
    zone_name=st.sampled_from(ZONES),
    start=times,
    end=times,
    weekdays=st.none() | st.frozensets(st.integers(0, 6), max_size=7),
    lo=st.integers(T2020, T2030),
    length=st.integers(0, 35 * DAY_MS),
    extra=st.lists(st.integers(0, 35 * DAY_MS), max_size=40),
)
def test_window_intervals_match_wall_clock(
    zone_name: str,
    start: dt.time,
    end: dt.time,
    weekdays: frozenset[int] | None,
    lo: int,
    length: int,
    extra: list[int],
) -> None:
    zone = ZoneInfo(zone_name)
    w = LocalWindow(start, end, weekdays)
    hi = lo + length
    out = window_intervals(zone, w, lo, hi)
    for (s1, e1), (s2, _) in itertools.pairwise(out):
        assert s1 < e1 < s2
    assert all(lo <= s and e <= hi for s, e in out)
    for t in samples(out, lo, hi, [lo + x for x in extra]):
        assert contains(out, t) == in_window(wall(t, zone), w), (t, wall(t, zone))


def test_segments_match_zoneinfo_2020_2030() -> None:
    """Offset transitions found by sampling+bisection are exact to the second, across buckets."""
    for name in ZONES:
        zone = ZoneInfo(name)
        segs = _segments(zone, T2020, T2030)
        assert segs[0][0] == T2020
        assert segs[-1][1] == T2030
        for (_, e1, o1), (s2, _, o2) in itertools.pairwise(segs):
            assert e1 == s2
            assert o1 != o2
            assert wall(s2 - 1000, zone).utcoffset() == dt.timedelta(milliseconds=o1)
            assert wall(s2, zone).utcoffset() == dt.timedelta(milliseconds=o2)
        # scan every 5 h 17 min (drifts through all times of day): the offset is the segment's
        i = 0
        for t in range(T2020, T2030, (5 * 60 + 17) * 60_000):
            while segs[i][1] <= t:
                i += 1
            assert wall(t, zone).utcoffset() == dt.timedelta(milliseconds=segs[i][2]), (name, t)


def _transitions(name: str) -> list[int]:
    segs = _segments(ZoneInfo(name), T2020, T2030)
    return [s for s, _, _ in segs[1:]] or [T2020]


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    zone_name=st.sampled_from([z for z in ZONES if z not in ("UTC", "Asia/Kolkata")]),
    start=times,
    end=times,
    weekdays=st.none() | st.frozensets(st.integers(0, 6), max_size=7),
    before=st.integers(0, 2 * DAY_MS),
    length=st.integers(0, 4 * DAY_MS),
)
def test_window_intervals_near_transitions(
    data: st.DataObject,
    zone_name: str,
    start: dt.time,
    end: dt.time,
    weekdays: frozenset[int] | None,
    before: int,
    length: int,
) -> None:
    zone = ZoneInfo(zone_name)
    lo = data.draw(st.sampled_from(_transitions(zone_name))) - before
    hi = lo + length
    w = LocalWindow(start, end, weekdays)
    out = window_intervals(zone, w, lo, hi)
    extra = data.draw(st.lists(st.integers(lo, max(lo, hi - 1)), max_size=30))
    for t in samples(out, lo, hi, extra):
        assert contains(out, t) == in_window(wall(t, zone), w), (t, wall(t, zone))


@settings(max_examples=150, deadline=None)
@given(
    zone_name=st.sampled_from(ZONES),
    lo=st.integers(T2020, T2030),
    length=st.integers(0, 35 * DAY_MS),
    mod=st.integers(2, 5),
    extra=st.lists(st.integers(0, 35 * DAY_MS), max_size=30),
)
def test_day_intervals_match_wall_date(
    zone_name: str, lo: int, length: int, mod: int, extra: list[int]
) -> None:
    zone = ZoneInfo(zone_name)
    hi = lo + length

    def pred(d: dt.date) -> bool:
        return d.toordinal() % mod == 0

    out = day_intervals(zone, pred, lo, hi)
    for t in samples(out, lo, hi, [lo + x for x in extra]):
        assert contains(out, t) == pred(wall(t, zone).date())


@settings(max_examples=150, deadline=None)
@given(
    zone_name=st.sampled_from(ZONES),
    lo=st.integers(T2020, T2030),
    length=st.integers(0, 35 * DAY_MS),
    first_weekday=st.none() | st.integers(0, 6),
)
def test_day_and_week_starts_are_first_instants_of_local_dates(
    zone_name: str, lo: int, length: int, first_weekday: int | None
) -> None:
    zone = ZoneInfo(zone_name)
    hi = lo + length
    if first_weekday is None:
        out = local_day_starts(zone, lo, hi)
    else:
        out = local_week_starts(zone, lo, hi, first_weekday)
    assert out == sorted(set(out))
    assert out[0] <= lo < out[1] if len(out) > 1 else out[0] <= lo
    assert out[-1] > hi
    assert all(b <= hi for b in out[:-1])
    for b in out:
        now, before = wall(b, zone).date(), wall(b - 1, zone).date()
        assert now > before  # a new local date begins exactly here
        if first_weekday is not None:
            assert now.weekday() == first_weekday or (
                # the week's first date was skipped entirely by a transition
                (now - before).days > 1
            )
    # no new date is reached strictly inside a bucket (checked at each local noon)
    for b1, b2 in itertools.pairwise(out):
        step = 12 * 3600 * 1000 if first_weekday is None else DAY_MS
        for t in range(b1, b2, step):
            assert wall(t, zone).date() < wall(b2, zone).date()


# ---------------------------------------------------------------------------------------------
# explicit DST edges

NIGHT = LocalWindow(dt.time(21), dt.time(8))


def test_new_york_quiet_hours_across_spring_forward() -> None:
    out = window_intervals(NY, NIGHT, utc("2026-03-07T13:00"), utc("2026-03-09T14:00"))
    assert out == [
        # Sat 21:00 EST (-5) .. Sun 08:00 EDT (-4): 10 hours, not 11
        (utc("2026-03-08T02:00"), utc("2026-03-08T12:00")),
        # Sun 21:00 EDT .. Mon 08:00 EDT
        (utc("2026-03-09T01:00"), utc("2026-03-09T12:00")),
    ]


def test_new_york_quiet_hours_across_fall_back() -> None:
    out = window_intervals(NY, NIGHT, utc("2026-10-31T12:00"), utc("2026-11-02T14:00"))
    assert out == [
        # Sat 21:00 EDT .. Sun 08:00 EST: 12 hours
        (utc("2026-11-01T01:00"), utc("2026-11-01T13:00")),
        (utc("2026-11-02T02:00"), utc("2026-11-02T13:00")),
    ]


def test_boundary_at_skipped_time_takes_effect_at_transition() -> None:
    # 2026-03-08 02:00 EST -> 03:00 EDT at 07:00Z; 02:30 never shows on the wall.
    lo, hi = utc("2026-03-08T00:00"), utc("2026-03-09T00:00")
    starts_skipped = LocalWindow(parse_hhmm("02:30"), parse_hhmm("05:00"))
    assert window_intervals(NY, starts_skipped, lo, hi) == [
        (utc("2026-03-08T07:00"), utc("2026-03-08T09:00"))
    ]
    ends_skipped = LocalWindow(parse_hhmm("01:00"), parse_hhmm("02:30"))
    assert window_intervals(NY, ends_skipped, lo, hi) == [
        (utc("2026-03-08T06:00"), utc("2026-03-08T07:00"))
    ]
    inside_skipped = LocalWindow(parse_hhmm("02:10"), parse_hhmm("02:50"))
    assert window_intervals(NY, inside_skipped, lo, hi) == []


def test_boundary_in_repeated_hour_is_entered_twice() -> None:
    # 2026-11-01 02:00 EDT -> 01:00 EST at 06:00Z; 01:00-02:00 shows twice.
    lo, hi = utc("2026-11-01T00:00"), utc("2026-11-02T00:00")
    w = LocalWindow(parse_hhmm("01:30"), parse_hhmm("03:00"))
    assert window_intervals(NY, w, lo, hi) == [
        (utc("2026-11-01T05:30"), utc("2026-11-01T06:00")),  # 01:30-02:00 EDT
        (utc("2026-11-01T06:30"), utc("2026-11-01T08:00")),  # 01:30 EST-03:00 EST
    ]


def test_lord_howe_half_hour_shifts() -> None:
    # 2026-04-05 02:00 (+11) -> 01:30 (+10:30) at 2026-04-04 15:00Z
    w = LocalWindow(parse_hhmm("01:45"), parse_hhmm("02:15"))
    lo, hi = utc("2026-04-04T00:00"), utc("2026-04-05T00:00")
    assert window_intervals(LORD_HOWE, w, lo, hi) == [
        (utc("2026-04-04T14:45"), utc("2026-04-04T15:00")),
        (utc("2026-04-04T15:15"), utc("2026-04-04T15:45")),
    ]
    assert window_intervals(LORD_HOWE, NIGHT, utc("2026-04-04T00:00"), utc("2026-04-05T00:00")) == [
        (utc("2026-04-04T10:00"), utc("2026-04-04T21:30")),  # 21:00 +11 .. 08:00 +10:30
    ]
    # 2026-10-04 02:00 (+10:30) -> 02:30 (+11) at 2026-10-03 15:30Z
    lo, hi = utc("2026-10-03T00:00"), utc("2026-10-04T00:00")
    assert window_intervals(LORD_HOWE, LocalWindow(dt.time(2), dt.time(2, 30)), lo, hi) == []
    assert window_intervals(LORD_HOWE, LocalWindow(dt.time(2, 15), dt.time(3)), lo, hi) == [
        (utc("2026-10-03T15:30"), utc("2026-10-03T16:00"))
    ]
    assert window_intervals(LORD_HOWE, NIGHT, lo, hi) == [
        (utc("2026-10-03T10:30"), utc("2026-10-03T21:00")),  # 21:00 +10:30 .. 08:00 +11
    ]


def test_weekday_restriction_follows_window_start_date() -> None:
    friday_night = LocalWindow(dt.time(21), dt.time(8), frozenset({4}))
    # week of Mon 2026-06-01 in Paris (+02:00)
    out = window_intervals(PARIS, friday_night, utc("2026-06-01T00:00"), utc("2026-06-08T00:00"))
    assert out == [(utc("2026-06-05T19:00"), utc("2026-06-06T06:00"))]


def test_all_day_window() -> None:
    out = window_intervals(
        PARIS,
        LocalWindow(dt.time(0), dt.time(0), frozenset({6})),
        utc("2026-06-01T00:00"),
        utc("2026-06-15T00:00"),
    )
    assert out == [
        (utc("2026-06-06T22:00"), utc("2026-06-07T22:00")),
        (utc("2026-06-13T22:00"), utc("2026-06-14T22:00")),
    ]


def test_sundays_in_paris_across_dst() -> None:
    def sunday(d: dt.date) -> bool:
        return d.weekday() == 6

    out = day_intervals(PARIS, sunday, utc("2026-03-20T00:00"), utc("2026-04-06T00:00"))
    assert out == [
        (utc("2026-03-21T23:00"), utc("2026-03-22T23:00")),  # CET all day: 24 h
        (utc("2026-03-28T23:00"), utc("2026-03-29T22:00")),  # DST starts that Sunday: 23 h
        (utc("2026-04-04T22:00"), utc("2026-04-05T22:00")),  # CEST: 24 h
    ]


def test_local_day_starts_23h_and_25h() -> None:
    spring = local_day_starts(NY, utc("2026-03-08T12:00"), utc("2026-03-08T13:00"))
    assert spring == [utc("2026-03-08T05:00"), utc("2026-03-09T04:00")]
    assert spring[1] - spring[0] == 23 * 3600 * 1000
    fall = local_day_starts(NY, utc("2026-11-01T12:00"), utc("2026-11-01T13:00"))
    assert fall == [utc("2026-11-01T04:00"), utc("2026-11-02T05:00")]
    assert fall[1] - fall[0] == 25 * 3600 * 1000
    # the boundary itself starts a new bucket
    assert local_day_starts(NY, utc("2026-03-09T04:00"), utc("2026-03-09T04:00"))[0] == utc(
        "2026-03-09T04:00"
    )


def test_local_day_start_when_midnight_is_skipped() -> None:
    # Santiago springs forward at 24:00 Sat -> 01:00 Sun (2026-09-06 04:00Z): Sunday starts at 01:00
    out = local_day_starts(SANTIAGO, utc("2026-09-06T12:00"), utc("2026-09-06T12:00"))
    assert out == [utc("2026-09-06T04:00"), utc("2026-09-07T03:00")]
    assert to_local(out[0], SANTIAGO).time() == dt.time(1)


def test_local_week_starts() -> None:
    out = local_week_starts(NY, utc("2026-03-04T12:00"), utc("2026-03-10T12:00"))
    assert out == [utc("2026-03-02T05:00"), utc("2026-03-09T04:00"), utc("2026-03-16T04:00")]
    sunday_weeks = local_week_starts(NY, utc("2026-03-04T12:00"), utc("2026-03-04T12:00"), 6)
    assert sunday_weeks == [utc("2026-03-01T05:00"), utc("2026-03-08T05:00")]
    with pytest.raises(ValueError, match="first_weekday"):
        local_week_starts(NY, 0, 1, 7)


# ---------------------------------------------------------------------------------------------
# conversions and parsing


def test_conversions() -> None:
    t = utc("2026-11-01T05:30") + 123
    assert ms_to_utc(t) == dt.datetime(2026, 11, 1, 5, 30, 0, 123000, tzinfo=dt.UTC)
    assert utc_to_ms(ms_to_utc(t)) == t
    assert utc_to_ms(ms_to_utc(-1)) == -1
    local = to_local(t, NY)
    assert local.utcoffset() == dt.timedelta(hours=-4)
    assert (local.hour, local.minute, local.fold) == (1, 30, 0)
    second = to_local(t + 3600 * 1000, NY)
    assert (second.hour, second.minute, second.fold) == (1, 30, 1)
    assert utc_to_ms(local) == t
    with pytest.raises(ValueError, match="naive"):
        utc_to_ms(dt.datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("08:00", dt.time(8)),
        ("21:30", dt.time(21, 30)),
        ("00:00", dt.time(0)),
        ("23:59", dt.time(23, 59)),
        ("8:05", dt.time(8, 5)),
    ],
)
def test_parse_hhmm(text: str, expected: dt.time) -> None:
    assert parse_hhmm(text) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("24:00", "00:00"),
        ("25:00", "00-23"),
        ("12:60", "00-59"),
        ("8", "HH:MM"),
        ("08:00:00", "HH:MM"),
        ("", "HH:MM"),
        ("ab:cd", "HH:MM"),
        ("-1:00", "HH:MM"),
    ],
)
def test_parse_hhmm_rejects(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_hhmm(text)
