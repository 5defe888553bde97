"""loadtests/bench_calls.py runs: Redis commands per decision with the state cache off and
on, and the check-cost probe, which cuts commit.lua's step 2b out of the script itself."""

from __future__ import annotations

import argparse

import pytest

from api.redis_client import make_redis
from api.redis_server import EmbeddedRedis
from api.settings import Settings
from loadtests.bench_calls import _check_cost, _one_run
from loadtests.bench_engine import Bench


async def test_counts_and_check_cost(embedded_redis: EmbeddedRedis,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    client = make_redis(Settings(redis_url=embedded_redis.url))
    try:
        await client.flushdb()
        bench = Bench(client, 20)  # type: ignore[arg-type]
        await bench.seed()
        await bench.end_to_end(20)  # scripts loaded (a first EVALSHA is retried after LOAD)
        args = argparse.Namespace(users=20, zipf=False, decisions=60, rate=2000.0,
                                  slowlog=False, verbose=False)
        off = await _one_run(client, bench, 0.0, args, seed=1)
        on = await _one_run(client, bench, 5.0, args, seed=2)
        # read, commit, log append, plus a fresh engine's first loads (same in both runs)
        assert off["evalsha"] >= 3.0 and off["hit"] == 0
        assert on["hit"] > 0.5 and on["stale"] == 0
        assert off["evalsha"] - on["evalsha"] == pytest.approx(on["hit"], abs=0.05)
        await _check_cost(client, bench, rounds=2)
        assert "rev + check" in capsys.readouterr().out
    finally:
        await client.aclose()
