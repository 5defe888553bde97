"""``bench_decisions``' per-run summaries of the worker's histograms (the event-loop lag,
where the requests over 10 ms spent their time) and of Redis' own latency monitor."""

from __future__ import annotations

import math

import redis

from api.redis_server import EmbeddedRedis
from loadtests.bench_decisions import (
    Phase,
    describe_lag,
    describe_slow,
    redis_latency_events,
    watch_redis_latency,
)

BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, math.inf)


def _cumulative(*counts: int) -> dict[float, float]:
    return dict(zip(BOUNDS, map(float, counts), strict=True))


def test_the_lag_counts_checks_over_10_and_50_ms_and_the_largest_bucket() -> None:
    lag = _cumulative(95, 132, 141, 145, 148, 149, 150, 150, 150, 150, 150, 150)
    assert describe_lag(lag) == "5 / 1 of 150 checks, ≤ 100 ms"
    stalled = _cumulative(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2)
    assert describe_lag(stalled) == "2 / 2 of 2 checks, over 2.5 s"
    assert describe_lag({}).startswith("unread")


def _phase(**fields: object) -> Phase:
    return Phase(name="fixed", generator="python x1", requests=100, seconds=1.0, p50=1.0,
                 p90=2.0, p99=12.0, max=40.0, decisions={}, non200=0, errors=0,
                 server_cpu=0.0, redis_cpu=0.0, generator_cpu=0.0, **fields)  # type: ignore[arg-type]


def test_slow_requests_are_split_by_where_the_worker_measured_them() -> None:
    phase = _phase(over_10ms=7, worker_histograms={
        "sendwise_decision_seconds": {0.005: 90.0, 0.01: 97.0, 0.02: 100.0, math.inf: 100.0},
        "sendwise_redis_seconds": {0.005: 180.0, 0.01: 199.0, 0.025: 200.0, math.inf: 200.0}})
    assert describe_slow(phase) == "7 end to end / 3 inside the decision / 1 Redis round trips"
    assert describe_slow(_phase(over_10ms=4)) == "4 end to end (worker histograms unread)"


SLOW = """local t = redis.call('TIME') local start = t[1] * 1e6 + t[2]
while true do local n = redis.call('TIME')
  if n[1] * 1e6 + n[2] - start > 20000 then return 1 end end"""


def test_redis_latency_events_name_what_redis_itself_spent_time_on(
        embedded_redis: EmbeddedRedis) -> None:
    client = redis.Redis(unix_socket_path=embedded_redis.socket_path)
    try:
        watch_redis_latency([client])
        assert redis_latency_events([client]) == "none"
        client.eval(SLOW, 0)  # a script that holds Redis for 20 ms
        event = redis_latency_events([client])
        assert event.startswith("command ") and int(event.split()[1]) >= 20, event
        watch_redis_latency([client])  # each run starts from no events
        assert redis_latency_events([client]) == "none"
    finally:
        client.close()
