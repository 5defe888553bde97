"""The Redis client path alone: what one script call costs this process, auto-pipelined
(``api/redis_client.py`` ``AutoPipeline``) and through redis-py's per-command ``Script``,
side by side in one run, and how many event-loop iterations a round trip spans.

In process, on uvloop (what ``sendwise serve`` runs), against an embedded redis-server
(unix socket): ``--concurrency`` callers each await one ``EXISTS`` script call after
another for ``--seconds``; the two paths alternate ``--rounds`` times. Client CPU per call
is this process's CPU time (``time.process_time``) over the calls made, Redis' excluded.
Iterations: ``loadtests/iterations.py`` counts them for ten sequential calls on a loop whose
every iteration holds the CPU 2 ms, as a loaded worker's do, on asyncio's loop and on
uvloop (whose iterations run ready callbacks at two points, so it counts fewer).

    python -m loadtests.bench_pipeline --concurrency 1 8 32
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from api.redis_client import AutoPipeline, ScriptCaller, make_redis
from api.redis_server import EmbeddedRedis
from api.settings import Settings
from loadtests.iterations import iterations_per_call

SCRIPT = "return redis.call('EXISTS', KEYS[1])"
PATHS = ("auto-pipelined", "per-command")


async def _calls(call: Callable[[int], Awaitable[Any]], concurrency: int,
                 seconds: float) -> tuple[float, float]:
    """Calls per second and client CPU µs per call of ``concurrency`` closed loops."""
    await asyncio.gather(*(call(i) for i in range(concurrency)))  # warm: script, connections
    made = 0
    stop = False

    async def loop(i: int) -> None:
        nonlocal made
        while not stop:
            await call(i)
            made += 1

    cpu0, wall0 = time.process_time(), time.perf_counter()
    tasks = [asyncio.ensure_future(loop(i)) for i in range(concurrency)]
    await asyncio.sleep(seconds)
    stop = True
    await asyncio.gather(*tasks)
    cpu1, wall1 = time.process_time(), time.perf_counter()
    return made / (wall1 - wall0), (cpu1 - cpu0) / made * 1e6


async def _measure(url: str, path: str, concurrency: int, seconds: float) -> tuple[float, float]:
    client = make_redis(Settings(redis_url=url, redis_max_connections=64,
                                 redis_timeout_seconds=2.0))
    script = client.register_script(SCRIPT)
    caller = ScriptCaller(script, AutoPipeline(client) if path == PATHS[0] else None)  # type: ignore[arg-type]
    try:
        return await _calls(lambda i: caller(keys=[f"bench:{i}"]), concurrency, seconds)
    finally:
        await client.aclose()


async def _iterations(url: str, path: str) -> float:
    client = make_redis(Settings(redis_url=url, redis_max_connections=64,
                                 redis_timeout_seconds=2.0))
    script = client.register_script(SCRIPT)
    caller = ScriptCaller(script, AutoPipeline(client) if path == PATHS[0] else None)  # type: ignore[arg-type]
    try:
        for _ in range(2):  # the first loads the script; the second leaves a kept connection
            await caller(keys=["bench:it"])
        return statistics.median(
            await iterations_per_call(lambda: caller(keys=["bench:it"]), 0.002))
    finally:
        await client.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    with EmbeddedRedis() as server:
        for _ in range(args.rounds):
            for concurrency in args.concurrency:
                for path in PATHS:
                    results.setdefault((path, concurrency), []).append(
                        uvloop.run(_measure(server.url, path, concurrency, args.seconds)))
        iterations = {path: (asyncio.run(_iterations(server.url, path)),
                             uvloop.run(_iterations(server.url, path))) for path in PATHS}
    print(f"{'path':<16} {'callers':>7} {'calls/s (median)':>17} {'client CPU µs/call':>19}")
    for concurrency in args.concurrency:
        for path in PATHS:
            rows = results[(path, concurrency)]
            print(f"{path:<16} {concurrency:>7} {statistics.median(r[0] for r in rows):>17,.0f} "
                  f"{statistics.median(r[1] for r in rows):>19.1f}")
    for path, (plain, uv) in iterations.items():
        print(f"event-loop iterations per round trip, {path}: {plain:g} on asyncio's loop, "
              f"{uv:g} on uvloop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
