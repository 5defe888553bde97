"""The serving shortcuts of the feature build are exact: the one-profile path, the
per-``Priors`` tables and the memoised UTC-offset breakpoints give the very bits the
general (training) path and ``zoneinfo`` give; the compact (deflated) profile format
reads back bit for bit."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.features import build_features, candidate_features
from models.priors import Priors
from models.profile import SERIALIZED_SIZE, Profile, ProfileBatch, ProfileFormatError
from models.timeutil import _holiday_days, country_of_zone, holiday_flags, local_seconds, utc_offsets, zone
from models.vocab import ANY_CHANNEL, CHANNELS, category_bucket

NOW = 1_763_900_000
ZONES = ["Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata",
         "Africa/Casablanca", "UTC"]


@st.composite
def profiles(draw: st.DrawFn) -> Profile:
    profile = Profile()
    for at, kind, channel, how in draw(st.lists(st.tuples(
            st.integers(NOW - 90 * 86400, NOW), st.sampled_from(["send", "eng", "act"]),
            st.integers(0, len(CHANNELS) - 1), st.integers(0, 167)), max_size=40)):
        if kind == "send":
            profile.record_send(at, channel)
        elif kind == "eng":
            profile.record_engagement(at, channel, how)
        else:
            profile.record_activity(at, how)
    return profile


priors_st = st.builds(
    lambda how, rates, overall: Priors(how, rates, overall),
    st.lists(st.floats(0.01, 100.0), min_size=168, max_size=168),
    st.lists(st.floats(0.001, 0.9), min_size=len(CHANNELS), max_size=len(CHANNELS)),
    st.floats(0.001, 0.9))


@settings(max_examples=60, deadline=None)
@given(profiles(), profiles(), priors_st, st.sampled_from(ZONES),
       st.lists(st.tuples(st.integers(0, 7 * 86400), st.integers(0, ANY_CHANNEL)),
                min_size=1, max_size=40))
def test_one_profile_path_equals_the_batch_path(profile: Profile, other: Profile,
                                                priors: Priors, zone_name: str,
                                                slots: list[tuple[int, int]]) -> None:
    instants = NOW + np.array([s for s, _ in slots], dtype=np.int64)
    channels = np.array([c for _, c in slots], dtype=np.int64)
    serving = candidate_features(profile, now=NOW, channels=channels, instants=instants,
                                 zone_name=zone_name, priors=priors, category="promo")
    # the priors' tables are now cached: a second call is the same bits
    again = candidate_features(profile, now=NOW, channels=channels, instants=instants,
                               zone_name=zone_name, priors=priors, category="promo")
    # the general path: two profiles, candidates on row 1, fresh priors (no cache)
    batch = ProfileBatch(2)
    batch.put(0, other)
    batch.put(1, profile)
    local = local_seconds(zone(zone_name), instants)
    fresh = Priors(priors.how, priors.channel_rates, priors.overall_rate)
    general = build_features(
        batch, now=np.array([NOW, NOW], dtype=np.int64),
        profile_index=np.ones(len(slots), dtype=np.intp), channel=channels,
        instant=instants, local=local,
        holiday=holiday_flags(country_of_zone(zone_name), local),
        category=np.full(len(slots), category_bucket("promo"), dtype=np.int64),
        priors=fresh)
    assert serving.tobytes() == again.tobytes() == general.tobytes()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(ZONES), st.integers(1_500_000_000, 1_900_000_000),
                          st.integers(0, 3 * 86400)), min_size=1, max_size=8))
def test_memoised_offsets_match_zoneinfo(queries: list[tuple[str, int, int]]) -> None:
    """Overlapping windows of several zones, each asked twice (the second from the cache)."""
    for _ in range(2):
        for name, start, span in queries:
            tz = zone(name)
            instants = np.array([start, start + span // 2, start + span], dtype=np.int64)
            expected = [datetime.fromtimestamp(int(t), UTC).astimezone(tz).utcoffset()
                        for t in instants]
            assert utc_offsets(tz, instants).tolist() == [
                int(e.total_seconds()) for e in expected if e is not None]


@settings(max_examples=60, deadline=None)
@given(profiles())
def test_compact_profile_round_trips_bit_for_bit(profile: Profile) -> None:
    compact = profile.to_compact_bytes()
    assert len(compact) < SERIALIZED_SIZE
    assert Profile.from_bytes(compact).to_bytes() == profile.to_bytes()


@pytest.mark.parametrize("damage", [
    lambda b: b[:-3],                      # truncated stream
    lambda b: b + b"\x00",                 # trailing bytes
    lambda b: b[:1] + b"\xff" + b[2:],     # corrupt header
    lambda b: b[:1] + zlib.compress(b"\x00" * 100_000, 1),  # inflates past one record
])
def test_damaged_compact_profile_is_a_format_error(damage: Callable[[bytes], bytes]) -> None:
    with pytest.raises(ProfileFormatError):
        Profile.from_bytes(damage(Profile().to_compact_bytes()))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["US", "FR", "IN", "AU", "XX"]),
       st.lists(st.integers(1_700_000_000, 1_800_000_000), min_size=1, max_size=30))
def test_memoised_holiday_flags_match_the_calendar(country: str, locals_: list[int]) -> None:
    local = np.array(locals_, dtype=np.int64)
    years = [datetime.fromtimestamp(t, UTC).year for t in locals_]
    calendar = set(_holiday_days(country, min(years), max(years)).tolist())
    for _ in range(2):  # cold, then from the cache
        assert holiday_flags(country, local).tolist() == [t // 86400 in calendar
                                                           for t in locals_]


@settings(max_examples=30, deadline=None)
@given(priors_st, st.sampled_from(ZONES), st.integers(1_500_000_000, 1_900_000_000))
def test_empty_profile_tables_cached_per_priors_are_the_computed_ones(
        priors: Priors, zone_name: str, now: int) -> None:
    """A user without events is scored with tables cached per priors (independent of
    ``now``); a profile that is not quite empty (counts without ``ref``) is not."""
    instants = now + np.arange(30, dtype=np.int64) * 3600
    channels = np.arange(30, dtype=np.int64) % (ANY_CHANNEL + 1)
    odd = Profile()
    odd.counts[5] = 1.0
    for profile in (Profile(), odd):
        cached = candidate_features(profile, now=now, channels=channels, instants=instants,
                                    zone_name=zone_name, priors=priors)
        batch = ProfileBatch(2)
        batch.put(1, profile)
        local = local_seconds(zone(zone_name), instants)
        general = build_features(
            batch, now=np.array([now, now], dtype=np.int64),
            profile_index=np.ones(30, dtype=np.intp), channel=channels, instant=instants,
            local=local, holiday=holiday_flags(country_of_zone(zone_name), local),
            category=np.full(30, category_bucket(None), dtype=np.int64),
            priors=Priors(priors.how, priors.channel_rates, priors.overall_rate))
        assert cached.tobytes() == general.tobytes()
