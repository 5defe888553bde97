"""Counting the event-loop iterations an awaited call spans (api/redis_client.py: the
auto-pipelines' round trips)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def iterations_per_call(call: Callable[[], Awaitable[object]],
                              busy_seconds: float) -> list[int]:
    """Event-loop iterations each of 10 sequential ``call()``s spans, on a loop kept busy
    (every iteration runs a callback that holds the CPU ``busy_seconds``, as a loaded
    worker's requests do): the reply is always back within one iteration, so the count is
    what the client's own hops cost, not Redis' speed."""
    loop = asyncio.get_running_loop()
    ticks = 0
    running = True

    def tick() -> None:
        nonlocal ticks
        ticks += 1
        until = time.perf_counter() + busy_seconds
        while time.perf_counter() < until:
            pass
        if running:
            loop.call_soon(tick)

    loop.call_soon(tick)
    counts = []
    try:
        for _ in range(10):
            start = ticks
            await call()
            counts.append(ticks - start)
    finally:
        running = False
    return counts
