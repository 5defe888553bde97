"""Scored decisions at the engine: caps, quiet hours, exploration, degradation (issue 8)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np

from api.clock import FixedClock
from api.engine import Engine
from api.policy import DEFAULT_POLICY
from api.schemas import Event
from api.scoring import ActiveModel
from models.priors import DEFAULT_PRIORS
from tests.integration.conftest import NOON_NY, TENANT, req

NY = "America/New_York"
HOUR = 3_600_000


def evening_events(user: str, hour: int = 19, days: int = 14) -> list[Event]:
    """Three visits a day at ``hour``:xx New York time over the ``days`` before noon."""
    out = []
    for d in range(1, days + 1):
        for k in range(3):
            at = NOON_NY - d * 24 * HOUR + (hour - 12) * HOUR + (10 + 7 * k) * 60_000
            out.append(msgspec.convert({"type": "activity", "user_id": user, "timezone": NY,
                                        "at": dt.datetime.fromtimestamp(at / 1000, dt.UTC)},
                                       Event))
    return out


def local_hour(ms: int) -> int:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).astimezone(
        dt.timezone(dt.timedelta(hours=-4))).hour


async def test_caps_taking_every_good_slot_reserve_the_first_instant_the_cap_frees(
        engine: Engine, set_policy: Callable[..., Any]) -> None:
    # spread off: the test is about the exact instant the cap frees
    await set_policy(quiet_hours=[], send_time={"exploration_rate": 0.0, "spread_minutes": 0},
                     caps=[{"id": "daily", "limit": 1, "window_minutes": 1440,
                            "scope": {"categories": ["promotional"]}}])
    await engine.record_events(TENANT, evening_events("u1"))
    first = await engine.decide(TENANT, req(message_id="m1", category="promotional"))
    assert first.decision == "defer" and first.send_at is not None
    # the heuristic smooths +-1 h, so 18, 19 and 20 tie on the user's counts
    assert first.local_send_at is not None and first.local_send_at.hour in (18, 19, 20)
    assert [r.code for r in first.reasons] == ["better_send_time"]
    # every slot of the next 24 h is inside the cap's window: the answer is the earliest
    # instant the cap frees, exactly as without a model
    second = await engine.decide(TENANT, req(message_id="m2", category="promotional"))
    assert second.send_at == first.send_at + dt.timedelta(days=1)
    assert "frequency_cap" in [r.code for r in second.reasons]
    assert second.score is not None and second.model_version == "heuristic-v2"


async def test_slots_never_fall_in_quiet_hours_and_transactional_is_never_moved(
        engine: Engine, set_policy: Callable[..., Any]) -> None:
    await set_policy(send_time={"exploration_rate": 0.0})
    await engine.record_events(TENANT, evening_events("u1", hour=22))  # inside 21-08 quiet
    promo = await engine.decide(TENANT, req(message_id="m1", category="promotional",
                                            deadline="2026-06-11T16:00:00Z"))
    assert promo.send_at is not None and 8 <= local_hour(int(promo.send_at.timestamp() *
                                                             1000)) < 21
    tx = await engine.decide(TENANT, req(message_id="m2", category="transactional"))
    assert tx.decision == "send" and tx.reasons == [] and tx.features_source == "profile"


async def test_exploration_is_deterministic_per_message_and_records_its_propensity(
        engine: Engine, set_policy: Callable[..., Any]) -> None:
    await set_policy(quiet_hours=[], caps=[], send_time={"exploration_rate": 1.0})
    await engine.record_events(TENANT, evening_events("u1"))
    chosen = set()
    for i in range(12):
        a = await engine.decide(TENANT, req(message_id=f"x{i}", category="promotional",
                                            dry_run=True))
        b = await engine.decide(TENANT, req(message_id=f"x{i}", category="promotional",
                                            dry_run=True))
        assert (a.send_at, a.channel, a.propensity) == (b.send_at, b.channel, b.propensity)
        # 24 slots (now = 12:00, then 13:00 .. 11:00): each has the same chance 1/24
        assert a.propensity == round(1 / 24, 6)
        chosen.add(a.send_at)
    assert len(chosen) >= 6


class _Broken:
    """A scorer whose model raises: the decision must still be answered."""

    is_ranker = False

    def score(self, rows: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        raise RuntimeError("model exploded")


async def test_a_failing_model_degrades_to_an_unscored_earliest_decision(
        engine: Engine, clock: FixedClock) -> None:
    engine.models.active = ActiveModel(_Broken(), "broken", DEFAULT_PRIORS)  # type: ignore[arg-type]
    response = await engine.decide(TENANT, req(message_id="m1"))
    assert response.decision == "send" and response.send_at is not None
    assert response.score is None and response.model_version is None


def test_the_redis_down_fallback_still_carries_the_prior_score(engine: Engine) -> None:
    answer = engine.fallback(TENANT, req(message_id="m1", category="promotional"),
                             DEFAULT_POLICY, NOON_NY)
    assert answer.decision == "defer"
    assert [r.code for r in answer.reasons] == ["policy_store_unavailable"]
    assert answer.model_version == "heuristic-v2" and answer.features_source == "prior"
    assert answer.score is not None and answer.score_now is not None and answer.score > 0
