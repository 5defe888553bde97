"""The served decisions' share of the oracle's gain, measured through the API (issue 8).

Simulated users (sparse and dense, ``training.simulate``) have their activity posted to
``POST /v1/events``; each is asked a 24 h decision at the local midnight of one day; the
served (channel, hour) is valued by the simulator's truth with ``training.oracle``'s own
definition (``loadtests/oracle_api.py``: ``python -m loadtests.oracle_api`` prints the
figure for a larger population)."""

from __future__ import annotations

from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from api.clock import FixedClock
from loadtests.oracle_api import build_population, measure, share
from tests.conftest import RedisTarget

Client = AsyncTestClient  # type: ignore[type-arg]


async def test_served_decisions_capture_most_of_the_oracle_gain(
        client: Client, clock: FixedClock, redis_target: RedisTarget, tmp_path: Path) -> None:
    if redis_target.cluster:
        pytest.skip("a measurement, not a Redis property: one target is enough")
    population = build_population(tmp_path / "sim", users=150, days=28, seed=1)
    result = await measure(client, clock, population, max_pairs=150, seed=1)
    assert result["missing"] == 0  # every served (channel, hour) is one of the oracle's slots
    # measured 61.9 % overall (dense 75.5 %) with this seed; 59.7-66.6 % over seeds 1-3,
    # 61.2 % for 1,000 users (python -m loadtests.oracle_api)
    assert share(result) >= 0.45, result["all"]
    assert share(result, "dense") >= 0.55, result["dense"]
    assert share(result, "sparse") > 0.0, result["sparse"]  # better than a random slot
    # the service serves what the heuristic ranks first offline: same slots, same choice
    offline = result["all"]["heuristic"]["share_of_oracle_gain"]
    assert abs(share(result) - offline) <= 0.03, (share(result), offline)
