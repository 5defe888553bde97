"""Jurisdiction rule packs: legal send-time and frequency limits kept as versioned data.

Laws change and differ per country and state, so they are data (``api/data/jurisdictions.json``
for the built-in packs; a tenant policy can add its own), not code.  Every decision names the
``rule_id`` (``id@version``) it applied, so a past decision can always be traced to the exact text
of the rule that was in force.

A pack says: for recipients in ``country`` (optionally only some ``regions``), on ``channels``,
for every category except ``exempt_categories``, sends are allowed only between ``allowed_start``
and ``allowed_end`` recipient-local wall time, never on ``blocked_weekdays`` or public holidays,
and at most ``cap.limit`` per rolling ``cap.window_minutes``.  Packs stack: a Florida recipient is
governed by both the federal TCPA pack and the Florida FTSA pack, and the stricter one wins
naturally because blocked intervals are unioned and every cap is enforced.

This module only answers "which packs apply" and "when does a pack forbid sending" (as intervals,
see :mod:`api.intervals`); caps are enforced by the decision engine's atomic commit.
"""

from __future__ import annotations

import datetime
import importlib.resources
import re
from collections.abc import Sequence
from functools import cache, lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import holidays
import msgspec

from api.intervals import Interval, union
from api.locale import is_country, is_subdivision
from api.localtime import LocalWindow, day_intervals, parse_hhmm, window_intervals

__all__ = [
    "CHANNELS",
    "JurisdictionPack",
    "PackCap",
    "applicable_packs",
    "blocked_intervals",
    "decode_packs",
    "holiday_dates",
    "load_builtin_packs",
    "validate_pack",
]

CHANNELS = frozenset({"email", "sms", "push", "whatsapp", "in_app", "web_push"})
MAX_WINDOW_MINUTES = 43_200  # 30 days, the longest rolling window the ledger keeps

_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_COUNTRY = re.compile(r"[A-Z]{2}")
_REGION = re.compile(r"[A-Z0-9]{1,3}")


class PackCap(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """At most ``limit`` messages on ``channels`` per rolling ``window_minutes``."""

    limit: int
    window_minutes: int
    channels: list[str]


def _default_exempt() -> list[str]:
    return ["transactional"]


class JurisdictionPack(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One legal rule set (see the module docstring); ``rule_id`` is what decisions report."""

    id: str
    version: str
    name: str
    country: str
    regions: list[str] = []  # empty = the whole country
    channels: list[str]  # the channels it governs, e.g. ["sms"]
    exempt_categories: list[str] = msgspec.field(default_factory=_default_exempt)
    allowed_start: str | None = None  # "08:00": sends allowed only in [start, end) local
    allowed_end: str | None = None
    blocked_weekdays: list[int] = []  # 0 = Monday
    blocked_public_holidays: bool = False  # `holidays` library, country (and region if set)
    cap: PackCap | None = None
    source: str = ""  # citation (statute) and a one-line summary

    @property
    def rule_id(self) -> str:
        return f"{self.id}@{self.version}"


class _PackFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Shape of ``api/data/jurisdictions.json``: a format number, a description and the packs."""

    format: int
    packs: list[JurisdictionPack]
    description: str = ""


# --------------------------------------------------------------------------------------------
# validation


def _bad(pack: JurisdictionPack, field: str, why: str) -> ValueError:
    return ValueError(f"jurisdiction pack {pack.id!r}: field {field!r}: {why}")


@cache
def _holiday_countries() -> dict[str, frozenset[str]]:
    """Country code -> subdivision codes supported by the ``holidays`` library."""
    return {c: frozenset(subdivs) for c, subdivs in holidays.list_supported_countries().items()}


def validate_pack(pack: JurisdictionPack) -> None:
    """Check what msgspec's types cannot; raise ValueError naming the bad field.

    A pack is legal text turned into data: a typo (a channel spelled "SMS", hours "8:00 pm")
    would silently disable a rule, so everything is checked when a pack is loaded, never on the
    hot path.
    """
    if not _ID.fullmatch(pack.id):
        raise _bad(pack, "id", "lowercase letters, digits, '.', '_' or '-', at most 64")
    if not pack.version.strip():
        raise _bad(pack, "version", "must not be empty")
    if not pack.name.strip():
        raise _bad(pack, "name", "must not be empty")
    if not _COUNTRY.fullmatch(pack.country) or not is_country(pack.country):
        raise _bad(pack, "country", f"{pack.country!r} is not an upper-case ISO 3166-1 code")
    for region in pack.regions:
        if not _REGION.fullmatch(region) or not is_subdivision(pack.country, region):
            why = f"{region!r} is not an ISO 3166-2 subdivision code without prefix (e.g. 'FL')"
            raise _bad(pack, "regions", why)
    if not pack.channels:
        raise _bad(pack, "channels", "must name at least one channel")
    for channel in pack.channels:
        if channel not in CHANNELS:
            raise _bad(pack, "channels", f"unknown channel {channel!r}; one of {sorted(CHANNELS)}")
    if (pack.allowed_start is None) != (pack.allowed_end is None):
        missing = "allowed_end" if pack.allowed_end is None else "allowed_start"
        raise _bad(pack, missing, "allowed_start and allowed_end must be given together")
    if pack.allowed_start is not None and pack.allowed_end is not None:
        try:
            start = parse_hhmm(pack.allowed_start)
        except ValueError as exc:
            raise _bad(pack, "allowed_start", str(exc)) from None
        try:
            end = parse_hhmm(pack.allowed_end)
        except ValueError as exc:
            raise _bad(pack, "allowed_end", str(exc)) from None
        if start == end:
            raise _bad(pack, "allowed_end", "equals allowed_start; omit both for no hour limit")
    for day in pack.blocked_weekdays:
        if not 0 <= day <= 6:
            raise _bad(pack, "blocked_weekdays", f"{day} is not a weekday 0 (Monday)..6 (Sunday)")
    if pack.blocked_public_holidays:
        supported = _holiday_countries()
        if pack.country not in supported:
            raise _bad(
                pack, "country", f"{pack.country!r} has no public-holiday calendar in `holidays`"
            )
    if pack.cap is not None:
        cap = pack.cap
        if cap.limit < 1:
            raise _bad(pack, "cap.limit", f"must be >= 1, got {cap.limit}")
        if not 1 <= cap.window_minutes <= MAX_WINDOW_MINUTES:
            got = cap.window_minutes
            raise _bad(pack, "cap.window_minutes", f"must be 1..{MAX_WINDOW_MINUTES}, got {got}")
        if not cap.channels:
            raise _bad(pack, "cap.channels", "must name at least one channel")
        for channel in cap.channels:
            if channel not in CHANNELS:
                raise _bad(pack, "cap.channels", f"unknown channel {channel!r}")


def decode_packs(data: bytes | str | list[Any]) -> list[JurisdictionPack]:
    """Decode and validate packs from JSON (a pack file or a bare list) or already-parsed
    objects, e.g. the ``jurisdictions`` section of a tenant policy.  Duplicate rule ids are
    refused: a decision must name one unambiguous rule."""
    packs: list[JurisdictionPack]
    if isinstance(data, list):
        packs = msgspec.convert(data, list[JurisdictionPack])
    else:
        raw = msgspec.json.decode(data)
        if isinstance(raw, list):
            packs = msgspec.convert(raw, list[JurisdictionPack])
        else:
            packs = msgspec.convert(raw, _PackFile).packs
    seen: set[str] = set()
    for pack in packs:
        validate_pack(pack)
        if pack.rule_id in seen:
            raise _bad(pack, "id", f"duplicate rule id {pack.rule_id!r}")
        seen.add(pack.rule_id)
    return packs


@cache
def _builtin() -> tuple[JurisdictionPack, ...]:
    text = importlib.resources.files("api").joinpath("data/jurisdictions.json").read_bytes()
    return tuple(decode_packs(text))


def load_builtin_packs() -> list[JurisdictionPack]:
    """The packs shipped with sendwise, validated once and cached (a fresh list per call, so a
    caller appending tenant packs cannot change the cache)."""
    return list(_builtin())


# --------------------------------------------------------------------------------------------
# applying packs


def applicable_packs(
    packs: Sequence[JurisdictionPack],
    country: str | None,
    region: str | None,
    channel: str,
    category: str,
) -> list[JurisdictionPack]:
    """The packs governing a message to a recipient in (country, region) on ``channel``.

    Unknown country -> no pack applies (we cannot tell which law holds; tenant quiet hours
    still do).  A regional pack applies only when the region is known and listed.
    """
    if country is None:
        return []
    c = country.upper()
    r = region.upper() if region else None
    return [
        p
        for p in packs
        if p.country == c
        and (not p.regions or (r is not None and r in p.regions))
        and channel in p.channels
        and category not in p.exempt_categories
    ]


@lru_cache(maxsize=1024)
def holiday_dates(country: str, subdiv: str | None, year: int) -> frozenset[datetime.date]:
    """Public holidays of ``country`` (and subdivision) in ``year``, cached: building a
    ``holidays`` calendar costs milliseconds, far too much per request."""
    calendar = holidays.country_holidays(country, subdiv=subdiv, years=year)
    return frozenset(calendar.keys())


def _holiday_subdiv(pack: JurisdictionPack, region: str | None) -> str | None:
    """Which subdivision's holidays to use: the recipient's region if given and known to
    ``holidays``, else the pack's only region, else national holidays."""
    supported = _holiday_countries().get(pack.country, frozenset())
    for candidate in (region, pack.regions[0] if len(pack.regions) == 1 else None):
        if candidate and candidate.upper() in supported:
            return candidate.upper()
    return None


def blocked_intervals(
    pack: JurisdictionPack,
    zone: ZoneInfo,
    start_ms: int,
    end_ms: int,
    *,
    region: str | None = None,
) -> list[Interval]:
    """Instants in ``[start_ms, end_ms)`` when ``pack`` forbids sending, as recipient-local
    wall-clock rules: outside the allowed hours, on blocked weekdays, on public holidays.

    Outside-hours is the complementary wall-clock window (allowed 08:00-21:00 -> blocked
    21:00-08:00, wrapping midnight), so DST handling is exactly that of
    :func:`api.localtime.window_intervals`.  ``region`` (optional, the recipient's subdivision)
    selects regional public holidays where the library has them (e.g. Moselle's Good Friday).
    """
    parts: list[list[Interval]] = []
    if pack.allowed_start is not None and pack.allowed_end is not None:
        start, end = parse_hhmm(pack.allowed_start), parse_hhmm(pack.allowed_end)
        parts.append(window_intervals(zone, LocalWindow(start=end, end=start), start_ms, end_ms))
    if pack.blocked_weekdays:
        days = frozenset(pack.blocked_weekdays)
        parts.append(day_intervals(zone, lambda d: d.weekday() in days, start_ms, end_ms))
    if pack.blocked_public_holidays:
        subdiv = _holiday_subdiv(pack, region)

        def is_holiday(d: datetime.date) -> bool:
            return d in holiday_dates(pack.country, subdiv, d.year)

        parts.append(day_intervals(zone, is_holiday, start_ms, end_ms))
    return union(*parts)
