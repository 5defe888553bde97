"""In-process microbenchmark of one decision (no HTTP): where do the microseconds go?

The HTTP benchmark (bench_decisions.py) says *how much* slower a decision is than the
trivial endpoint; this one says *why*. It drives ``Engine.decide`` against an in-memory
embedded redis-server with the real clock, then replays the same sequence as
``Engine._decide`` step by step with a timer around each piece:

    validate -> read round trip (Store.read_user) -> locate + pre_checks
    -> build_plan -> score (api/scoring.py) -> encode plan/context
    -> commit round trip (Store.commit)
    -> render (decode outcome + DecisionResponse) -> JSON encode (what litestar does)

Sequential timings are per-decision service times (no queueing). A final concurrent run
(``--concurrency`` tasks on one event loop, like one uvicorn worker) gives the in-process
ceiling: decisions/s one core reaches without any HTTP in front.

    python -m loadtests.bench_engine --decisions 5000 --users 2000

Decisions score with the benchmark's LightGBM model (loadtests/bench_model.py: the bundled
model ``sendwise serve`` scores with), ``--model heuristic`` with
the heuristic, ``--model DIR`` with that artifact (forced if it did not pass its gate).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import hashlib
import itertools
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from importlib import resources
from typing import Any

import msgspec
import redis
import redis.asyncio as aioredis

from api.clock import SystemClock
from api.engine import Engine
from api.plan import (
    Context,
    RecordOwner,
    build_plan,
    encode_plan,
    fingerprint,
    pre_checks,
)
from api.policy import Policy, validate_policy
from api.redis_client import make_redis
from api.redis_server import EmbeddedRedis
from api.render import decode_outcome, render
from api.schemas import DecisionRequest, Preferences
from api.settings import Settings
from api.store import Store
from loadtests.bench_model import BenchModel
from loadtests.bench_model import add_argument as add_model_argument
from loadtests.bench_model import resolve as resolve_model
from loadtests.population import RequestFactory, policy_document, preferences, user_id

TENANT = "bench"
STEPS = ("validate", "read_user", "locate+pre_checks", "build_plan", "score", "encode",
         "commit", "render", "json_encode")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


#: what a replay's snapshot holds per key: its DUMP and its TTL (ms, 0 for none)
Snapshot = dict[bytes, tuple[bytes, int]]


def take_snapshot(plain: redis.Redis) -> Snapshot:
    """Every key of the database, to replay from the same state (``restore``)."""
    snapshot: Snapshot = {}
    for key in plain.scan_iter(count=1000):
        dumped = plain.dump(key)
        if dumped is not None:
            snapshot[key] = (dumped, max(0, plain.pttl(key)))
    return snapshot


def restore(plain: redis.Redis, snapshot: Snapshot) -> None:
    """The database as ``snapshot`` took it, and nothing else."""
    plain.flushdb()
    pipe = plain.pipeline(transaction=False)
    for key, (dumped, ttl) in snapshot.items():
        pipe.restore(key, ttl, dumped, replace=True)
    pipe.execute()


def redis_cpu(plain: redis.Redis) -> float:
    """Seconds of CPU redis-server has used (user + system)."""
    stats: dict[str, float] = plain.info("cpu")
    return stats["used_cpu_user"] + stats["used_cpu_sys"]


def inside_usec(plain: redis.Redis, commands: tuple[str, ...] = ("evalsha", "eval", "xadd")
                ) -> float:
    """Microseconds Redis has spent inside these top-level commands (INFO commandstats):
    their execution, without the event loop, the socket work or the reply's formatting. A
    script's own calls are listed too, but inside its EVALSHA's time: counted once here."""
    stats: dict[str, dict[str, float]] = plain.info("commandstats")
    return sum(float(stats.get(f"cmdstat_{name}", {}).get("usec", 0.0)) for name in commands)


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Bench:
    def __init__(self, client: aioredis.Redis, users: int, model: BenchModel | None = None
                 ) -> None:
        self.settings = Settings(redis_url="unused", log_decisions=False)
        self.engine = Engine(Store(client), self.settings, SystemClock())
        if model is not None and model.directory is not None:
            self.engine.models.load(model.directory, force=model.force)
        self.expected = self.engine.models.active.version
        #: answers scored by another model than ``expected`` (must stay 0)
        self.other_model = 0
        self.users = users
        self.factory = RequestFactory(users, prefix=f"e{time.time_ns()}", seed=3)
        self.json = msgspec.json.Encoder()

    def next_request(self) -> DecisionRequest:
        return msgspec.convert(self.factory.body(), DecisionRequest)

    async def seed(self) -> None:
        policy = msgspec.convert(policy_document(), Policy)
        validate_policy(policy)
        stored = await self.engine.store.put_policy(TENANT, policy, None,
                                                    self.engine.clock.now_ms())
        self.engine.policies.put(TENANT, stored)
        store = self.engine.store
        for start in range(0, self.users, 200):
            await asyncio.gather(*(
                store.put_preferences(TENANT, user_id(i), msgspec.convert(preferences(i), Preferences))
                for i in range(start, min(self.users, start + 200))))

    async def end_to_end(self, n: int) -> list[float]:
        times: list[float] = []
        for _ in range(n):
            request = self.next_request()
            t0 = time.perf_counter_ns()
            answer = await self.engine.decide(TENANT, request)
            times.append((time.perf_counter_ns() - t0) / 1000)
            self.other_model += answer.model_version != self.expected
        return times

    async def breakdown(self, n: int) -> tuple[dict[str, list[float]], dict[str, int]]:
        """The body of Engine._decide with a clock read between steps (first attempt only:
        the benchmark has no concurrent preference writes, so no stale retries)."""
        engine, store, settings = self.engine, self.engine.store, self.settings
        steps: dict[str, list[float]] = {name: [] for name in (*STEPS, "total")}
        mix: dict[str, int] = {}
        clock = time.perf_counter_ns
        for _ in range(n):
            request = self.next_request()
            t0 = clock()
            now = engine.clock.now_ms()
            engine.validate(request, now)  # mirrors Engine.decide: keep in step with it
            policy = await engine.policies.get(TENANT)
            engine.check_category(request, policy)
            fp = fingerprint(request)
            did = engine.ids.decision_id(TENANT, request.user_id, request.message_id)
            t1 = clock()
            state = await store.read_user(TENANT, request.user_id, request.message_id,
                                          request.campaign_id, now=now)
            t2 = clock()
            location = engine.locate(request, state.preferences, policy)
            permitted, pre, suppressed = pre_checks(request, policy, state, now, tenant=TENANT,
                                                    user_id=request.user_id)
            t3 = clock()
            plan = build_plan(request, policy, state, location, now=now,
                              idempotency_ttl_ms=settings.idempotency_ttl_seconds * 1000,
                              candidate_channels=permitted, pre_suppressed=suppressed,
                              tenant=TENANT)
            t4 = clock()
            model = await engine.tenant_models.model_for(TENANT)
            choice = engine._choose(model, request, policy, state, plan, location.zones[0], now)
            t4b = clock()
            ctx = Context(did=did, mid=request.message_id, uid=request.user_id,
                          pv=policy.version_label, zone=location.zones[0], now=now, fp=fp,
                          dry=request.dry_run, pre=pre, mv=choice.version, fs=choice.source)
            plan_bytes = encode_plan(choice.plan, choice.annotations,
                                     record_format=engine.settings.record_format)
            ctx_bytes = engine.encode_context(ctx, request.user_id)
            t5 = clock()
            reply = await store.commit(TENANT, request.user_id, request.message_id,
                                       plan_bytes, ctx_bytes)
            t6 = clock()
            if reply.status != "new":
                raise RuntimeError(f"unexpected commit status {reply.status!r} for a fresh message")
            response = render(ctx, decode_outcome(reply.payload, RecordOwner(
                TENANT, request.user_id, request.message_id, engine.ids), ctx.now))
            t7 = clock()
            self.json.encode(response)
            t8 = clock()
            marks = (t0, t1, t2, t3, t4, t4b, t5, t6, t7, t8)
            for name, (a, b) in zip(STEPS, itertools.pairwise(marks), strict=True):
                steps[name].append((b - a) / 1000)
            steps["total"].append((t8 - t0) / 1000)
            mix[response.decision] = mix.get(response.decision, 0) + 1
        return steps, mix

    async def concurrent(self, n: int, concurrency: int) -> tuple[float, float, list[float]]:
        requests = [self.next_request() for _ in range(n)]
        queue = iter(requests)
        latencies: list[float] = []

        async def worker() -> None:
            for request in queue:
                t0 = time.perf_counter_ns()
                await self.engine.decide(TENANT, request)
                latencies.append((time.perf_counter_ns() - t0) / 1000)

        c0, t0 = cpu(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - t0, cpu() - c0, latencies


class GcCensus:
    """The collector during the concurrent run, set up as a served worker sets it up after
    its warm-up (api/warmup.py: ``gc.freeze`` and the young-generation threshold): every
    pause per generation, and what the collector still tracks afterwards in the young and
    middle generations (the objects every generation-1 pass walks), by type."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = collections.defaultdict(list)
        self._started = 0.0
        self._threshold = gc.get_threshold()

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses[info["generation"]].append((time.perf_counter() - self._started) * 1e3)

    def __enter__(self) -> GcCensus:
        from api.warmup import GC_GEN0_THRESHOLD

        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, *self._threshold[1:])
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)
        self.tracked = {generation: collections.Counter(
            type(o).__name__ for o in gc.get_objects(generation=generation))
            for generation in (0, 1)}
        gc.unfreeze()
        gc.set_threshold(*self._threshold)

    def report(self) -> str:
        pauses = "; ".join(
            f"gen{g}: {len(v)}, mean {statistics.fmean(v):.2f} ms, max {max(v):.2f} ms"
            for g, v in sorted(self.pauses.items())) or "none"
        tracked = "; ".join(
            f"gen{g} {sum(c.values()):,} ({', '.join(f'{k} {v:,}' for k, v in c.most_common(4))})"
            for g, c in self.tracked.items())
        return (f"collector during that run: pauses {pauses}\n"
                f"objects it tracks afterwards (walked again by every generation-1 pass): "
                f"{tracked}")


SCRIPTS = ("read.lua", "commit.lua")


async def server_side_times(client: aioredis.Redis, run: Callable[[], Coroutine[Any, Any, Any]]
                            ) -> dict[str, list[float]]:
    """Redis' own execution time per script (µs), from SLOWLOG with a zero threshold: the
    rest of a round trip is the client library, the socket and the event loop."""
    by_sha = {hashlib.sha1(resources.files("api").joinpath("lua", name).read_bytes(),
                           usedforsecurity=False).hexdigest(): name for name in SCRIPTS}
    old = await client.config_get("slowlog-*")
    await client.config_set("slowlog-max-len", 200_000)
    await client.config_set("slowlog-log-slower-than", 0)
    await client.slowlog_reset()
    try:
        await run()
        entries = await client.slowlog_get(200_000)
    finally:
        for key, value in old.items():
            await client.config_set(key, value)
    times: dict[str, list[float]] = {name: [] for name in SCRIPTS}
    for entry in entries:
        command = entry["command"]
        words = command.split() if isinstance(command, bytes | str) else []
        if len(words) > 1:
            sha = words[1].decode() if isinstance(words[1], bytes) else str(words[1])
            if sha in by_sha:
                times[by_sha[sha]].append(float(entry["duration"]))
    return times


async def ping_times(client: aioredis.Redis, n: int) -> list[float]:
    times: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await client.ping()
        times.append((time.perf_counter_ns() - t0) / 1000)
    return times


async def run(args: argparse.Namespace, url: str) -> None:
    client = make_redis(Settings(redis_url=url, redis_max_connections=max(64, args.concurrency),
                                 redis_timeout_seconds=5.0))
    try:
        model = resolve_model(args.model)
        print(model.describe())
        bench = Bench(client, args.users, model)
        if bench.expected != model.version:
            raise RuntimeError(f"the engine scores with {bench.expected}, not {model.version}")
        t0 = time.perf_counter()
        await bench.seed()
        print(f"seeded policy + {args.users:,} recipients in {time.perf_counter() - t0:.1f} s")
        await bench.end_to_end(min(500, args.decisions))  # warm caches (zones, policy, scripts)

        ping = await ping_times(client, 2000)
        print(f"\nreference: Redis PING round trip p50 {pct(ping, 50):.0f} µs, "
              f"p99 {pct(ping, 99):.0f} µs (redis-py + hiredis, unix socket)")

        e2e = await bench.end_to_end(args.decisions)
        print(f"\nEngine.decide, sequential, {len(e2e):,} decisions: p50 {pct(e2e, 50):.0f} µs  "
              f"p90 {pct(e2e, 90):.0f} µs  p99 {pct(e2e, 99):.0f} µs  mean "
              f"{statistics.fmean(e2e):.0f} µs")

        holder: list[tuple[dict[str, list[float]], dict[str, int]]] = []

        async def measured() -> None:
            holder.append(await bench.breakdown(args.decisions))

        server = await server_side_times(client, measured)
        steps, mix = holder[0]
        total_mean = statistics.fmean(steps["total"])
        print(f"\nbreakdown of the same sequence, {args.decisions:,} decisions "
              f"(mix: {', '.join(f'{k} {v}' for k, v in sorted(mix.items()))}):")
        print(f"  {'step':<20}{'p50 µs':>9}{'p99 µs':>9}{'mean µs':>9}{'share':>8}")
        for name in (*STEPS, "total"):
            values = steps[name]
            mean = statistics.fmean(values)
            print(f"  {name:<20}{pct(values, 50):>9.0f}{pct(values, 99):>9.0f}{mean:>9.0f}"
                  f"{100 * mean / total_mean:>7.0f}%")
        for name, step in (("read.lua", "read_user"), ("commit.lua", "commit")):
            if server[name]:
                inside = statistics.fmean(server[name])
                print(f"  {step:<20} inside redis-server: p50 {pct(server[name], 50):.0f} µs, mean "
                      f"{inside:.0f} µs; the other {statistics.fmean(steps[step]) - inside:.0f} µs "
                      "of the round trip is client, socket and event loop")
        redis_mean = statistics.fmean(steps["read_user"]) + statistics.fmean(steps["commit"])
        print(f"  -> two Redis round trips: {100 * redis_mean / total_mean:.0f}% of the time; "
              f"Python work around them: {100 - 100 * redis_mean / total_mean:.0f}%")

        with GcCensus() as census:
            wall, used, lat = await bench.concurrent(args.decisions, args.concurrency)
        print(f"\nEngine.decide, {args.concurrency} concurrent tasks on one loop, "
              f"{len(lat):,} decisions: {len(lat) / wall:,.0f} decisions/s, "
              f"p50 {pct(lat, 50) / 1000:.2f} ms  p99 {pct(lat, 99) / 1000:.2f} ms, "
              f"this process used {used / wall:.2f} cores "
              f"({1e6 * used / len(lat):.0f} CPU µs per decision)")
        print(census.report())
        if bench.other_model:
            raise RuntimeError(f"{bench.other_model} answers were not scored by {bench.expected}")
        print(f"model_version of every sequential answer: {bench.expected}")
        await bench.engine.store.settle()  # the log appends the answers did not wait for
    finally:
        await client.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_engine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=5000, help="decisions per measurement")
    parser.add_argument("--users", type=int, default=2000, help="recipient population")
    parser.add_argument("--concurrency", type=int, default=64, help="tasks in the concurrent run")
    add_model_argument(parser)
    args = parser.parse_args(argv)
    if not 100 <= args.decisions <= 200_000 or args.users < 1 or not 1 <= args.concurrency <= 1024:
        parser.error("--decisions 100..200000, --users >= 1, --concurrency 1..1024")
    runner: Callable[[Coroutine[Any, Any, None]], None]
    try:
        import uvloop

        runner = uvloop.run  # the server's loop
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    load1 = os.getloadavg()[0]
    if load1 > 0.5:
        print(f"warning: 1-minute load average is {load1:.1f} before the run; other work on "
              "this machine will inflate the numbers (tails most)", file=sys.stderr)
    with EmbeddedRedis() as redis:
        try:
            runner(run(args, redis.url))
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
