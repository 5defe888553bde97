"""HTTP benchmark: ``POST /v1/decisions`` against yardsticks of the same app, same run.

docs/architecture.md (Performance) reports the decision endpoint as a *ratio* to a trivial
endpoint of the same app served the same way (absolute numbers on a shared 2-core box drift
run to run), plus latency at a fixed load. This script measures, end to end and in one run:

1. an in-memory embedded redis-server and ``sendwise serve`` (uvicorn with uvloop and
   httptools, one listening socket per worker; ``--server`` for plain uvicorn and others;
   ``--workers W``, decision logging off, ``SENDWISE_BENCHMARK_ENDPOINTS=1``) on
   a free 127.0.0.1 port, seeded with a realistic policy and the preferences of ``--users``
   recipients spread over 16 time zones (loadtests/population.py);
2. closed loops at ``--concurrency`` connections: ``/v1/_trivial`` (decoding only),
   ``/v1/_floor`` (plus one trivial script call) and ``/v1/decisions``, each after a short
   warm-up, ``--rounds`` times interleaved; during each, Redis CPU (INFO cpu) and command
   time (INFO commandstats) per request;
3. ``--fixed-runs`` open-loop runs of decisions at 60% of the ceiling just measured
   (``--rate``), latency counted from the scheduled start: p99 and max (stalls) per run,
   and for each run's slowest request who waited for a CPU (loadtests/schedwatch.py);
   ``--pin alternate`` pins the workers to CPUs of their own in every second run;
4. after the run: MEMORY USAGE of every key of a sample of recipients (memory per active
   user, by kind of key) and the workers' resident memory; then one Redis node at
   saturation (loadtests/bench_node.py): the same mix's decisions run in process, their
   Redis commands recorded and replayed back to back, so Redis CPU per decision is
   measured as a saturated node spends it (the HTTP phases leave Redis idle most of the
   time, and on a VM a process that idles between calls pays more per call), which gives
   the node's ceiling;
5. unless ``--scaling off``: the ``limits`` comparison (loadtests/bench_limits.py) on the
   same Redis, the closed loops again with 2 workers, and decisions with 2 workers on a
   3-master Redis Cluster (api/redis_server.py ``embedded_cluster``);
6. one table (markdown) of every phase with the CPU of the server, Redis, the generator,
   *other* work on the machine and the CPU wait (PSI), then the headline facts, then one
   line: ``ratio decisions/trivial R; p99 at 60% P ms; redis µs/decision U``.

``--quick`` (under 60 s) runs 1-4 with 4 s phases, 2,000 recipients, one fixed run and two
replay rounds.

Decisions score with the LightGBM model ``sendwise serve`` scores with (loadtests/bench_model.py:
the bundled model, trained on the real activity sample), loaded the way ``sendwise serve``
loads it (``SENDWISE_MODEL_DIR``; a model that did not pass its champion gate is published
forced through ``POST /v1/models/reload``); ``--model heuristic`` measures the heuristic
instead. wrk counts the answers whose ``model_version`` is not that model's (flagged under the phase).
The closed loop uses ``wrk`` when it is on PATH (a C generator costs the server far less CPU
than Python does) and falls back to loadtests/httpload.py otherwise (``--generator python``
forces it). The open loop is always httpload.py: Debian's wrk 4 has no fixed-rate mode.
Everything started here is stopped on exit, Ctrl-C and errors included.

    python -m loadtests.bench_decisions --quick
    python -m loadtests.bench_decisions --workers 2 --wrk-threads 2 --scaling off
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.util
import math
import multiprocessing
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from array import array
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import msgspec
import redis

from api.keys import user_keys
from api.redis_server import EmbeddedRedis, embedded_cluster
from api.settings import Settings
from loadtests import cpu_speed, httpload
from loadtests.bench_model import HEURISTIC, BenchModel
from loadtests.bench_model import add_argument as add_model_argument
from loadtests.bench_model import resolve as resolve_model
from loadtests.bench_node import measure as measure_node
from loadtests.population import (
    history_events,
    iso,
    policy_document,
    preferences,
    user_id,
)
from loadtests.schedwatch import CLK_TCK, SchedWatch
from loadtests.schedwatch import describe as describe_waits

ROOT = Path(__file__).resolve().parent.parent
LUA_TEMPLATE = Path(__file__).with_name("decisions.lua")


class Phase(msgspec.Struct, kw_only=True):
    """One measured phase, whichever generator produced it."""

    name: str
    generator: str
    requests: int
    seconds: float
    p50: float
    p90: float
    p99: float
    max: float
    decisions: dict[str, int]
    non200: int
    errors: int
    server_cpu: float
    server_processes: list[float] = msgspec.field(default_factory=list)
    redis_cpu: float
    generator_cpu: float
    machine_busy: float = 0.0
    target_rate: float = 0.0
    max_lag_ms: float = 0.0
    #: microseconds redis-server spent in commands during the phase (INFO commandstats)
    command_usec: float = 0.0
    #: redis-server's CPU during the phase (INFO cpu), microseconds
    redis_cpu_us: float = 0.0
    #: share of the phase's wall time some runnable task waited for a CPU (PSI)
    cpu_wait: float = 0.0
    #: 200 answers whose ``model_version`` is not the benchmark model's (wrk only)
    other_model: int = 0
    #: requests over 10 ms from their scheduled start to their answer (open loop)
    over_10ms: int = 0
    #: the workers' histograms (``WORKER_HISTOGRAMS``) over the measured part: per
    #: family, observations at most ``le`` seconds, per bound (empty: not read)
    worker_histograms: dict[str, dict[float, float]] = msgspec.field(default_factory=dict)
    #: the slowest request's latency and the sampled window around it, ms (fixed-load runs)
    worst_ms: float = 0.0
    worst_window_ms: float = 0.0
    #: how long each group of processes waited for a CPU in that window, and the VM's
    #: ``steal``, ms (``loadtests/schedwatch.py``; fixed-load runs only)
    worst_waits: dict[str, float] = msgspec.field(default_factory=dict)
    #: how long each group's busiest process ran during that request, ms
    worst_ran: dict[str, float] = msgspec.field(default_factory=dict)
    #: each group's (and steal's) largest wait in any 100 ms of the run, ms
    window_waits: dict[str, float] = msgspec.field(default_factory=dict)
    #: how late the sampler itself ran at worst, and its CPU seconds
    watch_late_ms: float = 0.0
    watch_cpu: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


# ------------------------------------------------------------------ processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stat(pid: int) -> tuple[int, str, float] | None:
    """(ppid, comm, user+system CPU seconds) of a live process, from /proc/<pid>/stat."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1: raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): ppid is field 4, utime/stime are fields 14/15
    return int(fields[1]), comm, (int(fields[11]) + int(fields[12])) / CLK_TCK


def over(buckets: dict[float, float], limit: float) -> float:
    """Observations above ``limit`` seconds (a bucket bound) in cumulative buckets."""
    total = buckets.get(math.inf, 0.0)
    return total - buckets.get(limit, total)


def describe_lag(lag: dict[float, float]) -> str:
    """A run's checks of ``sendwise_event_loop_lag_seconds``: how many were over 10 ms and
    over 50 ms late, and the largest bucket any of them reached."""
    if not lag:
        return "unread (/metrics did not answer)"
    total = lag.get(math.inf, 0.0)
    reached = min((bound for bound, n in lag.items() if n >= total), default=math.inf)
    top = "over 2.5 s" if reached == math.inf else f"≤ {1000 * reached:g} ms"
    return f"{over(lag, 0.01):.0f} / {over(lag, 0.05):.0f} of {total:.0f} checks, {top}"


def describe_slow(phase: Phase) -> str:
    """Where a fixed-load run's requests over 10 ms spent it: counted end to end (the
    generator), inside the worker's decision (``sendwise_decision_seconds``: from the
    handler's start to its answer, Redis awaits included), and Redis round trips over 10
    ms (``sendwise_redis_seconds``). Many end to end and few inside: the time went before
    the handler ran or after it answered (the worker's queue, the kernel, the generator)."""
    hist = phase.worker_histograms
    if not hist:
        return f"{phase.over_10ms} end to end (worker histograms unread)"
    decision = hist.get("sendwise_decision_seconds", {})
    redis_rt = hist.get("sendwise_redis_seconds", {})
    return (f"{phase.over_10ms} end to end / {over(decision, 0.01):.0f} inside the decision / "
            f"{over(redis_rt, 0.01):.0f} Redis round trips")


def describe_stall(phase: Phase) -> str:
    """A fixed-load run's slowest request: who waited for a CPU while it was out
    (``Phase.worst_waits``) and how long each ran, then each group's worst 100 ms of the
    run. A stall during which Redis or the worker waited for most of it was the
    scheduler's (two cores, three busy processes); one with steal was the host's; one with
    neither, during which the worker ran throughout, was the worker's own work (a backlog,
    a collection); one in which nothing waited or ran was neither the CPU nor the code."""
    if not phase.worst_waits:
        return "unsampled"
    late = f"; sampler late by up to {phase.watch_late_ms:.0f} ms" if phase.watch_late_ms > 5 else ""
    if phase.watch_cpu:
        late += f"; sampler CPU {1000 * phase.watch_cpu / (phase.seconds or 1.0):.0f} ms/s"
    ran = f"; ran {describe_waits(phase.worst_ran)}" if phase.worst_ran else ""
    return (f"{phase.worst_ms:.1f} ms (sampled over {phase.worst_window_ms:.0f} ms): waited "
            f"{describe_waits(phase.worst_waits)}{ran}; "
            "worst 100 ms waited "
            f"{describe_waits(phase.window_waits)}{late}")


def describe_pinning(phases: list[Phase]) -> str:
    """The fixed-load runs of one side of ``--pin alternate``: median p99, largest max and
    the worker's CPU per answered decision."""
    if not phases:
        return "none"
    return (f"p99 {statistics.median(p.p99 for p in phases):.2f} ms, max "
            f"{max(p.max for p in phases):.1f} ms, {cpu_per_decision(*phases):,.0f} µs "
            f"({len(phases)} runs)")


def cpu_per_decision(*phases: Phase) -> float:
    """The worker processes' CPU per answered request over ``phases`` together, µs."""
    return 1e6 * sum(p.server_cpu for p in phases) / max(1, sum(p.requests for p in phases))


def describe_cpu_per_decision(closed: list[Phase], fixed: list[Phase]) -> str:
    """The workers' CPU per decision in the closed loop (median over its rounds) and in each
    fixed-load run, with the ratio of the runs' median to it: the closed loop shares loop
    iterations, system calls and Redis writes between its 32 decisions in flight, a
    fixed-load run at 60% of its rate has one or two in flight and pays them per decision
    (docs/benchmarks.md, "CPU per decision follows the decisions in flight")."""
    if not closed or not fixed:
        return "none"
    base = statistics.median(cpu_per_decision(p) for p in closed)
    runs = [cpu_per_decision(p) for p in fixed]
    return (f"closed loop {base:,.0f} µs; fixed-load runs "
            + " / ".join(f"{v:,.0f}" for v in runs)
            + f" µs ({statistics.median(runs) / base:.2f}x the closed loop)")


#: Redis' latency monitor threshold during the fixed-load runs (ms)
REDIS_LATENCY_MS = 5


def watch_redis_latency(clients: list[redis.Redis]) -> None:
    """Turn on each node's latency monitor (events that took over ``REDIS_LATENCY_MS``
    inside Redis: a command, the expire cycle, a fork...) and forget earlier events."""
    for client in clients:
        client.config_set("latency-monitor-threshold", REDIS_LATENCY_MS)
        client.execute_command("LATENCY", "RESET")


def redis_latency_events(clients: list[redis.Redis]) -> str:
    """``LATENCY LATEST`` of every node since ``watch_redis_latency``: each event's name
    and worst time, or ``none``. A slow round trip with no event means Redis' own work was
    not slow: the time went to scheduling or the socket."""
    events = [f"{name.decode() if isinstance(name, bytes) else name} {worst} ms"
              for client in clients
              for name, _, _, worst in client.execute_command("LATENCY", "LATEST")]
    return ", ".join(events) or "none"


def tree_cpu(root: int) -> dict[int, float]:
    """CPU seconds of ``root`` and every live descendant (uvicorn's master and workers),
    per process: a worker that got most of the keep-alive connections shows up here."""
    stats: dict[int, tuple[int, str, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            stats[int(entry)] = st
    per_pid: dict[int, float] = {}
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        if pid in stats:
            per_pid[pid] = stats[pid][2]
            frontier.extend(p for p, st in stats.items() if st[0] == pid)
    return per_pid


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> list[float]:
    """Per-process CPU seconds spent between two ``tree_cpu`` snapshots, largest first."""
    return sorted((cpu - before.get(pid, 0.0) for pid, cpu in after.items()), reverse=True)


def pid_cpu(pid: int | None) -> float:
    st = _stat(pid) if pid is not None else None
    return st[2] if st else 0.0


def set_affinity(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` on ``cpus`` (``sched_setaffinity`` of a pid moves only the
    thread with that id: Redis' and a worker's other threads would stay where they were)."""
    try:
        threads = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        threads = [pid]
    for tid in threads:
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, cpus)


def machine_busy() -> float:
    """CPU seconds all cores spent not idle, machine-wide (/proc/stat): minus what the
    phase's own processes used, it shows how much other work shared the box."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    values = [int(v) for v in fields[:8]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK


def cpu_pressure_us() -> float:
    """Linux PSI (/proc/pressure/cpu "some" total): microseconds in which at least one
    runnable task waited for a CPU. On a shared box, a phase with a high share is one whose
    tail latency was made by the scheduler, not by the service (0 where PSI is absent)."""
    try:
        first = Path("/proc/pressure/cpu").read_text().split("\n", 1)[0]
    except OSError:
        return 0.0
    return float(first.rsplit("total=", 1)[1])


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Service:
    """Embedded Redis (one server, or a ``cluster``-master Redis Cluster started by
    api/redis_server.py ``embedded_cluster``) + uvicorn subprocess; ``stop`` is idempotent
    and always safe."""

    def __init__(self, workers: int, *, cluster: int = 0, server: str = "sendwise",
                 model: BenchModel | None = None) -> None:
        self.workers = workers
        self.server = server
        self.cluster = cluster
        self.model = model
        self.port = free_port()
        self.redis: EmbeddedRedis | None = None
        self.nodes: list[EmbeddedRedis] = []
        self._stack = contextlib.ExitStack()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="sendwise-bench-", suffix=".log",  # noqa: SIM115
                                               delete=False)

    @property
    def redis_url(self) -> str:
        return self.nodes[0].tcp_url if self.cluster else self.nodes[0].url

    def start(self) -> None:
        if self.cluster:
            self.nodes = self._stack.enter_context(embedded_cluster(self.cluster))
        else:
            self.redis = EmbeddedRedis().start()
            self.nodes = [self.redis]
        env = dict(os.environ, REDIS_URL=self.redis_url, SENDWISE_LOG_DECISIONS="0",
                   SENDWISE_LOG_LEVEL="warning", SENDWISE_BENCHMARK_ENDPOINTS="1",
                   SENDWISE_REDIS_CLUSTER="1" if self.cluster else "0")
        env.pop("SENDWISE_API_KEYS", None)
        env.pop("SENDWISE_API_KEYS_FILE", None)
        # what `sendwise serve --model DIR` does: every worker loads it at startup
        env["SENDWISE_MODEL_DIR"] = (str(self.model.directory) if self.model is not None
                                     and self.model.directory is not None else HEURISTIC)
        if self.server == "sendwise":  # the production runner: one socket per worker
            env["SENDWISE_DATA_DIR"] = self._stack.enter_context(
                tempfile.TemporaryDirectory(prefix="sendwise-bench-"))
            cmd = [sys.executable, "-m", "sendwise", "serve", "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", str(self.workers)]
        elif self.server == "granian":  # the alternative ASGI server (Rust HTTP), compared
            cmd = [sys.executable, "-m", "granian", "--interface", "asgi", "--factory",
                   "api.app:app_from_env", "--loop", "uvloop", "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", str(self.workers),
                   "--log-level", "warning", "--no-access-log"]
        else:  # "uvicorn-plain": the pure-Python event loop and HTTP parser, for comparison
            loop, http = (("asyncio", "h11") if self.server == "uvicorn-plain"
                          else ("uvloop", "httptools"))
            cmd = [sys.executable, "-m", "uvicorn", "api.app:app_from_env", "--factory",
                   "--loop", loop, "--http", http, "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", str(self.workers),
                   "--log-level", "warning", "--no-access-log"]
        self.proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ready()
        self.use_model()

    def use_model(self) -> None:
        """A model that did not pass its champion gate is refused at startup (the workers
        keep the heuristic): publish it forced through the admin API, which every worker
        follows (``api/model_pointer.py``), then check that it is what scores."""
        model = self.model
        if model is None:
            return
        if model.force and model.directory is not None:
            body = msgspec.json.encode({"directory": str(model.directory), "force": True})
            req = urllib.request.Request(f"http://127.0.0.1:{self.port}/v1/models/reload",
                                         data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - our server
                resp.read()
        deadline = time.monotonic() + 30
        version = None
        while time.monotonic() < deadline:  # each worker follows the pointer on its own
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.port}/v1/models", timeout=10) as resp:
                version = msgspec.json.decode(resp.read())["model_version"]
            if version == model.version:
                return
            time.sleep(0.2)
        raise RuntimeError(f"the service scores with {version}, not {model.version}; "
                           f"see {self.log.name}")

    def node_clients(self) -> list[redis.Redis]:
        """One plain client per Redis node (INFO, MEMORY USAGE are per node)."""
        return [redis.Redis(unix_socket_path=node.socket_path) for node in self.nodes]

    def worker_rss_mb(self) -> list[float]:
        """Resident memory of each worker (the supervisor's children), MB."""
        if self.proc is None:
            return []
        out: list[float] = []
        tree = tree_cpu(self.proc.pid)
        for pid in tree:
            if pid == self.proc.pid and len(tree) > 1:
                continue  # a supervisor: its children are the workers
            with contextlib.suppress(OSError):
                if b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    continue  # multiprocessing's helper beside the workers
            with contextlib.suppress(OSError):
                lines = Path(f"/proc/{pid}/status").read_text().splitlines()
                out.extend(int(line.split()[1]) / 1024 for line in lines if line.startswith("VmRSS:"))
        return out

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}/health/ready"
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited at start; see {self.log.name}:\n"
                                   + Path(self.log.name).read_text()[-2000:])
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"service not ready within {timeout}s; see {self.log.name}")

    def metrics_text(self) -> str:
        """The service's /metrics exposition (raises OSError when it does not answer)."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())

    def state_cache(self) -> dict[str, float]:
        """``sendwise_state_cache_total`` by result, as /metrics reports it (with several
        workers and no multiprocess directory: the worker that answered)."""
        text = self.metrics_text()
        found = re.findall(r'^sendwise_state_cache_total\{result="(\w+)"\} (\S+)$', text,
                           re.MULTILINE)
        return {result: float(value) for result, value in found}

    def gc_pauses(self) -> dict[str, tuple[float, float, float]]:
        """``sendwise_gc_pause_seconds`` per generation as /metrics reports it: (pauses,
        total seconds, pauses over 10 ms) since the worker started serving."""
        from prometheus_client.parser import text_string_to_metric_families

        text = self.metrics_text()
        count: dict[str, float] = {}
        total: dict[str, float] = {}
        under: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            if family.name != "sendwise_gc_pause_seconds":
                continue
            for sample in family.samples:
                generation = sample.labels.get("generation", "")
                if sample.name.endswith("_count"):
                    count[generation] = sample.value
                elif sample.name.endswith("_sum"):
                    total[generation] = sample.value
                elif sample.name.endswith("_bucket") and float(sample.labels["le"]) == 0.01:
                    under[generation] = sample.value
        return {g: (count[g], total.get(g, 0.0), count[g] - under.get(g, count[g]))
                for g in sorted(count)}

    def histograms(self, *families: str) -> dict[str, dict[float, float]]:
        """The cumulative buckets of each named histogram as /metrics reports it, summed
        over the workers and the label values: observations so far at most ``le`` seconds,
        per bucket bound (``inf``: all). Empty when /metrics cannot be read (the run goes
        on; the report says so)."""
        from prometheus_client.parser import text_string_to_metric_families

        try:
            text = self.metrics_text()
        except OSError:
            return {}
        found: dict[str, dict[float, float]] = {}
        for family in text_string_to_metric_families(text):
            if family.name in families:
                buckets = found.setdefault(family.name, {})
                for sample in family.samples:
                    if sample.name.endswith("_bucket"):
                        bound = float(sample.labels["le"])
                        buckets[bound] = buckets.get(bound, 0.0) + sample.value
        return found

    def server_cpu(self) -> dict[int, float]:
        return tree_cpu(self.proc.pid) if self.proc is not None else {}

    def redis_cpu(self) -> float:
        return sum(pid_cpu(node.pid) for node in self.nodes)

    @contextlib.contextmanager
    def pinned(self) -> Iterator[None]:
        """The workers (the server's process tree) on the last ``workers`` CPUs, every
        thread; Redis and this process (so the generator it spawns, and wrk) on the others,
        so nothing else runs on a worker's core (docs/benchmarks.md, "Stalls: the worker's
        own queue": it did not lower the worker's CPU per decision). Everything is unpinned
        afterwards."""
        cpus = sorted(os.sched_getaffinity(0))
        own, rest = set(cpus[-self.workers:]), set(cpus[:-self.workers])
        placed = ([(pid, own) for pid in self.server_cpu()]
                  + [(node.pid, rest) for node in self.nodes if node.pid is not None])
        try:
            for pid, where in placed:
                set_affinity(pid, where)
            os.sched_setaffinity(0, rest)
            yield
        finally:
            os.sched_setaffinity(0, set(cpus))
            for pid, _ in placed:
                with contextlib.suppress(OSError):
                    set_affinity(pid, set(cpus))

    def sched_watch(self, generators: list[multiprocessing.process.BaseProcess]) -> SchedWatch:
        """Start sampling the run-queue wait of the workers (the server's process tree),
        the Redis nodes and the load generator's processes, and the VM's steal."""
        return SchedWatch({
            "worker": list(self.server_cpu()),
            "redis": [node.pid for node in self.nodes if node.pid is not None],
            "generator": [p.pid for p in generators if p.pid is not None],
        }).start()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # our own session: uvicorn + workers
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        server, self.redis = self.redis, None
        if server is not None:
            server.stop()
        self._stack.close()
        self.log.close()


# ---------------------------------------------------------------------- setup


def seed_tenant(port: int, users: int) -> float:
    """PUT the benchmark policy and every recipient's preferences through the API, then
    POST half of the recipients' past activity (loadtests/population.py ``history_events``)
    so their decisions are scored from a send-time profile like a real population's."""
    enc = msgspec.json.Encoder()
    policy: list[tuple[str, str, bytes | None]] = [
        ("PUT", "/v1/policy", enc.encode(policy_document()))]
    prefs: list[tuple[str, str, bytes | None]] = [
        ("PUT", f"/v1/users/{user_id(i)}/preferences", enc.encode(preferences(i)))
        for i in range(users)]
    now = dt.datetime.now(dt.UTC)
    history = [e for i in range(users) for e in history_events(i, now)]
    events: list[tuple[str, str, bytes | None]] = [
        ("POST", "/v1/events", enc.encode({"events": history[k:k + 500]}))
        for k in range(0, len(history), 500)]
    t0 = time.perf_counter()
    statuses: dict[int, int] = {}
    # in order: an event's local hour is counted in the recipient's stored zone
    for phase, concurrency in ((policy, 1), (prefs, 32), (events, 8)):
        for status, count in asyncio.run(httpload.send_all(port, phase, concurrency)).items():
            statuses[status] = statuses.get(status, 0) + count
    if set(statuses) - {200, 202}:
        raise RuntimeError(f"seeding failed: status counts {statuses}")
    return time.perf_counter() - t0


# ----------------------------------------------------------------- generators


def percentile(sorted_values: array[float] | list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def run_wrk(service: Service, path: str, seconds: float, concurrency: int, users: int,
            prefix: str, threads: int) -> dict[str, float]:
    script = LUA_TEMPLATE.read_text()
    deadline = iso(dt.datetime.now(dt.UTC) + dt.timedelta(days=2))
    model = service.model.version if service.model is not None else ""
    for key, value in {"@PATH@": path, "@USERS@": str(users), "@PREFIX@": prefix,
                       "@DEADLINE@": deadline, "@SEED@": str(abs(hash(prefix)) % 100_000),
                       "@MODEL@": model}.items():
        script = script.replace(key, value)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        cmd = ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{seconds:g}s",
               "--timeout", "5s", "-s", handle.name, f"http://127.0.0.1:{service.port}{path}"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True,  # noqa: S603
                             timeout=seconds + 30).stdout
    finally:
        os.unlink(handle.name)
    match = re.search(r"SENDWISE_JSON (\{.*\})", out)
    if match is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    result: dict[str, float] = msgspec.json.decode(match.group(1))
    return result


def wrk_phase(service: Service, name: str, path: str, args: argparse.Namespace,
              prefix: str, meter: RedisMeter | None = None) -> Phase:
    threads = max(1, min(args.wrk_threads, args.concurrency))
    run_wrk(service, path, args.warmup, args.concurrency, args.users, prefix + "w", threads)
    if meter is not None:
        meter.start()
    s0, r0, g0, m0 = service.server_cpu(), service.redis_cpu(), children_cpu(), machine_busy()
    res = run_wrk(service, path, args.seconds, args.concurrency, args.users, prefix, threads)
    s1, r1, g1, m1 = service.server_cpu(), service.redis_cpu(), children_cpu(), machine_busy()
    mix = {k: int(res[k]) for k in ("send", "defer", "suppress") if res[k]}
    phase = Phase(
        name=name, generator=f"wrk -t{threads}", requests=int(res["requests"]),
        seconds=res["duration_us"] / 1e6, p50=res["p50_us"] / 1000, p90=res["p90_us"] / 1000,
        p99=res["p99_us"] / 1000, max=res["max_us"] / 1000,
        decisions=mix if path == "/v1/decisions" else {},
        other_model=int(res["other_model"]) if path == "/v1/decisions" else 0,
        non200=int(res["non200"]),
        errors=int(res["err_connect"] + res["err_read"] + res["err_write"] + res["err_timeout"]),
        server_cpu=sum(cpu_delta(s0, s1)), server_processes=cpu_delta(s0, s1),
        redis_cpu=r1 - r0, generator_cpu=g1 - g0, machine_busy=m1 - m0)
    if meter is not None:
        meter.finish(phase)
    return phase


#: the worker's histograms a fixed-load run reads before and after it: where a slow
#: request's time went (docs/benchmarks.md, "Event-loop lag")
WORKER_HISTOGRAMS = ("sendwise_decision_seconds", "sendwise_redis_seconds",
                     "sendwise_event_loop_lag_seconds")


def python_phase(service: Service, name: str, path: str, args: argparse.Namespace,
                 prefix: str, *, rate: float = 0.0, meter: RedisMeter | None = None,
                 histograms: bool = False) -> Phase:
    """Run httpload in ``--gen-processes`` spawned processes and merge their results."""
    procs = max(1, args.gen_processes)
    ctx = multiprocessing.get_context("spawn")

    def specs(seconds: float, tag: str) -> list[httpload.PhaseSpec]:
        conc = max(1, args.concurrency // procs)
        return [httpload.PhaseSpec(port=service.port, path=path, seconds=seconds,
                                   users=args.users, prefix=f"{tag}-{i}", seed=1000 * i + 17,
                                   concurrency=conc, rate=rate / procs)
                for i in range(procs)]

    with ctx.Pool(procs) as pool:
        pool.map(httpload.run_phase, specs(args.warmup, prefix + "w"))
        if meter is not None:
            meter.start()
        h0 = service.histograms(*WORKER_HISTOGRAMS) if histograms else {}
        watch = service.sched_watch(multiprocessing.active_children()) if histograms else None
        s0, r0, m0 = service.server_cpu(), service.redis_cpu(), machine_busy()
        results = pool.map(httpload.run_phase, specs(args.seconds, prefix))
        s1, r1, m1 = service.server_cpu(), service.redis_cpu(), machine_busy()
        if watch is not None:
            watch.stop()
        h1 = service.histograms(*WORKER_HISTOGRAMS) if histograms else {}
    lat = array("d")
    mix: dict[str, int] = {}
    statuses: dict[int, int] = {}
    for res in results:
        lat.extend(httpload.latencies_of(res))
        for k, v in res.decisions.items():
            mix[k] = mix.get(k, 0) + v
        for code, v in res.statuses.items():
            statuses[code] = statuses.get(code, 0) + v
    ordered = sorted(lat)
    seconds = max(r.elapsed for r in results)
    phase = Phase(
        name=name, generator=f"python x{procs}" + (" open-loop" if rate else ""),
        requests=len(ordered), seconds=seconds, p50=percentile(ordered, 50),
        p90=percentile(ordered, 90), p99=percentile(ordered, 99),
        max=ordered[-1] if ordered else float("nan"),
        decisions={k: v for k, v in mix.items() if k in ("send", "defer", "suppress")}
        if path == "/v1/decisions" else {},
        non200=sum(v for code, v in statuses.items() if code != 200),
        errors=sum(r.errors for r in results), server_cpu=sum(cpu_delta(s0, s1)),
        server_processes=cpu_delta(s0, s1), redis_cpu=r1 - r0,
        generator_cpu=sum(r.cpu_seconds for r in results), machine_busy=m1 - m0,
        target_rate=rate,
        max_lag_ms=max(r.max_lag_ms for r in results),
        over_10ms=sum(1 for v in ordered if v > 10.0),
        worker_histograms={family: {bound: n - h0.get(family, {}).get(bound, 0.0)
                                    for bound, n in buckets.items()}
                           for family, buckets in h1.items()} if h0 else {})
    if watch is not None:
        worst = max(results, key=lambda r: r.worst_ms)
        end = worst.worst_at + worst.worst_ms / 1000
        phase.worst_ms = worst.worst_ms
        phase.worst_window_ms = watch.window_ms(worst.worst_at, end)
        phase.worst_waits = watch.between(worst.worst_at, end)
        phase.worst_ran = watch.ran(worst.worst_at, end)
        phase.window_waits = watch.worst_window(0.1)
        phase.watch_late_ms = watch.late_ms()
        phase.watch_cpu = watch.cpu_seconds
    if meter is not None:
        meter.finish(phase)
    return phase


# ---------------------------------------------------------------------- report


def _other(phase: Phase) -> float:
    """CPU seconds of foreign work on the machine during the phase."""
    return max(0.0, phase.machine_busy - phase.server_cpu - phase.redis_cpu - phase.generator_cpu)


def print_phase(phase: Phase) -> None:
    wall = phase.seconds or 1.0
    rate = f" @ {phase.target_rate:,.0f}/s target" if phase.target_rate else ""
    other = max(0.0, phase.machine_busy - phase.server_cpu - phase.redis_cpu - phase.generator_cpu)
    print(f"{phase.name:<24} {phase.rps:>8,.0f} req/s  p50 {phase.p50:6.2f}  p90 {phase.p90:6.2f}  "
          f"p99 {phase.p99:6.2f}  max {phase.max:7.1f} ms  [{phase.generator}{rate}]")
    print(f"{'':<24} CPU s: server {phase.server_cpu:5.1f} ({phase.server_cpu / wall:.2f} cores)  "
          f"redis {phase.redis_cpu:4.1f} ({phase.redis_cpu / wall:.2f})  "
          f"generator {phase.generator_cpu:5.1f} ({phase.generator_cpu / wall:.2f})  "
          f"other {other:4.1f} ({other / wall:.2f})  in {phase.seconds:.1f} s"
          + (f"  CPU wait {100 * phase.cpu_wait:.0f}%" if phase.cpu_wait else ""))
    busy = [c for c in phase.server_processes if c >= 0.05]
    if len(busy) > 1:
        print(f"{'':<24} server processes: " + " + ".join(f"{c:.1f}" for c in busy) + " CPU s")
    if phase.decisions:
        total = sum(phase.decisions.values()) or 1
        mix = "  ".join(f"{k} {v:,} ({100 * v / total:.0f}%)" for k, v in sorted(phase.decisions.items()))
        print(f"{'':<24} decisions: {mix}")
    if phase.other_model:
        print(f"{'':<24} !! {phase.other_model:,} answers scored by another model_version")
    if phase.non200 or phase.errors:
        print(f"{'':<24} !! non-200: {phase.non200:,}  socket errors/timeouts: {phase.errors:,}")
    if phase.worst_waits:
        print(f"{'':<24} slowest request {describe_stall(phase)}")
    if phase.max_lag_ms > 5:
        print(f"{'':<24} !! generator fell behind its schedule by up to {phase.max_lag_ms:.0f} ms")


# --------------------------------------------------------------- redis-side facts


#: what the measured endpoints send Redis themselves: script calls (whose usec include the
#: commands the script calls) and the decision log's XADD (api/decision_log.py); left out,
#: the policy cache's one HMGET per tenant and second (api/policy_cache.py), which shares
#: its line with the scripts' HMGETs. INFO commandstats also counts each command a script
#: calls in that command's own line, so summing every line counted those twice (10-15% of
#: a decision's command time).
_TOP_LEVEL_COMMANDS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall",
                                 "fcall_ro", "xadd"})


def commandstats_usec(clients: list[redis.Redis]) -> float:
    """Microseconds Redis spent executing the commands the service sent (INFO
    commandstats of ``_TOP_LEVEL_COMMANDS``), all nodes."""
    total = 0.0
    for client in clients:
        stats: dict[str, dict[str, float]] = client.info("commandstats")
        total += sum(entry.get("usec", 0.0) for name, entry in stats.items()
                     if name.removeprefix("cmdstat_").lower() in _TOP_LEVEL_COMMANDS)
    return total


def used_cpu_us(clients: list[redis.Redis]) -> float:
    """redis-server's own CPU (INFO cpu: user + system, main thread and I/O), all nodes, in
    microseconds: finer than /proc's clock ticks for a phase of a few seconds."""
    total = 0.0
    for client in clients:
        cpu: dict[str, float] = client.info("cpu")
        total += (cpu["used_cpu_user"] + cpu["used_cpu_sys"]) * 1e6
    return total


class RedisMeter:
    """INFO commandstats and INFO cpu of every Redis node, and the machine's CPU pressure,
    around the timed part of a phase only: the phase's warm-up is work too, and counting
    it against the timed requests alone overstated Redis per decision by ~25% in
    ``--quick`` (docs/benchmarks.md)."""

    def __init__(self, clients: list[redis.Redis]) -> None:
        self.clients = clients
        self._start = (0.0, 0.0, 0.0)

    def start(self) -> None:
        self._start = (commandstats_usec(self.clients), used_cpu_us(self.clients),
                       cpu_pressure_us())

    def finish(self, phase: Phase) -> None:
        command, cpu, psi = self._start
        phase.command_usec = commandstats_usec(self.clients) - command
        phase.redis_cpu_us = used_cpu_us(self.clients) - cpu
        phase.cpu_wait = (cpu_pressure_us() - psi) / 1e6 / (phase.seconds or 1.0)


class Memory(msgspec.Struct, kw_only=True):
    """MEMORY USAGE of every key of a sample of recipients, after the run."""

    sampled: int
    active: int
    mean_bytes: float
    p90_bytes: float
    max_bytes: float
    keys_per_user: float
    #: idempotency records per active user (fields of the records hash but the marker, or
    #: a previous release's keys, one per record)
    records_per_user: float = float("nan")
    #: mean bytes per active user by kind of key (ledger, prefs, profile, record, ...)
    by_kind: dict[str, float] = msgspec.field(default_factory=dict)
    #: ledger entries per active user, and the ledgers by encoding (a member over
    #: ``zset-max-ziplist-value`` makes a skiplist: several times the bytes per entry)
    ledger_per_user: float = float("nan")
    ledger_encodings: dict[str, int] = msgspec.field(default_factory=dict)


def memory_per_user(service: Service, users: int, tenant: str, sample: int = 400) -> Memory:
    """Every key of ``sample`` random recipients (plus the Zipf head) measured with MEMORY
    USAGE (SAMPLES 0: exact for collections). A recipient is active when it has a ledger.
    One SCAN over the keyspace groups keys by their ``{tenant:user}`` prefix (api/keys.py)."""
    rng = random.Random(5)
    picked = {rng.randrange(users) for _ in range(sample)} | set(range(min(10, users)))
    prefixes = {user_keys(tenant, user_id(i)).ledger.removesuffix("ledger"): i for i in picked}
    per_user: dict[str, list[str]] = {}
    clients = service.node_clients()
    try:
        for client in clients:
            for raw in client.scan_iter(count=5000):
                key = raw.decode()
                head, sep, _ = key.partition("}:")
                base = head + sep
                if base in prefixes:
                    per_user.setdefault(base, []).append(key)
        sizes: list[float] = []
        keys = records = entries = 0
        kinds: dict[str, float] = {}
        encodings: dict[str, int] = {}
        for base, names in per_user.items():
            if base + "ledger" not in names:
                continue
            total = 0
            for client in clients:
                pipe = client.pipeline(transaction=False)
                for name in names:
                    pipe.memory_usage(name, samples=0)
                    if name[len(base):] == "recs":
                        pipe.hlen(name)
                        pipe.hexists(name, "")
                    elif name[len(base):] == "ledger":
                        pipe.zcard(name)
                        pipe.object("encoding", name)
                # a cluster node answers for its own keys only (an error for the others)
                replies = iter([None if isinstance(x, Exception) else x
                                for x in pipe.execute(raise_on_error=False)])
                for name in names:
                    used = next(replies)
                    kind = name[len(base):].split(":", 1)[0]
                    if kind == "recs":
                        fields, marker = next(replies), next(replies)
                        if used:
                            records += int(fields or 0) - int(bool(marker))
                    elif kind == "m" and used:
                        records += 1
                    elif kind == "ledger":
                        count, encoding = next(replies), next(replies)
                        if used:
                            entries += int(count or 0)
                            label = (encoding.decode() if isinstance(encoding, bytes)
                                     else str(encoding))
                            encodings[label] = encodings.get(label, 0) + 1
                    kind = "record" if kind in ("m", "recs") else kind
                    kinds[kind] = kinds.get(kind, 0) + (used or 0)
                    total += used or 0
            sizes.append(total)
            keys += len(names)
    finally:
        for client in clients:
            client.close()
    sizes.sort()
    return Memory(sampled=len(picked), active=len(sizes),
                  mean_bytes=statistics.fmean(sizes) if sizes else float("nan"),
                  p90_bytes=percentile(sizes, 90), max_bytes=sizes[-1] if sizes else float("nan"),
                  keys_per_user=keys / len(sizes) if sizes else float("nan"),
                  records_per_user=records / len(sizes) if sizes else float("nan"),
                  by_kind={k: v / len(sizes) for k, v in sorted(kinds.items())} if sizes else {},
                  ledger_per_user=entries / len(sizes) if sizes else float("nan"),
                  ledger_encodings=encodings)


# ---------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench_decisions",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="under 60 s: one service, 4 s phases, 2,000 users, one fixed-load "
                             "run, no scaling/cluster/limits runs; the last line is the summary")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each measured phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured warm-up per phase")
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop connections")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--users", type=int, default=10_000, help="recipient population")
    parser.add_argument("--rate", default="auto",
                        help="open-loop requests/s for the fixed-load phases; 'auto' = 60%% of "
                             "the measured decisions ceiling; 'off' skips them")
    parser.add_argument("--fixed-runs", type=int, default=3,
                        help="fixed-load decision runs (stalls: max latency of each)")
    parser.add_argument("--pin", choices=["off", "on", "alternate"], default="off",
                        help="fixed-load runs with the workers pinned to CPUs of their own and "
                             "Redis and the generator to the others (on), or every second run "
                             "so (alternate: the two side by side in one run)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the trivial/floor/decisions closed loops (interleaved, so "
                             "background load hits all alike); the median ratio is reported")
    parser.add_argument("--scaling", choices=["on", "off"], default="on",
                        help="also 2 workers, and a 3-master Redis Cluster, and the limits "
                             "library comparison")
    parser.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto",
                        help="closed-loop generator (auto: wrk when on PATH)")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--server", choices=["sendwise", "uvicorn", "uvicorn-plain", "granian"],
                        default="sendwise",
                        help="`sendwise serve` (uvicorn with uvloop + httptools, its HTTP "
                             "limits, one listening socket per worker), plain `uvicorn` "
                             "(the same loop and parser, its workers sharing one socket), "
                             "uvicorn with asyncio + h11, or granian (must be installed: "
                             "pip install granian)")
    parser.add_argument("--gen-processes", type=int, default=1,
                        help="python generator processes (closed loop splits the connections)")
    add_model_argument(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.users = 4.0, 1.0, min(args.users, 2_000)
        args.fixed_runs, args.rounds, args.scaling = 1, 1, "off"
    if not 1 <= args.seconds <= 600 or not 0 <= args.warmup <= 60:
        parser.error("--seconds must be 1..600 and --warmup 0..60")
    if not 1 <= args.rounds <= 20 or not 1 <= args.fixed_runs <= 20:
        parser.error("--rounds and --fixed-runs must be 1..20")
    if args.pin != "off" and len(os.sched_getaffinity(0)) <= args.workers:
        parser.error(f"--pin needs more CPUs than --workers ({args.workers}): the workers get "
                     "CPUs of their own, Redis and the generator the rest")
    if not 1 <= args.concurrency <= 4096 or not 1 <= args.workers <= 32 or args.users < 1:
        parser.error("--concurrency 1..4096, --workers 1..32, --users >= 1")
    if args.server == "granian" and importlib.util.find_spec("granian") is None:
        parser.error("--server granian: granian is not installed (pip install granian)")
    if args.generator == "wrk" and shutil.which("wrk") is None:
        parser.error("wrk is not on PATH")
    if args.rate not in ("auto", "off"):
        try:
            rate = float(args.rate)
        except ValueError:
            parser.error("--rate must be a number, 'auto' or 'off'")
        if not 1 <= rate <= 100_000:
            parser.error("--rate must be 1..100000 requests/s")
    return args


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


ENDPOINTS = (("trivial", "/v1/_trivial"), ("floor", "/v1/_floor"), ("decisions", "/v1/decisions"))


class Report:
    """Rows of the final table (one per measured phase) and the headline facts."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, Phase]] = []
        self.facts: list[tuple[str, str]] = []

    def add(self, config: str, phase: Phase) -> None:
        self.rows.append((config, phase))
        print_phase(phase)

    def fact(self, name: str, value: str) -> None:
        self.facts.append((name, value))
        print(f"{name}: {value}")

    def table(self) -> str:
        lines = ["| configuration | phase | req/s | p50 ms | p99 ms | max ms | server cores "
                 "| redis cores | generator cores | other cores | CPU wait |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
        for config, p in self.rows:
            wall = p.seconds or 1.0
            lines.append(f"| {config} | {p.name} | {p.rps:,.0f} | {p.p50:.2f} | {p.p99:.2f} | "
                         f"{p.max:.1f} | {p.server_cpu / wall:.2f} | {p.redis_cpu / wall:.2f} | "
                         f"{p.generator_cpu / wall:.2f} | {_other(p) / wall:.2f} | "
                         f"{100 * p.cpu_wait:.0f}% |")
        lines += ["", "| measurement | value |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in self.facts]
        return "\n".join(lines)


def closed_loops(service: Service, args: argparse.Namespace, run: str, config: str,
                 report: Report, endpoints: tuple[tuple[str, str], ...] = ENDPOINTS,
                 ) -> dict[str, list[Phase]]:
    """Closed-loop phases of ``endpoints``, ``--rounds`` times interleaved; for the decision
    phases also the Redis command time (``decisions_usec`` attribute of the result)."""
    use_wrk = args.generator == "wrk" or (args.generator == "auto" and shutil.which("wrk"))
    closed = wrk_phase if use_wrk else python_phase
    out: dict[str, list[Phase]] = {name: [] for name, _ in endpoints}
    clients = service.node_clients()
    meter = RedisMeter(clients)
    try:
        for rnd in range(args.rounds):
            for name, path in endpoints:
                label = name if args.rounds == 1 else f"{name} #{rnd + 1}"
                phase = closed(service, label, path, args, f"{run}-{config}-{name}-{rnd}",
                               meter=meter)
                out[name].append(phase)
                report.add(config, phase)
    finally:
        for client in clients:
            client.close()
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    t_start = time.perf_counter()
    run = f"r{int(time.time())}"
    load1 = os.getloadavg()[0]
    if load1 > 0.5:
        print(f"warning: 1-minute load average is {load1:.1f} before the run; the 'other' CPU "
              "column shows how much foreign work shared the cores", file=sys.stderr)
    report = Report()
    services: list[Service] = []
    model = resolve_model(args.model)
    print(model.describe())
    # how far apart the machine's CPUs ran, before and after (docs/benchmarks.md, "Stalls:
    # the worker's own queue"); the quick mode keeps under a minute
    speed_seconds = 1.5 if args.quick else 3.0
    speed_before = (cpu_speed.describe(cpu_speed.measure(speed_seconds))
                    if cpu_speed.available() else "")
    if speed_before:
        print(f"CPU speed before the phases: {speed_before}")

    def start(workers: int, cluster: int = 0) -> Service:
        service = Service(workers, cluster=cluster, server=args.server, model=model)
        services.append(service)
        service.start()
        took = seed_tenant(service.port, args.users)
        print(f"\nservice: {args.server} --workers {workers} on 127.0.0.1:{service.port}, "
              f"{f'{cluster}-master Redis Cluster' if cluster else 'one embedded Redis'}; "
              f"seeded policy + {args.users:,} preferences in {took:.1f} s")
        return service

    try:
        config = f"{args.workers}w, 1 Redis"
        service = start(args.workers)
        print(f"phases: {args.seconds:g} s each after {args.warmup:g} s warm-up; "
              f"closed loop at {args.concurrency} connections\n")
        report.fact("model scoring the decisions", model.describe())
        phases = closed_loops(service, args, run, config, report)
        trivial, floor, decisions = (phases[name] for name, _ in ENDPOINTS)
        ratios = [d.rps / t.rps for t, d in zip(trivial, decisions, strict=True)]
        ratio = statistics.median(ratios)
        floor_ratio = statistics.median(f.rps / t.rps for t, f in zip(trivial, floor, strict=True))
        done = sum(d.requests for d in decisions)
        redis_us = sum(d.redis_cpu_us for d in decisions) / done
        command_us = sum(d.command_usec for d in decisions) / done
        report.fact(f"ratio decisions/trivial ({config})",
                    f"{ratio:.2f}" + (f" (rounds {', '.join(f'{r:.2f}' for r in ratios)})"
                                      if len(ratios) > 1 else ""))
        report.fact(f"ratio floor/trivial ({config})", f"{floor_ratio:.2f}")
        report.fact("redis CPU per decision at this load (INFO cpu delta / decisions)",
                    f"{redis_us:.0f} µs")
        report.fact("redis command time per decision (INFO commandstats)", f"{command_us:.0f} µs")
        cache = service.state_cache()
        looked = cache.get("hit", 0.0) + cache.get("miss", 0.0)
        if looked:
            report.fact("state cache, decisions so far (warm-ups included; api/statecache.py)",
                        f"hit {100 * cache['hit'] / looked:.1f}% (one round trip), stale "
                        f"{100 * cache.get('stale', 0.0) / looked:.2f}%, miss "
                        f"{100 * cache['miss'] / looked:.1f}%")

        p99s: list[float] = []
        if args.rate != "off":
            best = max(d.rps for d in decisions)
            rate = round(0.6 * best, -1) if args.rate == "auto" else float(args.rate)
            lags: list[str] = []
            slow: list[str] = []
            waits: list[str] = []
            pinned_runs: list[bool] = []
            for k in range(args.fixed_runs):
                pin = args.pin == "on" or (args.pin == "alternate" and k % 2 == 1)
                label = ("decisions fixed-rate" + (f" #{k + 1}" if args.fixed_runs > 1 else "")
                         + (" pinned" if pin else ""))
                fixed_clients = service.node_clients()
                try:
                    watch_redis_latency(fixed_clients)
                    with service.pinned() if pin else contextlib.nullcontext():
                        phase = python_phase(service, label, "/v1/decisions", args,
                                             f"{run}-fixed-{k}", rate=rate,
                                             meter=RedisMeter(fixed_clients), histograms=True)
                    lags.append(describe_lag(phase.worker_histograms.get(
                        "sendwise_event_loop_lag_seconds", {})))
                    slow.append(describe_slow(phase) + "; Redis' own latency events: "
                                + redis_latency_events(fixed_clients))
                    waits.append(describe_stall(phase))
                finally:
                    for client in fixed_clients:
                        client.close()
                report.add(config, phase)
                p99s.append(phase.p99)
                pinned_runs.append(pin)
            fixed_rows = [p for _, p in report.rows if p.target_rate]
            if args.pin == "alternate" and len(fixed_rows) > 1:
                report.fact("fixed-load runs unpinned / pinned (--pin alternate): p99 median, "
                            "max latency, worker CPU per decision",
                            " / ".join(describe_pinning([p for p, on in zip(
                                fixed_rows, pinned_runs, strict=True) if on is side])
                                for side in (False, True)))
            maxes = [p.max for p in fixed_rows]
            report.fact(f"decisions p99 at {rate:,.0f}/s (60% of ceiling), per run",
                        ", ".join(f"{v:.2f} ms" for v in p99s))
            report.fact("max latency per fixed-load run (stalls)",
                        ", ".join(f"{v:.1f} ms" for v in maxes))
            report.fact("worker CPU per decision, closed loop vs each fixed-load run",
                        describe_cpu_per_decision(decisions, fixed_rows))
            report.fact("worker event-loop lag per fixed-load run (25 ms timer checks: late "
                        "by over 10 ms / over 50 ms / the largest bucket reached)",
                        "; ".join(lags))
            report.fact("requests over 10 ms per fixed-load run (end to end / inside the "
                        "worker's decision / Redis round trips over 10 ms; what Redis' latency "
                        f"monitor saw over {REDIS_LATENCY_MS} ms)", " | ".join(slow))
            report.fact("slowest request per fixed-load run: each group's longest run-queue "
                        "wait (any of its processes) and the VM's steal during it, how long "
                        "each ran, then the waits in the run's worst 100 ms "
                        "(loadtests/schedwatch.py)", " | ".join(waits))
            with contextlib.suppress(OSError, ValueError):
                pauses = service.gc_pauses()
                report.fact("worker GC pauses since it started serving (generation: count, "
                            "mean, over 10 ms)",
                            "; ".join(f"gen{g}: {n:,.0f}, {1000 * t / n if n else 0:.2f} ms, "
                                      f"{big:,.0f}" for g, (n, t, big) in pauses.items()))
        memory = memory_per_user(service, args.users, Settings().default_tenant)
        report.fact("Redis memory per active user (ledger + prefs + profile + records)",
                    f"mean {memory.mean_bytes:,.0f} B, p90 {memory.p90_bytes:,.0f} B, max "
                    f"{memory.max_bytes:,.0f} B ({memory.active} of {memory.sampled} sampled "
                    f"active, {memory.keys_per_user:.1f} keys and {memory.records_per_user:.1f} "
                    f"records each; mean by kind: "
                    + ", ".join(f"{k} {v:,.0f} B" for k, v in memory.by_kind.items())
                    + f"; ledger {memory.ledger_per_user:.1f} entries each, by encoding "
                    f"{memory.ledger_encodings})")
        report.fact("API worker resident memory",
                    ", ".join(f"{mb:.0f} MB" for mb in service.worker_rss_mb()))
        if args.scaling == "on":
            from loadtests.bench_limits import compare_all, describe

            limits = asyncio.run(compare_all(service.redis_url, seconds=args.seconds,
                                             concurrency=64, users=args.users, model=model))
            print("\n".join(describe(side) for side in limits.sides))
            report.fact("in-process decisions/s, same caps, same Redis, 64 tasks: sendwise "
                        "whole decision / commit only vs limits (process lock / Redis lock)",
                        f"{limits.decision.rate:,.0f} / {limits.commit.rate:,.0f} vs "
                        f"{limits.limits.rate:,.0f} / {limits.limits_redis_lock.rate:,.0f}; "
                        f"{limits.ratios()}; exactness errors "
                        + " / ".join(str(side.exactness_errors) for side in limits.sides))
        service.stop()

        node = measure_node(args.users if args.scaling == "on" else min(args.users, 2_000),
                            3_000 if args.scaling == "on" else 1_000, model,
                            rounds=3 if args.scaling == "on" else 2,
                            gaps=(1.0,) if args.scaling == "on" else ())
        print("\none Redis node at saturation (loadtests/bench_node.py: the decisions' "
              "commands recorded, then replayed)\n" + node.table())
        modes = ", ".join(f"{name} {node.cpu(name):.0f} µs" for name in node.modes
                          if name != "pipelined")
        report.fact("redis CPU per decision at saturation (bench_node: the same mix's commands "
                    "replayed, pipelined)",
                    f"{node.saturated:.0f} µs (inside commands {node.inside('pipelined'):.0f} "
                    f"µs; replayed {modes}; replies that differ {node.differ})")
        report.fact("one Redis node's ceiling (1 core / CPU per decision at saturation)",
                    f"~{node.ceiling:,.0f} decisions/s")

        if args.scaling == "on":
            two = start(2)
            config2 = "2w, 1 Redis"
            both = closed_loops(two, argparse.Namespace(**{**vars(args), "rounds": 1,
                                                           "wrk_threads": 2}),
                                run, config2, report)
            report.fact(f"ratio decisions/trivial ({config2})",
                        f"{both['decisions'][0].rps / both['trivial'][0].rps:.2f}")
            two.stop()
            clustered = start(2, cluster=3)
            config3 = "2w, 3-master cluster"
            got = closed_loops(clustered, argparse.Namespace(**{**vars(args), "rounds": 1,
                                                                "wrk_threads": 2}),
                               run, config3, report, endpoints=ENDPOINTS[2:])
            d = got["decisions"][0]
            report.fact(f"redis CPU per decision ({config3}, all nodes)",
                        f"{d.redis_cpu_us / d.requests:.0f} µs")
            clustered.stop()

        if speed_before:
            report.fact(f"CPU speed, a busy loop pinned to each CPU for {speed_seconds:g} s "
                        "before / after the phases (loadtests/cpu_speed.py)",
                        f"{speed_before} / {cpu_speed.describe(cpu_speed.measure(speed_seconds))}")
        print("\n" + report.table())
        print(f"\nwall time {time.perf_counter() - t_start:.0f} s; decisions scored by "
              f"model {model.version}")
        p99 = max(p99s) if p99s else float("nan")
        print(f"ratio decisions/trivial {ratio:.2f}; p99 at 60% {p99:.2f} ms; "
              f"redis µs/decision {redis_us:.0f}")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping the service", file=sys.stderr)
        return 130
    finally:
        for service in services:
            service.stop()


if __name__ == "__main__":
    sys.exit(main())
