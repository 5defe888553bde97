"""How many decisions one worker runs at once: a first-come-first-served gate.

Why: a worker's event loop interleaves every request it has started. Under moderate load
a decision's ~1 ms of CPU is therefore spread over all the decisions in progress
(processor sharing), and a burst of arrivals stretches every one of them: that, not the
mean, is what makes the slow tail at 60% load (docs/benchmarks.md, "Admission"). With at
most ``limit`` decisions in progress and the rest started in arrival order, each decision
runs nearly alone once it starts, and a request that arrives behind a burst waits for the
decisions ahead of it only.

Never worse than no gate: at most ``max_waiting`` requests wait; beyond that (a sustained
overload, or Redis hanging so that the decisions in progress hold their places until
their timeouts) a request goes straight in, as it would without the gate. So the gate
shapes latency at moderate load and gets out of the way when a queue would only add to
it. Not thread-safe: one event loop per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Literal

#: how a request got in: a free place, its turn after waiting, or past a full queue
Entry = Literal["immediate", "queued", "overflow"]


class AdmissionGate:
    """At most ``limit`` holders; up to ``max_waiting`` waiters, served in arrival order."""

    def __init__(self, limit: int, max_waiting: int) -> None:
        if limit < 1 or max_waiting < 0:
            raise ValueError("limit must be >= 1 and max_waiting >= 0")
        self.limit = limit
        self.max_waiting = max_waiting
        #: places held (a waiter handed a place counts from the moment it is handed)
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def enter(self) -> Entry:
        """Take a place, waiting for one if need be; ``overflow``: no place was taken (the
        queue was full) and ``leave`` must be told so."""
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return "immediate"
        if len(self._waiters) >= self.max_waiting:
            return "overflow"
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # a place was handed over just as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):  # already skipped by ``_release``
                    self._waiters.remove(waiter)
            raise
        return "queued"

    def leave(self, entry: Entry) -> None:
        """Give back the place ``enter`` took (nothing for ``overflow``)."""
        if entry != "overflow":
            self._release()

    def _release(self) -> None:
        """Hand the place to the longest waiter still waiting, else free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.active -= 1
