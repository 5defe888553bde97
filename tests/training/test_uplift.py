"""training/uplift.py: the interval formulas against published values, the attribution
rules on hand-made logs, the command line, and a holdout experiment with a known true
effect run through the real engine, exported and analysed (the true effect must lie in
the reported interval, and the interval must exclude 0)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from api.clock import FixedClock
from api.engine import Engine
from api.redis_client import RedisClient
from api.settings import Settings
from api.store import Store
from sendwise.cli import main
from tests.conftest import TEST_ID_KEY, RedisTarget
from tests.integration.conftest import NOON_NY
from training.simulate_uplift import UpliftSimulation, export_and_analyse, run_through_engine
from training.uplift import analyse, format_report, newcombe, relative_lift, wilson, z_value

Z = z_value(0.95)


def test_z_value() -> None:
    assert z_value(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert z_value(0.90) == pytest.approx(1.644854, abs=1e-6)
    with pytest.raises(ValueError, match="confidence"):
        z_value(1.0)


@pytest.mark.parametrize(("k", "n", "lo", "hi"), [
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion",
    # Statistics in Medicine 17:857-872, Table II, method 3 (Wilson score)
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
    (29, 29, 0.8830, 1.0),
])
def test_wilson_matches_published_values(k: int, n: int, lo: float, hi: float) -> None:
    assert wilson(k, n, Z) == pytest.approx((lo, hi), abs=5e-5)


@pytest.mark.parametrize(("k1", "n1", "k2", "n2", "lo", "hi"), [
    # Newcombe (1998), "Interval estimation for the difference between independent
    # proportions", Statistics in Medicine 17:873-890, Table II, method 10
    (56, 70, 48, 80, 0.0524, 0.3339),
    (9, 10, 3, 10, 0.1705, 0.8090),
    (6, 7, 2, 7, 0.0582, 0.8062),
    (5, 56, 0, 29, -0.0381, 0.1926),
    (0, 10, 0, 20, -0.1611, 0.2775),
    (10, 10, 0, 20, 0.6791, 1.0),
])
def test_newcombe_matches_published_values(k1: int, n1: int, k2: int, n2: int, lo: float,
                                           hi: float) -> None:
    d, low, high = newcombe(k1, n1, k2, n2, Z)
    assert d == pytest.approx(k1 / n1 - k2 / n2)
    assert (low, high) == pytest.approx((lo, hi), abs=5e-5)


def test_katz_relative_risk_matches_published_values() -> None:
    """27/122 vs 44/487: risk ratio 2.4495, 95 % interval 1.5837-3.7887 (the worked
    example of scipy.stats.contingency.relative_risk's documentation)."""
    lift = relative_lift(27, 122, 44, 487, Z)
    assert lift is not None
    assert lift == pytest.approx((1.4495, 0.5837, 2.7887), abs=5e-5)
    assert relative_lift(0, 10, 3, 10, Z) is None


counts = st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n)))


@settings(max_examples=300, deadline=None)
@given(treated=counts, control=counts, confidence=st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_intervals_hold_their_estimates_and_stay_in_range(
        treated: tuple[int, int], control: tuple[int, int], confidence: float) -> None:
    z = z_value(confidence)
    (k1, n1), (k0, n0) = treated, control
    lo, hi = wilson(k1, n1, z)
    assert 0.0 <= lo <= k1 / n1 <= hi <= 1.0
    d, dlo, dhi = newcombe(k1, n1, k0, n0, z)
    assert -1.0 <= dlo <= d <= dhi <= 1.0
    wider = newcombe(k1, n1, k0, n0, z_value(0.999))
    assert wider[1] <= dlo + 1e-12 and dhi <= wider[2] + 1e-12
    rel = relative_lift(k1, n1, k0, n0, z)
    if rel is not None:
        assert rel[1] <= rel[0] <= rel[2] and rel[1] > -1.0


def test_newcombe_interval_covers_the_truth_95_percent_of_the_time() -> None:
    """400 seeded experiments of 4 % vs 5 % on 1000 + 1000 units: the coverage is close
    to the nominal 95 % (binomial sd of the count: 4.4)."""
    rng = random.Random(3)
    covered = 0
    for _ in range(400):
        k1 = sum(rng.random() < 0.05 for _ in range(1000))
        k0 = sum(rng.random() < 0.04 for _ in range(1000))
        _, lo, hi = newcombe(k1, 1000, k0, 1000, Z)
        covered += lo <= 0.01 <= hi
    assert 370 <= covered <= 395


# ------------------------------------------------------------------ attribution


def decision(user: str, message: str, *, campaign: str | None = "c", group: str | None = None,
             at: int = 1000, category: str = "promotional", propensity: float | None = 1.0,
             exploration: bool = False, outcome_at: int | None = None) -> dict[str, Any]:
    return {"user_id": user, "message_id": message, "campaign": campaign,
            "category": category, "decision": "suppress" if group else "send",
            "decided_at": at, "holdout": group, "exploration": exploration,
            "propensity": None if group else propensity, "converted_at": outcome_at,
            "clicked_at": outcome_at}


def columns(rows: list[dict[str, Any]], names: tuple[str, ...]) -> dict[str, list[Any]]:
    return {name: [row.get(name) for row in rows] for name in names}


DECISION_COLUMNS = ("user_id", "message_id", "campaign", "category", "decision", "decided_at",
                    "holdout", "exploration", "propensity", "converted_at", "clicked_at")
OUTCOME_COLUMNS = ("user_id", "type", "at", "message_id", "campaign")


def event(user: str, at: int, *, campaign: str | None = None, message: str | None = None,
          kind: str = "converted") -> dict[str, Any]:
    return {"user_id": user, "type": kind, "at": at, "message_id": message,
            "campaign": campaign}


def test_attribution_by_campaign_or_message_after_the_first_decision() -> None:
    decisions = [
        decision("t1", "m1"), decision("t2", "m2"), decision("t3", "m3"),
        decision("h1", "m4", group="campaign"), decision("h2", "m5", group="global"),
        decision("h3", "m6", group="campaign"),
        decision("x", "m7"), decision("x", "m8", group="campaign"),  # mixed: left out
        decision("r", "m9", category="transactional"),  # exempt: never held out, left out
    ]
    outcomes = [
        event("t1", 2000, message="m1"),  # by message
        event("t2", 2000, campaign="c"),  # by campaign
        event("t3", 500, campaign="c"),  # before the decision: not counted
        event("h1", 2000, campaign="c"),
        event("h2", 2000, campaign="other"),  # another campaign: not this one's
        event("h3", 2000, campaign="c", kind="clicked"),  # another outcome type
    ]
    report = analyse(columns(decisions, DECISION_COLUMNS), columns(outcomes, OUTCOME_COLUMNS))
    campaign = report.holdout[0]
    assert campaign.name == "c" and campaign.excluded_mixed == 1
    assert (campaign.treated.outcomes, campaign.treated.units) == (2, 3)
    assert (campaign.control.outcomes, campaign.control.units) == (1, 3)
    assert report.holdout[1].name == "all campaigns"
    overall = report.holdout[2]
    assert overall.name == "global control group"
    # h2 is the global group; its conversion (any campaign) counts there
    assert (overall.control.outcomes, overall.control.units) == (1, 1)
    assert overall.treated.units == 6  # t1-t3, h1, h3, x (campaign holdouts are treated here)

    windowed = analyse(columns(decisions, DECISION_COLUMNS), columns(outcomes, OUTCOME_COLUMNS),
                       window_seconds=0)
    assert windowed.holdout[0].treated.outcomes == 0


def test_model_timed_vs_exploration_compares_eligible_decisions_only() -> None:
    decisions = (
        [decision(f"m{i}", f"a{i}", propensity=0.96, outcome_at=2000 if i < 30 else None)
         for i in range(100)]
        + [decision(f"e{i}", f"b{i}", propensity=0.01, exploration=True,
                    outcome_at=2000 if i < 10 else None) for i in range(50)]
        # propensity 1: the model had one slot (or none), exploration impossible: left out
        + [decision(f"o{i}", f"c{i}", propensity=1.0, outcome_at=2000) for i in range(40)]
        + [decision(f"h{i}", f"d{i}", group="global") for i in range(5)])
    report = analyse(columns(decisions, DECISION_COLUMNS), columns([], OUTCOME_COLUMNS),
                     outcome="clicked")
    timing = report.timing
    assert timing is not None
    assert (timing.treated.outcomes, timing.treated.units) == (30, 100)
    assert (timing.control.outcomes, timing.control.units) == (10, 50)
    assert timing.absolute_lift is not None
    assert timing.absolute_lift.estimate == pytest.approx(0.1)
    assert any("cannot have `clicked`" in note for note in report.notes)
    text = format_report(report)
    assert "model-timed vs exploration" in text and "30/100 = 30.00%" in text


def test_unknown_outcome_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown outcome"):
        analyse(columns([], DECISION_COLUMNS), columns([], OUTCOME_COLUMNS), outcome="bought")


# --------------------------------------------------- the known-effect experiment


async def test_known_effect_through_the_engine_is_inside_the_interval(
        redis_client: RedisClient, redis_target: RedisTarget, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """1000 recipients through the real engine with a 5 % global group and a 40 % campaign
    holdout; treatment raises conversion from 10 % to 25 %. The exported log, analysed,
    must put the true +15 points inside the campaign's interval and 0 outside it; and the
    command line prints the same numbers."""
    config = UpliftSimulation(recipients=1000, base_rate=0.10, treated_rate=0.25,
                              global_percent=5.0, campaign_percent=40.0, seed=5)
    clock = FixedClock(NOON_NY)
    engine = Engine(Store(redis_client), Settings(redis_url="unused", id_key=TEST_ID_KEY,
                                                  log_decisions=False), clock)
    result = await run_through_engine(engine, config, clock.advance)
    assert result.treated + result.held_out == 1000
    assert 0.35 < result.held_out / 1000 < 0.50  # 5 % + 95 % x 40 % = 43 %

    client: Any = (redis.RedisCluster.from_url(redis_target.url) if redis_target.cluster
                   else redis.Redis.from_url(redis_target.url))
    try:
        report = export_and_analyse(client, config, tmp_path)
    finally:
        if redis_target.cluster:
            client.disconnect_connection_pools()
        else:
            client.close()
            client.connection_pool.disconnect()
    campaign = report.holdout[0]
    assert campaign.name == config.campaign
    assert (campaign.treated.units, campaign.control.units) == (result.treated, result.held_out)
    assert campaign.treated.outcomes + campaign.control.outcomes == result.conversions
    lift = campaign.absolute_lift
    assert lift is not None
    assert lift.ci[0] <= config.true_effect <= lift.ci[1]
    assert lift.ci[0] > 0
    # exploration ran (the policy lets the prior rank slots) and was logged with it
    assert report.timing is not None and report.timing.control.units == result.explored > 0
    assert report.timing.treated.units + result.explored == result.treated

    assert main(["uplift", "--data", str(tmp_path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["holdout"][0]["absolute_lift"]["ci"] == pytest.approx(list(lift.ci))
    assert main(["uplift", "--data", str(tmp_path)]) == 0
    assert config.campaign in capsys.readouterr().out


def test_uplift_without_an_export_is_a_clear_error(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["uplift", "--data", str(tmp_path)]) == 1
    assert "sendwise export" in capsys.readouterr().err
