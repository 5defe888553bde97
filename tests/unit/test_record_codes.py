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


def test_the_zone_list_is_frozen() -> None:
    raw = resources.files("api").joinpath("data", "zone_codes.txt").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == ZONE_LIST_DIGEST, (
        "api/data/zone_codes.txt changed: stored records name zones by their line; only "
        "append (with a format note in docs/architecture.md), then update the digest")
    assert len(set(record_codes.ZONES)) == len(record_codes.ZONES) == 598


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
                                    record_codes.source_name])
def test_a_number_no_list_holds_is_an_error(decode: object) -> None:
    assert callable(decode)
    with pytest.raises(ValueError, match="newer release"):
        decode(10_000)
    with pytest.raises(ValueError, match="newer release"):
        decode(-1)
