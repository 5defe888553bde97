"""Training's replayed features equal what serving computes from its stored profile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.features import candidate_features
from models.profile import Profile
from models.timeutil import hour_of_week, local_seconds, zone
from training.dataset import Candidates, Logs, estimate_priors, featurize
from training.schema import NEVER, load_activity, load_messages


@pytest.fixture(scope="module")
def logs(sim_dir: Path) -> Logs:
    return Logs.combine(load_messages(sim_dir / "messages.parquet"),
                        load_activity(sim_dir / "activity.parquet"))


def serving_profile(logs: Logs, user: int, before: int) -> Profile:
    """What the API would hold: events folded in one at a time, stored as bytes between."""
    assert logs.messages is not None
    assert logs.activity is not None
    events: list[tuple[int, str, int, int]] = []
    m = logs.messages
    for r in np.flatnonzero(logs.msg_user == user).tolist():
        tz = zone(logs.zones[int(logs.msg_zone[r])])
        if m.sent_at[r] < before:
            events.append((int(m.sent_at[r]), "send", int(m.channel[r]), 0))
        engaged = int(logs.engaged_at[r])
        if engaged != NEVER and engaged < before:
            how = int(hour_of_week(local_seconds(tz, np.array([engaged])))[0])
            events.append((engaged, "engagement", int(m.channel[r]), how))
    a = logs.activity
    for r in np.flatnonzero(logs.act_user == user).tolist():
        at = int(a.occurred_at[r])
        if at < before:
            tz = zone(logs.zones[int(logs.act_zone[r])])
            events.append((at, "activity", 0, int(hour_of_week(local_seconds(tz, np.array([at])))[0])))
    stored = Profile().to_bytes()
    for at, kind, channel, how in events:  # arrival order, not time order
        profile = Profile.from_bytes(stored)
        if kind == "send":
            profile.record_send(at, channel)
        elif kind == "engagement":
            profile.record_engagement(at, channel, how)
        else:
            profile.record_activity(at, how)
        stored = profile.to_bytes()
    return Profile.from_bytes(stored)


def test_replayed_training_rows_equal_serving_rows(logs: Logs) -> None:
    start, end = logs.span()
    at = start + (end - start) * 2 // 3
    stream = logs.stream()
    priors = estimate_priors(logs, stream, at)
    users = np.arange(0, len(logs.users), max(1, len(logs.users) // 12), dtype=np.int64)
    instants = at + np.arange(0, 48 * 3600, 5400, dtype=np.int64)
    n = instants.size
    for user in users.tolist():
        channels = np.arange(n, dtype=np.int64) % 6
        candidates = Candidates(
            snap_user=np.array([user]), snap_at=np.array([at]),
            snapshot=np.zeros(n, dtype=np.int64), instant=instants, channel=channels,
            category=np.full(n, 3, dtype=np.int64),
            zone=np.full(n, logs.user_zone[user], dtype=np.int64))
        training_rows = featurize(logs, stream, candidates, priors)
        profile = serving_profile(logs, user, at)
        serving_rows = candidate_features(
            profile, now=at, channels=channels, instants=instants,
            zone_name=logs.zones[int(logs.user_zone[user])], priors=priors)
        serving_rows[:, 5] = 3  # category bucket given as a number above
        np.testing.assert_allclose(training_rows, serving_rows, rtol=1e-5, atol=1e-5)
