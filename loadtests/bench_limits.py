"""sendwise's atomic commit vs the ``limits`` library enforcing the same caps, same Redis.

Both sides run in this process on one event loop with ``--concurrency`` tasks, over the
same requests (loadtests/population.py, Zipf recipients so the head hits its caps):

- **sendwise**: ``Engine.decide`` end to end (policy cache, read round trip, plan with
  quiet hours and jurisdictions, model scoring, the one atomic commit.lua): every cap of the
  policy is checked and the reservation written in one script, so it is exact by construction;
- **limits**: one moving-window limit per cap rule of the same policy (a calendar-day cap
  as a 1,440-minute window), ``MovingWindowRateLimiter`` over ``limits``' async Redis
  storage (the redis-py implementation, like sendwise). Several rules cannot be checked
  atomically with it: ``hit`` one by one would count a message against the first rules
  even when a later one refuses it. The exact way is what is measured: under a per-user
  lock (one process), ``test`` every rule in scope, then ``hit`` them all if all passed.

Exactness is then checked for both: sendwise's timelines of the busiest recipients against
every cap (loadtests/checks.py ``cap_violations``); for limits, each recipient's sequence
of answers replayed against exact counters (admitted iff every rule in scope had room).

    python -m loadtests.bench_limits --seconds 10 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
from typing import Any

import msgspec

from api.clock import SystemClock
from api.engine import Engine
from api.ids import Secret
from api.policy import Policy
from api.redis_client import make_redis
from api.redis_server import EmbeddedRedis
from api.schemas import DecisionRequest
from api.settings import Settings
from api.store import Store
from loadtests.checks import Recipient, cap_violations, decode_timeline
from loadtests.population import RequestFactory, policy_document, user_id

TENANT = "bench-limits"
_request = msgspec.json.Decoder(DecisionRequest)


class Side(msgspec.Struct, kw_only=True):
    name: str
    decisions: int
    seconds: float
    admitted: int
    exactness_errors: int
    checked: int

    @property
    def rate(self) -> float:
        return self.decisions / self.seconds if self.seconds else 0.0


def rules_for(policy: dict[str, Any], body: dict[str, Any]) -> list[dict[str, Any]]:
    """The caps in scope of a request on its first channel (exempt categories: none)."""
    category = body.get("category", "promotional")
    if category in policy.get("exempt_categories", []):
        return []
    channel = body["channels"][0]
    return [cap for cap in policy["caps"]
            if (not cap.get("scope", {}).get("channels") or channel in cap["scope"]["channels"])
            and (not cap.get("scope", {}).get("categories")
                 or category in cap["scope"]["categories"])]


async def _drive(seconds: float, concurrency: int, users: int, one: Any) -> tuple[int, float]:
    stop = time.perf_counter() + seconds
    done = 0

    async def worker(k: int) -> None:
        nonlocal done
        factory = RequestFactory(users, prefix=f"bl{k}-{time.time_ns()}", seed=k + 1, zipf=True)
        while time.perf_counter() < stop:
            await one(factory.body())
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return done, time.perf_counter() - t0


async def run_sendwise(url: str, cluster: bool, seconds: float, concurrency: int,
                       users: int) -> Side:
    settings = Settings(redis_url=url, redis_cluster=cluster, log_decisions=False,
                        decision_log=False, id_key=Secret(b"sendwise bench: decision-id key!!"))
    client = make_redis(settings)
    engine = Engine(Store(client, max_in_flight=settings.redis_max_connections), settings,
                    SystemClock())
    policy = policy_document()
    try:
        await engine.store.put_policy(TENANT, msgspec.convert(policy, Policy), None,
                                      engine.clock.now_ms())
        admitted = 0

        async def one(body: dict[str, Any]) -> None:
            nonlocal admitted
            answer = await engine.decide(TENANT, _request.decode(msgspec.json.encode(body)))
            admitted += answer.decision != "suppress"

        await _drive(1.0, concurrency, users, one)  # warm-up
        admitted = 0
        done, took = await _drive(seconds, concurrency, users, one)
        errors, checked = 0, 0
        for i in range(20):  # the Zipf head: the recipients that hit their caps
            timeline = await engine.timeline(TENANT, user_id(i))
            found = cap_violations(policy, Recipient(zone="UTC"),
                                   decode_timeline(msgspec.json.encode(timeline)))
            errors += len(found)
            checked += 1
        return Side(name="sendwise commit", decisions=done, seconds=took, admitted=admitted,
                    exactness_errors=errors, checked=checked)
    finally:
        await client.aclose()


async def run_limits(url: str, seconds: float, concurrency: int, users: int) -> Side:
    from limits import RateLimitItemPerMinute
    from limits.aio.storage import RedisStorage
    from limits.aio.strategies import MovingWindowRateLimiter

    storage_url = ("async+redis+unix://" + url.removeprefix("unix://") if url.startswith("unix://")
                   else "async+" + url)
    storage = RedisStorage(storage_url, implementation="redispy", key_prefix="bench-limits")
    limiter = MovingWindowRateLimiter(storage)
    policy = policy_document()
    items = {cap["id"]: RateLimitItemPerMinute(cap["limit"], cap.get("window_minutes", 1440))
             for cap in policy["caps"]}
    locks: collections.defaultdict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
    #: per user, in the order the lock serialized them: (rule ids, admitted)
    history: collections.defaultdict[str, list[tuple[list[str], bool]]] = collections.defaultdict(list)
    admitted = 0

    async def one(body: dict[str, Any]) -> None:
        nonlocal admitted
        rules = [cap["id"] for cap in rules_for(policy, body)]
        uid = body["user_id"]
        async with locks[uid]:
            ok = True
            for rule in rules:
                if not await limiter.test(items[rule], TENANT, uid, rule):
                    ok = False
                    break
            if ok:
                for rule in rules:
                    await limiter.hit(items[rule], TENANT, uid, rule)
            history[uid].append((rules, ok))
        admitted += ok

    await _drive(1.0, concurrency, users, one)  # warm-up (its history is replayed too)
    admitted = 0
    done, took = await _drive(seconds, concurrency, users, one)
    errors = 0
    for events in history.values():
        counts: collections.Counter[str] = collections.Counter()
        for rules, ok in events:
            room = all(counts[r] < items[r].amount for r in rules)
            errors += room != ok
            if ok:
                counts.update(rules)
    return Side(name="limits moving window", decisions=done, seconds=took, admitted=admitted,
                exactness_errors=errors, checked=len(history))


async def compare(url: str, *, cluster: bool = False, seconds: float = 10.0,
                  concurrency: int = 64, users: int = 10_000) -> tuple[Side, Side]:
    ours = await run_sendwise(url, cluster, seconds, concurrency, users)
    theirs = await run_limits(url, seconds, concurrency, users)
    return ours, theirs


def describe(side: Side) -> str:
    return (f"{side.name:<22} {side.rate:>8,.0f} decisions/s  ({side.decisions:,} in "
            f"{side.seconds:.1f} s, {side.admitted:,} admitted)  exactness errors "
            f"{side.exactness_errors} over {side.checked} recipients")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_limits", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--users", type=int, default=10_000)
    args = parser.parse_args(argv)
    with EmbeddedRedis() as server:
        ours, theirs = asyncio.run(compare(server.url, seconds=args.seconds,
                                           concurrency=args.concurrency, users=args.users))
    print(describe(ours))
    print(describe(theirs))
    print(f"sendwise / limits: {ours.rate / theirs.rate:.2f}x")
    return 0 if ours.exactness_errors == theirs.exactness_errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
