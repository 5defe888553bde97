"""sendwise's atomic commit vs the ``limits`` library enforcing the same caps, same Redis.

All sides run in this process on one event loop with ``--concurrency`` tasks, over the
same requests (loadtests/population.py, Zipf recipients so the head hits its caps):

- **sendwise decision**: ``Engine.decide`` end to end (policy cache, read round trip, plan with
  quiet hours and jurisdictions, model scoring, the one atomic commit.lua): every cap of the
  policy is checked and the reservation written in one script, so it is exact by construction;
- **sendwise commit only** (the comparison issue 10 states: the atomic policy commit vs
  ``limits`` checking the same rules): each worker prepares a batch of plans outside the
  timed region exactly as ``Engine._decide`` does (``Store.read_user``, ``Engine.prepare``,
  ``encode_plan``/``Engine.encode_context``, ``now`` = the clock at preparation), then all workers
  commit their batches (``Store.commit``, the same concurrency) and only that phase is timed.
  Plans are committed in the order they were prepared, one small batch ahead, so a plan's
  ``now`` trails its commit by at most one commit phase (the largest such lag is printed).
  Exactness does not depend on ``now`` being current: commit.lua re-checks every cap against
  the ledger as it is at commit time, atomically; ``now`` only places the candidate instants
  (and preferences do not change during the run, so the ``rev`` the commit checks stays
  valid; a ``stale`` answer would be counted, re-prepared and committed again). Its own
  tenant, so its ledgers start empty like the other sides';
- **limits**: one moving-window limit per cap rule of the same policy (a calendar-day cap
  as a 1,440-minute window), ``MovingWindowRateLimiter`` over ``limits``' async Redis
  storage (the redis-py implementation, like sendwise). Several rules cannot be checked
  atomically with it: ``hit`` one by one would count a message against the first rules
  even when a later one refuses it. The exact way is what is measured: under a per-user
  lock, ``test`` every rule in scope, then ``hit`` them all if all passed. Two locks are
  measured: an ``asyncio.Lock`` (exact only while a single process serves every request,
  the most favourable case for limits) and a Redis lock per user (what keeps the same rules
  exact across several API workers or hosts, which sendwise's one script is by
  construction).

Exactness is then checked for both: sendwise's timelines of the busiest recipients against
every cap (loadtests/checks.py ``cap_violations``); for limits, each recipient's sequence
of answers replayed against exact counters (admitted iff every rule in scope had room).

    python -m loadtests.bench_limits --seconds 10 --concurrency 64
    python -m loadtests.bench_limits --seconds 10 --concurrency 1,64

The sendwise sides score with the benchmark's LightGBM model (loadtests/bench_model.py,
the bundled one; ``--model heuristic`` for the heuristic), loaded into each engine like
``sendwise serve --model`` (forced when it did not pass its champion gate).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
from typing import Any

import msgspec

from api.clock import SystemClock
from api.engine import Engine
from api.ids import Secret
from api.plan import Context, RecordOwner, encode_plan, fingerprint
from api.policy import Policy
from api.redis_client import make_redis
from api.redis_server import EmbeddedRedis
from api.render import decode_outcome, render
from api.schemas import DecisionRequest
from api.settings import Settings
from api.store import CommitReply, Store
from loadtests.bench_model import BenchModel
from loadtests.bench_model import add_argument as add_model_argument
from loadtests.bench_model import resolve as resolve_model
from loadtests.checks import Recipient, cap_violations, decode_timeline
from loadtests.population import RequestFactory, policy_document, user_id

TENANT = "bench-limits"
_request = msgspec.json.Decoder(DecisionRequest)


class Side(msgspec.Struct, kw_only=True):
    name: str
    decisions: int
    seconds: float
    admitted: int
    exactness_errors: int
    checked: int
    note: str = ""

    @property
    def rate(self) -> float:
        return self.decisions / self.seconds if self.seconds else 0.0


def rules_for(policy: dict[str, Any], body: dict[str, Any]) -> list[dict[str, Any]]:
    """The caps in scope of a request on its first channel (exempt categories: none)."""
    category = body.get("category", "promotional")
    if category in policy.get("exempt_categories", []):
        return []
    channel = body["channels"][0]
    return [cap for cap in policy["caps"]
            if (not cap.get("scope", {}).get("channels") or channel in cap["scope"]["channels"])
            and (not cap.get("scope", {}).get("categories")
                 or category in cap["scope"]["categories"])]


async def _drive(seconds: float, concurrency: int, users: int, one: Any) -> tuple[int, float]:
    stop = time.perf_counter() + seconds
    done = 0

    async def worker(k: int) -> None:
        nonlocal done
        factory = RequestFactory(users, prefix=f"bl{k}-{time.time_ns()}", seed=k + 1, zipf=True)
        while time.perf_counter() < stop:
            await one(factory.body())
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return done, time.perf_counter() - t0


def _engine(url: str, cluster: bool, model: BenchModel | None = None) -> Engine:
    """An engine on ``url`` scoring with ``model`` (None or a heuristic ``BenchModel``: the
    heuristic)."""
    settings = Settings(redis_url=url, redis_cluster=cluster, log_decisions=False,
                        decision_log=False, id_key=Secret(b"sendwise bench: decision-id key!!"))
    engine = Engine(Store(make_redis(settings), max_in_flight=settings.redis_max_connections),
                    settings, SystemClock())
    if model is not None and model.directory is not None:
        engine.models.load(model.directory, force=model.force)
        engine.metrics.set_model(engine.models.active.version)
    return engine


async def _exactness(engine: Engine, tenant: str, policy: dict[str, Any]) -> tuple[int, int]:
    """Cap violations in the timelines of the Zipf head (the recipients that hit their caps)."""
    errors, checked = 0, 0
    for i in range(20):
        timeline = await engine.timeline(tenant, user_id(i))
        found = cap_violations(policy, Recipient(zone="UTC"),
                               decode_timeline(msgspec.json.encode(timeline)))
        errors += len(found)
        checked += 1
    return errors, checked


async def run_sendwise(url: str, cluster: bool, seconds: float, concurrency: int,
                       users: int, model: BenchModel | None = None) -> Side:
    engine = _engine(url, cluster, model)
    expected = engine.models.active.version
    other_model = 0
    client = engine.store.client
    policy = policy_document()
    try:
        await engine.store.put_policy(TENANT, msgspec.convert(policy, Policy), None,
                                      engine.clock.now_ms())
        admitted = 0

        async def one(body: dict[str, Any]) -> None:
            nonlocal admitted, other_model
            answer = await engine.decide(TENANT, _request.decode(msgspec.json.encode(body)))
            admitted += answer.decision != "suppress"
            other_model += answer.model_version != expected

        await _drive(1.0, concurrency, users, one)  # warm-up
        admitted = 0
        done, took = await _drive(seconds, concurrency, users, one)
        errors, checked = await _exactness(engine, TENANT, policy)
        if other_model:
            raise RuntimeError(f"{other_model} answers were not scored by {expected}")
        return Side(name="sendwise decision", decisions=done, seconds=took, admitted=admitted,
                    exactness_errors=errors, checked=checked, note=f"model {expected}")
    finally:
        await client.aclose()


async def _redis_cpu(client: Any) -> float:
    """The Redis server's own CPU seconds so far (INFO cpu; on a cluster, the node the
    client asks first: the commit-only side runs on one server)."""
    cpu = await client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


class _Prepared(msgspec.Struct):
    request: DecisionRequest
    ctx: Context
    plan: list[bytes]
    prepared_at: float  # perf_counter


async def run_commit_only(url: str, cluster: bool, seconds: float, concurrency: int,
                          users: int, batch: int = 8, model: BenchModel | None = None
                          ) -> Side:
    """The atomic commit alone (module docstring): plans prepared untimed, one batch of
    ``batch`` per worker ahead of each timed commit phase."""
    engine = _engine(url, cluster, model)
    client = engine.store.client
    store = engine.store
    tenant = TENANT + "-commit"
    policy = policy_document()
    stale = 0
    max_lag = 0.0
    #: CPU seconds spent during the timed commit phases: this process, the Redis server
    client_cpu, redis_cpu = [0.0], [0.0]

    async def prepare(request: DecisionRequest) -> _Prepared | None:
        now = engine.clock.now_ms()
        engine.validate(request, now)
        rules = await engine.policies.get(tenant)
        engine.check_category(request, rules)
        state = await store.read_user(tenant, request.user_id, request.message_id,
                                      request.campaign_id, now=now)
        if state.moved_into is not None or state.record is not None:
            return None  # no merges nor repeated message ids in this workload
        location, pre, choice = await engine.prepare(tenant, request.user_id, request, rules,
                                                     state, now)
        ctx = Context(did=engine.ids.decision_id(tenant, request.user_id, request.message_id),
                      mid=request.message_id, uid=request.user_id, pv=rules.version_label,
                      zone=location.zones[0], now=now, fp=fingerprint(request),
                      dry=request.dry_run, pre=pre, mv=choice.version, fs=choice.source,
                      s=choice.suppressed)
        return _Prepared(request, ctx,
                         encode_plan(choice.plan, choice.annotations,
                                     record_format=engine.settings.record_format),
                         time.perf_counter())

    async def run(run_seconds: float) -> tuple[int, float, int]:
        nonlocal stale, max_lag
        factories = [RequestFactory(users, prefix=f"bc{k}-{time.time_ns()}", seed=k + 1,
                                    zipf=True) for k in range(concurrency)]
        done, timed, admitted = 0, 0.0, 0

        async def prepare_batch(factory: RequestFactory) -> list[_Prepared]:
            out = []
            for _ in range(batch):
                request = _request.decode(msgspec.json.encode(factory.body()))
                ready = await prepare(request)
                if ready is not None:
                    out.append(ready)
            return out

        async def commit_batch(plans: list[_Prepared]) -> list[tuple[Context, CommitReply]]:
            nonlocal stale
            replies = []
            for ready in plans:  # in the order they were prepared
                while True:
                    reply = await store.commit(tenant, ready.request.user_id,
                                               ready.request.message_id, ready.plan,
                                               engine.encode_context(ready.ctx, ready.request.user_id))
                    if reply.status != "stale":
                        break
                    stale += 1  # preferences changed under it (never here): prepare again
                    again = await prepare(ready.request)
                    if again is None:
                        break
                    ready = again
                replies.append((ready.ctx, reply))
            return replies

        while timed < run_seconds:
            batches = await asyncio.gather(*(prepare_batch(f) for f in factories))  # untimed
            redis_before = await _redis_cpu(client)
            c0, t0 = time.process_time(), time.perf_counter()
            results = await asyncio.gather(*(commit_batch(b) for b in batches))
            t1, c1 = time.perf_counter(), time.process_time()
            redis_cpu[0] += await _redis_cpu(client) - redis_before
            timed += t1 - t0
            client_cpu[0] += c1 - c0
            max_lag = max([max_lag, *(t1 - p.prepared_at for b in batches for p in b)])
            for replies in results:
                for ctx, reply in replies:
                    done += 1
                    if reply.status == "new":
                        admitted += render(ctx, decode_outcome(reply.payload, RecordOwner(
                            tenant, ctx.uid, ctx.mid, engine.ids), ctx.now)).decision \
                            != "suppress"
        return done, timed, admitted

    try:
        await store.put_policy(tenant, msgspec.convert(policy, Policy), None,
                               engine.clock.now_ms())
        await run(1.0)  # warm-up
        stale, max_lag = 0, 0.0
        client_cpu[0] = redis_cpu[0] = 0.0
        done, took, admitted = await run(seconds)
        errors, checked = await _exactness(engine, tenant, policy)
        per = 1e6 / max(done, 1)
        return Side(name="sendwise commit only", decisions=done, seconds=took,
                    admitted=admitted, exactness_errors=errors, checked=checked,
                    note=f"stale {stale}, plan now <= {max_lag * 1000:.0f} ms before its commit; "
                         f"CPU per commit: this process {client_cpu[0] * per:.0f} µs, "
                         f"Redis {redis_cpu[0] * per:.0f} µs")
    finally:
        await client.aclose()


async def run_limits(url: str, seconds: float, concurrency: int, users: int, *,
                     lock: str = "process", lock_wait: float = 5.0) -> Side:
    """``lock`` "process": the per-user lock is an ``asyncio.Lock`` (exact only while one
    process serves every request for a user); "redis": a Redis lock per user (redis-py's
    ``Lock``: ``SET NX PX`` to take it, a script to release it), which is what the same
    rules need to stay exact once several API workers or hosts share the Redis, as
    sendwise's commit does by construction. ``lock_wait``: how long a request waits for
    the Redis lock before it gives up; those are reported in the side's note and not
    counted as decisions."""
    from limits import RateLimitItemPerMinute
    from limits.aio.storage import RedisStorage
    from limits.aio.strategies import MovingWindowRateLimiter

    storage_url = ("async+redis+unix://" + url.removeprefix("unix://") if url.startswith("unix://")
                   else "async+" + url)
    prefix = f"bench-limits-{lock}-{time.time_ns()}"
    storage = RedisStorage(storage_url, implementation="redispy", key_prefix=prefix)
    # the lock client is the benchmark's, not the service's: a busy box must slow it, not
    # fail it (the service's 0.25 s command timeout once failed a connect under load)
    locker = (make_redis(Settings(redis_url=url, redis_timeout_seconds=5.0))
              if lock == "redis" else None)
    limiter = MovingWindowRateLimiter(storage)
    policy = policy_document()
    items = {cap["id"]: RateLimitItemPerMinute(cap["limit"], cap.get("window_minutes", 1440))
             for cap in policy["caps"]}
    locks: collections.defaultdict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
    #: per user, in the order the lock serialized them: (rule ids, admitted)
    history: collections.defaultdict[str, list[tuple[list[str], bool]]] = collections.defaultdict(list)
    admitted = 0
    #: requests that gave up waiting for their recipient's Redis lock: no decision made, so
    #: not counted as one (redis-py's lock polls; on a slow box a hot recipient's waiters
    #: can starve, and one of them once ended a full benchmark run with LockError)
    gave_up = 0

    async def decide(rules: list[str], uid: str) -> None:
        """Check every rule, then hit them all: exact only under the recipient's lock."""
        nonlocal admitted
        ok = True
        for rule in rules:
            if not await limiter.test(items[rule], TENANT, uid, rule):
                ok = False
                break
        if ok:
            for rule in rules:
                await limiter.hit(items[rule], TENANT, uid, rule)
        history[uid].append((rules, ok))
        admitted += ok

    async def one(body: dict[str, Any]) -> None:
        nonlocal gave_up
        rules = [cap["id"] for cap in rules_for(policy, body)]
        uid = body["user_id"]
        if locker is None:
            async with locks[uid]:
                await decide(rules, uid)
            return
        lock = locker.lock(f"{prefix}:lock:{uid}", timeout=5.0, sleep=0.0005,
                           blocking_timeout=lock_wait)
        if not await lock.acquire():
            gave_up += 1
            return
        try:
            await decide(rules, uid)
        finally:
            await lock.release()

    try:
        await _drive(1.0, concurrency, users, one)  # warm-up (its history is replayed too)
        admitted = gave_up = 0
        done, took = await _drive(seconds, concurrency, users, one)
        done -= gave_up
    finally:
        if locker is not None:
            await locker.aclose()
        await storage.bridge.storage.aclose()  # limits' own redis-py client
    errors = 0
    for events in history.values():
        counts: collections.Counter[str] = collections.Counter()
        for rules, ok in events:
            room = all(counts[r] < items[r].amount for r in rules)
            errors += room != ok
            if ok:
                counts.update(rules)
    name = "limits, process lock" if lock == "process" else "limits, Redis lock"
    return Side(name=name, decisions=done, seconds=took, admitted=admitted,
                exactness_errors=errors, checked=len(history),
                note=f"{gave_up:,} requests gave up waiting {lock_wait:g} s for their "
                     "recipient's lock, not counted" if gave_up else "")


async def compare(url: str, *, cluster: bool = False, seconds: float = 10.0,
                  concurrency: int = 64, users: int = 10_000, model: BenchModel | None = None
                  ) -> tuple[Side, Side]:
    """The whole decision vs limits (bench_decisions' report uses this pair)."""
    ours = await run_sendwise(url, cluster, seconds, concurrency, users, model)
    theirs = await run_limits(url, seconds, concurrency, users)
    return ours, theirs


class Comparison(msgspec.Struct, kw_only=True):
    """Every side of one comparison, measured back to back at one concurrency."""

    concurrency: int
    decision: Side
    commit: Side
    limits: Side
    limits_redis_lock: Side

    @property
    def exact(self) -> bool:
        return all(side.exactness_errors == 0 for side in self.sides)

    @property
    def sides(self) -> tuple[Side, Side, Side, Side]:
        return (self.decision, self.commit, self.limits, self.limits_redis_lock)

    def ratios(self) -> str:
        c, d = self.commit.rate, self.decision.rate
        a, b = self.limits.rate, self.limits_redis_lock.rate
        return (f"commit only / limits: {c / a:.2f}x (process lock), {c / b:.2f}x (Redis lock); "
                f"decision / limits: {d / a:.2f}x, {d / b:.2f}x")


async def compare_all(url: str, *, cluster: bool = False, seconds: float = 10.0,
                      concurrency: int = 64, users: int = 10_000,
                      model: BenchModel | None = None) -> Comparison:
    """The whole decision, the commit alone, and limits with both kinds of per-user lock.
    ``model``: what the sendwise sides score with (None: the heuristic)."""
    ours, theirs = await compare(url, cluster=cluster, seconds=seconds,
                                 concurrency=concurrency, users=users, model=model)
    commit = await run_commit_only(url, cluster, seconds, concurrency, users, model=model)
    locked = await run_limits(url, seconds, concurrency, users, lock="redis")
    return Comparison(concurrency=concurrency, decision=ours, commit=commit, limits=theirs,
                      limits_redis_lock=locked)


def describe(side: Side) -> str:
    return (f"{side.name:<22} {side.rate:>8,.0f} decisions/s  ({side.decisions:,} in "
            f"{side.seconds:.1f} s, {side.admitted:,} admitted)  exactness errors "
            f"{side.exactness_errors} over {side.checked} recipients"
            + (f"  [{side.note}]" if side.note else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_limits", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", default="64",
                        help="tasks driving each side; a comma-separated list runs every side "
                             "at each (e.g. 1,64: one request at a time, where each side pays "
                             "its round trips in latency, and a loaded process)")
    parser.add_argument("--users", type=int, default=10_000)
    add_model_argument(parser)
    args = parser.parse_args(argv)
    model = resolve_model(args.model)
    print(model.describe())
    levels = [int(x) for x in str(args.concurrency).split(",") if x.strip()]
    results: list[Comparison] = []
    with EmbeddedRedis() as server:
        for level in levels:
            result = asyncio.run(compare_all(server.url, seconds=args.seconds,
                                             concurrency=level, users=args.users,
                                             model=model))
            results.append(result)
            print(f"-- concurrency {level}")
            for side in result.sides:
                print(describe(side))
            print(result.ratios())
    return 0 if all(result.exact for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
