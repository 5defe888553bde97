"""In-process cost of a shadow policy: ``Engine.decide`` for a tenant without one and for a
tenant with one (``sample_rate`` 1.0), alternating rounds on one embedded redis-server.

The difference is the shadow's work per decision: a second plan and scoring under the
shadow policy, and its dry commit (one Redis round trip). A tenant without a shadow should
show no difference from before the feature existed: its hot path only looks up a dict.

    python -m loadtests.bench_shadow --decisions 1500 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import msgspec

from api.clock import FixedClock
from api.engine import Engine
from api.ids import Secret
from api.policy import Policy
from api.redis_client import make_redis
from api.redis_server import EmbeddedRedis
from api.schemas import DecisionRequest
from api.settings import Settings
from api.store import Store

#: Wednesday 2026-06-10 12:00 in New York: no quiet hours in the way
NOON_NY = 1_781_107_200_000
WARMUP = 200


async def _run(engine: Engine, tenant: str, tag: str, n: int) -> tuple[float, float]:
    times = []
    for i in range(n):
        request = msgspec.convert({"message_id": f"{tag}{i}", "user_id": f"u{i % 300}",
                                   "channels": ["email"], "timezone": "America/New_York"},
                                  DecisionRequest)
        start = time.perf_counter()
        await engine.decide(tenant, request)
        times.append(time.perf_counter() - start)
    kept = times[WARMUP:]
    return statistics.median(kept) * 1e6, statistics.quantiles(kept, n=100)[98] * 1e6


async def main(decisions: int, rounds: int) -> None:
    with EmbeddedRedis() as server:
        settings = Settings(redis_url=server.url, log_decisions=False, decision_log=False,
                            id_key=Secret(b"sendwise bench: decision-id key!!"))
        client = make_redis(settings)
        engine = Engine(Store(client), settings, FixedClock(NOON_NY))
        shadow = msgspec.convert({"caps": [{"id": "p", "limit": 1, "window_minutes": 1440}]},
                                 Policy)
        await engine.shadow.install(engine, "with-shadow", shadow, 1.0, None)
        try:
            for r in range(rounds):
                plain = await _run(engine, "plain", f"p{r}-", decisions)
                shadowed = await _run(engine, "with-shadow", f"s{r}-", decisions)
                print(f"round {r}: without shadow p50 {plain[0]:.0f} us p99 {plain[1]:.0f} us"
                      f" | with shadow p50 {shadowed[0]:.0f} us p99 {shadowed[1]:.0f} us")
        finally:
            await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.decisions, args.rounds))
