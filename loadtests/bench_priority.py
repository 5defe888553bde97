"""What priorities cost inside Redis: ``commit.lua``'s time per call (INFO commandstats,
``cmdstat_evalsha`` usec_per_call) with the default policy, with a cap and preemption off,
with preemption on but nothing displaced (each deferral stores its compact plan), and with
one displacement (and re-decision) every second decision.

The script time is Redis' own measure, so it is far less noisy than wall time on a shared
machine; run it a few times and compare the minimums.

    python -m loadtests.bench_priority --users 1000
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
from typing import Any

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

#: 23:00 in New York: every promotional message is a deferral to the morning
NIGHT = int(dt.datetime.fromisoformat("2026-06-10T23:00:00-04:00").timestamp() * 1000)
CAP = [{"id": "daily", "limit": 1, "window_minutes": 1440}]
SCENARIOS: list[tuple[str, dict[str, Any], list[int]]] = [
    ("default policy, 2 deferrals per user", {}, [5, 5]),
    ("cap 1/day, preemption off, priority 2 then 8", {"caps": CAP}, [2, 8]),
    ("cap 1/day, preemption on, equal priorities", {"caps": CAP,
                                                     "preemption": {"enabled": True}}, [5, 5]),
    ("cap 1/day, preemption on, 2 then 8 (displaces)", {"caps": CAP,
                                                         "preemption": {"enabled": True}},
     [2, 8]),
]


async def scenario(url: str, name: str, policy: dict[str, Any], priorities: list[int],
                   users: int) -> None:
    settings = Settings(redis_url=url, id_key=Secret(b"sendwise bench: decision-id key!!"),
                        log_decisions=False, decision_log=False)
    client = make_redis(settings)
    await client.flushall()
    clock = FixedClock(NIGHT)
    engine = Engine(Store(client), settings, clock)
    stored = await engine.store.put_policy("bench", msgspec.convert(policy, Policy), None,
                                           clock.now_ms())
    engine.policies.put("bench", stored)
    await client.config_resetstat()
    displaced = 0
    for i in range(users):
        for j, priority in enumerate(priorities):
            answer = await engine.decide("bench", msgspec.convert(
                {"message_id": f"m{i}-{j}", "user_id": f"u{i}", "channels": ["email", "sms"],
                 "timezone": "America/New_York", "priority": priority}, DecisionRequest))
            displaced += len(answer.displaced)
    stats = await client.info("commandstats")
    per_call = stats.get("cmdstat_evalsha", {}).get("usec_per_call")
    print(f"{name:50s} decisions={users * len(priorities):6d} displaced={displaced:6d} "
          f"commit.lua usec/call={per_call}")
    await client.aclose()


async def run(url: str, users: int) -> None:
    for name, policy, priorities in SCENARIOS:
        await scenario(url, name, policy, priorities, users)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    args = parser.parse_args()
    with EmbeddedRedis() as redis:
        asyncio.run(run(redis.url, args.users))


if __name__ == "__main__":
    main()
