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
only), Redis's own time in the decision's scripts (INFO commandstats: EVALSHA usec, which
covers the commands a script calls) and ``Engine.decide``'s latency (p50, mean).

    python -m loadtests.bench_calls --users 2000 --rate 1000 --decisions 5000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import statistics
import sys
import time
import tracemalloc
from importlib import resources
from typing import Any

import msgspec

from api.clock import SystemClock
from api.engine import Engine
from api.keys import user_keys
from api.redis_client import RedisClient, make_redis
from api.redis_server import EmbeddedRedis
from api.schemas import DecisionRequest
from api.settings import Settings
from api.store import Store
from api.userstate import CommitCheck
from loadtests.bench_engine import TENANT, Bench
from loadtests.population import RequestFactory, user_id


def _cache_count(engine: Engine, result: str) -> float:
    value = engine.metrics.registry.get_sample_value("sendwise_state_cache_total",
                                                     {"result": result})
    return value or 0.0


async def _calls(client: RedisClient) -> dict[str, int]:
    stats: dict[str, dict[str, Any]] = await client.info("commandstats")
    out = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    # a script's own usec covers the commands it calls (counted again under their names)
    out["evalsha_usec"] = int(stats.get("cmdstat_evalsha", {}).get("usec", 0))
    return out


SCRIPTS = ("read.lua", "commit.lua", "profile_put.lua", "pace.lua")


async def _slowlog_start(client: RedisClient) -> dict[str, Any]:
    old: dict[str, Any] = await client.config_get("slowlog-*")
    await client.config_set("slowlog-max-len", 200_000)
    await client.config_set("slowlog-log-slower-than", 0)
    await client.slowlog_reset()
    return old


async def _slowlog_scripts(client: RedisClient, old: dict[str, Any]) -> dict[str, list[float]]:
    """Redis' own time per script call (µs), by script and key count: commit.lua with 6
    keys is a commit that carries the state check (a cached state), with 5 one after a read."""
    entries = await client.slowlog_get(200_000)
    for key, value in old.items():
        await client.config_set(key, value)
    by_sha = {hashlib.sha1(resources.files("api").joinpath("lua", name).read_bytes(),
                           usedforsecurity=False).hexdigest(): name for name in SCRIPTS}
    times: dict[str, list[float]] = {}
    for entry in entries:
        words = entry["command"].split() if isinstance(entry["command"], bytes) else []
        if len(words) > 2 and words[0].upper() == b"EVALSHA" and words[1].decode() in by_sha:
            name = by_sha[words[1].decode()]
            if name == "commit.lua":
                name += " (checked)" if words[2] == b"6" else " (after a read)"
            times.setdefault(name, []).append(float(entry["duration"]))
    return times


async def _one_run(client: RedisClient, bench: Bench, ttl: float, args: argparse.Namespace,
                   seed: int) -> dict[str, float]:
    settings = msgspec.structs.replace(bench.settings, state_cache_seconds=ttl)
    engine = Engine(Store(client), settings, SystemClock())
    engine.policies = bench.engine.policies  # the seeded policy, already loaded
    factory = RequestFactory(args.users, prefix=f"c{time.time_ns()}", seed=seed, zipf=args.zipf)
    requests = [msgspec.convert(factory.body(), DecisionRequest) for _ in range(args.decisions)]
    old = await _slowlog_start(client) if args.slowlog else {}
    before = await _calls(client)
    start = time.perf_counter()
    interval = 1.0 / args.rate

    latencies: list[float] = []

    async def one(i: int) -> None:
        delay = start + i * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        t0 = time.perf_counter()
        await engine.decide(TENANT, requests[i])
        latencies.append(1e6 * (time.perf_counter() - t0))

    await asyncio.gather(*(one(i) for i in range(len(requests))))
    await engine.store.settle()  # the log appends the answers did not wait for
    wall = time.perf_counter() - start
    after = await _calls(client)
    if args.slowlog:
        for name, values in sorted((await _slowlog_scripts(client, old)).items()):
            print(f"    ttl {ttl:g}: {name:<28} {len(values) / len(requests):.3f} per decision, "
                  f"mean {statistics.fmean(values):.1f} µs, p50 {statistics.median(values):.0f} µs")
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    delta.pop("info", None)
    script_usec = delta.pop("evalsha_usec")
    n = len(requests)
    hits, misses, stale = (_cache_count(engine, r) for r in ("hit", "miss", "stale"))
    if args.verbose:
        print({k: round(v / n, 3) for k, v in sorted(delta.items()) if v})
    return {"calls": sum(delta.values()) / n, "evalsha": delta.get("evalsha", 0) / n,
            "hit": hits / n, "stale": stale / n, "miss": misses / n, "wall": wall,
            "script_us": script_usec / n, "p50": statistics.median(latencies),
            "mean": statistics.fmean(latencies),
            "late": max(0.0, wall - n * interval)}


async def _redis_cpu_us(client: RedisClient) -> float:
    info: dict[str, Any] = await client.info("cpu")
    return 1e6 * (float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))


async def _closed_run(client: RedisClient, bench: Bench, ttl: float, args: argparse.Namespace,
                      seed: int) -> dict[str, float]:
    """``--closed``: ``--concurrency`` tasks deciding back to back (one worker's event loop
    at its ceiling): decisions/s, this process' CPU and Redis' CPU per decision."""
    settings = msgspec.structs.replace(bench.settings, state_cache_seconds=ttl)
    engine = Engine(Store(client), settings, SystemClock())
    engine.policies = bench.engine.policies
    factory = RequestFactory(args.users, prefix=f"k{time.time_ns()}", seed=seed, zipf=args.zipf)
    requests = iter([msgspec.convert(factory.body(), DecisionRequest)
                     for _ in range(args.decisions)])

    async def worker() -> None:
        for request in requests:
            await engine.decide(TENANT, request)

    redis0, cpu0, t0 = await _redis_cpu_us(client), time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    await engine.store.settle()  # the log appends the answers did not wait for
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    redis_us = await _redis_cpu_us(client) - redis0
    n = args.decisions
    looked = sum(_cache_count(engine, r) for r in ("hit", "miss"))
    hits = _cache_count(engine, "hit")
    return {"rate": n / wall, "cpu_us": 1e6 * cpu / n, "redis_us": redis_us / n,
            "hit": hits / looked if looked else 0.0}


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
        state = await engine.store.read_user(TENANT, user_id(i), "none", "c1",
                                             now=engine.clock.now_ms())
        engine.state_cache.put(TENANT, user_id(i), "c1", state, read_at)
    del state
    gc.collect()
    size = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return size / bench.users


async def _check_cost(client: RedisClient, bench: Bench, rounds: int = 6) -> None:
    """``--check-cost``: Redis' command time (INFO commandstats µs per EVALSHA) of read.lua,
    of commit.lua's state check (its step 2b, cut out of commit.lua itself, after the ``rev``
    HGET it follows) and of that HGET alone, on the seeded recipients, in alternated blocks:
    what a hit saves inside redis-server and what it adds."""
    lua = resources.files("api").joinpath("lua", "commit.lua").read_text()
    step = lua[lua.index("-- 2b."):lua.index("-- 3. the ledger")]
    rev = "local rev = redis.call('HGET', KEYS[3], 'rev') or '0'\n"
    scripts = {"read.lua": client.register_script(
                   resources.files("api").joinpath("lua", "read.lua").read_text()),
               "rev + check": client.register_script(rev + step + "return 1"),
               "rev only": client.register_script(rev + "return 1")}
    users = [user_id(i) for i in range(min(bench.users, 200))]
    now = bench.engine.clock.now_ms()
    states = {u: await bench.engine.store.read_user(TENANT, u, "m", "c1", now=now)
              for u in users}
    out: dict[str, list[float]] = {name: [] for name in scripts}
    for rnd in range(rounds):
        for name in list(scripts) if rnd % 2 == 0 else list(scripts)[::-1]:
            stats0 = (await client.info("commandstats"))["cmdstat_evalsha"]
            for _ in range(5):
                for u in users:
                    k = user_keys(TENANT, u)
                    if name == "read.lua":
                        await scripts[name](keys=[k.prefs, k.records, k.conv, k.profile,
                                                  k.record("m")], args=["c1", "m", now])
                    else:
                        keys = [k.ledger, k.records, k.prefs, k.record_prefix,
                                k.replan_prefix, k.record("m")]
                        extra = CommitCheck.of(states[u], "c1").args() if "check" in name else []
                        await scripts[name](keys=keys + ([k.conv, k.profile] if extra else []),
                                            args=["plan", "ctx", "prefix", *extra])
            stats1 = (await client.info("commandstats"))["cmdstat_evalsha"]
            out[name].append((stats1["usec"] - stats0["usec"]) / (stats1["calls"] - stats0["calls"]))
    print(f"inside redis-server, µs per call ({rounds} alternated blocks of {5 * len(users):,}):")
    for name, values in out.items():
        print(f"  {name:<12} " + ", ".join(f"{v:.2f}" for v in values)
              + f"   median {statistics.median(values):.2f}")


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
        if args.check_cost:
            await _check_cost(client, bench)
            return
        if args.closed:
            closed: dict[float, list[dict[str, float]]] = {0.0: [], args.ttl: []}
            for rnd in range(args.rounds):
                for ttl in (0.0, args.ttl) if rnd % 2 == 0 else (args.ttl, 0.0):
                    closed[ttl].append(await _closed_run(client, bench, ttl, args, 50 + rnd))
            print(f"closed loop: {args.concurrency} tasks, {args.decisions:,} decisions per run "
                  f"over {args.users:,} recipients, {args.rounds} rounds alternated")
            print(f"  {'state cache':<12}{'decisions/s':>12}{'client CPU µs/dec':>19}"
                  f"{'redis CPU µs/dec':>18}{'hit':>7}")
            for ttl, runs in closed.items():
                for r in runs:
                    print(f"  {('off' if ttl == 0 else f'{ttl:g} s'):<12}{r['rate']:>12,.0f}"
                          f"{r['cpu_us']:>19.0f}{r['redis_us']:>18.1f}{100 * r['hit']:>6.1f}%")
            return
        rows: dict[float, list[dict[str, float]]] = {0.0: [], args.ttl: []}
        for rnd in range(args.rounds):
            for ttl in (0.0, args.ttl) if rnd % 2 == 0 else (args.ttl, 0.0):
                rows[ttl].append(await _one_run(client, bench, ttl, args, seed=10 + rnd))
        print(f"{args.decisions:,} decisions per run at {args.rate:,.0f}/s over {args.users:,} "
              f"recipients ({'Zipf' if args.zipf else 'uniform'}), {args.rounds} rounds "
              "alternated")
        print(f"  {'state cache':<12}{'Redis cmds/dec':>15}{'EVALSHA/dec':>12}"
              f"{'script µs/dec':>14}{'hit':>7}{'stale':>7}{'decide p50 µs':>14}"
              f"{'mean µs':>9}{'late s':>8}")
        for ttl, runs in rows.items():
            for r in runs:
                print(f"  {('off' if ttl == 0 else f'{ttl:g} s'):<12}{r['calls']:>15.3f}"
                      f"{r['evalsha']:>12.3f}{r['script_us']:>14.1f}{100 * r['hit']:>6.1f}%"
                      f"{100 * r['stale']:>6.2f}%{r['p50']:>14.0f}{r['mean']:>9.0f}"
                      f"{r['late']:>8.2f}")
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
    parser.add_argument("--closed", action="store_true", help="closed loop instead of paced: "
                        "decisions/s and CPU per decision of this process and of Redis")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--check-cost", action="store_true", help="only: Redis' time for "
                        "read.lua vs commit.lua's state check")
    parser.add_argument("--slowlog", action="store_true",
                        help="Redis' own time per script call (SLOWLOG, threshold 0)")
    parser.add_argument("--memory", action="store_true",
                        help="also measure the memory per cache entry")
    args = parser.parse_args(argv)
    with EmbeddedRedis() as redis:
        asyncio.run(run(args, redis.url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
