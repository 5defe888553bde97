"""Paired microbenchmark of commit.lua: two versions of the script on the same commits.

Drives the ``bench_engine`` workload (seeded population, real clock, embedded Redis) and
runs every commit twice in the same moment: script A on the user's keys and script B on a
copy of them under another hash tag (copied once by DUMP/RESTORE), alternating which goes
first, so a shared machine's noise hits both alike. Both ledgers stay identical because
the answers must be (the replies are compared). Redis time per call from SLOWLOG.

    python -m loadtests.bench_commit --a old_commit.lua --b api/lua/commit.lua
    python -m loadtests.bench_commit --a old_commit.lua --all-caps-for-a
    python -m loadtests.bench_commit --a old_commit.lua --map-plan-for-a

``--all-caps-for-a`` sends A the plan with every compiled cap, as ``encode_plan`` did
before it shipped only the caps that can match (docs/benchmarks.md, "Redis CPU per
decision: commit.lua"). ``--string-records-for-a`` gives A the message's own record key as
KEYS[2], for a commit.lua from before the records hash (docs/benchmarks.md, "Idempotency
records in one hash per user"):

    python -m loadtests.bench_commit --a old_commit.lua --string-records-for-a

``--map-plan-for-a`` sends A the plan in the layout before the
positional one (maps, ``[start, end]`` pairs: a commit.lua from before the positional plan needs it).
``--msgpack-cands-for-a`` sends A the candidates inside the MessagePack array, as a
commit.lua from before the candidate records reads them:

    python -m loadtests.bench_commit --replay --history --a old_commit.lua --msgpack-cands-for-a

These layouts, and ``--per-candidate-args-for-a`` (a commit.lua from before the member
tail: the records without their note's place, a ledger member and an annotation per
candidate as arguments of their own), send A the arguments of their time after the
context too.

``--replay`` measures Redis **CPU** instead (INFO cpu: the server process' own CPU time,
which other processes on a shared box barely inflate, unlike SLOWLOG's wall time): the
workload's commits are recorded once from a snapshot of the seeded keys, then replayed
with A and with B, each round from the same snapshot (FLUSHDB + RESTORE), in pipelines of
20 in recorded order, alternating which script goes first; replies compared.
``--preemption`` turns preemption on in the policy (the mix has it off), so every
deferral also stores its compact re-decision plan. ``--history`` first records half of
the recipients' past activity (``population.history_events``, as ``bench_decisions``
seeds it), so their decisions are scored from a profile and commit ranked slots.

    python -m loadtests.bench_commit --replay --a old_commit.lua --map-plan-for-a

``--batch`` sets the commits per pipeline of the replay (20); ``--batch 1 --gap-ms G``
sends each commit alone after ``G`` ms of idle, as a lightly loaded node receives them:
the same commits cost Redis more CPU once it idles between calls (docs/benchmarks.md,
"Redis CPU per decision at saturation"). The replay also prints the time inside the
script (INFO commandstats), which leaves out the event loop and the socket work.

The decisions score with the bundled model, as the HTTP benchmark's do (``--model``:
loadtests/bench_model.py). Before the ninth pass this replay scored with the heuristic,
whose plans hold fewer candidates: its figures in docs/benchmarks.md before that pass are
the heuristic's.

``--zipf`` draws the recipients from bench_limits' Zipf distribution instead of uniformly,
so the head's ledgers grow long (a commit reads and decodes every entry); the replay prints
the ledger length each commit found. With bench_limits' population and more decisions:

    python -m loadtests.bench_commit --replay --zipf --users 10000 --decisions 20000 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import struct
import time
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec
import redis

import api.plan
from api.plan import (
    PLAN_FIELDS,
    CompiledCap,
    Plan,
    commit_members,
    commit_notes,
    decode_lua_plan,
    lua_plan,
)
from api.policy import Policy
from api.redis_client import make_redis
from api.redis_server import EmbeddedRedis
from api.schemas import Event
from api.settings import Settings
from loadtests.bench_engine import TENANT, Bench, inside_usec, pct, redis_cpu, restore, take_snapshot
from loadtests.bench_model import BenchModel
from loadtests.bench_model import add_argument as add_model_argument
from loadtests.bench_model import resolve as resolve_model
from loadtests.population import RequestFactory, history_events, policy_document

#: a cap's scope lists, left out of the map layout when empty
_SCOPE_LISTS = frozenset({"ch", "cat", "xcat", "camp", "tag"})


#: the candidate record before it held its note's place (``per-candidate-args``)
_RECORD_BEFORE_NOTES = struct.Struct(">BqqHBH")


def args_for_a(args: list[Any], plan: Plan, caps: list[CompiledCap], layout: str) -> list[Any]:
    """Script A's ARGV for the commit whose ARGV is ``args``: ``current`` (as sent, with
    ``caps``), ``per-candidate-args`` (before the member tail: the candidate records
    without their note's place, then the member prefix, one member per candidate and one
    annotation per candidate as arguments of their own), ``msgpack-cands`` (as that, the
    candidates as ``[ch, a, b, pb, s, why]`` arrays inside the MessagePack, before the
    candidate records) or ``map`` (as that, maps: before the positional layout)."""
    encoded = [args[0], *args[2:5]]  # encode_plan's output: ARGV without the context
    notes = [n for n in commit_notes(encoded) if n is not None]
    if layout == "current":
        return [lua_plan(plan, caps, notes), *args[1:]]
    per_candidate = [*commit_members(encoded), *notes]
    rest = [args[1], args[2], *per_candidate, *args[5:]]
    if layout == "map":
        return [msgspec.msgpack.encode(map_plan(plan, caps)), *rest]
    fields, cands = decode_lua_plan(lua_plan(plan, caps))
    if layout == "msgpack-cands":
        fields[PLAN_FIELDS.index("cands")] = [c[:6] for c in cands]
        return [msgspec.msgpack.encode(fields), *rest]
    channels = fields[PLAN_FIELDS.index("cands")]
    count = struct.pack(">H", len(cands))
    records = b"".join(_RECORD_BEFORE_NOTES.pack(channels.index(ch) + 1, a, b, pb, s_,
                                                 0 if why is None else why + 1)
                       for ch, a, b, pb, s_, why, _, _ in cands)
    return [count + records + msgspec.msgpack.encode(fields), *rest]


def map_plan(plan: Plan, caps: list[CompiledCap]) -> dict[str, Any]:
    """The plan as ``encode_plan`` packed it before the positional layout."""
    core = msgspec.structs.asdict(plan)
    del core["mid"], core["tail"]
    core["caps"] = [{name: value for name, value in msgspec.structs.asdict(cap).items()
                     if name not in _SCOPE_LISTS or value} for cap in caps]
    if core["pe"] is None:
        del core["pe"]
    return core


async def seeded_bench(client: Any, users: int, *, history: bool, preemption: bool,
                       zipf: bool = False, model: BenchModel | None = None) -> Bench:
    """The bench_engine population, optionally with histories and preemption, after 300
    decisions so ledgers have some history. ``zipf``: recipients from bench_limits' Zipf
    distribution instead of uniformly, so the head's ledgers grow long. ``model``: what
    scores the decisions (None: the heuristic)."""
    bench = Bench(client, users, model)
    if zipf:
        bench.factory = RequestFactory(users, prefix=f"z{time.time_ns()}", seed=3, zipf=True)
    await bench.seed()
    if history:
        await seed_history(bench, users)
    if preemption:
        await enable_preemption(bench)
    await bench.end_to_end(300)
    return bench


async def run(url: str, script_a: str, script_b: str, decisions: int, users: int,
              all_caps_for_a: bool, layout_a: str, preemption: bool,
              history: bool, string_records_for_a: bool = False,
              model: BenchModel | None = None) -> None:
    shipped = api.plan._lua_caps
    plans: list[Plan] = []

    def recording(plan: Plan) -> list[CompiledCap]:
        plans.append(plan)
        return shipped(plan)

    api.plan._lua_caps = recording
    client = make_redis(Settings(redis_url=url, redis_max_connections=8,
                                 redis_timeout_seconds=5.0))
    raw = make_redis(Settings(redis_url=url, redis_max_connections=1,
                              redis_timeout_seconds=5.0))
    bench = await seeded_bench(client, users, history=history, preemption=preemption,
                               model=model)
    sha_a, sha_b = await raw.script_load(script_a), await raw.script_load(script_b)
    await raw.config_set("slowlog-log-slower-than", 0)
    times: dict[str, list[float]] = {sha_a: [], sha_b: []}
    copied: set[str] = set()
    differ = 0

    def shadow(key: str) -> str:
        return key.replace("{" + TENANT + ":", "{" + TENANT + "-b:")

    async def paired(*, keys: list[str], args: list[Any]) -> Any:
        nonlocal differ
        if keys[2] not in copied:  # the user's ledger and preferences, once
            copied.add(keys[2])
            for key in (keys[0], keys[2]):
                dumped = await raw.dump(key)
                if dumped is not None:
                    await raw.restore(shadow(key), 0, dumped, replace=True)
        args_a = list(args)
        if all_caps_for_a or layout_a != "current":
            plan = plans[-1]
            args_a = args_for_a(args, plan, plan.caps if all_caps_for_a else shipped(plan),
                                layout_a)
        # before the records hash, KEYS[2] was the message's own key (now KEYS[6])
        keys_a = [keys[0], keys[5], *keys[2:5]] if string_records_for_a else keys
        runs = [(sha_a, keys_a, args_a), (sha_b, [shadow(k) for k in keys], args)]
        if len(times[sha_a]) % 2:
            runs.reverse()
        replies = {}
        for sha, ks, a in runs:
            replies[sha] = await raw.evalsha(sha, len(ks), *ks, *a)
            times[sha].append(float((await raw.slowlog_get(1))[0]["duration"]))
        if replies[sha_a] != replies[sha_b]:
            differ += 1
        return replies[sha_a]

    bench.engine.store._commit = paired  # type: ignore[assignment]
    await bench.end_to_end(decisions)
    for name, sha in (("A", sha_a), ("B", sha_b)):
        t = times[sha]
        print(f"{name}: commit inside redis-server mean {statistics.fmean(t):.1f} µs, "
              f"p50 {statistics.median(t):.0f} µs over {len(t):,} calls")
    print(f"replies that differ: {differ}")
    await bench.engine.store.settle()  # the log appends the answers did not wait for
    await client.aclose()
    await raw.aclose()


async def seed_history(bench: Bench, users: int) -> None:
    """Half of the recipients' past activity, through the engine's event path."""
    now = dt.datetime.now(dt.UTC)
    events = [msgspec.convert(e, Event) for i in range(users) for e in history_events(i, now)]
    for start in range(0, len(events), 500):
        await bench.engine.record_events(TENANT, events[start:start + 500])


async def enable_preemption(bench: Bench) -> None:
    """The benchmark policy with preemption on (at most 2 displaced)."""
    engine = bench.engine
    policy = msgspec.convert({**policy_document(),
                              "preemption": {"enabled": True, "max_displaced": 2}}, Policy)
    stored = await engine.store.put_policy(TENANT, policy, None, engine.clock.now_ms())
    engine.policies.put(TENANT, stored)


async def replay(url: str, script_a: str, script_b: str, decisions: int, users: int,
                 all_caps_for_a: bool, layout_a: str, rounds: int,
                 preemption: bool, history: bool, zipf: bool = False, batch: int = 20,
                 gap_ms: float = 0.0, model: BenchModel | None = None) -> None:
    shipped = api.plan._lua_caps
    client = make_redis(Settings(redis_url=url, redis_max_connections=8,
                                 redis_timeout_seconds=5.0))
    plain = redis.Redis.from_url(url)
    bench = await seeded_bench(client, users, history=history, preemption=preemption,
                               zipf=zipf, model=model)
    snapshot = take_snapshot(plain)
    plans: list[Plan] = []

    def recording(plan: Plan) -> list[CompiledCap]:
        plans.append(plan)
        return shipped(plan)

    calls: list[tuple[list[Any], list[Any], list[Any]]] = []
    #: the ledger's length as each commit found it
    lengths: list[float] = []
    real = bench.engine.store._commit

    async def record(*, keys: list[Any], args: list[Any]) -> Any:
        plan = plans[-1]
        args_a = list(args)
        if all_caps_for_a or layout_a != "current":
            args_a = args_for_a(args, plan, plan.caps if all_caps_for_a else shipped(plan),
                                layout_a)
        calls.append((keys, args_a, args))
        lengths.append(plain.zcard(keys[0]))
        return await real(keys=keys, args=args)

    api.plan._lua_caps = recording
    bench.engine.store._commit = record  # type: ignore[assignment]
    await bench.end_to_end(decisions)
    api.plan._lua_caps = shipped
    print(f"ledger entries per commit: mean {statistics.fmean(lengths):.1f}, "
          f"p50 {pct(lengths, 50):.0f}, p90 {pct(lengths, 90):.0f}, max {max(lengths)}")
    shas = {"A": plain.script_load(script_a), "B": plain.script_load(script_b)}
    cpu: dict[str, list[float]] = {"A": [], "B": []}
    inside: dict[str, list[float]] = {"A": [], "B": []}
    replies: dict[str, list[Any]] = {}
    for round_ in range(rounds):
        for name in ("A", "B") if round_ % 2 == 0 else ("B", "A"):
            restore(plain, snapshot)
            out: list[Any] = []
            before, before_usec = redis_cpu(plain), inside_usec(plain, ("evalsha",))
            for start in range(0, len(calls), batch):
                pipe = plain.pipeline(transaction=False)
                for keys, args_a, args in calls[start:start + batch]:
                    pipe.evalsha(shas[name], len(keys), *keys, *(args_a if name == "A" else args))
                out.extend(pipe.execute())
                if gap_ms:
                    await asyncio.sleep(gap_ms / 1000)
            cpu[name].append((redis_cpu(plain) - before) / len(calls) * 1e6)
            inside[name].append((inside_usec(plain, ("evalsha",)) - before_usec) / len(calls))
            replies.setdefault(name, out)
    for name in ("A", "B"):
        runs = " ".join(f"{x:.1f}" for x in cpu[name])
        print(f"{name}: Redis CPU per commit median {statistics.median(cpu[name]):.1f} µs "
              f"({runs}) over {len(calls):,} commits per round; inside the script "
              f"{statistics.median(inside[name]):.1f} µs (INFO commandstats)")
    differ = sum(1 for x, y in zip(replies["A"], replies["B"], strict=True) if x != y)
    print(f"replies that differ: {differ}")
    await bench.engine.store.settle()  # the log appends the answers did not wait for
    await client.aclose()
    plain.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_commit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    current = resources.files("api").joinpath("lua", "commit.lua").read_text()
    parser.add_argument("--a", help="script A (default: the current commit.lua)")
    parser.add_argument("--b", help="script B (default: the current commit.lua)")
    parser.add_argument("--all-caps-for-a", action="store_true",
                        help="send A every compiled cap (the plan encoding before)")
    parser.add_argument("--string-records-for-a", action="store_true",
                        help="A is a commit.lua from before the records hash (one key per "
                             "record): KEYS[2] is the message's record key (not with --replay)")
    parser.add_argument("--map-plan-for-a", action="store_true",
                        help="send A the plan as maps (the layout before the positional plan)")
    parser.add_argument("--msgpack-cands-for-a", action="store_true",
                        help="send A the candidates inside the MessagePack plan (the layout "
                             "before the candidate records)")
    parser.add_argument("--per-candidate-args-for-a", action="store_true",
                        help="send A a member and an annotation per candidate as arguments "
                             "of their own (the layout before the member tail)")
    parser.add_argument("--replay", action="store_true",
                        help="Redis CPU per commit (INFO cpu), replayed A/B from a snapshot")
    parser.add_argument("--rounds", type=int, default=6, help="--replay: rounds per script")
    parser.add_argument("--preemption", action="store_true",
                        help="preemption on in the benchmark policy")
    parser.add_argument("--history", action="store_true",
                        help="seed half of the recipients' past activity first")
    parser.add_argument("--zipf", action="store_true",
                        help="--replay: Zipf recipients (bench_limits' mix: long ledgers at "
                             "the head) instead of uniform ones")
    parser.add_argument("--batch", type=int, default=20,
                        help="--replay: commits per pipeline (1: one round trip each)")
    parser.add_argument("--gap-ms", type=float, default=0.0,
                        help="--replay: idle time between pipelines, in milliseconds")
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--users", type=int, default=500)
    add_model_argument(parser)
    args = parser.parse_args(argv)
    model = resolve_model(args.model)
    print(model.describe())
    script_a = Path(args.a).read_text() if args.a else current
    layout_a = ("map" if args.map_plan_for_a else
                "msgpack-cands" if args.msgpack_cands_for_a else
                "per-candidate-args" if args.per_candidate_args_for_a else "current")
    script_b = Path(args.b).read_text() if args.b else current
    with EmbeddedRedis() as server:
        if args.replay:
            asyncio.run(replay(server.url, script_a, script_b, args.decisions, args.users,
                               args.all_caps_for_a, layout_a, args.rounds,
                               args.preemption, args.history, args.zipf, args.batch,
                               args.gap_ms, model))
        else:
            asyncio.run(run(server.url, script_a, script_b, args.decisions, args.users,
                            args.all_caps_for_a, layout_a, args.preemption,
                            args.history, args.string_records_for_a, model))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
