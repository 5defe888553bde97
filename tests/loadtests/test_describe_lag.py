"""``bench_decisions``' per-run summary of the worker's event-loop lag histogram."""

from __future__ import annotations

import math

from loadtests.bench_decisions import describe_lag

BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, math.inf)


def _cumulative(*counts: int) -> dict[float, float]:
    return dict(zip(BOUNDS, map(float, counts), strict=True))


def test_only_the_checks_between_the_snapshots_count() -> None:
    before = _cumulative(5, 8, 9, 10, 10, 10, 10, 10, 10, 10, 10, 10)
    after = _cumulative(100, 140, 150, 155, 158, 159, 160, 160, 160, 160, 160, 160)
    assert describe_lag(before, after) == "5 / 1 of 150 checks, ≤ 100 ms"


def test_a_stall_past_the_last_bound_and_an_unread_scrape() -> None:
    after = _cumulative(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2)
    assert describe_lag({}, after) == "2 / 2 of 2 checks, over 2.5 s"
    assert describe_lag({}, {}).startswith("unread")
