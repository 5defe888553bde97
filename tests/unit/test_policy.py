"""api/policy.py: cross-field validation naming the field, and the documented default policy."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import pytest

from api.errors import field_from_msgspec
from api.jurisdictions import load_builtin_packs
from api.policy import (
    DEFAULT_CONFLICT_WINDOW_MINUTES,
    DEFAULT_POLICY,
    ConflictGroup,
    Policy,
    PolicyInvalidError,
    QuietHoursRule,
    active_packs,
    conflict_window_minutes,
    validate_policy,
)


def custom_pack(**fields: Any) -> dict[str, Any]:
    pack: dict[str, Any] = {"id": "acme-quiet", "version": "1", "name": "Acme", "country": "US",
                            "channels": ["sms"], "allowed_start": "09:00", "allowed_end": "19:00"}
    pack.update(fields)
    return pack


CAP = {"id": "c", "limit": 1, "window_minutes": 60}


@pytest.mark.parametrize(("doc", "field", "message"), [
    pytest.param({"caps": [CAP, {**CAP, "window_minutes": 120}]}, "caps[1]", "duplicate id 'c'",
                 id="duplicate-cap-id"),
    pytest.param({"caps": [{"id": "c", "limit": 1, "window_minutes": 60, "calendar": "day"}]},
                 "caps[0].window_minutes", "exactly one of", id="cap-both-window-and-calendar"),
    pytest.param({"caps": [CAP, {"id": "d", "limit": 1}]}, "caps[1].window_minutes",
                 "exactly one of", id="cap-neither"),
    pytest.param({"caps": [{**CAP, "scope": {"categories": ["promotional", "news"]}}]},
                 "caps[0].scope.categories[1]", "unknown category 'news'",
                 id="cap-scope-unknown-category"),
    pytest.param({"categories": ["a", "b", "a"], "exempt_categories": []}, "categories[2]",
                 "duplicate id 'a'", id="duplicate-category"),
    pytest.param({"exempt_categories": ["transactional", "system"]}, "exempt_categories[1]",
                 "unknown category 'system'", id="unknown-exempt-category"),
    pytest.param({"quiet_hours": [{"id": "q", "start": "21:00", "end": "08:00"},
                                  {"id": "q", "start": "12:00", "end": "13:00"}]},
                 "quiet_hours[1]", "duplicate id 'q'", id="duplicate-quiet-hours"),
    pytest.param({"quiet_hours": [{"id": "q", "start": "21:00", "end": "08:00",
                                   "categories": ["news"]}]},
                 "quiet_hours[0].categories[0]", "unknown category 'news'",
                 id="quiet-hours-unknown-category"),
    pytest.param({"conflict_groups": [{"group": "*"}, {"group": "g"}, {"group": "*"}]},
                 "conflict_groups[2]", "duplicate id '*'", id="duplicate-conflict-group"),
    pytest.param({"default_timezone": "Mars/Olympus"}, "default_timezone",
                 "unknown IANA time zone", id="bad-timezone"),
    pytest.param({"default_timezone": "../etc/passwd"}, "default_timezone",
                 "unknown IANA time zone", id="timezone-path"),
    pytest.param({"jurisdictions": {"enabled": ["us-tcpa", "us-ca-ccpa"]}},
                 "jurisdictions.enabled[1]", "unknown pack 'us-ca-ccpa'", id="unknown-enabled-pack"),
    pytest.param({"jurisdictions": {"packs": [custom_pack(id="us-tcpa")]}},
                 "jurisdictions.packs[0].id", "duplicate pack id 'us-tcpa'",
                 id="custom-pack-shadows-builtin"),
    pytest.param({"jurisdictions": {"packs": [custom_pack(), custom_pack(version="2")]}},
                 "jurisdictions.packs[1].id", "duplicate pack id 'acme-quiet'",
                 id="duplicate-custom-pack"),
    pytest.param({"jurisdictions": {"packs": [custom_pack(channels=["fax"])]}},
                 "jurisdictions.packs[0]", "unknown channel 'fax'", id="custom-pack-bad-channel"),
    pytest.param({"jurisdictions": {"packs": [custom_pack(id="Acme")]}},
                 "jurisdictions.packs[0]", "field 'id'", id="custom-pack-bad-id"),
    pytest.param({"jurisdictions": {"packs": [custom_pack(allowed_end=None)]}},
                 "jurisdictions.packs[0]", "allowed_end", id="custom-pack-half-hours"),
    pytest.param({"jurisdictions": {"packs": [custom_pack(cap={"limit": 0, "window_minutes": 60,
                                                               "channels": ["sms"]})]}},
                 "jurisdictions.packs[0]", "cap.limit", id="custom-pack-bad-cap"),
    pytest.param({"caps": [CAP, {**CAP, "id": "r", "limit": 3,
                                 "reserve": {"below_priority": 5, "limit": 3}}]},
                 "caps[1].reserve.limit", "not below the cap's limit 3", id="reserve-no-room"),
])
def test_invalid_policies_name_the_field(doc: dict[str, Any], field: str, message: str) -> None:
    policy = msgspec.convert(doc, Policy)
    with pytest.raises(PolicyInvalidError) as exc:
        validate_policy(policy)
    assert exc.value.field == field
    assert message in exc.value.message
    assert str(exc.value) == exc.value.message


@pytest.mark.parametrize("doc", [
    {},
    {"caps": [], "quiet_hours": [], "conflict_groups": []},
    {"caps": [{"id": "d", "limit": 2, "calendar": "day", "scope": {"channels": ["sms"]}},
              {"id": "w", "limit": 9, "calendar": "week"}]},
    {"categories": ["promotional", "news", "transactional"],
     "quiet_hours": [{"id": "q", "start": "22:00", "end": "07:00", "categories": ["news"],
                      "weekdays": [5, 6]}]},
    {"jurisdictions": {"packs": [custom_pack()], "enabled": ["acme-quiet", "us-fl-ftsa"]}},
    {"jurisdictions": {"enabled": []}},
    {"default_timezone": "Europe/Paris", "default_country": "FR"},
    {"caps": [{"id": "d", "limit": 3, "window_minutes": 1440,
               "reserve": {"below_priority": 5, "limit": 2}}],
     "preemption": {"enabled": True, "max_displaced": 3}, "send_time": {"spread_minutes": 0}},
])
def test_valid_policies(doc: dict[str, Any]) -> None:
    validate_policy(msgspec.convert(doc, Policy))


@pytest.mark.parametrize(("doc", "field"), [
    ({"caps": [{"id": "c", "limit": 0, "window_minutes": 60}]}, "caps[0].limit"),
    ({"caps": [{"id": "c", "limit": 1, "window_minutes": 43_201}]}, "caps[0].window_minutes"),
    ({"caps": [{"id": "c", "limit": 1, "calendar": "month"}]}, "caps[0].calendar"),
    ({"caps": [{"id": "bad id", "limit": 1, "window_minutes": 1}]}, "caps[0].id"),
    ({"quiet_hours": [{"id": "q", "start": "24:00", "end": "08:00"}]}, "quiet_hours[0].start"),
    ({"quiet_hours": [{"id": "q", "start": "21:00", "end": "08:00", "weekdays": [7]}]},
     "quiet_hours[0].weekdays[0]"),
    ({"opt_in_only_channels": ["fax"]}, "opt_in_only_channels[0]"),
    ({"max_defer_minutes": 0}, "max_defer_minutes"),
    ({"cap": []}, "cap"),
    ({"caps": [{"id": "c", "limit": 1, "window_minutes": 1, "scope": {"channel": ["sms"]}}]},
     "caps[0].scope.channel"),
    ({"caps": [{"id": "c", "limit": 3, "window_minutes": 60,
                "reserve": {"below_priority": 11, "limit": 1}}]},
     "caps[0].reserve.below_priority"),
    ({"caps": [{"id": "c", "limit": 3, "window_minutes": 60,
                "reserve": {"below_priority": 5, "limit": 0}}]}, "caps[0].reserve.limit"),
    ({"preemption": {"max_displaced": 0}}, "preemption.max_displaced"),
    ({"preemption": {"enable": True}}, "preemption.enable"),
    ({"send_time": {"spread_minutes": -1}}, "send_time.spread_minutes"),
])
def test_structural_errors_name_the_field(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(msgspec.ValidationError) as exc:
        msgspec.json.decode(msgspec.json.encode(doc), type=Policy)
    assert field_from_msgspec(str(exc.value))[1] == field


def test_default_policy_is_valid_and_documented() -> None:
    p = DEFAULT_POLICY
    validate_policy(p)
    assert p == Policy() and p.version == 0 and p.version_label == "0"
    assert p.categories == ["transactional", "promotional"]
    assert p.exempt_categories == ["transactional"] and not p.exempt_count_toward_caps
    assert p.quiet_hours == [QuietHoursRule(id="default-quiet-hours", start="21:00", end="08:00")]
    (quiet,) = p.quiet_hours
    assert quiet.channels == [] and quiet.categories == [] and quiet.weekdays is None
    assert p.opt_in_only_channels == ["whatsapp"]
    assert p.conflict_groups == [ConflictGroup(group="*", window_minutes=72 * 60)]
    assert DEFAULT_CONFLICT_WINDOW_MINUTES == 72 * 60
    assert [(c.id, c.limit, c.window_minutes, c.calendar, c.scope.categories) for c in p.caps] == [
        ("promotional-daily", 3, 1440, None, ["promotional"]),
        ("promotional-weekly", 10, 7 * 1440, None, ["promotional"]),
        ("promotional-spacing", 1, 30, None, ["promotional"])]
    assert all(c.reserve is None and c.scope.channels == [] for c in p.caps)
    assert p.send_time.spread_minutes == 30
    assert not p.preemption.enabled and p.preemption.max_displaced == 2
    assert (p.default_timezone, p.default_country) == ("UTC", None)
    assert (p.max_defer_minutes, p.converted_suppression_days) == (7 * 1440, 30)
    assert p.jurisdictions.enabled is None and p.jurisdictions.packs == []


def test_default_policy_json_round_trip() -> None:
    encoded = msgspec.json.encode(DEFAULT_POLICY)
    assert msgspec.json.decode(encoded, type=Policy) == DEFAULT_POLICY
    assert msgspec.json.encode(msgspec.json.decode(encoded, type=Policy)) == encoded
    stamped = msgspec.structs.replace(
        DEFAULT_POLICY, version=7, updated_at=dt.datetime(2026, 6, 10, 16, tzinfo=dt.UTC),
        jurisdictions=msgspec.convert({"packs": [custom_pack()], "enabled": ["acme-quiet"]},
                                      type(DEFAULT_POLICY.jurisdictions)))
    again = msgspec.json.decode(msgspec.json.encode(stamped), type=Policy)
    assert again == stamped and again.version_label == "7"
    validate_policy(again)


def test_default_policies_do_not_share_mutable_defaults() -> None:
    a, b = Policy(), Policy()
    assert a.caps == b.caps and a.caps is not b.caps
    assert a.categories is not b.categories


def test_active_packs() -> None:
    builtin = [p.id for p in load_builtin_packs()]
    assert [p.id for p in active_packs(DEFAULT_POLICY)] == builtin
    custom = msgspec.convert({"jurisdictions": {"packs": [custom_pack()]}}, Policy)
    assert [p.id for p in active_packs(custom)] == [*builtin, "acme-quiet"]
    only = msgspec.convert({"jurisdictions": {"packs": [custom_pack()],
                                              "enabled": ["acme-quiet", "us-tcpa"]}}, Policy)
    assert [p.id for p in active_packs(only)] == ["us-tcpa", "acme-quiet"]
    none = msgspec.convert({"jurisdictions": {"enabled": []}}, Policy)
    assert active_packs(none) == []


def test_conflict_window_minutes() -> None:
    assert conflict_window_minutes(DEFAULT_POLICY, "anything") == 72 * 60
    p = msgspec.convert({"conflict_groups": [{"group": "g", "window_minutes": 60},
                                             {"group": "*", "window_minutes": 10}]}, Policy)
    assert conflict_window_minutes(p, "g") == 60
    assert conflict_window_minutes(p, "other") == 10
    p = msgspec.convert({"conflict_groups": [{"group": "g"}]}, Policy)
    assert conflict_window_minutes(p, "g") == DEFAULT_CONFLICT_WINDOW_MINUTES
    assert conflict_window_minutes(p, "other") is None
