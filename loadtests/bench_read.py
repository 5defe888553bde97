"""Redis CPU per read of a recipient's state: ``read.lua`` against the alternatives.

The read is the first of the decision's round trips (``Store.read_user``). Four ways of
issuing it run in alternating batches against the ``bench_engine`` population (seeded
preferences, some ledger and records, 30 reads in flight, recipients uniform), each batch
measured by redis-server's own CPU time (INFO cpu, which other processes on a shared box
barely inflate):

- ``read.lua``: the script as shipped (HGETALL prefs, GET record, HGET conversion, HGET
  profile);
- ``empty script``: a script with the same keys and argument that does nothing (what any
  script costs: the call, KEYS/ARGV, the round trip);
- ``multi/exec``: the same four commands in a MULTI/EXEC transaction (atomic like the
  script);
- ``pipeline``: the same four commands pipelined without a transaction (not atomic).

    python -m loadtests.bench_read
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
from collections.abc import Awaitable, Callable
from importlib import resources

import redis

from api.keys import user_keys
from api.redis_client import make_redis
from api.redis_server import EmbeddedRedis
from api.settings import Settings
from loadtests.bench_engine import TENANT, Bench
from loadtests.population import user_id


def _redis_cpu(plain: redis.Redis) -> float:
    cpu: dict[str, float] = plain.info("cpu")
    return cpu["used_cpu_user"] + cpu["used_cpu_sys"]


async def run(url: str, users: int, reads: int, rounds: int) -> None:
    client = make_redis(Settings(redis_url=url, redis_max_connections=32,
                                 redis_timeout_seconds=5.0))
    plain = redis.Redis.from_url(url)
    bench = Bench(client, users)  # type: ignore[arg-type]
    await bench.seed()
    await bench.end_to_end(500)  # ledgers and records, as the decisions leave them
    read_sha = await client.script_load(resources.files("api").joinpath("lua", "read.lua")
                                        .read_text())
    empty_sha = await client.script_load("return 1")
    keys = [user_keys(TENANT, user_id(i)) for i in range(users)]

    def key_list(i: int) -> list[str]:
        k = keys[i]
        return [k.prefs, k.record("not-decided-yet"), k.conv, k.profile]

    async def script(i: int) -> None:
        await client.evalsha(read_sha, 4, *key_list(i), "c1")

    async def empty(i: int) -> None:
        await client.evalsha(empty_sha, 4, *key_list(i), "c1")

    def commands(transaction: bool) -> Callable[[int], Awaitable[None]]:
        async def issue(i: int) -> None:
            prefs, record, conv, profile = key_list(i)
            pipe = client.pipeline(transaction=transaction)
            pipe.hgetall(prefs)
            pipe.get(record)
            pipe.hget(conv, "c1")
            pipe.hget(profile, "p")
            await pipe.execute()
        return issue

    variants: dict[str, Callable[[int], Awaitable[None]]] = {
        "read.lua": script, "empty script": empty, "multi/exec": commands(True),
        "pipeline": commands(False)}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    rng = random.Random(5)
    for round_ in range(rounds):
        names = list(variants) if round_ % 2 == 0 else list(reversed(variants))
        for name in names:
            issue = variants[name]
            before = _redis_cpu(plain)
            for _ in range(reads // 30):
                await asyncio.gather(*(issue(rng.randrange(users)) for _ in range(30)))
            cpu[name].append((_redis_cpu(plain) - before) / (reads // 30 * 30) * 1e6)
    for name, values in cpu.items():
        runs = " ".join(f"{x:.1f}" for x in values)
        print(f"{name:13s} Redis CPU per read: median {statistics.median(values):.1f} µs "
              f"({runs})")
    await bench.engine.store.settle()  # the log appends the answers did not wait for
    await client.aclose()
    plain.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_read", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--reads", type=int, default=3000, help="reads per batch")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args(argv)
    with EmbeddedRedis() as server:
        asyncio.run(run(server.url, args.users, args.reads, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
