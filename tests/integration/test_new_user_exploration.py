"""Users without history explore too (issue 8): promotional messages only, at the policy's
rate, deterministically per message, with the propensity logged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from api.engine import Engine
from tests.integration.conftest import TENANT, req


async def test_users_without_history_explore_at_the_policy_rate(
        engine: Engine, set_policy: Callable[..., Any]) -> None:
    await set_policy(quiet_hours=[], caps=[], send_time={"exploration_rate": 1.0})
    chosen = set()
    for i in range(12):
        ask = req(message_id=f"x{i}", user_id=f"new{i}", category="promotional",
                  deadline="2026-06-11T16:00:00Z", dry_run=True)
        a, b = await engine.decide(TENANT, ask), await engine.decide(TENANT, ask)
        assert (a.send_at, a.channel, a.propensity) == (b.send_at, b.channel, b.propensity)
        assert a.features_source == "prior" and a.model_version == "heuristic-v2"
        # 24 slots (now = 12:00, then 13:00 .. 11:00): each has the same chance 1/24
        assert a.propensity == round(1 / 24, 6)
        assert [r.code for r in a.reasons] == ["exploration"]
        chosen.add(a.send_at)
    assert len(chosen) >= 6
    # transactional messages never move, whatever the rate
    tx = await engine.decide(TENANT, req(message_id="tx", user_id="new0",
                                         category="transactional", dry_run=True))
    assert tx.decision == "send" and tx.reasons == [] and tx.propensity == 1.0


async def test_the_earliest_instant_logs_its_true_propensity(
        engine: Engine, set_policy: Callable[..., Any]) -> None:
    await set_policy(quiet_hours=[], caps=[], send_time={"exploration_rate": 0.25})
    explored = kept = 0
    for i in range(80):
        answer = await engine.decide(TENANT, req(message_id=f"m{i}", user_id=f"n{i}",
                                                 category="promotional",
                                                 deadline="2026-06-11T16:00:00Z"))
        if [r.code for r in answer.reasons] == ["exploration"]:
            explored += 1
            assert answer.propensity in (round(0.25 / 24, 6), round(0.75 + 0.25 / 24, 6))
        else:
            kept += 1
            assert answer.decision == "send" and answer.reasons == []
            assert answer.propensity == round(0.75 + 0.25 / 24, 6)
    assert 8 <= explored <= 32, explored  # 20 expected (binomial sd 3.9)
