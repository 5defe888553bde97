"""The ranking objective's pieces: user-day queries, calibration, NDCG@3."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.priors import DEFAULT_PRIORS, Priors
from models.timeutil import HOURS_PER_WEEK
from training.dataset import Logs, day_examples, localize
from training.fit import fit_calibration, ndcg_at_3
from training.schema import load_activity

# 2025-03-03 is a Monday; America/New_York is UTC-5 then.
ROWS = """user_id,occurred_at,time_zone
a,2025-03-03T14:10:00Z,America/New_York
a,2025-03-03T14:50:00Z,America/New_York
a,2025-03-03T21:05:00Z,America/New_York
a,2025-03-05T04:30:00Z,America/New_York
b,2025-03-04T12:00:00Z,Europe/Paris
"""


def test_one_query_per_user_and_local_day(tmp_path: Path) -> None:
    path = tmp_path / "activity.csv"
    path.write_text(ROWS)
    logs = Logs.combine(None, load_activity(path))
    days = day_examples(logs, 0, 2**40)
    # a: Monday (3 trips) and Tuesday local (the 04:30Z trip is 23:30 on Tuesday); b: one day
    assert len(days) == 3
    label = days.label.reshape(3, 24)
    c = days.candidates
    local_hours = (localize(logs.zones, c.zone, c.instant) % 86400) // 3600
    assert local_hours.reshape(3, 24).tolist() == [list(range(24))] * 3  # hh:30 slots
    by_user = {logs.users[int(u)]: i for i, u in reversed(list(enumerate(c.snap_user)))}
    monday = label[by_user["a"]]
    assert monday[9] == 2 and monday[16] == 1 and monday.sum() == 3
    assert label.sum() == 5
    # profiles are taken at each day's local midnight: nothing of that day leaks in
    local_snap = localize(logs.zones, logs.user_zone[c.snap_user], c.snap_at)
    assert np.all(local_snap % 86400 == 0)


def test_calibration_recovers_known_weights() -> None:
    rng = np.random.default_rng(0)
    days = 4000
    scores = rng.normal(0, 1, (days, 24))
    heuristic = rng.dirichlet(np.ones(24), days)
    logits = 2.0 * scores + 0.5 * np.log(heuristic)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    hour = np.array([rng.choice(24, p=row) for row in p])
    label = np.zeros((days, 24), np.int64)
    label[np.arange(days), hour] = 1
    a, b = fit_calibration(scores, heuristic, label)
    assert a == pytest.approx(2.0, abs=0.15)
    assert b == pytest.approx(0.5, abs=0.15)


def test_ndcg_at_3_matches_the_definition() -> None:
    label = np.zeros((1, 24), np.int64)
    label[0, [2, 5]] = [1, 2]
    perfect = np.zeros((1, 24))
    perfect[0, 5], perfect[0, 2] = 2.0, 1.0
    assert ndcg_at_3(perfect, label) == pytest.approx(1.0)
    swapped = np.zeros((1, 24))
    swapped[0, 2], swapped[0, 5] = 2.0, 1.0
    ideal = 3 / np.log2(2) + 1 / np.log2(3)
    assert ndcg_at_3(swapped, label) == pytest.approx((1 / np.log2(2) + 3 / np.log2(3)) / ideal)


def test_priors_come_from_the_tenants_data_not_a_built_in_rhythm() -> None:
    counts = np.zeros(HOURS_PER_WEEK)
    counts[np.arange(7) * 24 + 16] = 500.0  # a shop: afternoons
    priors = Priors.estimate(counts, np.zeros(5), np.zeros(5))
    assert int(np.argmax(priors.hod)) == 16
    assert int(np.argmax(DEFAULT_PRIORS.hod)) != 16  # the built-in evening peak is elsewhere
    assert priors.hod[16] > 0.9
