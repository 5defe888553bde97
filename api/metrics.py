"""Prometheus metrics of one worker process (served at /metrics).

Each app gets its own registry so tests and several apps in one process never collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Counter("sendwise_decisions_total", "Decisions by outcome",
                                 ["decision", "channel"], registry=self.registry)
        self.fallbacks = Counter("sendwise_fallback_decisions_total",
                                 "Decisions answered by the Redis-unavailable fallback",
                                 registry=self.registry)
        self.decision_seconds = Histogram(
            "sendwise_decision_seconds", "Time to decide one message (validation to answer)",
            buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25),
            registry=self.registry)
