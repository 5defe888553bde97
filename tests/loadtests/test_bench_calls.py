"""loadtests/bench_calls.py runs: Redis commands per decision with the state cache off and
on, and the check-cost probe, which cuts commit.lua's step 2b out of the script itself."""

from __future__ import annotations

import argparse

import pytest

from api.redis_client import make_redis
from api.redis_server import EmbeddedRedis
from api.settings import Settings
from loadtests.bench_calls import _calls, _check_cost, _closed_run
from loadtests.bench_engine import Bench


async def test_counts_and_check_cost(embedded_redis: EmbeddedRedis,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    client = make_redis(Settings(redis_url=embedded_redis.url))
    try:
        await client.flushdb()
        bench = Bench(client, 20)  # type: ignore[arg-type]
        await bench.seed()
        await bench.end_to_end(20)  # scripts loaded (a first EVALSHA is retried after LOAD)
        # sequential (one task): no pacing, so no sleeping, and each decision sees the last
        args = argparse.Namespace(users=20, zipf=False, decisions=60, concurrency=1)
        runs = {}
        for ttl in (0.0, 5.0):
            before = await _calls(client)
            runs[ttl] = await _closed_run(client, bench, ttl, args, seed=1)
            after = await _calls(client)
            runs[ttl]["evalsha"] = (after["evalsha"] - before["evalsha"]) / 60
            runs[ttl]["xadd"] = (after.get("xadd", 0) - before.get("xadd", 0)) / 60
        off, on = runs[0.0], runs[5.0]
        # scripts: read, commit (+ a fresh engine's first loads, the same in both runs);
        # the decision log's one XADD per decision
        assert off["evalsha"] >= 2.0 and off["hit"] == 0
        assert off["xadd"] == on["xadd"] == 1.0
        assert on["hit"] > 0.5
        assert off["evalsha"] - on["evalsha"] == pytest.approx(on["hit"], abs=0.05)
        await _check_cost(client, bench, rounds=2)
        assert "rev + check" in capsys.readouterr().out
    finally:
        await client.aclose()
