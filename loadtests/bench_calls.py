"""Redis calls per decision and the state cache's hit rate (api/statecache.py), in process.

Drives ``Engine.decide`` (the bench_engine workload: seeded policy and preferences,
loadtests/population.py requests) against an embedded redis-server and counts, from INFO
commandstats, the commands Redis executed per decision, with the recipient-state cache off
(``--ttl 0``) and on, alternated ``--rounds`` times, each run with a fresh engine (an
empty cache) on the same Redis. The decisions are paced at ``--rate`` per second (one
worker's share of a stream): whether a recipient is decided again within the TTL depends
on the rate per recipient, i.e. on rate, population and TTL, which is what ``--users``,
``--rate`` and ``--zipf`` vary. Also: the cache's resident memory per entry (tracemalloc
over a full cache) and the wall time of each run (shared box: compare the alternated runs
only).

    python -m loadtests.bench_calls --users 2000 --rate 1000 --decisions 5000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
import tracemalloc
from typing import Any

import msgspec

from api.clock import SystemClock
from api.engine import Engine
from api.redis_client import RedisClient, make_redis
from api.redis_server import EmbeddedRedis
from api.schemas import DecisionRequest
from api.settings import Settings
from api.store import Store
from loadtests.bench_engine import TENANT, Bench
from loadtests.population import RequestFactory, user_id


async def _calls(client: RedisClient) -> dict[str, int]:
    stats: dict[str, dict[str, Any]] = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def _one_run(client: RedisClient, bench: Bench, ttl: float, args: argparse.Namespace,
                   seed: int) -> dict[str, float]:
    settings = msgspec.structs.replace(bench.settings, state_cache_seconds=ttl)
    engine = Engine(Store(client), settings, SystemClock())
    engine.policies = bench.engine.policies  # the seeded policy, already loaded
    factory = RequestFactory(args.users, prefix=f"c{time.time_ns()}", seed=seed, zipf=args.zipf)
    requests = [msgspec.convert(factory.body(), DecisionRequest) for _ in range(args.decisions)]
    before = await _calls(client)
    start = time.perf_counter()
    interval = 1.0 / args.rate

    async def one(i: int) -> None:
        delay = start + i * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await engine.decide(TENANT, requests[i])

    await asyncio.gather(*(one(i) for i in range(len(requests))))
    wall = time.perf_counter() - start
    after = await _calls(client)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    delta.pop("info", None)
    n = len(requests)
    hits, misses, stale = (engine.metrics.state_cache.labels(r)._value.get()
                           for r in ("hit", "miss", "stale"))
    if args.verbose:
        print({k: round(v / n, 3) for k, v in sorted(delta.items()) if v})
    return {"calls": sum(delta.values()) / n, "evalsha": delta.get("evalsha", 0) / n,
            "hit": hits / n, "stale": stale / n, "miss": misses / n, "wall": wall,
            "late": max(0.0, wall - n * interval)}


async def _memory_per_entry(client: RedisClient, bench: Bench) -> float:
    """Bytes the cache keeps per entry (the decoded UserState with its raw preferences
    fields, the conversions dict, the LRU slot): traced memory still held once every
    transient of the reads is gone, over all seeded recipients."""
    engine = Engine(Store(client), msgspec.structs.replace(
        bench.settings, state_cache_size=bench.users + 1), SystemClock())
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(bench.users):
        read_at = engine.state_cache.now()
        state = await engine.store.read_user(TENANT, user_id(i), "none", "c1")
        engine.state_cache.put(TENANT, user_id(i), "c1", state, read_at)
    del state
    gc.collect()
    size = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return size / bench.users


async def run(args: argparse.Namespace, url: str) -> None:
    client = make_redis(Settings(redis_url=url, redis_max_connections=64,
                                 redis_timeout_seconds=5.0))
    try:
        bench = Bench(client, args.users)  # type: ignore[arg-type]
        await bench.seed()
        await bench.end_to_end(300)  # scripts loaded, zones and policy warm
        if args.memory:
            per = await _memory_per_entry(client, bench)
            print(f"state cache memory: {per:,.0f} B per entry (mean over {args.users:,} "
                  "seeded recipients, no send-time profile: a profile adds its own bytes)")
        rows: dict[float, list[dict[str, float]]] = {0.0: [], args.ttl: []}
        for rnd in range(args.rounds):
            for ttl in (0.0, args.ttl) if rnd % 2 == 0 else (args.ttl, 0.0):
                rows[ttl].append(await _one_run(client, bench, ttl, args, seed=10 + rnd))
        print(f"{args.decisions:,} decisions per run at {args.rate:,.0f}/s over {args.users:,} "
              f"recipients ({'Zipf' if args.zipf else 'uniform'}), {args.rounds} rounds "
              "alternated")
        print(f"  {'state cache':<14}{'Redis cmds/decision':>21}{'EVALSHA':>9}{'hit':>7}"
              f"{'stale':>7}{'wall s':>8}")
        for ttl, runs in rows.items():
            for r in runs:
                print(f"  {('off' if ttl == 0 else f'{ttl:g} s'):<14}{r['calls']:>21.3f}"
                      f"{r['evalsha']:>9.3f}{100 * r['hit']:>6.1f}%{100 * r['stale']:>6.2f}%"
                      f"{r['wall']:>8.2f}")
        on = rows[args.ttl]
        print(f"  mean with the cache: {statistics.fmean(r['calls'] for r in on):.3f} "
              f"commands/decision, hit rate {100 * statistics.fmean(r['hit'] for r in on):.1f}%")
    finally:
        await client.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_calls", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=5000)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=1000.0, help="decisions per second")
    parser.add_argument("--ttl", type=float, default=5.0, help="state cache seconds (the run "
                        "with the cache)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--zipf", action="store_true", help="a heavy-headed recipient mix")
    parser.add_argument("--verbose", action="store_true", help="every command's count")
    parser.add_argument("--memory", action="store_true",
                        help="also measure the memory per cache entry")
    args = parser.parse_args(argv)
    with EmbeddedRedis() as redis:
        asyncio.run(run(args, redis.url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
