"""How fast each CPU of this machine runs the same fixed work, side by side, right now.

A virtual machine's CPUs are not all equally fast, nor equally fast from one minute to the
next: a vCPU whose physical core the host shares with another guest runs fewer
instructions per second, and the guest sees no steal time for it (steal counts time the
vCPU did not run at all, ``loadtests/schedwatch.py``). On the 2-vCPU VM of the eighteenth
pass, a busy loop pinned to one vCPU for 15 s and then to the other took 3,141 and 2,494
µs a round (a variant of this module's loop at module level, ~2.2x slower). Before and
after each full benchmark run that pass, the two were within 1-8% (docs/benchmarks.md,
"Stalls: the worker's own queue"). A worker with 10-25% headroom loses it on a vCPU that
runs a quarter slower.

What it cannot see: the loop is small and stays in the L1 cache, so a neighbour that
thrashes the shared cache or memory bandwidth leaves it unchanged while it slows the
worker, whose interpreter and model trees do not fit in L1. A steady reading here does not
mean a steady machine.

``measure`` pins one busy process to each CPU this process may use (at most ``max_cpus``)
and times a fixed pure-Python loop over and over for ``seconds``: each CPU's median time
per loop and the spread are what the benchmark prints before and after its phases, so a
run says how far apart the machine's CPUs were while it ran.

    python -m loadtests.cpu_speed --seconds 10
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from collections.abc import Sequence

import msgspec

#: iterations of the timed loop: ~2.5-3 ms on the VMs measured, long enough that a timer
#: tick or a cold cache does not dominate, short enough for many samples per second
LOOP = 30_000


class CpuSpeed(msgspec.Struct, frozen=True):
    cpu: int
    #: median and 90th percentile CPU time of one loop, µs (thread time: preemption excluded)
    median_us: float
    p90_us: float
    #: the slowest and fastest one-second median, µs
    slowest_second_us: float
    fastest_second_us: float


def _loop() -> int:
    x = 0
    for i in range(LOOP):
        x += i * i
    return x


def _run_on(cpu: int, seconds: float) -> CpuSpeed:
    """One process pinned to ``cpu`` runs the loop for ``seconds`` (a spawned child)."""
    os.sched_setaffinity(0, {cpu})
    times: list[tuple[float, float]] = []
    end = time.perf_counter() + seconds
    while (now := time.perf_counter()) < end:
        started = time.thread_time_ns()
        _loop()
        times.append((now, (time.thread_time_ns() - started) / 1000))
    values = sorted(us for _, us in times)
    per_second: dict[int, list[float]] = {}
    first = times[0][0]
    for at, us in times:
        per_second.setdefault(int(at - first), []).append(us)
    seconds_medians = [statistics.median(v) for v in per_second.values()]
    return CpuSpeed(cpu, statistics.median(values), values[int(0.9 * (len(values) - 1))],
                    max(seconds_medians), min(seconds_medians))


def _star(args: tuple[int, float]) -> CpuSpeed:
    return _run_on(*args)


def cpus(max_cpus: int = 8) -> list[int]:
    """The CPUs this process may run on (the first ``max_cpus``)."""
    return sorted(os.sched_getaffinity(0))[:max_cpus]


def available() -> bool:
    return hasattr(os, "sched_setaffinity")


def measure(seconds: float = 3.0, max_cpus: int = 8) -> list[CpuSpeed]:
    """Every allowed CPU busy at once, one pinned process each, for ``seconds``."""
    targets = cpus(max_cpus)
    with multiprocessing.get_context("spawn").Pool(len(targets)) as pool:
        return pool.map(_star, [(cpu, seconds) for cpu in targets])


def describe(speeds: Sequence[CpuSpeed]) -> str:
    """``cpu0 2,494 µs, cpu1 3,141 µs per loop: the slowest 1.26x the fastest; seconds
    2,480-2,560 / 3,120-3,160 µs``."""
    if not speeds:
        return "unmeasured"
    medians = [s.median_us for s in speeds]
    spread = max(medians) / min(medians)
    per = ", ".join(f"cpu{s.cpu} {s.median_us:,.0f} µs" for s in speeds)
    ranges = " / ".join(f"{s.fastest_second_us:,.0f}-{s.slowest_second_us:,.0f}" for s in speeds)
    return (f"{per} per loop of {LOOP:,}: the slowest {spread:.2f}x the fastest; "
            f"one-second medians {ranges} µs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    if not 0.5 <= args.seconds <= 600:
        parser.error("--seconds must be 0.5..600")
    if not available():
        parser.error("this OS cannot pin a process to a CPU")
    print(describe(measure(args.seconds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
