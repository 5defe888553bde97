"""``loadtests/schedwatch.py``: the run-queue wait and steal that ``bench_decisions`` reads
for a fixed-load run's slowest request. The arithmetic over samples is checked on made-up
series; the sampling itself on two real processes made to share one CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtests import schedwatch
from loadtests.bench_decisions import Phase, describe_stall
from loadtests.schedwatch import Sample, SchedWatch


def _watch(samples: list[Sample], groups: dict[str, list[int]]) -> SchedWatch:
    watch = SchedWatch(groups)
    watch.samples = samples
    watch.stop()  # never started: only fixes the sample instants
    return watch


MS = 1_000_000  # ns


def _series() -> list[Sample]:
    # 10 ms apart; pid 1 (worker) waits 2 ms per sample, pid 2 (redis) waits 80 ms
    # between 0.05 and 0.07 s, the generator (pid 3) never; 30 ms of steal at 0.06 s
    samples = []
    redis = 0
    steal = 0
    for k in range(20):
        at = k / 100
        if k in (6, 7):
            redis += 40 * MS
        if k == 6:
            steal += 30 * MS
        samples.append(Sample(at, steal, (2 * MS * k, redis, 0)))
    return samples


GROUPS = {"worker": [1], "redis": [2], "generator": [3]}


def test_between_covers_the_request_from_the_sample_before_it_to_the_one_after() -> None:
    watch = _watch(_series(), GROUPS)
    waits = watch.between(0.055, 0.065)  # samples at 0.05 and 0.07
    assert waits == {"worker": 4.0, "redis": 80.0, "generator": 0.0, "steal": 30.0}
    assert watch.window_ms(0.055, 0.065) == pytest.approx(20.0)
    assert watch.between(0.10, 0.12)["redis"] == 0.0
    assert watch.between(-1.0, 5.0)["worker"] == 38.0  # clamped to the first and last


def test_the_worst_window_is_each_groups_own_worst_stretch() -> None:
    worst = _watch(_series(), GROUPS).worst_window(0.025)
    assert worst == {"worker": 4.0, "redis": 80.0, "generator": 0.0, "steal": 30.0}


def test_a_group_reports_its_worst_process_and_ignores_one_that_vanished() -> None:
    samples = [Sample(0.0, 0, (0, 0, -1), (0, 0, -1)),
               Sample(0.01, 0, (3 * MS, 9 * MS, -1), (7 * MS, 1 * MS, -1))]
    watch = _watch(samples, {"worker": [1, 2, 3]})
    assert watch.between(0.0, 0.01) == {"worker": 9.0, "steal": 0.0}
    assert watch.ran(0.0, 0.01) == {"worker": 7.0}


def test_the_sampler_reports_how_late_it_ran() -> None:
    samples = [Sample(at, 0, ()) for at in (0.0, 0.01, 0.02, 0.25, 0.26)]
    assert _watch(samples, {}).late_ms() == pytest.approx(220.0)


@given(st.lists(st.tuples(st.integers(1, 50), st.integers(0, 20), st.integers(0, 20)),
                min_size=2, max_size=60),
       st.floats(0.001, 1.0))
def test_no_window_holds_more_than_the_whole_run_and_a_wider_one_no_less(
        steps: list[tuple[int, int, int]], width: float) -> None:
    at, wait, steal = 0.0, 0, 0
    samples = []
    for gap_ms, waited, stolen in steps:
        at += gap_ms / 1000
        wait += waited * MS
        steal += stolen * MS
        samples.append(Sample(at, steal, (wait,)))
    watch = _watch(samples, {"redis": [7]})
    whole = watch.between(samples[0].at, samples[-1].at)
    narrow = watch.worst_window(width)
    wide = watch.worst_window(width * 2)
    everything = watch.worst_window(samples[-1].at - samples[0].at + 1)
    assert everything == whole
    for key in ("redis", "steal"):
        assert narrow.get(key, 0.0) <= wide.get(key, 0.0) <= whole[key]


def test_the_stall_line_names_the_latency_and_each_groups_wait() -> None:
    phase = Phase(name="fixed", generator="python x1", requests=1, seconds=1.0, p50=1.0,
                  p90=1.0, p99=1.0, max=263.0, decisions={}, non200=0, errors=0,
                  server_cpu=0.0, redis_cpu=0.0, generator_cpu=0.0,
                  worst_ms=263.0, worst_window_ms=270.0,
                  worst_waits={"worker": 1.5, "redis": 240.0, "steal": 0.0},
                  worst_ran={"worker": 20.0, "redis": 9.5},
                  window_waits={"worker": 6.0, "redis": 241.0, "steal": 10.0},
                  watch_late_ms=30.0, watch_cpu=0.012)
    assert describe_stall(phase) == (
        "263.0 ms (sampled over 270 ms): waited worker 1.5, redis 240.0, steal 0.0 ms; ran "
        "worker 20.0, redis 9.5 ms; worst 100 ms waited worker 6.0, redis 241.0, steal 10.0 "
        "ms; sampler late by up to 30 ms; sampler CPU 12 ms/s")
    assert describe_stall(Phase(name="closed", generator="wrk", requests=1, seconds=1.0,
                                p50=1.0, p90=1.0, p99=1.0, max=1.0, decisions={}, non200=0,
                                errors=0, server_cpu=0.0, redis_cpu=0.0,
                                generator_cpu=0.0)) == "unsampled"


#: a child that pins itself to one CPU, says so, waits for "go", spins through a fixed
#: amount of work, says "done", and then blocks until it is killed
SPIN = """
import os, sys
os.sched_setaffinity(0, {int(sys.argv[1])})
print("ready", flush=True)
sys.stdin.readline()
for _ in range(20_000_000):
    pass
print("done", flush=True)
sys.stdin.read()
"""


@pytest.mark.skipif(not schedwatch.available(),
                    reason="this kernel keeps no scheduler statistics (/proc/<pid>/schedstat)")
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_two_busy_processes_on_one_cpu_are_each_seen_waiting_for_it() -> None:
    """CFS shares one CPU between two runnable processes, so each waits about as long as
    the other runs: the watch must see that wait in both, and each one's time on the CPU."""
    cpu = min(os.sched_getaffinity(0))
    spin = [subprocess.Popen([sys.executable, "-c", SPIN, str(cpu)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
            for _ in range(2)]
    try:
        for proc in spin:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        watch = SchedWatch({"busy": [spin[0].pid], "other": [spin[1].pid]}).start()
        began = time.perf_counter()
        for proc in spin:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in spin:  # both done, both still alive (their counters still readable)
            assert proc.stdout is not None and proc.stdout.readline() == "done\n"
        ended = time.perf_counter()
        watch.stop()
    finally:
        for proc in spin:
            proc.kill()
            proc.communicate()  # reaps it and closes its pipes
    waits = watch.between(began, ended)
    ran = watch.ran(began, ended)
    # 20M empty iterations are ~0.2-0.6 s of CPU: whichever finished last waited about as
    # long as the other ran, and the first waited for a good share of the time it took
    assert max(waits["busy"], waits["other"]) >= 100.0
    assert min(waits["busy"], waits["other"]) >= 20.0
    assert waits["steal"] >= 0.0
    assert min(ran["busy"], ran["other"]) >= 100.0
    assert watch.cpu_seconds > 0.0
