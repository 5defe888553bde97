"""``sendwise_gc_pause_seconds``: every collection of a served worker is timed by generation
(api/metrics.py ``watch_gc``), and closing the worker's metrics stops the timing."""

from __future__ import annotations

import gc

from api.metrics import Metrics


def _count(metrics: Metrics, generation: str) -> float:
    value = metrics.registry.get_sample_value("sendwise_gc_pause_seconds_count",
                                              {"generation": generation})
    return value or 0.0


def test_collections_are_timed_by_generation_until_close() -> None:
    metrics = Metrics()
    metrics.watch_gc()
    metrics.watch_gc()  # idempotent: one callback
    try:
        gc.collect(2)
        gc.collect(0)
        assert _count(metrics, "2") == 1
        assert _count(metrics, "0") >= 1
        total = metrics.registry.get_sample_value("sendwise_gc_pause_seconds_sum",
                                                  {"generation": "2"})
        assert total is not None and total > 0
    finally:
        metrics.close()
    assert metrics._on_gc not in gc.callbacks
    gc.collect(2)
    assert _count(metrics, "2") == 1
