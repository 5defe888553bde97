"""Where a stall's time went on the machine: each process's wait for a CPU, and the VM's steal.

The fixed-load runs of ``bench_decisions`` saw rare stalls (a request 263 ms late, with
hundreds of Redis round trips over 10 ms) that neither the worker's event-loop lag nor
Redis' latency monitor explained. Both of those measure a process that runs late; neither
sees a process that is runnable but waiting for a CPU, nor a VM whose virtual CPUs the
host did not run. The kernel counts both:

* ``/proc/<pid>/schedstat``, second field: nanoseconds the thread spent runnable but not
  running (its run-queue wait); the first is its time on a CPU. The main thread is what
  matters here: Redis executes commands there, and the worker's event loop runs there.
* ``/proc/stat``, the ``steal`` column of the ``cpu`` line: clock ticks in which the
  hypervisor ran something else while this VM's CPUs were ready (all CPUs summed).

``SchedWatch`` samples both every ``interval`` seconds on a thread of the benchmark's own
process. Afterwards ``between(start, end)`` says how long each group of processes (the
workers, Redis, the load generator) waited for a CPU during one request and how much the
VM lost to steal, ``ran`` how long each ran, and ``worst_window`` gives the waits of the
worst stretch of the run.
The clock is ``time.perf_counter``: CLOCK_MONOTONIC on Linux, the same in every process,
so a request's start as the generator recorded it lines up with these samples.

Its cost is a few small file reads per sample, ~0.3 ms of CPU: at the default 10 ms, 3% of
one core with three processes watched (measured: 306 ms of CPU in 10 s). ``cpu_seconds``
reports it, and the benchmark prints it beside the stall.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from pathlib import Path
from typing import NamedTuple

CLK_TCK = os.sysconf("SC_CLK_TCK")


class Sample(NamedTuple):
    at: float
    #: the VM's steal so far, nanoseconds (all CPUs)
    steal_ns: int
    #: run-queue wait so far of each watched process, nanoseconds (-1: unreadable)
    waits: tuple[int, ...]
    #: time on a CPU so far of each watched process, nanoseconds (-1: unreadable)
    runs: tuple[int, ...] = ()


def steal_ns() -> int:
    """The machine's steal so far (``/proc/stat``), nanoseconds; 0 where not reported."""
    with open("/proc/stat", "rb") as f:
        fields = f.readline().split()
    # cpu user nice system idle iowait irq softirq steal ...
    return int(fields[8]) * 1_000_000_000 // CLK_TCK if len(fields) > 8 else 0


def sched_ns(pid: int) -> tuple[int, int]:
    """A process's main thread's time on a CPU and run-queue wait so far
    (``/proc/<pid>/schedstat``, its first two fields), ns; -1 each when the process is gone
    or the kernel does not keep scheduler statistics."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            ran, waited = f.read().split()[:2]
        return int(ran), int(waited)
    except (OSError, ValueError):
        return -1, -1


def available() -> bool:
    """Whether this kernel reports run-queue waits (``CONFIG_SCHED_INFO``)."""
    return Path(f"/proc/{os.getpid()}/schedstat").exists()


class SchedWatch:
    """Samples every ``interval`` seconds from ``start`` to ``stop`` (a daemon thread)."""

    def __init__(self, groups: dict[str, list[int]], interval: float = 0.01) -> None:
        self.groups = {name: list(pids) for name, pids in groups.items() if pids}
        self._pids = [pid for pids in self.groups.values() for pid in pids]
        self.interval = interval
        self.samples: list[Sample] = []
        self._at: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.cpu_seconds = 0.0

    def _sample(self) -> Sample:
        stats = [sched_ns(p) for p in self._pids]
        return Sample(time.perf_counter(), steal_ns(), tuple(w for _, w in stats),
                      tuple(r for r, _ in stats))

    def _run(self) -> None:
        started = time.thread_time()
        next_at = time.perf_counter()
        while not self._stop.is_set():
            self.samples.append(self._sample())
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.perf_counter()))
        self.samples.append(self._sample())
        self.cpu_seconds = time.thread_time() - started

    def start(self) -> SchedWatch:
        self._thread = threading.Thread(target=self._run, name="schedwatch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._at = [s.at for s in self.samples]

    # ---------------------------------------------------------------- reading

    def _per_group(self, first: tuple[int, ...], last: tuple[int, ...]) -> dict[str, float]:
        """Per group, the largest growth of any of its processes' counter, ms."""
        out: dict[str, float] = {}
        k = 0
        for name, pids in self.groups.items():
            worst = 0.0
            for _ in pids:
                if k < len(first) and first[k] >= 0 and last[k] >= 0:
                    worst = max(worst, (last[k] - first[k]) / 1e6)
                k += 1
            out[name] = worst
        return out

    def _delta(self, first: Sample, last: Sample) -> dict[str, float]:
        """Per group, the largest run-queue wait of any of its processes between two
        samples, and the steal, in milliseconds."""
        return {**self._per_group(first.waits, last.waits),
                "steal": (last.steal_ns - first.steal_ns) / 1e6}

    def _span(self, start: float, end: float) -> tuple[Sample, Sample]:
        i = max(0, bisect.bisect_right(self._at, start) - 1)
        j = min(len(self.samples) - 1, bisect.bisect_left(self._at, end))
        if j <= i:
            j = min(len(self.samples) - 1, i + 1)
        return self.samples[i], self.samples[j]

    def between(self, start: float, end: float) -> dict[str, float]:
        """Waits and steal (ms) from the last sample at or before ``start`` to the first
        at or after ``end``: a window at most two intervals wider than asked."""
        if len(self.samples) < 2:
            return {}
        return self._delta(*self._span(start, end))

    def window_ms(self, start: float, end: float) -> float:
        """The sampled window ``between`` and ``ran`` actually cover, ms."""
        if len(self.samples) < 2:
            return 0.0
        first, last = self._span(start, end)
        return (last.at - first.at) * 1000.0

    def ran(self, start: float, end: float) -> dict[str, float]:
        """Per group, the most time any of its processes spent on a CPU over the same
        window as ``between`` (ms). A worker that ran for most of a slow request was busy
        (other requests, a collection); one that neither ran nor waited was blocked on I/O.
        """
        if len(self.samples) < 2:
            return {}
        first, last = self._span(start, end)
        return self._per_group(first.runs, last.runs)

    def worst_window(self, width: float = 0.1) -> dict[str, float]:
        """Per group (and steal), the most it accumulated in any ``width`` seconds of the
        run, in milliseconds: each group's own worst stretch, not one shared instant."""
        worst: dict[str, float] = {}
        j = 0
        for i, last in enumerate(self.samples):
            while self._at[i] - self._at[j] > width:
                j += 1
            if j < i:
                for name, ms in self._delta(self.samples[j], last).items():
                    worst[name] = max(worst.get(name, 0.0), ms)
        return worst

    def late_ms(self) -> float:
        """How late the sampler itself ran, at worst (ms): a gap far over ``interval``
        means this process, too, did not get a CPU."""
        gaps = [b - a for a, b in zip(self._at, self._at[1:], strict=False)]
        return max(0.0, (max(gaps, default=0.0) - self.interval) * 1000.0)


def describe(waits: dict[str, float]) -> str:
    """``worker 1.2, redis 240.0, generator 3.1, steal 0.0 ms``."""
    if not waits:
        return "unsampled"
    return ", ".join(f"{name} {ms:.1f}" for name, ms in waits.items()) + " ms"
