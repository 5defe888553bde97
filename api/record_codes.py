"""Small integers for the names an idempotency record repeats (record format 4).

Every record names its zone, its decision, its channel, the codes of its reasons and
where its features came from, as strings: ~50 B of a ~200 B record (docs/benchmarks.md,
"Record format 4"). Format 4 stores each name as its position in a list this module
owns, and any name the list does not hold (a zone newer than the list, a code added
later) as the string itself, so encoding never fails and a reader takes both.

The positions are part of the stored format: records outlive releases, so a list can
only grow at its end, and an older worker cannot read a position it does not know. The
zone list is the IANA zone names of tzdata 2026f, sorted, frozen in
``api/data/zone_codes.txt`` (``tests/unit/test_record_codes.py`` checks its digest);
the reason codes and channels are ``ReasonCode``'s and ``CHANNELS``' own order, which
only ever append (api/reasons.py). commit.lua, which writes the outcome line, holds the
same decision, channel and reason numbers (checked by the same test).

Record format 5 also numbers the rules its reasons name, from ``api/data/rule_codes.txt``
(frozen the same way): the names this release writes itself (the default policy's
quiet hours, the request's and the policy's own rules, the preference centre's entries,
the built-in jurisdictions' ``id@version``). A tenant's own rule names (its caps, its
quiet-hours rules) stay strings. commit.lua never looks rules up: Python ships them in
the plan already numbered (api/plan.py: ``lua_plan``), and the script writes them as it
got them.
"""

from __future__ import annotations

from importlib import resources

from api.reasons import ReasonCode
from api.schemas import CHANNELS

#: the idempotency record format this release writes unless told otherwise
#: (``SENDWISE_RECORD_FORMAT``; api/plan.py and commit.lua know the layouts)
RECORD_FORMAT = 6
#: the frozen zone list: position -> IANA name
ZONES: tuple[str, ...] = tuple(
    resources.files("api").joinpath("data", "zone_codes.txt").read_text(encoding="utf-8").split())
#: a decision's word by its number in a format-4 outcome
DECISIONS: tuple[str, ...] = ("send", "defer", "suppress")
REASONS: tuple[str, ...] = tuple(code.value for code in ReasonCode)
#: channels by number (``CHANNELS``' order)
CHANNEL_CODES: tuple[str, ...] = CHANNELS
#: where a decision's features came from (``features_source``: the user's stored profile,
#: or only the tenant's priors; api/scoring.py names them from here)
FEATURE_SOURCES: tuple[str, ...] = ("profile", "prior")
#: the frozen rule list (format 5): position -> rule name
RULES: tuple[str, ...] = tuple(
    resources.files("api").joinpath("data", "rule_codes.txt").read_text(encoding="utf-8").split())

_ZONE_NO = {name: i for i, name in enumerate(ZONES)}
_REASON_NO = {name: i for i, name in enumerate(REASONS)}
_CHANNEL_NO = {name: i for i, name in enumerate(CHANNEL_CODES)}
_SOURCE_NO = {name: i for i, name in enumerate(FEATURE_SOURCES)}
_RULE_NO = {name: i for i, name in enumerate(RULES)}


def _name(table: tuple[str, ...], value: int | str, what: str) -> str:
    if isinstance(value, str):
        return value
    if 0 <= value < len(table):
        return table[value]
    raise ValueError(f"unknown {what} number {value} in a stored record "
                     "(written by a newer release?)")


def zone_code(zone: str) -> int | str:
    return _ZONE_NO.get(zone, zone)


def zone_name(value: int | str) -> str:
    return _name(ZONES, value, "zone")


def reason_code(code: str) -> int | str:
    return _REASON_NO.get(code, code)


def reason_name(value: int | str) -> str:
    return _name(REASONS, value, "reason code")


def channel_code(channel: str | None) -> int | str | None:
    return None if channel is None else _CHANNEL_NO.get(channel, channel)


def channel_name(value: int | str | None) -> str | None:
    return None if value is None else _name(CHANNEL_CODES, value, "channel")


def source_code(source: str | None) -> int | str | None:
    return None if source is None else _SOURCE_NO.get(source, source)


def source_name(value: int | str | None) -> str | None:
    return None if value is None else _name(FEATURE_SOURCES, value, "features source")


def decision_name(value: int | str) -> str:
    return _name(DECISIONS, value, "decision")


def rule_code(rule: str) -> int | str:
    return _RULE_NO.get(rule, rule)


def rule_name(value: int | str) -> str:
    return _name(RULES, value, "rule")
