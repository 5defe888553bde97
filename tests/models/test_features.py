"""One feature function: stable schema, vectorised == one-at-a-time, sane values."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from models.features import (
    FEATURE_HASH,
    FEATURE_INDEX,
    FEATURES,
    build_features,
    candidate_features,
    fallback_scores,
    heuristic_distribution,
)
from models.priors import DEFAULT_PRIORS
from models.profile import Profile, ProfileBatch
from models.timeutil import local_seconds, zone
from models.vocab import ANY_CHANNEL, channel_index

NOW = 1_763_900_000  # Sunday 2025-11-23 12:13:20 UTC
MIDNIGHT = NOW - NOW % 86400


def busy_profile() -> Profile:
    profile = Profile()
    for day in range(30):
        base = MIDNIGHT - (30 - day) * 86400
        profile.record_send(base + 9 * 3600, channel_index("email"))
        profile.record_activity(base + 19 * 3600, 19 + 24 * ((day + 3) % 7))
    profile.record_send(NOW - 3600, channel_index("push"))
    return profile


def test_schema_is_fixed() -> None:
    assert len(FEATURES) == len(set(FEATURES)) == len(FEATURE_INDEX)
    assert len(FEATURE_HASH) == 16


def test_vectorised_equals_one_candidate_at_a_time() -> None:
    profile = busy_profile()
    instants = NOW + np.arange(96, dtype=np.int64) * 1800
    channels = np.arange(96) % (ANY_CHANNEL + 1)
    rows = candidate_features(profile, now=NOW, channels=channels, instants=instants,
                              zone_name="America/New_York", priors=DEFAULT_PRIORS,
                              category="promo")
    for j in (0, 17, 95):
        one = candidate_features(profile, now=NOW, channels=channels[j:j + 1],
                                 instants=instants[j:j + 1], zone_name="America/New_York",
                                 priors=DEFAULT_PRIORS, category="promo")
        np.testing.assert_array_equal(rows[j], one[0])


def test_training_batch_path_equals_serving_path() -> None:
    """Training stacks many profiles; serving passes one. Same rows either way."""
    profile = busy_profile()
    tz = zone("Europe/Paris")
    instants = NOW + np.arange(5, dtype=np.int64) * 3600
    serving = candidate_features(profile, now=NOW, channels=np.zeros(5, np.int64),
                                 instants=instants, zone_name="Europe/Paris",
                                 priors=DEFAULT_PRIORS, category="news")
    stacked = ProfileBatch(5)
    for i in range(5):
        stacked.put(i, profile)
    training = build_features(
        stacked, now=np.full(5, NOW), profile_index=np.arange(5),
        channel=np.zeros(5, np.int64), instant=instants, local=local_seconds(tz, instants),
        holiday=np.zeros(5, bool), category=np.full(5, serving[0, FEATURE_INDEX["category"]],
                                                    dtype=np.int64),
        priors=DEFAULT_PRIORS)
    np.testing.assert_array_equal(serving, training)


def test_values_reflect_history() -> None:
    profile = busy_profile()
    instants = np.array([NOW + 60], dtype=np.int64)
    row = candidate_features(profile, now=NOW, channels=np.array([channel_index("push")]),
                             instants=instants, zone_name="UTC", priors=DEFAULT_PRIORS)[0]
    col = FEATURE_INDEX
    assert row[col["sends_24h"]] == 1
    assert row[col["sends_24h_ch"]] == 1
    assert row[col["sends_7d"]] == 7  # 6 daily emails at 09:00 + the push
    assert row[col["hours_since_send_ch"]] == np.float32((3600 + 60) / 3600)
    assert np.isnan(row[col["hours_since_engagement_ch"]])
    assert row[col["user_mode_distance"]] == np.float32(19.5 - (12 + 14 / 60 + 20 / 3600))
    assert row[col["user_events"]] == 30
    assert row[col["user_count_3h"]] == 0  # 12:00 is far from the 19:00 habit


def test_empty_profile_falls_back_to_the_prior() -> None:
    instants = NOW + np.arange(24, dtype=np.int64) * 3600
    rows = candidate_features(Profile(), now=NOW, channels=np.zeros(24, np.int64),
                              instants=instants, zone_name="UTC", priors=DEFAULT_PRIORS)
    col = FEATURE_INDEX
    np.testing.assert_allclose(rows[:, col["heuristic_share"]], rows[:, col["prior_share_hour"]],
                               rtol=1e-5)
    scores = fallback_scores(rows)
    assert np.all((scores > 0) & (scores <= 1))
    best_hour = rows[int(np.argmax(scores)), col["cand_local_hour"]]
    assert 19 <= best_hour < 23  # the default evening peak


def test_heuristic_is_the_documented_formula() -> None:
    """Undecayed hour counts smoothed +-1 h (circular) plus 5 x the tenant share, normalised."""
    counts = np.zeros((1, 24))
    counts[0, [0, 17, 17, 18, 23]] = [2, 3, 0, 1, 1]  # the 17 h bin gets 3
    prior = np.full(24, 1 / 24)
    got = heuristic_distribution(counts, prior)[0]
    smoothed = np.array([counts[0, (h - 1) % 24] + counts[0, h] + counts[0, (h + 1) % 24]
                         for h in range(24)])
    expected = (smoothed + 5 * prior) / (smoothed + 5 * prior).sum()
    np.testing.assert_allclose(got, expected)
    assert got[23] > got[12]  # 23 h neighbours 0 h (circular)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 167), max_size=40))
def test_fallback_ranks_hours_exactly_like_the_heuristic(hows: list[int]) -> None:
    """Without a model serving is never worse than the heuristic: it *is* the heuristic."""
    profile = Profile()
    for i, how in enumerate(sorted(hows)):
        profile.record_activity(MIDNIGHT - 30 * 86400 + i * 3600, how)
    instants = MIDNIGHT + np.arange(24, dtype=np.int64) * 3600 + 1800
    rows = candidate_features(profile, now=MIDNIGHT, channels=np.full(24, ANY_CHANNEL),
                              instants=instants, zone_name="UTC", priors=DEFAULT_PRIORS)
    counts = profile.counts.reshape(7, 24).sum(axis=0)[None, :].astype(np.float64)
    expected = heuristic_distribution(counts, DEFAULT_PRIORS.hod)[0]
    scores = fallback_scores(rows)
    np.testing.assert_allclose(scores / scores.sum(), expected, rtol=1e-5)
