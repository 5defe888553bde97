"""Where is the recipient? Time zone(s), country and subdivision for quiet hours and jurisdiction.

docs/architecture.md (the hot path, step 4): request > stored preferences > phone number
(``phonenumbers``) > tenant default.  Quiet hours (invariant 3) are only as good as the zone
they are evaluated in, so:

* a phone number whose prefix spans several zones yields all of them (at most 3; quiet hours must
  then hold in every one), and one that spans many (toll-free, non-geographic) yields none rather
  than a misleading guess;
* for the US and Canada the geocoder's description ("Florida", "Miami, FL", "Washington State")
  is turned into the ISO 3166-2 subdivision code, because state laws (Florida FTSA, Oklahoma,
  Maryland, Washington) attach to it.  The FTSA itself presumes a Florida area code means a
  Florida resident, so using the area code is the compliance-conservative reading.

Bad *request* data raises ``ValueError`` whose message starts with the field name (``phone:``,
``timezone:``, ``country:``, ``region:``) so the API can answer a 4xx naming it.  Bad *stored* data
(an old preference, a stale phone) is ignored instead: a decision must not fail on it.
"""

from __future__ import annotations

import re
import zoneinfo
from functools import lru_cache
from importlib import resources

import msgspec
import phonenumbers
import pycountry
from phonenumbers import geocoder
from phonenumbers import timezone as pn_timezone

__all__ = [
    "ZONE_NAMES",
    "Location",
    "PhoneInfo",
    "is_country",
    "is_subdivision",
    "is_valid_zone",
    "normalize_country",
    "normalize_region",
    "parse_phone",
    "resolve_location",
]

# More zones than this for one number means the prefix says nothing useful about the zone.
_MAX_PHONE_ZONES = 3

US_STATES: dict[str, str] = {
    "alabama": "AL", "alaska": "AK", "arizona": "AZ", "arkansas": "AR", "california": "CA",
    "colorado": "CO", "connecticut": "CT", "delaware": "DE", "district of columbia": "DC",
    "washington d.c.": "DC", "washington, d.c.": "DC", "washington dc": "DC",
    "florida": "FL", "georgia": "GA", "hawaii": "HI", "idaho": "ID", "illinois": "IL",
    "indiana": "IN", "iowa": "IA", "kansas": "KS", "kentucky": "KY", "louisiana": "LA",
    "maine": "ME", "maryland": "MD", "massachusetts": "MA", "michigan": "MI",
    "minnesota": "MN", "mississippi": "MS", "missouri": "MO", "montana": "MT",
    "nebraska": "NE", "nevada": "NV", "new hampshire": "NH", "new jersey": "NJ",
    "new mexico": "NM", "new york": "NY", "north carolina": "NC", "north dakota": "ND",
    "ohio": "OH", "oklahoma": "OK", "oregon": "OR", "pennsylvania": "PA",
    "rhode island": "RI", "south carolina": "SC", "south dakota": "SD", "tennessee": "TN",
    "texas": "TX", "utah": "UT", "vermont": "VT", "virginia": "VA",
    "washington state": "WA", "washington": "WA", "west virginia": "WV",
    "wisconsin": "WI", "wyoming": "WY",
}  # fmt: skip

CA_PROVINCES: dict[str, str] = {
    "alberta": "AB", "british columbia": "BC", "british colombia": "BC",  # geocoder's spelling
    "manitoba": "MB", "new brunswick": "NB", "newfoundland and labrador": "NL",
    "newfoundland": "NL", "nova scotia": "NS", "northwest territories": "NT", "nunavut": "NU",
    "ontario": "ON", "prince edward island": "PE", "quebec": "QC", "québec": "QC",
    "saskatchewan": "SK", "yukon": "YT",
}  # fmt: skip

_SUBDIVISIONS: dict[str, dict[str, str]] = {"US": US_STATES, "CA": CA_PROVINCES}
_SUBDIVISION_CODES: dict[str, frozenset[str]] = {
    country: frozenset(table.values()) for country, table in _SUBDIVISIONS.items()
}

_E164 = re.compile(r"\+\d{2,15}")
_PHONE_SEPARATORS = str.maketrans("", "", " -.()\u00a0")
_COUNTRY = re.compile(r"[A-Z]{2}")
_REGION = re.compile(r"[A-Z0-9]{1,3}")


class PhoneInfo(msgspec.Struct, frozen=True):
    """What a phone number says about its owner's location (all of it a guess from the prefix)."""

    e164: str
    country: str | None  # ISO 3166-1 alpha-2; None for non-geographic numbers (+800 ...)
    region: str | None  # ISO 3166-2 subdivision without prefix; US/CA only
    zones: tuple[str, ...]  # candidate IANA zones; () when the prefix does not narrow it down


class Location(msgspec.Struct, frozen=True):
    """The resolved place of a recipient and where each part came from (for reasons/debugging)."""

    zones: tuple[str, ...]  # IANA names, primary first; several only for an ambiguous phone
    zone_source: str  # "request" | "preferences" | "phone" | "default"
    country: str | None  # ISO 3166-1 alpha-2 upper
    region: str | None  # ISO 3166-2 subdivision WITHOUT country prefix, upper
    country_source: str  # same vocabulary


# --------------------------------------------------------------------------------------------
# zones, countries, regions


def _canonical_zone_names() -> frozenset[str]:
    """The IANA names the ``tzdata`` package lists (zones and their backward-compatible links,
    e.g. ``US/Eastern``), minus ``Factory``, which is a placeholder, not a place.

    Not ``zoneinfo.available_timezones()``: on a machine with a system zoneinfo tree that also
    yields file names that are not IANA zones (``localtime``, ``posixrules``, ``right/UTC``,
    ``posix/...``), and the answer would differ between machines.
    """
    listed = resources.files("tzdata").joinpath("zones").read_text(encoding="utf-8").split()
    return frozenset(listed) - {"Factory"}


#: every zone name the API accepts; the same set on every machine
ZONE_NAMES: frozenset[str] = _canonical_zone_names()


@lru_cache(maxsize=1024)
def is_valid_zone(name: str) -> bool:
    """Whether ``name`` is an IANA zone name (``ZONE_NAMES``) that zoneinfo can load."""
    if name not in ZONE_NAMES:
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def normalize_country(country: str | None) -> str | None:
    """``"us"`` -> ``"US"``; ``None``/empty -> None; ValueError for anything not two letters."""
    if country is None or not country.strip():
        return None
    code = country.strip().upper()
    if not _COUNTRY.fullmatch(code) or not is_country(code):
        raise ValueError(
            f"country: {country!r} is not an ISO 3166-1 alpha-2 country code (e.g. 'US')"
        )
    return code


@lru_cache(maxsize=512)
def is_country(code: str) -> bool:
    """ISO 3166-1 membership, from ``pycountry``'s copy of the standard (``ZZ``, ``XX`` and
    other user-assigned codes are not countries)."""
    return pycountry.countries.get(alpha_2=code) is not None


@lru_cache(maxsize=4096)
def is_subdivision(country: str, code: str) -> bool:
    """Whether ``country-code`` is an ISO 3166-2 subdivision (``US-FL`` yes; ``US-FLA``,
    ``US-F1`` and ``FR-FL`` no)."""
    found = pycountry.subdivisions.get(code=f"{country}-{code}")  # type: ignore[no-untyped-call]
    return found is not None


def normalize_region(country: str | None, region: str | None) -> str | None:
    """``"US-FL"`` or ``"fl"`` -> ``"FL"``.

    The API accepts both the bare subdivision code and the full ISO 3166-2 code; internally only
    the bare one is kept next to the country.  A prefix naming another country than ``country``
    is a contradiction and raises.
    """
    if region is None or not region.strip():
        return None
    text = region.strip().upper()
    if "-" in text:
        prefix, _, code = text.partition("-")
        if not _COUNTRY.fullmatch(prefix):
            raise ValueError(f"region: {region!r} has an invalid country prefix")
        if country is not None and prefix != country.strip().upper():
            raise ValueError(f"region: {region!r} is not a subdivision of country {country!r}")
    else:
        code = text
    if not _REGION.fullmatch(code):
        raise ValueError(
            f"region: {region!r} is not an ISO 3166-2 subdivision code (e.g. 'FL' or 'US-FL')"
        )
    owner = country.strip().upper() if country is not None else (prefix if "-" in text else None)
    if owner is not None and not is_subdivision(owner, code):
        raise ValueError(f"region: {region!r} is not an ISO 3166-2 subdivision of {owner}")
    return code


def _region_prefix(region: str | None) -> str | None:
    """The country prefix of ``"US-FL"``-style regions, if any."""
    if region and "-" in region:
        return region.strip().partition("-")[0].upper() or None
    return None


# --------------------------------------------------------------------------------------------
# phone numbers


def _region_from_description(country: str, description: str) -> str | None:
    """Geocoder text -> subdivision code for US/CA; None when unknown or ambiguous
    ("Nova Scotia/Prince Edward Island", "Canada")."""
    table = _SUBDIVISIONS.get(country)
    if table is None or not description:
        return None
    text = description.strip()
    _, sep, tail = text.rpartition(", ")
    if sep and tail.upper() in _SUBDIVISION_CODES[country]:
        return tail.upper()  # "Miami, FL"
    return table.get(text.lower())


@lru_cache(maxsize=4096)
def parse_phone(text: str) -> PhoneInfo:
    """Parse an E.164 number and read what its prefix says about location.

    A leading '+' is required: without it the country code would have to be guessed, and a wrong
    guess moves the recipient to another continent's quiet hours.  Spaces, dashes, dots and
    parentheses are tolerated.
    """
    if not isinstance(text, str):
        raise ValueError("phone: expected a string in E.164 format, e.g. '+13055550123'")
    compact = text.strip().translate(_PHONE_SEPARATORS)
    if not compact.startswith("+"):
        raise ValueError(
            f"phone: {text!r} must be in E.164 format with a leading '+' and country code, "
            "e.g. '+13055550123'"
        )
    if not _E164.fullmatch(compact):
        raise ValueError(f"phone: {text!r} is not an E.164 number ('+' then 2 to 15 digits)")
    try:
        number = phonenumbers.parse(compact, None)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"phone: {text!r} cannot be parsed: {exc}") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError(f"phone: {text!r} is not a valid phone number")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    region_code = phonenumbers.region_code_for_number(number)
    country = region_code if region_code and _COUNTRY.fullmatch(region_code) else None
    region = None
    if country in _SUBDIVISIONS:
        assert country is not None  # noqa: S101 - narrowed by the membership test
        region = _region_from_description(country, geocoder.description_for_number(number, "en"))
    zones = tuple(
        z
        for z in pn_timezone.time_zones_for_number(number)
        if z != pn_timezone.UNKNOWN_TIMEZONE and is_valid_zone(z)
    )
    if len(zones) > _MAX_PHONE_ZONES:
        zones = ()
    return PhoneInfo(e164=e164, country=country, region=region, zones=zones)


def _stored_phone(text: str | None) -> PhoneInfo | None:
    """A stored phone that no longer parses is ignored: old data must not fail a decision."""
    if not text:
        return None
    try:
        return parse_phone(text)
    except ValueError:
        return None


def _stored_country_region(
    country: str | None, region: str | None
) -> tuple[str | None, str | None]:
    """Normalize stored preference values, dropping what does not parse instead of raising."""
    try:
        c = normalize_country(country) or normalize_country(_region_prefix(region))
    except ValueError:
        return None, None
    try:
        r = normalize_region(c, region)
    except ValueError:
        r = None
    return (c, r) if c is not None else (None, None)


# --------------------------------------------------------------------------------------------
# resolution


def resolve_location(
    *,
    request_zone: str | None,
    request_country: str | None,
    request_region: str | None,
    request_phone: str | None,
    pref_zone: str | None,
    pref_country: str | None,
    pref_region: str | None,
    pref_phone: str | None,
    default_zone: str,
    default_country: str | None,
) -> Location:
    """Apply the precedence request > preferences > phone > default, separately for the zone and
    for the (country, region) pair.

    Zone: the first of request zone, stored zone, request phone's zones, stored phone's zones,
    default zone.  A phone with no zone information (toll-free) is skipped.  An invalid default
    zone falls back to UTC (configuration is validated elsewhere; a decision must not fail on it).

    Country/region: the first source that names a country wins and brings its own region.  When
    that source names no region, the region is taken from the next source naming the *same*
    country (a request saying only ``country=US`` for a Florida number is still in Florida: state
    rules must not be dropped because the caller sent less detail).  A region is never combined
    with a country it did not come with; the one exception is a request region sent without any
    country (``region="FL"`` alone): it is taken as the region of whatever country resolves, since
    the caller meant this recipient (with ``US-FL`` the prefix supplies the country).  It is
    dropped when no country resolves at all.
    """
    # --- request values: validated, errors name the field
    req_phone = parse_phone(request_phone) if request_phone else None
    if request_zone and not is_valid_zone(request_zone):
        raise ValueError(f"timezone: {request_zone!r} is not a known IANA time zone")
    req_country = normalize_country(request_country) or normalize_country(
        _region_prefix(request_region)
    )
    req_region = normalize_region(req_country, request_region)

    # --- stored values: ignored when invalid
    st_phone = _stored_phone(pref_phone)
    st_country, st_region = _stored_country_region(pref_country, pref_region)

    # --- zone
    zones: tuple[str, ...]
    if request_zone:
        zones, zone_source = (request_zone,), "request"
    elif pref_zone and is_valid_zone(pref_zone):
        zones, zone_source = (pref_zone,), "preferences"
    elif req_phone is not None and req_phone.zones:
        zones, zone_source = req_phone.zones, "phone"
    elif st_phone is not None and st_phone.zones:
        zones, zone_source = st_phone.zones, "phone"
    else:
        zones = (default_zone if is_valid_zone(default_zone) else "UTC",)
        zone_source = "default"

    # --- country / region
    default_c: str | None
    try:
        default_c = normalize_country(default_country)
    except ValueError:
        default_c = None
    candidates: list[tuple[str | None, str | None, str]] = [
        (req_country, req_region, "request"),
        (st_country, st_region, "preferences"),
    ]
    candidates.extend(
        (phone.country, phone.region, "phone") for phone in (req_phone, st_phone) if phone
    )
    candidates.append((default_c, None, "default"))

    country: str | None = None
    region: str | None = None
    country_source = "default"
    for i, (c, r, source) in enumerate(candidates):
        if c is None:
            continue
        country, region, country_source = c, r, source
        if region is None:
            region = next(
                (r2 for c2, r2, _ in candidates[i + 1 :] if c2 == c and r2 is not None), None
            )
        break
    if req_country is None and req_region is not None and country is not None:
        # A bare request region ("FL") names no country of its own: it describes the recipient
        # whose country we resolved, and as request data it outranks a stored or phone region.
        # It must be a subdivision of that country: a rule silently not applied is worse
        # than a 4xx.
        if not is_subdivision(country, req_region):
            raise ValueError(
                f"region: {request_region!r} is not an ISO 3166-2 subdivision of {country}, "
                "the recipient's country; send country with it or the full form ('US-FL')")
        region = req_region
    return Location(
        zones=zones,
        zone_source=zone_source,
        country=country,
        region=region,
        country_source=country_source,
    )
