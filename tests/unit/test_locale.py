"""Time zone and jurisdiction resolution: phone parsing and the precedence table."""

from __future__ import annotations

from typing import Any

import pytest

from api.locale import (
    ZONE_NAMES,
    Location,
    PhoneInfo,
    is_valid_zone,
    normalize_country,
    normalize_region,
    parse_phone,
    resolve_location,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("+13055550123", PhoneInfo("+13055550123", "US", "FL", ("America/New_York",))),
        ("+14105550123", PhoneInfo("+14105550123", "US", "MD", ("America/New_York",))),
        ("+12065550123", PhoneInfo("+12065550123", "US", "WA", ("America/Los_Angeles",))),
        ("+33612345678", PhoneInfo("+33612345678", "FR", None, ("Europe/Paris",))),
        ("+18005550123", PhoneInfo("+18005550123", "US", None, ())),  # toll-free: no zone info
        ("+1 (212) 555-0123", PhoneInfo("+12125550123", "US", "NY", ("America/New_York",))),
        ("+14165550123", PhoneInfo("+14165550123", "CA", "ON", ("America/Toronto",))),
        ("+16045550123", PhoneInfo("+16045550123", "CA", "BC", ("America/Vancouver",))),
        ("+12025550123", PhoneInfo("+12025550123", "US", "DC", ("America/New_York",))),
        (
            "+19075550123",
            PhoneInfo("+19075550123", "US", "AK", ("America/Adak", "America/Anchorage")),
        ),
    ],
)
def test_parse_phone(text: str, expected: PhoneInfo) -> None:
    assert parse_phone(text) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("13055550123", "leading '\\+'"),
        ("", "leading '\\+'"),
        ("+1305", "not a valid"),
        ("+1abc5550123", "E.164"),
        ("+1305555012345678", "E.164"),
        ("+999123456", "phone"),
        ("+10005550123", "not a valid"),
    ],
)
def test_parse_phone_rejects(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        parse_phone(text)
    assert str(info.value).startswith("phone:")


def test_zone_and_region_helpers() -> None:
    assert is_valid_zone("America/New_York")
    assert is_valid_zone("UTC")
    for bad in ("", "Mars/Olympus", "../etc/passwd", "/etc/localtime", " UTC"):
        assert not is_valid_zone(bad)
    assert normalize_region("US", "US-FL") == "FL"
    assert normalize_region("us", "fl") == "FL"
    assert normalize_region(None, "us-fl") == "FL"
    assert normalize_region("US", None) is None
    assert normalize_region("US", "  ") is None
    with pytest.raises(ValueError, match="region"):
        normalize_region("US", "FR-IDF")
    with pytest.raises(ValueError, match="region"):
        normalize_region("US", "FLORIDA")
    assert normalize_country(" fr ") == "FR"
    assert normalize_country("") is None
    with pytest.raises(ValueError, match="country"):
        normalize_country("USA")


BASE: dict[str, Any] = {
    "request_zone": None,
    "request_country": None,
    "request_region": None,
    "request_phone": None,
    "pref_zone": None,
    "pref_country": None,
    "pref_region": None,
    "pref_phone": None,
    "default_zone": "UTC",
    "default_country": None,
}

FL = "+13055550123"
WA = "+12065550123"
FR = "+33612345678"
TOLL_FREE = "+18005550123"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        # nothing known: tenant defaults
        ({}, Location(("UTC",), "default", None, None, "default")),
        (
            {"default_zone": "Europe/Paris", "default_country": "fr"},
            Location(("Europe/Paris",), "default", "FR", None, "default"),
        ),
        # request beats everything
        (
            {
                "request_zone": "Asia/Tokyo",
                "request_country": "JP",
                "pref_zone": "Europe/Paris",
                "pref_country": "FR",
                "pref_phone": FL,
            },
            Location(("Asia/Tokyo",), "request", "JP", None, "request"),
        ),
        (
            {
                "request_country": "US",
                "request_region": "US-MD",
                "pref_country": "US",
                "pref_region": "FL",
            },
            Location(("UTC",), "default", "US", "MD", "request"),
        ),
        # region with prefix alone implies its country
        ({"request_region": "US-FL"}, Location(("UTC",), "default", "US", "FL", "request")),
        # preferences beat phone
        (
            {
                "pref_zone": "America/Chicago",
                "pref_country": "US",
                "pref_region": "OK",
                "request_phone": FL,
            },
            Location(("America/Chicago",), "preferences", "US", "OK", "preferences"),
        ),
        # phone beats default; request phone before stored phone
        (
            {"request_phone": FL, "pref_phone": WA},
            Location(("America/New_York",), "phone", "US", "FL", "phone"),
        ),
        ({"pref_phone": WA}, Location(("America/Los_Angeles",), "phone", "US", "WA", "phone")),
        ({"pref_phone": FR}, Location(("Europe/Paris",), "phone", "FR", None, "phone")),
        # toll-free request phone: no zone from it, stored phone's zone used
        (
            {"request_phone": TOLL_FREE, "pref_phone": WA, "default_zone": "Europe/London"},
            Location(("America/Los_Angeles",), "phone", "US", "WA", "phone"),
        ),
        (
            {"request_phone": TOLL_FREE, "default_zone": "Europe/London"},
            Location(("Europe/London",), "default", "US", None, "phone"),
        ),
        # a less detailed winning source keeps the region of a lower source of the same country
        (
            {"request_country": "US", "request_phone": FL},
            Location(("America/New_York",), "phone", "US", "FL", "request"),
        ),
        # ... but never a region from another country
        (
            {"request_country": "FR", "pref_phone": FL},
            Location(("America/New_York",), "phone", "FR", None, "request"),
        ),
        # zone and country resolve independently
        (
            {"request_zone": "Europe/Berlin", "pref_phone": FL},
            Location(("Europe/Berlin",), "request", "US", "FL", "phone"),
        ),
        # invalid stored data is ignored
        (
            {
                "pref_phone": "12345",
                "pref_zone": "Nowhere/Land",
                "pref_country": "Usa",
                "pref_region": "??",
                "default_zone": "Europe/Paris",
                "default_country": "FR",
            },
            Location(("Europe/Paris",), "default", "FR", None, "default"),
        ),
        (
            {"pref_country": "US", "pref_region": "FR-IDF"},
            Location(("UTC",), "default", "US", None, "preferences"),
        ),
        # a bare request region belongs to whatever country resolves, and beats stored regions
        (
            {"request_region": "fl", "pref_phone": WA},
            Location(("America/Los_Angeles",), "phone", "US", "FL", "phone"),
        ),
        (
            {"request_region": "OK", "default_country": "US"},
            Location(("UTC",), "default", "US", "OK", "default"),
        ),
        ({"request_region": "FL"}, Location(("UTC",), "default", None, None, "default")),
        # invalid default zone never fails a decision
        ({"default_zone": "Not/AZone"}, Location(("UTC",), "default", None, None, "default")),
    ],
)
def test_resolve_location_precedence(given: dict[str, Any], expected: Location) -> None:
    assert resolve_location(**{**BASE, **given}) == expected


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"request_phone": "3055550123"}, "phone:"),
        ({"request_phone": "+1305", "pref_phone": FL}, "phone:"),
        ({"request_zone": "America/Neww_York"}, "timezone:"),
        ({"request_country": "USA"}, "country:"),
        ({"request_country": "US", "request_region": "FR-IDF"}, "region:"),
    ],
)
def test_resolve_location_rejects_bad_request_fields(given: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field) as info:
        resolve_location(**{**BASE, **given})
    assert str(info.value).startswith(field)


@pytest.mark.parametrize("name", ["localtime", "Factory", "posixrules", "right/UTC",
                                  "posix/Europe/Paris", "Mars/Olympus", "", "../etc/passwd"])
def test_only_iana_zone_names_are_zones(name: str) -> None:
    assert not is_valid_zone(name)


@pytest.mark.parametrize("name", ["UTC", "Europe/Paris", "America/Argentina/Buenos_Aires",
                                  "US/Eastern", "Etc/GMT+5"])
def test_iana_names_and_their_links_are_zones(name: str) -> None:
    assert is_valid_zone(name)
    assert name in ZONE_NAMES


@pytest.mark.parametrize("code", ["ZZ", "XX", "AA", "UK"])
def test_user_assigned_or_unassigned_codes_are_not_countries(code: str) -> None:
    with pytest.raises(ValueError, match=r"^country:"):
        normalize_country(code)


@pytest.mark.parametrize(("country", "region"), [
    ("US", "US-FLA"), ("US", "Fla"), ("US", "F1"), ("FR", "FL"), (None, "FR-FL"), ("US", "XX")])
def test_subdivisions_must_exist_in_their_country(country: str | None, region: str) -> None:
    with pytest.raises(ValueError, match=r"^region:"):
        normalize_region(country, region)


def test_a_bare_request_region_is_checked_against_the_resolved_country() -> None:
    kwargs: dict[str, Any] = {
        "request_zone": None, "request_country": None, "request_phone": None,
        "pref_zone": None, "pref_country": None, "pref_region": None, "pref_phone": None,
        "default_zone": "UTC"}
    assert resolve_location(request_region="FL", default_country="US", **kwargs).region == "FL"
    with pytest.raises(ValueError, match=r"^region:"):
        resolve_location(request_region="FL", default_country="FR", **kwargs)
