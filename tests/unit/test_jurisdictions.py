"""Jurisdiction packs: the shipped data, which packs apply, and when they forbid sending."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest

from api.intervals import contains
from api.jurisdictions import (
    JurisdictionPack,
    applicable_packs,
    blocked_intervals,
    decode_packs,
    load_builtin_packs,
    validate_pack,
)
from api.localtime import utc_to_ms

PARIS = ZoneInfo("Europe/Paris")
NY = ZoneInfo("America/New_York")
PACKS = load_builtin_packs()
BY_ID = {p.id: p for p in PACKS}


def local(zone: ZoneInfo, y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> int:
    """Epoch ms of a local wall time (fold=0)."""
    return utc_to_ms(dt.datetime(y, mo, d, h, mi, tzinfo=zone))


def utc(text: str) -> int:
    return utc_to_ms(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC))


def test_builtin_packs_load_and_validate() -> None:
    assert set(BY_ID) == {
        "us-tcpa",
        "us-fl-ftsa",
        "us-ok-otsa",
        "us-md-ssca",
        "us-wa-telemarketing",
        "fr-sms-commercial",
    }
    for pack in PACKS:
        validate_pack(pack)
        assert pack.rule_id == f"{pack.id}@{pack.version}"
        assert pack.source, pack.id
    assert BY_ID["us-fl-ftsa"].cap is not None
    assert BY_ID["us-fl-ftsa"].cap.limit == 3
    assert BY_ID["us-fl-ftsa"].cap.window_minutes == 1440
    assert BY_ID["us-md-ssca"].cap is not None
    assert BY_ID["us-md-ssca"].cap.channels == ["sms"]
    # the cache hands out copies
    load_builtin_packs().clear()
    assert len(load_builtin_packs()) == len(PACKS)


@pytest.mark.parametrize(
    ("country", "region", "channel", "category", "expected"),
    [
        ("US", "FL", "sms", "promotional", {"us-tcpa", "us-fl-ftsa"}),
        ("US", "OK", "sms", "promotional", {"us-tcpa", "us-ok-otsa"}),
        ("US", "MD", "sms", "promotional", {"us-tcpa", "us-md-ssca"}),
        ("US", "WA", "sms", "promotional", {"us-tcpa", "us-wa-telemarketing"}),
        ("US", None, "sms", "promotional", {"us-tcpa"}),
        ("US", "NY", "sms", "promotional", {"us-tcpa"}),
        ("us", "fl", "sms", "promotional", {"us-tcpa", "us-fl-ftsa"}),
        ("US", "FL", "email", "promotional", set()),
        ("US", "FL", "sms", "transactional", set()),
        ("FR", None, "sms", "promotional", {"fr-sms-commercial"}),
        ("FR", "57", "sms", "newsletter", {"fr-sms-commercial"}),
        ("FR", None, "push", "promotional", set()),
        ("DE", None, "sms", "promotional", set()),
        (None, None, "sms", "promotional", set()),
    ],
)
def test_applicable_packs(
    country: str | None, region: str | None, channel: str, category: str, expected: set[str]
) -> None:
    assert {p.id for p in applicable_packs(PACKS, country, region, channel, category)} == expected


def test_france_sundays_holidays_and_hours() -> None:
    fr = BY_ID["fr-sms-commercial"]
    lo, hi = local(PARIS, 2026, 5, 1), local(PARIS, 2026, 7, 20)
    blocked = blocked_intervals(fr, PARIS, lo, hi)
    # allowed: Monday 2026-05-11 10:00 Paris
    assert not contains(blocked, local(PARIS, 2026, 5, 11, 10))
    assert not contains(blocked, local(PARIS, 2026, 5, 11, 8))
    assert contains(blocked, local(PARIS, 2026, 5, 11, 7, 59))
    assert contains(blocked, local(PARIS, 2026, 5, 11, 22))
    assert not contains(blocked, local(PARIS, 2026, 5, 11, 21, 59))
    # Sunday 2026-05-10, all day
    for hour in (0, 10, 15, 23):
        assert contains(blocked, local(PARIS, 2026, 5, 10, hour))
    # Ascension Thursday 2026-05-14 and Bastille Day Tuesday 2026-07-14, all day
    assert contains(blocked, local(PARIS, 2026, 5, 14, 10))
    assert contains(blocked, local(PARIS, 2026, 7, 14, 12))
    assert not contains(blocked, local(PARIS, 2026, 7, 15, 12))
    # the whole blocked stretch around Ascension: Wed 22:00 .. Fri 08:00
    start = local(PARIS, 2026, 5, 13, 22)
    end = local(PARIS, 2026, 5, 15, 8)
    assert (start, end) in blocked


def test_france_regional_holiday() -> None:
    fr = BY_ID["fr-sms-commercial"]
    good_friday = local(PARIS, 2026, 4, 3, 12)
    lo, hi = local(PARIS, 2026, 4, 1), local(PARIS, 2026, 4, 8)
    assert not contains(blocked_intervals(fr, PARIS, lo, hi), good_friday)
    assert contains(blocked_intervals(fr, PARIS, lo, hi, region="57"), good_friday)


def test_tcpa_boundary_at_21_new_york_across_dst() -> None:
    tcpa = BY_ID["us-tcpa"]
    blocked = blocked_intervals(tcpa, NY, utc("2026-03-06T13:00"), utc("2026-03-10T13:00"))
    assert blocked == [
        (utc("2026-03-07T02:00"), utc("2026-03-07T13:00")),  # Fri 21:00 EST .. Sat 08:00 EST
        (utc("2026-03-08T02:00"), utc("2026-03-08T12:00")),  # Sat 21:00 EST .. Sun 08:00 EDT
        (utc("2026-03-09T01:00"), utc("2026-03-09T12:00")),  # Sun 21:00 EDT .. Mon 08:00 EDT
        (utc("2026-03-10T01:00"), utc("2026-03-10T12:00")),
    ]
    fall = blocked_intervals(tcpa, NY, utc("2026-10-31T12:00"), utc("2026-11-02T13:00"))
    assert fall == [
        (utc("2026-11-01T01:00"), utc("2026-11-01T13:00")),  # Sat 21:00 EDT .. Sun 08:00 EST
        (utc("2026-11-02T02:00"), utc("2026-11-02T13:00")),  # Sun 21:00 EST .. Mon 08:00 EST
    ]


def test_state_pack_is_stricter_than_federal() -> None:
    fl = BY_ID["us-fl-ftsa"]
    at_2030 = local(NY, 2026, 6, 1, 20, 30)
    lo, hi = local(NY, 2026, 6, 1), local(NY, 2026, 6, 2)
    assert contains(blocked_intervals(fl, NY, lo, hi), at_2030)
    assert not contains(blocked_intervals(BY_ID["us-tcpa"], NY, lo, hi), at_2030)


def _pack(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "test-pack",
        "version": "1",
        "name": "Test",
        "country": "FR",
        "channels": ["sms"],
        "allowed_start": "08:00",
        "allowed_end": "20:00",
        "blocked_weekdays": [6],
        "blocked_public_holidays": True,
        "cap": {"limit": 3, "window_minutes": 1440, "channels": ["sms"]},
    }
    base.update(changes)
    return base


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"allowed_start": "8pm"}, "allowed_start"),
        ({"allowed_end": "24:00"}, "allowed_end"),
        ({"allowed_end": None}, "allowed_end"),
        ({"allowed_end": "08:00"}, "allowed_end"),
        ({"channels": ["SMS"]}, "channels"),
        ({"channels": []}, "channels"),
        ({"blocked_weekdays": [7]}, "blocked_weekdays"),
        ({"cap": {"limit": 0, "window_minutes": 60, "channels": ["sms"]}}, "cap.limit"),
        ({"cap": {"limit": 1, "window_minutes": 0, "channels": ["sms"]}}, "cap.window_minutes"),
        ({"cap": {"limit": 1, "window_minutes": 43201, "channels": ["sms"]}}, "cap.window_minutes"),
        ({"cap": {"limit": 1, "window_minutes": 60, "channels": ["fax"]}}, "cap.channels"),
        ({"country": "XX"}, "country"),
        ({"country": "fr"}, "country"),
        ({"regions": ["US-FL"]}, "regions"),
        ({"id": "Bad Id"}, "id"),
        ({"version": " "}, "version"),
    ],
)
def test_validate_pack_names_the_field(changes: dict[str, Any], field: str) -> None:
    pack = msgspec.convert(_pack(**changes), JurisdictionPack)
    with pytest.raises(ValueError, match=f"field '{field}'"):
        validate_pack(pack)


def test_decode_packs() -> None:
    good = decode_packs([_pack()])
    assert good[0].rule_id == "test-pack@1"
    assert good[0].exempt_categories == ["transactional"]
    assert decode_packs(msgspec.json.encode([_pack()])) == good
    with pytest.raises(ValueError, match="duplicate"):
        decode_packs([_pack(), _pack()])
    with pytest.raises(msgspec.ValidationError, match="unknown_field"):
        decode_packs([_pack(unknown_field=1)])
    with pytest.raises(ValueError, match="allowed_start"):
        decode_packs([_pack(allowed_start="25:00")])
    # any ISO 3166 country and subdivision, holidays blocked or not
    assert decode_packs([_pack(country="DE", regions=["BY"], blocked_public_holidays=False)])
    for bad in ({"country": "ZZ"}, {"country": "US", "regions": ["FLA"]},
                {"country": "FR", "regions": ["FL"]}):
        with pytest.raises(ValueError, match="ISO 3166"):
            decode_packs([_pack(**bad)])
