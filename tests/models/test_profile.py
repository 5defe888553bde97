"""The profile's incremental update equals the closed-form batch computation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.profile import (
    MAX_SERIALIZED_SIZE,
    RECENT_SENDS,
    SERIALIZED_SIZE,
    Profile,
    ProfileFormatError,
    profile_from_events,
)

T0 = 1_760_000_000

send = st.tuples(st.just("send"), st.integers(0, 90 * 86400), st.integers(0, 4))
engagement = st.tuples(st.just("engagement"), st.integers(0, 90 * 86400), st.integers(0, 4),
                       st.integers(0, 167))
activity = st.tuples(st.just("activity"), st.integers(0, 90 * 86400), st.integers(0, 167))
events = st.lists(st.one_of(send, engagement, activity), max_size=60)


def batch(items: list[tuple[object, ...]]) -> Profile:
    def arr(kind: str, field: int) -> np.ndarray:
        return np.array([e[field] for e in items if e[0] == kind], dtype=np.int64)

    return profile_from_events(
        send_at=arr("send", 1) + T0, send_channel=arr("send", 2),
        engagement_at=arr("engagement", 1) + T0, engagement_channel=arr("engagement", 2),
        engagement_how=arr("engagement", 3),
        activity_at=arr("activity", 1) + T0, activity_how=arr("activity", 2),
    )


def apply(profile: Profile, item: tuple[object, ...]) -> None:
    kind, offset, *rest = item
    at = T0 + int(offset)  # type: ignore[call-overload]
    if kind == "send":
        profile.record_send(at, int(rest[0]))  # type: ignore[call-overload]
    elif kind == "engagement":
        profile.record_engagement(at, int(rest[0]), int(rest[1]))  # type: ignore[call-overload]
    else:
        profile.record_activity(at, int(rest[0]))  # type: ignore[call-overload]


def assert_same(incremental: Profile, expected: Profile) -> None:
    assert incremental.ref == expected.ref
    np.testing.assert_allclose(incremental.decayed, expected.decayed, rtol=2e-5, atol=1e-6)
    np.testing.assert_array_equal(incremental.counts, expected.counts)
    assert incremental.first_seen == expected.first_seen
    np.testing.assert_array_equal(incremental.last_send, expected.last_send)
    np.testing.assert_array_equal(incremental.last_engagement, expected.last_engagement)
    assert incremental.last_active == expected.last_active
    np.testing.assert_array_equal(incremental.recent_at, expected.recent_at)
    np.testing.assert_array_equal(incremental.recent_channel, expected.recent_channel)


@settings(max_examples=150, deadline=None)
@given(events, st.randoms(use_true_random=False))
def test_incremental_in_any_order_with_storage_round_trips_equals_batch(
    items: list[tuple[object, ...]], rnd: object,
) -> None:
    shuffled = list(items)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    profile = Profile()
    for item in shuffled:
        # what the API does: read from Redis, update, write back
        profile = Profile.from_bytes(profile.to_bytes())
        apply(profile, item)
    assert_same(profile, batch(items))


@settings(max_examples=50, deadline=None)
@given(events)
def test_round_trip_is_lossless(items: list[tuple[object, ...]]) -> None:
    profile = Profile()
    for item in sorted(items, key=lambda e: e[1]):  # type: ignore[arg-type,return-value]
        apply(profile, item)
    data = profile.to_bytes()
    assert len(data) == SERIALIZED_SIZE
    assert Profile.from_bytes(data) == profile


def test_serialized_size_fits_redis_budget() -> None:
    assert SERIALIZED_SIZE == 1521  # docs/model.md quotes this number
    assert SERIALIZED_SIZE <= MAX_SERIALIZED_SIZE == 2048


def test_long_memory_does_not_forget() -> None:
    """A sparse user's rhythm survives months of silence in the undecayed counts."""
    profile = Profile()
    for week in range(10):
        profile.record_activity(T0 + week * 7 * 86400, 40)  # Tuesday 16:00 local
    profile.record_activity(T0 + 300 * 86400, 100)
    assert profile.counts[40] == 10
    assert profile.counts[100] == 1
    assert profile.hist[40] < 0.01  # the short memory has all but forgotten it
    assert profile.first_seen == T0
    assert profile.last_active == T0 + 300 * 86400


def test_recent_sends_keep_the_latest_ones() -> None:
    profile = Profile()
    for i in range(40):
        profile.record_send(T0 + i * 60, i % 5)
    assert profile.recent_at.tolist() == [T0 + i * 60 for i in range(40 - RECENT_SENDS, 40)]


def test_decay_halves_every_half_life() -> None:
    profile = Profile()
    profile.record_activity(T0, 10)
    profile.record_activity(T0 + 21 * 86400, 11)
    assert profile.hist[10] == pytest.approx(0.5)
    assert profile.hist[11] == pytest.approx(1.0)


@pytest.mark.parametrize("data", [b"", b"\x01" + bytes(SERIALIZED_SIZE - 1), b"\x02abc"])
def test_bad_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(ProfileFormatError, match="profile"):
        Profile.from_bytes(data)


def test_absorb_equals_the_batch_profile_of_both_event_sets() -> None:
    """Merging two ids' profiles = the profile of all their events (issue 8, merge)."""
    rng = np.random.default_rng(4)
    for _ in range(20):
        parts = []
        for _side in range(2):
            n_s, n_e, n_a = (int(x) for x in rng.integers(0, 12, 3))
            parts.append({
                "send_at": rng.integers(1_700_000_000, 1_705_000_000, n_s),
                "send_channel": rng.integers(0, 5, n_s),
                "engagement_at": rng.integers(1_700_000_000, 1_705_000_000, n_e),
                "engagement_channel": rng.integers(0, 5, n_e),
                "engagement_how": rng.integers(0, 168, n_e),
                "activity_at": rng.integers(1_700_000_000, 1_705_000_000, n_a),
                "activity_how": rng.integers(0, 168, n_a)})
        merged = profile_from_events(**parts[0])
        merged.absorb(profile_from_events(**parts[1]))
        both = profile_from_events(**{k: np.concatenate([parts[0][k], parts[1][k]])
                                      for k in parts[0]})
        assert merged.ref == both.ref and merged.first_seen == both.first_seen
        assert np.array_equal(merged.counts, both.counts)
        np.testing.assert_allclose(merged.decayed, both.decayed, rtol=1e-6, atol=1e-7)
        assert np.array_equal(merged.last_send, both.last_send)
        assert np.array_equal(merged.last_engagement, both.last_engagement)
        assert merged.last_active == both.last_active
        assert np.array_equal(merged.recent_at, both.recent_at)
        assert np.array_equal(merged.recent_channel, both.recent_channel)
