"""How late a worker's event loop runs: ``sendwise_event_loop_lag_seconds``.

Why: every request a worker holds waits while its one event loop is busy elsewhere or not
running at all. A garbage-collector pause is timed on its own (``sendwise_gc_pause_seconds``),
but a loop also stalls on a long callback, a blocking call, or the machine not scheduling
the process (a VM's stolen time). A latency tail that no request metric explains shows up
here: a timer set ``interval`` ahead is late by as much as the loop was held past it.

The measure is the one event-loop monitors commonly use: sleep ``interval``, then compare
the time actually elapsed with it. It includes the callbacks queued ahead of the timer, so
a busy loop reads a few milliseconds late routinely. A stall of length L reads as at least
L - ``interval`` (the timer due during it fires when it ends), so with checks every 25 ms
every stall over 35 ms shows as over 10 ms; with checks every 100 ms a 50 ms stall could
fall between two due times and show as nothing. Forty checks a second cost nothing
measurable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

#: seconds between checks
INTERVAL = 0.025


async def watch_loop_lag(observe: Callable[[float], None], *, interval: float = INTERVAL,
                         clock: Callable[[], float] = time.perf_counter,
                         sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
    """Observe each check's lag (seconds, never negative) until cancelled. ``clock`` and
    ``sleep`` are the real ones in a worker; tests pass their own."""
    while True:
        started = clock()
        await sleep(interval)
        observe(max(0.0, clock() - started - interval))
