"""Preference documents in format 2 (api/prefs_deflate.py): deflated against a frozen
dictionary. What is stored must read back as the same preferences in either format, the
dictionary can never change under stored documents, and no stored bytes make inflating
unbounded or wrong."""

from __future__ import annotations

import hashlib
import statistics
from importlib import resources

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from api import prefs_deflate
from api.record_codes import ZONES
from api.schemas import CHANNELS, ChannelPreference, FrequencyLimit, Preferences, QuietHours
from api.userstate import UnreadablePreferencesError, decode_preferences, encode_preferences
from loadtests.population import preferences as population_preferences

#: sha256 of api/data/preferences.zdict as first written (the zone list, then the
#: document's common JSON). Never edit the file: documents deflated against it could no
#: longer be inflated. A better dictionary is a new format tag.
DICTIONARY_DIGEST = "e05eb86f5150ba53718befd719df2494a6da463a1ac2decc1dcbe5c40e007188"

_hhmm = st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.integers(0, 59))
_tag = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FFF), min_size=1, max_size=64)
_channels = st.lists(st.sampled_from(CHANNELS), max_size=3, unique=True)
preferences = st.builds(
    Preferences,
    timezone=st.none() | st.sampled_from(ZONES) | st.just("Etc/Not_In_The_List"),
    phone=st.none() | st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True),
    country=st.none() | st.from_regex(r"[A-Z]{2}", fullmatch=True),
    region=st.none() | st.from_regex(r"[A-Z0-9]{1,3}", fullmatch=True),
    channels=st.dictionaries(st.sampled_from(CHANNELS), st.builds(
        ChannelPreference, consent=st.sampled_from(["opted_in", "opted_out", "unknown"]))),
    frequency_limits=st.lists(st.builds(
        FrequencyLimit, limit=st.integers(0, 10_000),
        window_minutes=st.none() | st.integers(1, 43_200),
        calendar=st.none() | st.sampled_from(["day", "week"]), channels=_channels), max_size=3),
    quiet_hours=st.lists(st.builds(
        QuietHours, start=_hhmm, end=_hhmm,
        weekdays=st.none() | st.lists(st.integers(0, 6), max_size=7, unique=True)), max_size=3),
    topic_opt_outs=st.lists(_tag, max_size=5),
)


def test_the_dictionary_is_frozen() -> None:
    raw = resources.files("api").joinpath("data", "preferences.zdict").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == DICTIONARY_DIGEST, (
        "api/data/preferences.zdict changed: stored format-2 documents no longer inflate")


@given(preferences)
def test_both_formats_read_back_as_the_same_preferences(prefs: Preferences) -> None:
    plain = encode_preferences(prefs, document_format=1)
    packed = encode_preferences(prefs, document_format=2)
    assert plain[:1] == b"{" and packed[:1] == prefs_deflate.FORMAT_TAG
    assert prefs_deflate.inflate(packed) == plain
    assert decode_preferences(plain) == decode_preferences(packed) == prefs


def test_a_typical_document_is_a_fraction_of_its_json() -> None:
    docs = [msgspec.convert(population_preferences(i), Preferences) for i in range(500)]
    plain = statistics.fmean(len(encode_preferences(d, document_format=1)) for d in docs)
    packed = statistics.fmean(len(encode_preferences(d, document_format=2)) for d in docs)
    assert packed < plain / 4, (plain, packed)


def test_a_document_of_an_earlier_release_still_reads() -> None:
    """Format 1 is what every release before format 2 stored (with or without defaults)."""
    full = b'{"timezone":"Europe/Paris","phone":null,"channels":{"sms":{"consent":"opted_in"}}}'
    assert decode_preferences(full) == Preferences(
        timezone="Europe/Paris", channels={"sms": ChannelPreference(consent="opted_in")})


@pytest.mark.parametrize("stored", [
    pytest.param(prefs_deflate.deflate(b'{"timezone":"Europe/Paris"}')[:-3], id="truncated"),
    pytest.param(prefs_deflate.deflate(b'{"timezone":"Europe/Paris"}') + b"\x00", id="trailing-bytes"),
    pytest.param(prefs_deflate.FORMAT_TAG + b"\xff\xff\xff\xff", id="not-deflate"),
    pytest.param(prefs_deflate.FORMAT_TAG, id="empty-stream"),
    pytest.param(prefs_deflate.deflate(b" " * (prefs_deflate.MAX_DOCUMENT_BYTES + 1)), id="too-large"),
])
def test_damaged_documents_are_refused_and_inflating_stays_bounded(stored: bytes) -> None:
    with pytest.raises(prefs_deflate.CorruptDocumentError):
        prefs_deflate.inflate(stored)
    # the decision path: no guess, a 409 naming the recipient (api/userstate.py)
    with pytest.raises(UnreadablePreferencesError) as refused:
        decode_preferences(stored)
    assert isinstance(refused.value.__cause__, prefs_deflate.CorruptDocumentError)
    assert (refused.value.status, refused.value.code, refused.value.field) == (
        409, "preferences_unreadable", "user_id")
