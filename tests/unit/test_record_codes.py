"""The numbers a format-4 record stores for names (api/record_codes.py) are part of the
stored format: records outlive releases, so a list may only grow at its end, and
commit.lua, which writes the outcome line, must number decisions, channels and reason
codes exactly as the Python readers do."""

from __future__ import annotations

import hashlib
import re
import zoneinfo
from importlib import resources

import pytest

from api import record_codes
from api.reasons import ReasonCode
from api.schemas import CHANNELS

#: sha256 of api/data/zone_codes.txt as first written (tzdata 2026f's zone names, sorted).
#: Never edit the file in place: a reordered or removed line renames stored zones.
ZONE_LIST_DIGEST = "8725722643bf1f4ff4fc4b22268ade98b6fae047a86897219c3a13d4c4ced93d"
#: sha256 of api/data/rule_codes.txt as first written (record format 5): append only
RULE_LIST_DIGEST = "e6d71eee13dec1b2477e98c5f44f0123d17a55c6db562a4b1f26ad36ae6a308d"
COMMIT_LUA = resources.files("api").joinpath("lua", "commit.lua").read_text(encoding="utf-8")


def _lua_numbers(name: str) -> dict[str, int]:
    """commit.lua's ``local function NAME(name)``: its chain of ``if name == '<name>' then
    return <n> end``, as a dict."""
    match = re.search(r"^local function " + name + r"\(name\)\n(.*?)^end$", COMMIT_LUA,
                      re.MULTILINE | re.DOTALL)
    assert match, f"commit.lua has no function {name}"
    body = match.group(1).strip().splitlines()
    found = [re.fullmatch(r"\s*if name == '(\w+)' then return (\d+) end", line)
             for line in body]
    assert all(found), f"{name}: every line is one name and its number"
    return {m.group(1): int(m.group(2)) for m in found if m}


@pytest.mark.parametrize(("name", "digest", "names", "count"), [
    ("zone_codes.txt", ZONE_LIST_DIGEST, record_codes.ZONES, 598),
    ("rule_codes.txt", RULE_LIST_DIGEST, record_codes.RULES, 54),
], ids=["zones", "rules"])
def test_the_frozen_lists_are_frozen(name: str, digest: str, names: tuple[str, ...],
                                     count: int) -> None:
    raw = resources.files("api").joinpath("data", name).read_bytes()
    assert hashlib.sha256(raw).hexdigest() == digest, (
        f"api/data/{name} changed: stored records name these by their line; only append "
        "(with a format note in docs/architecture.md), then update the digest")
    assert len(set(names)) == len(names) == count


def test_the_rules_this_release_names_itself_have_numbers() -> None:
    """Every rule the engine itself writes (not a tenant's own names) is in the list: the
    default policy's quiet hours, the request's and the policy's rules, the preference
    centre's entries, the built-in jurisdictions' ``id@version``."""
    from api.holdout import GLOBAL_RULE
    from api.jurisdictions import load_builtin_packs
    from api.policy import Policy
    from api.scoring import FLOOR_RULE

    own = [rule.id for rule in Policy().quiet_hours]
    own += [GLOBAL_RULE, FLOOR_RULE, "policy.send_time.exploration_rate", "request.deadline",
            "policy.max_defer_minutes", "request.not_before", "request.channels",
            "policy.opt_in_only_channels", "events.unsubscribed"]
    own += [f"preferences.channels.{channel}" for channel in CHANNELS]
    own += [f"preferences.{kind}[{i}]" for kind in ("frequency_limits", "quiet_hours")
            for i in range(16)]
    own += [pack.rule_id for pack in load_builtin_packs()]
    assert all(isinstance(record_codes.rule_code(rule), int) for rule in own), [
        rule for rule in own if isinstance(record_codes.rule_code(rule), str)]
    assert record_codes.rule_code("promotional-daily") == "promotional-daily"
    assert record_codes.rule_name(record_codes.rule_code(own[0])) == own[0]


def test_every_zone_of_this_tzdata_is_a_number_or_itself() -> None:
    """A zone the list lacks (a tzdata newer than 2026f) is written as its name."""
    for zone in zoneinfo.available_timezones():
        code = record_codes.zone_code(zone)
        assert record_codes.zone_name(code) == zone
    assert record_codes.zone_code("Mars/Olympus_Mons") == "Mars/Olympus_Mons"


def test_commit_lua_numbers_names_as_the_readers_do() -> None:
    assert _lua_numbers("decision_no") == {n: i for i, n in enumerate(record_codes.DECISIONS)}
    assert _lua_numbers("channel_no") == {n: i for i, n in enumerate(CHANNELS)}
    assert _lua_numbers("reason_no") == {code.value: i for i, code in enumerate(ReasonCode)}


def test_the_lists_only_grow() -> None:
    """The first numbers as format 4 first stored them: a code inserted or reordered in
    ReasonCode or CHANNELS would rename every stored record's reasons or channel."""
    assert record_codes.DECISIONS == ("send", "defer", "suppress")
    assert record_codes.FEATURE_SOURCES[:2] == ("profile", "prior")
    assert CHANNELS[:6] == ("email", "sms", "push", "whatsapp", "in_app", "web_push")
    assert record_codes.REASONS[:23] == (
        "frequency_cap", "user_frequency_limit", "jurisdiction_cap", "quiet_hours",
        "user_quiet_hours", "jurisdiction_window", "not_before", "conflicting_offer",
        "duplicate_offer", "no_consent", "opt_in_required", "topic_opted_out",
        "already_converted", "deadline_exceeded", "max_defer_exceeded",
        "no_channel_available", "policy_store_unavailable", "better_send_time",
        "exploration", "holdout", "preempted", "channel_pacing", "low_expected_value")


@pytest.mark.parametrize("decode", [record_codes.zone_name, record_codes.reason_name,
                                    record_codes.channel_name, record_codes.decision_name,
                                    record_codes.source_name, record_codes.rule_name])
def test_a_number_no_list_holds_is_an_error(decode: object) -> None:
    assert callable(decode)
    with pytest.raises(ValueError, match="newer release"):
        decode(10_000)
    with pytest.raises(ValueError, match="newer release"):
        decode(-1)
