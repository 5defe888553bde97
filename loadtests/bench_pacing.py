"""What pacing costs one decision (docs/pacing.md, "Cost"): Redis round trips and service
time of ``Engine.decide`` against an embedded redis-server, for

- ``off``: no ``pacing`` in the policy (must equal today's path: read + commit);
- ``room``: sms paced, capacity at the instant the recipient's rules allow;
- ``deferred``: sms paced at 1 per second, so every decision after the first is deferred;
- ``whatsapp``: per-minute + unique recipients per 24 h, distinct recipients.

Sequential decisions, distinct recipients, a fixed clock (the buckets do not move under
the benchmark's feet):

    python -m loadtests.bench_pacing --decisions 2000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import msgspec

from api.clock import FixedClock
from api.engine import Engine
from api.policy import Policy
from api.redis_client import make_redis
from api.redis_server import EmbeddedRedis
from api.schemas import DecisionRequest
from api.settings import Settings
from api.store import Store

TENANT = "bench"
NOON_UTC = 1_781_092_800_000  # 2026-06-10T12:00Z
SCENARIOS: dict[str, dict[str, Any]] = {
    "off": {},
    "room": {"channels": {"sms": {"per_second": 1_000_000 // 10}}, "shards": 8},
    "deferred": {"channels": {"sms": {"per_second": 1}}, "shards": 1},
    "whatsapp": {"channels": {"whatsapp": {"per_minute": 100_000,
                                            "unique_recipients_per_24h": 100_000}},
                 "shards": 8},
}


def _count_round_trips(engine: Engine) -> dict[str, int]:
    """Wrap every Redis conversation of a decision (read, commit, pace) with a counter."""
    trips = {"n": 0}

    def wrap(owner: Any, attr: str) -> None:
        inner = getattr(owner, attr)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            trips["n"] += 1
            return await inner(*args, **kwargs)
        setattr(owner, attr, counted)

    wrap(engine.store, "read_user")
    wrap(engine.store, "commit")
    wrap(engine.pacing, "call")
    return trips


async def run(decisions: int) -> None:
    with EmbeddedRedis() as server:
        client = make_redis(Settings(redis_url=server.url))
        for name, pacing in SCENARIOS.items():
            await client.flushdb()
            clock = FixedClock(NOON_UTC)
            settings = Settings(redis_url=server.url, log_decisions=False, decision_log=False)
            engine = Engine(Store(client), settings, clock)
            policy = msgspec.convert({"pacing": pacing, "quiet_hours": [], "caps": [],
                                      "opt_in_only_channels": []}, Policy)
            engine.policies.put(TENANT, await engine.store.put_policy(TENANT, policy, None,
                                                                      clock.now_ms()))
            trips = _count_round_trips(engine)
            channel = "whatsapp" if name == "whatsapp" else "sms"
            times: list[float] = []
            for i in range(decisions):
                request = msgspec.convert({"message_id": f"m{i}", "user_id": f"user-{i}",
                                           "channels": [channel], "timezone": "UTC"},
                                          DecisionRequest)
                start = time.perf_counter()
                await engine.decide(TENANT, request)
                times.append((time.perf_counter() - start) * 1e6)
            times.sort()
            print(f"{name:9} round trips/decision {trips['n'] / decisions:4.2f}  "
                  f"p50 {statistics.median(times):6.0f} us  "
                  f"p99 {times[int(len(times) * 0.99)]:6.0f} us")
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=2000)
    asyncio.run(run(parser.parse_args().decisions))


if __name__ == "__main__":
    main()
