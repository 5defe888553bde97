"""``bench_decisions --pin``: the workers on CPUs of their own, Redis and the generator on
the others, every thread, and all of it undone afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest

from loadtests.bench_decisions import Phase, Service, describe_cpu_per_decision, describe_pinning

needs_two = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 if hasattr(os, "sched_getaffinity")
                               else True, reason="pinning needs two CPUs this process may use")

#: a process with a second thread, as Redis (bio threads) and a worker have: it says so once
#: the thread runs, then blocks until it is killed
THREADED = ("import sys, threading; threading.Thread(target=sys.stdin.read, daemon=True).start(); "
            "print('ready', flush=True); threading.Event().wait()")


def _threads(pid: int) -> list[int]:
    return [int(t) for t in os.listdir(f"/proc/{pid}/task")]


@needs_two
def test_the_workers_get_their_own_cpus_and_everything_is_unpinned_after() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    worker, redis_node = (subprocess.Popen([sys.executable, "-c", THREADED], text=True,
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                          for _ in range(2))
    service = Service(1)
    service.proc = worker
    service.nodes = [types.SimpleNamespace(pid=redis_node.pid)]  # type: ignore[list-item]
    try:
        for proc in (worker, redis_node):
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            assert len(_threads(proc.pid)) == 2
        with service.pinned():
            for tid in _threads(worker.pid):
                assert os.sched_getaffinity(tid) == {cpus[-1]}
            for tid in _threads(redis_node.pid):
                assert os.sched_getaffinity(tid) == set(cpus[:-1])
            assert os.sched_getaffinity(0) == set(cpus[:-1])  # the generator is spawned here
        for pid in (worker.pid, redis_node.pid):
            for tid in _threads(pid):
                assert os.sched_getaffinity(tid) == set(cpus)
        assert os.sched_getaffinity(0) == set(cpus)
    finally:
        service.proc = None
        service.log.close()
        os.unlink(service.log.name)
        for proc in (worker, redis_node):
            proc.kill()
            proc.communicate()  # reaps it and closes its pipes


def test_each_side_is_summed_over_its_runs() -> None:
    def run(p99: float, top: float, cpu: float, requests: int) -> Phase:
        return Phase(name="fixed", generator="python x1", requests=requests, seconds=1.0,
                     p50=1.0, p90=1.0, p99=p99, max=top, decisions={}, non200=0, errors=0,
                     server_cpu=cpu, redis_cpu=0.0, generator_cpu=0.0)

    line = describe_pinning([run(8.0, 20.0, 1.2, 1000), run(12.0, 140.0, 1.4, 1000),
                             run(9.0, 30.0, 1.3, 1000)])
    assert line == "p99 9.00 ms, max 140.0 ms, 1,300 µs (3 runs)"
    assert describe_pinning([]) == "none"


def test_cpu_per_decision_compares_each_fixed_run_with_the_closed_loop() -> None:
    def phase(cpu: float, requests: int) -> Phase:
        return Phase(name="p", generator="python x1", requests=requests, seconds=1.0,
                     p50=1.0, p90=1.0, p99=1.0, max=1.0, decisions={}, non200=0, errors=0,
                     server_cpu=cpu, redis_cpu=0.0, generator_cpu=0.0)

    closed = [phase(1.0, 800), phase(1.0, 1000), phase(1.0, 700)]  # median 1,250 µs
    fixed = [phase(0.9, 500), phase(1.0, 500), phase(0.95, 500)]
    assert describe_cpu_per_decision(closed, fixed) == (
        "closed loop 1,250 µs; fixed-load runs 1,800 / 2,000 / 1,900 µs "
        "(1.52x the closed loop)")
    assert describe_cpu_per_decision(closed, []) == "none"
