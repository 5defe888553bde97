"""The commit-only side of the ``limits`` comparison (loadtests/bench_limits.py) runs,
commits what it prepared, and stays exact."""

from __future__ import annotations

from api.redis_server import EmbeddedRedis
from loadtests.bench_limits import describe, run_commit_only, run_limits


async def test_commit_only_side_commits_its_plans_exactly(embedded_redis: EmbeddedRedis) -> None:
    side = await run_commit_only(embedded_redis.url, False, 0.3, 4, 50, batch=4)
    assert side.decisions > 0 and side.seconds > 0
    assert 0 < side.admitted <= side.decisions
    assert side.exactness_errors == 0 and side.checked == 20
    assert "stale 0" in side.note
    assert "commit only" in describe(side)


async def test_limits_side_with_a_redis_lock_stays_exact(embedded_redis: EmbeddedRedis) -> None:
    """The cross-worker variant of the limits side: a Redis lock per recipient, every answer
    replayed against exact counters afterwards (the Zipf head of 50 users contends)."""
    side = await run_limits(embedded_redis.url, 0.3, 8, 50, lock="redis")
    assert side.name == "limits, Redis lock"
    assert side.decisions > 0 and 0 < side.admitted <= side.decisions
    assert side.exactness_errors == 0 and side.checked > 0


async def test_a_request_that_gives_up_on_its_lock_is_not_a_decision(
        embedded_redis: EmbeddedRedis) -> None:
    """Eight tasks on one recipient with a 1 ms lock wait: most requests give up. They are
    reported, left out of the decisions counted, and the run neither fails nor loses
    exactness."""
    side = await run_limits(embedded_redis.url, 0.3, 8, 1, lock="redis", lock_wait=0.001)
    assert "gave up waiting 0.001 s" in side.note
    gave_up = int(side.note.split()[0].replace(",", ""))
    assert gave_up > 0 and side.decisions > 0
    assert side.exactness_errors == 0 and side.admitted <= side.decisions
    assert "gave up" in describe(side)
