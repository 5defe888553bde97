"""SNIPS (training/offpolicy.py) against the simulator's ground truth: decisions logged by
a known randomised policy, the value of other known policies estimated from those logs
and compared with their true value."""

from __future__ import annotations

import numpy as np

from models.artifact import read_manifest
from training.offpolicy import MIN_ESS, estimate, snips, target_probabilities
from training.pipeline import TrainResult, summary_text
from training.simulate import SimulationConfig, _day_number, make_world

HOURS = np.arange(24)


def logged_world(n: int, explore: float, seed: int) -> tuple[np.ndarray, ...]:
    """``n`` decisions (a user, a day, their first consented channel; 24 candidate local
    hours at hh:30) logged like the simulator's policy: a uniform hour with probability
    ``explore``, else a uniform daytime hour (09-20). Returns the true open probabilities
    (n, 24), the logged hour, its propensity and the observed reward."""
    config = SimulationConfig(users=1500, days=7, seed=seed)
    rng = np.random.default_rng(seed)
    world = make_world(config, rng)
    user = rng.integers(0, config.users, n)
    day = _day_number(config.start) + rng.integers(0, config.days, n)
    channel = np.argmax(world.consent, axis=1)[user]
    local = (day * 86400)[:, None] + HOURS[None, :] * 3600 + 1800
    zeros = np.zeros(n * 24)
    truth = world.open_probability(np.repeat(user, 24), np.repeat(channel, 24), local.ravel(),
                                   np.zeros(n * 24, np.int64), zeros, zeros).reshape(n, 24)
    daytime = (HOURS >= 9) & (HOURS < 21)
    p_hour = explore / 24 + (1 - explore) * daytime / daytime.sum()
    logged = rng.choice(24, size=n, p=p_hour)
    reward = (rng.random(n) < truth[np.arange(n), logged]).astype(np.float64)
    return truth, logged, p_hour[logged], reward


def test_snips_of_known_policies_brackets_their_true_value_on_the_simulator() -> None:
    truth, logged, propensity, reward = logged_world(30_000, explore=0.3, seed=5)
    n = truth.shape[0]
    evening = np.tile(-np.abs(HOURS - 19).astype(np.float64), (n, 1))  # "always 19:30"
    for scores in (evening, truth):  # a fixed hour, and the oracle's own choice
        est = estimate(scores, logged, propensity, reward, exploration_rate=0.1)
        true_value = float((target_probabilities(scores, 0.1) * truth).sum(axis=1).mean())
        assert est.low <= true_value <= est.high, (est, true_value)
        assert est.high - est.low < 0.05 and not est.thin and est.ess > MIN_ESS
    # the logging policy's own value is the mean reward, close to its true value
    assert abs(est.logged_value - float(truth[np.arange(n), logged].mean())) < 0.01
    # the oracle beats the logging policy, and SNIPS sees it
    oracle = estimate(truth, logged, propensity, reward, exploration_rate=0.1)
    assert oracle.value > oracle.logged_value


def test_a_policy_the_logs_rarely_tried_is_flagged_as_too_thin() -> None:
    truth, logged, propensity, reward = logged_world(600, explore=0.05, seed=6)
    night = np.tile(-np.abs(HOURS - 3).astype(np.float64), (truth.shape[0], 1))
    est = estimate(night, logged, propensity, reward, exploration_rate=0.0)
    assert est.thin and est.ess < MIN_ESS and est.matched < 10
    assert est.metrics()["snips_thin"] == 1.0
    assert "TOO THIN" in est.summary()


def test_snips_arithmetic_ties_and_unusable_propensities() -> None:
    probs = target_probabilities(np.array([[1.0, 1.0, 0.0, 0.0]]), 0.2)
    assert np.allclose(probs, [[0.45, 0.45, 0.05, 0.05]])
    est = snips(np.array([0.5, 0.25, 1.0, 0.5]), np.array([0.5, 0.5, np.nan, 0.0]),
                np.array([1.0, 0.0, 1.0, 1.0]), exploration_rate=0.0)
    # the last two are dropped; weights 1 and 0.5: (1 * 1 + 0.5 * 0) / 1.5
    assert est.n == 2 and abs(est.value - 2 / 3) < 1e-12 and est.logged_value == 0.5
    assert abs(est.ess - 1.5 ** 2 / 1.25) < 1e-12


def test_the_training_report_carries_the_estimate_when_the_log_has_propensities(
        trained: TrainResult) -> None:
    met = trained.metrics
    assert {"snips_value", "snips_low", "snips_high", "snips_logged_value", "snips_ess",
            "snips_n", "snips_true_value", "snips_thin"} <= set(met)
    assert met["snips_low"] <= met["snips_value"] <= met["snips_high"]
    assert 0 < met["snips_ess"] <= met["snips_n"]
    manifest = read_manifest(trained.out)
    assert manifest.metrics["snips_value"] == met["snips_value"]
    assert "Off-policy value of the new model" in summary_text(trained)
    assert trained.report is not None
    assert "Value on logged traffic (off-policy)" in trained.report.read_text()
