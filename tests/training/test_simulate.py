"""The simulator's logs agree with its own ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from models.timeutil import local_seconds, zone
from training.simulate import SimulationConfig, World, make_world, simulate, sparse_users


def test_world_is_reproducible() -> None:
    config = SimulationConfig(users=50, days=7)
    a = make_world(config, np.random.default_rng(3))
    b = make_world(config, np.random.default_rng(3))
    np.testing.assert_array_equal(a.rhythm, b.rhythm)
    np.testing.assert_array_equal(a.consent, b.consent)


def test_truth_prefers_the_users_active_hours() -> None:
    world = make_world(SimulationConfig(users=200, days=7), np.random.default_rng(5))
    users = np.arange(200, dtype=np.int64)
    monday = 20_000 * 86400  # a local Monday... any weekday works for the comparison
    monday -= ((monday // 86400 + 3) % 7) * 86400
    peak = np.argmax(world.rhythm[:, 0, :], axis=1)
    trough = np.argmin(world.rhythm[:, 0, :], axis=1)
    zeros = np.zeros(200)

    def truth(hour: np.ndarray) -> np.ndarray:
        # send one hour before the peak so the whole window overlaps it
        local = monday + ((hour - 1) % 24) * 3600
        return world.open_probability(users, np.zeros(200, np.int64), local,
                                      np.zeros(200, np.int64), zeros, zeros)

    assert np.mean(truth(peak) > truth(trough)) > 0.95
    fatigued = world.open_probability(users, np.zeros(200, np.int64), monday + peak * 3600,
                                      np.zeros(200, np.int64), zeros + 3, zeros + 10)
    assert np.all(fatigued <= truth(peak + 1) + 1e-12)


def test_logs_match_the_truth(sim_dir: Path) -> None:
    world = World.load(sim_dir / "truth.npz")
    messages = pq.read_table(sim_dir / "messages.parquet").to_pydict()
    users = np.array([int(u[1:]) for u in messages["user_id"]])
    channels = ["email", "push", "sms", "whatsapp", "in_app"]
    channel = np.array([channels.index(c) for c in messages["channel"]])
    # the logging policy only uses consented channels
    assert world.consent[users, channel].all()
    # propensities are probabilities of the logged (channel, hour) choice
    propensity = np.array(messages["propensity"])
    assert np.all((propensity > 0) & (propensity <= 1 / 12))
    # observed 2-hour open rates track the true probabilities (up to fatigue, ignored here)
    sent = np.array([t.timestamp() for t in messages["sent_at"]], dtype=np.int64)
    opened = np.array([t.timestamp() if t else 0 for t in messages["opened_at"]],
                      dtype=np.int64)
    local = np.empty_like(sent)
    zones = messages["time_zone"]
    for name in set(zones):
        rows = np.array([z == name for z in zones])
        local[rows] = local_seconds(zone(name), sent[rows])
    zeros = np.zeros(sent.size)
    truth = world.open_probability(users, channel, local, np.ones(sent.size, np.int64),
                                   zeros, zeros)
    hit = (opened > 0) & (opened - sent <= 7200)
    low, high = truth < np.quantile(truth, 0.3), truth > np.quantile(truth, 0.7)
    assert hit[high].mean() > 2.5 * hit[low].mean()
    assert 0.5 < hit.mean() / truth.mean() < 1.3


def test_sparse_users_look_like_the_real_sample(tmp_path: Path) -> None:
    """Median ~33 events in nine months, a quarter under 15, afternoon weekday peak."""
    config = SimulationConfig(users=600, days=270, seed=5, sends_per_day=0.0,
                              sparse_share=1.0)
    simulate(config, tmp_path, progress=False)
    table = pq.read_table(tmp_path / "activity.parquet").to_pydict()
    _, counts = np.unique(np.array(table["user_id"]), return_counts=True)
    counts = np.concatenate([counts, np.zeros(600 - counts.size, np.int64)])
    assert 25 <= np.median(counts) <= 45
    assert 8 <= np.quantile(counts, 0.25) <= 20
    world = make_world(config, np.random.default_rng(5))
    weekday_peak = np.argmax(world.rhythm[:, 0, :].mean(axis=0))
    assert 14 <= weekday_peak <= 19


def test_dense_and_sparse_users_share_one_world() -> None:
    world = make_world(SimulationConfig(users=100, days=7, sparse_share=0.3),
                       np.random.default_rng(1))
    assert sparse_users(world.config).sum() == 30
    assert world.level[sparse_users(world.config)].mean() < world.level[:70].mean() / 5
