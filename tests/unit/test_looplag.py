"""``watch_loop_lag`` (api/looplag.py): each check reports how much later than asked its
timer ran, never less than zero, until cancelled; a served app exposes the histogram."""

from __future__ import annotations

import asyncio

import pytest

from api.looplag import watch_loop_lag
from api.metrics import Metrics


async def test_each_check_reports_its_lateness() -> None:
    """A fake clock: the sleeps take 0.1 s, 0.35 s (a 250 ms stall), 0.1 s and 0.0995 s
    (a timer that fired early reads as 0), then the watcher is cancelled."""
    now = [100.0]
    took = iter([0.1, 0.35, 0.1, 0.0995])
    seen: list[float] = []

    async def sleep(interval: float) -> None:
        assert interval == 0.1
        try:
            now[0] += next(took)
        except StopIteration:
            raise asyncio.CancelledError from None

    with pytest.raises(asyncio.CancelledError):
        await watch_loop_lag(seen.append, interval=0.1, clock=lambda: now[0], sleep=sleep)
    assert seen == pytest.approx([0.0, 0.25, 0.0, 0.0], abs=1e-9)


async def test_the_real_loop_is_watched_until_cancelled() -> None:
    metrics = Metrics()
    observed = asyncio.Event()

    def observe(lag: float) -> None:
        metrics.loop_lag.observe(lag)
        observed.set()

    task = asyncio.ensure_future(watch_loop_lag(observe, interval=0.001))
    await asyncio.wait_for(observed.wait(), timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (metrics.registry.get_sample_value("sendwise_event_loop_lag_seconds_count") or 0) >= 1
