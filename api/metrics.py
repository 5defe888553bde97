"""Prometheus metrics, served at ``/metrics``: one scrape covers every worker process.

With several uvicorn workers each process counts its own requests, and a scrape lands on
one of them at random: per-process registries would make every counter jump between
workers' values. prometheus_client's multiprocess mode fixes that: each process writes its
values to memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR`` and a scrape, served by any
worker, sums the files of all of them.

That variable must be set *before* a worker first imports ``prometheus_client`` (the library
picks its value class at import), so the parent process prepares the directory and puts it
in the environment the workers inherit: ``prepare_multiprocess_dir`` (called by
``sendwise serve``; empties the directory so a restart does not add the previous run's
counts). Without the variable (tests, one process) each ``Metrics`` keeps its own registry,
so several apps in one process never collide.

The metric names are a contract with ``deploy/grafana/sendwise.json`` and
``deploy/prometheus/alerts.yml``; ``tests/unit/test_dashboards.py`` checks that every metric
they query is defined here.
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

#: the environment variable prometheus_client reads (set by the parent, inherited by workers)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: the model label before the engine has said which model (or heuristic) scores decisions
NO_MODEL = "none"

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25)
_REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 0.25, 1.0)
_GC_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)
#: the loop-lag histogram's buckets (seconds): a busy loop is a few ms late, a stall more
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def prepare_multiprocess_dir(directory: Path) -> Path:
    """Create (or empty) ``directory`` and export it as ``PROMETHEUS_MULTIPROC_DIR`` for the
    worker processes started after this call. Call it in the parent, before any worker."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(directory)
    return directory


def multiprocess_dir() -> str | None:
    """The shared directory when this process runs in multiprocess mode, else None."""
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """Every metric of one worker. Decisions, their reasons, Redis round trips, the fallback
    and the versions in force: what an operator needs to tell "Redis is slow" from "the
    policy caps everything" from "we are answering with the fallback"."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.decisions = Counter("sendwise_decisions_total", "Decisions by outcome",
                                 ["decision", "channel"], registry=r)
        self.decision_reasons = Counter(
            "sendwise_decision_reasons_total",
            "Reason codes cited by decisions (a decision citing two codes counts once for each)",
            ["decision", "reason"], registry=r)
        self.api_errors = Counter(
            "sendwise_api_errors_total",
            "Requests answered with an error body, by its machine code (the README's error "
            "list): a rise of one code is a client or data problem to look at, e.g. "
            "preferences_unreadable (stored preference documents no worker can read), "
            "record_unreadable (stored decision records no worker can read) or "
            "idempotency_conflict (message ids reused)", ["code"], registry=r)
        self.fallbacks = Counter("sendwise_fallback_decisions_total",
                                 "Decisions answered by the Redis-unavailable fallback",
                                 registry=r)
        self.decision_seconds = Histogram(
            "sendwise_decision_seconds", "Time to decide one message (validation to answer)",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.redis_seconds = Histogram(
            "sendwise_redis_seconds", "Round-trip time of the decision path's Redis calls",
            ["op"], buckets=_REDIS_BUCKETS, registry=r)
        self.redis_errors = Counter(
            "sendwise_redis_errors_total",
            "Requests that found Redis unreachable or timed out: 'decision' (answered with the "
            "fallback) or 'request' (any other endpoint, answered 503)", ["op"], registry=r)
        self.log_failures = Counter(
            "sendwise_decision_log_failures_total",
            "Decision-log appends (XADD) that failed: the decisions stand, their training rows "
            "are lost (a log_append_failed warning each)", registry=r)
        self.model_seconds = Histogram(
            "sendwise_model_score_seconds",
            "Time to score one decision's candidates (features and the model, or the heuristic "
            "fallback when no model is active)", buckets=_LATENCY_BUCKETS, registry=r)
        self.model_refused = Counter(
            "sendwise_model_refused_total",
            "Model artifacts refused at load or reload (feature hash or format mismatch, "
            "corrupt file, champion gate not passed)", registry=r)
        self.model_info = Gauge(
            "sendwise_model_info",
            "The model in force: 1 for the active version (a model's version, or the "
            "heuristic fallback's label such as heuristic-v2), 0 for versions it replaced",
            ["model_version"], multiprocess_mode="livemax", registry=r)
        self.policy_version = Gauge(
            "sendwise_policy_version", "The policy version the last decision of each tenant used",
            ["tenant"], multiprocess_mode="livemax", registry=r)
        self.shadow_decisions = Counter(
            "sendwise_shadow_decisions_total",
            "Decisions also evaluated under the tenant's shadow policy, by the live decision, "
            "the shadow's (send/defer/suppress, or invalid: the shadow policy would have "
            "refused the request) and whether the answer would have changed (decision, "
            "channel or instant)", ["tenant", "live", "shadow", "changed"], registry=r)
        self.shadow_reasons = Counter(
            "sendwise_shadow_reasons_total",
            "Reason codes the shadow policy would have added to or removed from decisions",
            ["tenant", "change", "reason"], registry=r)
        self.shadow_errors = Counter(
            "sendwise_shadow_errors_total",
            "Shadow evaluations that failed (the live answer is unaffected) or report flushes "
            "that failed (those counts are lost)", ["stage"], registry=r)
        self.state_cache = Counter(
            "sendwise_state_cache_total",
            "Decisions by what this worker's recipient-state cache did (api/statecache.py): "
            "hit (planned from cached state, one Redis round trip when the commit confirms "
            "it), miss (read from Redis), stale (a hit the commit found outdated: read again)",
            ["result"], registry=r)
        self.admission = Counter(
            "sendwise_admission_total",
            "Decisions by how they entered the worker's admission gate (api/admission.py, "
            "SENDWISE_DECISION_CONCURRENCY): immediate (a free place), queued (waited for "
            "one, first come first served), overflow (the queue was full: ran at once, as "
            "without the gate)", ["entry"], registry=r)
        self.workers = Gauge("sendwise_workers", "API worker processes serving (1 per process)",
                             multiprocess_mode="livesum", registry=r)
        self.gc_pause = Histogram(
            "sendwise_gc_pause_seconds",
            "Garbage-collector pauses of the worker by generation (the event loop stands still "
            "meanwhile: a latency stall no request metric explains)", ["generation"],
            buckets=_GC_BUCKETS, registry=r)
        self._gc_generations = [self.gc_pause.labels(str(g)) for g in range(3)]
        self.loop_lag = Histogram(
            "sendwise_event_loop_lag_seconds",
            "How late the worker's event loop ran a timer set 25 ms ahead (api/looplag.py): "
            "every request the worker held waited that long too. A stall of the loop (a long "
            "callback, a blocking call, the process not scheduled) shows here even when no "
            "GC pause does", buckets=_LAG_BUCKETS, registry=r)
        self._gc_started = 0.0
        self._model_version = NO_MODEL
        self.model_info.labels(NO_MODEL).set(1)
        # bound once: the decision path observes these on every request
        self.redis_read = self.redis_seconds.labels("read")
        self.redis_commit = self.redis_seconds.labels("commit")
        #: the shadow policy's dry commit (only for tenants with a shadow policy)
        self.redis_shadow = self.redis_seconds.labels("shadow")
        self.admissions = {entry: self.admission.labels(entry)
                           for entry in ("immediate", "queued", "overflow")}
        self.state_cache_hits = self.state_cache.labels("hit")
        self.state_cache_misses = self.state_cache.labels("miss")
        self.state_cache_stale = self.state_cache.labels("stale")
        # the series operators alert on exist at 0 before the first error
        self.redis_errors.labels("decision")
        self.redis_errors.labels("request")
        self.shadow_errors.labels("evaluate")
        self.shadow_errors.labels("flush")
        self.workers.set(1)

    def scrape(self) -> bytes:
        """The text exposition: every worker's values when in multiprocess mode."""
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def close(self) -> None:
        """At worker shutdown: drop this process's live gauges (workers, versions) from the
        shared directory, so a scrape no longer counts a worker that has gone."""
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        directory = multiprocess_dir()
        if directory is not None:
            multiprocess.mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]

    def watch_gc(self) -> None:
        """Time every collection of this process into ``sendwise_gc_pause_seconds`` until
        ``close`` (served workers: the app's lifespan). A callback per collection, ~1 µs."""
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started:
            self._gc_generations[info["generation"]].observe(
                time.perf_counter() - self._gc_started)
            self._gc_started = 0.0

    def set_model(self, version: str) -> None:
        """Publish the version now scoring decisions (at start and after each reload)."""
        if version == self._model_version:
            return
        self.model_info.labels(self._model_version).set(0)
        self.model_info.labels(version).set(1)
        self._model_version = version
