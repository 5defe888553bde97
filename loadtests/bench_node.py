"""One Redis node's ceiling: Redis CPU per decision when the node is saturated.

The HTTP benchmark (bench_decisions.py) divides Redis's CPU by the decisions served, but a
2-core box cannot saturate Redis: one API worker leaves it idle 80-90% of the time, and on
a VM a process that idles between calls pays more CPU per call (caches and the vCPU's
state lost while it halts; docs/benchmarks.md, "Redis CPU per decision at saturation").
That figure is what the node costs at the benchmark's load, not what it costs at its
ceiling. This benchmark measures the ceiling the way a saturated node runs:

1. seeds the ``bench_engine`` population (policy, preferences, half of the recipients
   with a history, as ``bench_decisions`` seeds it) in an embedded redis-server, and takes
   a snapshot of every key;
2. runs ``--decisions`` decisions through ``Engine.decide`` (the bundled model in the
   loop unless ``--model`` says otherwise, the state cache and the decision log on) and
   records every command the engine sends to Redis, in order: the EVALSHAs of read.lua
   and commit.lua and the log's XADDs;
3. replays that command stream from the snapshot, ``--rounds`` times per mode, and reads
   ``INFO cpu`` (the server's own CPU) and ``INFO commandstats`` (time inside commands)
   around each round. Modes: ``pipelined`` (``--batch`` commands per write, back to back:
   a saturated node), ``one-by-one`` (one round trip per command) and ``gap`` (one
   command, then ``--gap-ms`` of idle: a lightly loaded node, like the HTTP benchmark's).

The scripts' replies of every round are compared with the first round's (they must be
identical: the commands carry their own clock). One more pipelined round under SLOWLOG
gives each command's share of the time. The last line is the node's ceiling:
``1 core / Redis CPU per decision (pipelined)``.

    python -m loadtests.bench_node
    python -m loadtests.bench_node --decisions 5000 --users 10000 --gap-ms 1,5
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from api.redis_client import AutoPipeline, make_redis
from api.redis_server import EmbeddedRedis
from api.settings import Settings
from loadtests.bench_commit import seed_history
from loadtests.bench_engine import Bench, Snapshot, inside_usec, redis_cpu, restore, take_snapshot
from loadtests.bench_model import BenchModel
from loadtests.bench_model import add_argument as add_model_argument
from loadtests.bench_model import resolve as resolve_model


async def record(url: str, users: int, decisions: int, warmup: int, model: BenchModel
                 ) -> tuple[Snapshot, list[tuple[Any, ...]], dict[str, str]]:
    """Seed, snapshot, then decide ``decisions`` times recording every command sent."""
    client = make_redis(Settings(redis_url=url, redis_max_connections=8,
                                 redis_timeout_seconds=5.0))
    plain = redis.Redis.from_url(url)
    bench = Bench(client, users, model)  # type: ignore[arg-type]
    await bench.seed()
    await seed_history(bench, users)
    await bench.end_to_end(warmup)
    snapshot = take_snapshot(plain)
    pipeline = bench.engine.store._pipeline
    if not isinstance(pipeline, AutoPipeline):
        raise SystemExit("the store must send through its auto-pipeline")
    commands: list[tuple[Any, ...]] = []
    sent = pipeline._enqueue

    def recording(command: tuple[Any, ...]) -> asyncio.Future[Any]:
        commands.append(command)
        return sent(command)

    pipeline._enqueue = recording  # type: ignore[method-assign]
    await bench.end_to_end(decisions)
    pipeline._enqueue = sent  # type: ignore[method-assign]
    # the scripts' names, for the per-command table
    store: Any = bench.engine.store  # its scripts are ScriptCallers (api/redis_client.py)
    names = {store._read._script.sha: "read.lua", store._commit._script.sha: "commit.lua"}
    await store.settle()  # the log appends the answers did not wait for
    await client.aclose()
    plain.close()
    return snapshot, commands, names


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def kind_of(command: tuple[Any, ...], names: dict[str, str]) -> str:
    """A recorded command's name: the script's file name for an EVALSHA."""
    if command[0] == "EVALSHA":
        return names.get(command[1], "other script")
    return str(command[0])


def replay(plain: redis.Redis, commands: list[tuple[Any, ...]], batch: int, gap_ms: float
           ) -> tuple[float, float, list[Any]]:
    """One round: Redis CPU seconds and µs inside commands for the stream, and its replies."""
    out: list[Any] = []
    cpu0, inside0 = redis_cpu(plain), inside_usec(plain)
    for start in range(0, len(commands), batch):
        pipe = plain.pipeline(transaction=False)
        for command in commands[start:start + batch]:
            pipe.execute_command(*command)  # type: ignore[no-untyped-call]
        out.extend(pipe.execute(raise_on_error=False))
        if gap_ms:
            time.sleep(gap_ms / 1000)
    return redis_cpu(plain) - cpu0, inside_usec(plain) - inside0, out


@dataclass
class NodeCost:
    """What ``measure`` found: Redis CPU and time inside commands per decision, by mode."""

    decisions: int
    commands: int
    keys: int
    #: commands of each kind per decision
    per_decision: dict[str, float]
    #: mode -> (Redis CPU µs per decision of each round, µs inside commands of each round)
    modes: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    #: kind -> mean µs inside one call (SLOWLOG of one more pipelined round)
    inside_by_kind: dict[str, float] = field(default_factory=dict)
    #: the scripts' replies that differed from the first round's (must be 0)
    differ: int = 0

    def cpu(self, mode: str) -> float:
        return statistics.median(self.modes[mode][0])

    def inside(self, mode: str) -> float:
        return statistics.median(self.modes[mode][1])

    @property
    def saturated(self) -> float:
        """Redis CPU µs per decision with the commands pipelined back to back."""
        return self.cpu("pipelined")

    @property
    def ceiling(self) -> float:
        """Decisions/s one Redis core serves at that cost."""
        return 1e6 / self.saturated

    def table(self) -> str:
        rounds = len(self.modes["pipelined"][0])
        lines = [f"| mode | Redis CPU per decision (median of {rounds}) | inside commands | "
                 "each round |", "|---|---|---|---|"]
        for name, (cpus, _) in self.modes.items():
            lines.append(f"| {name} | {self.cpu(name):.1f} µs | {self.inside(name):.1f} µs | "
                         + " ".join(f"{x:.1f}" for x in cpus) + " |")
        # SLOWLOG's own bookkeeping inflates a script's time (its inner commands are logged
        # inside it), so the round gives each kind's share, applied to the pipelined time
        total = sum(self.per_decision[k] * v for k, v in self.inside_by_kind.items())
        lines += ["", "| command | calls per decision | share of the time inside commands "
                      "(SLOWLOG round) | inside commands per decision (pipelined) |",
                  "|---|---|---|---|"]
        for kind, inside in self.inside_by_kind.items():
            share = self.per_decision[kind] * inside / total
            lines.append(f"| {kind} | {self.per_decision[kind]:.2f} | {100 * share:.0f}% | "
                         f"{share * self.inside('pipelined'):.1f} µs |")
        return "\n".join(lines)


def measure(users: int, decisions: int, model: BenchModel, *, warmup: int = 300,
            rounds: int = 3, batch: int = 20, gaps: tuple[float, ...] = ()) -> NodeCost:
    """Record ``decisions`` decisions' commands on a fresh embedded Redis, then replay them
    in each mode ``rounds`` times (alternating the order of the modes), then once more
    pipelined under SLOWLOG for each kind's own time."""
    with EmbeddedRedis() as server:
        snapshot, commands, names = asyncio.run(
            record(server.url, users, decisions, warmup, model))
        kinds = collections.Counter(kind_of(c, names) for c in commands)
        cost = NodeCost(decisions, len(commands), len(snapshot),
                        {kind: n / decisions for kind, n in kinds.most_common()})
        # the scripts' replies must repeat; an XADD's reply is the entry id Redis picked
        compared = [i for i, c in enumerate(commands) if c[0] == "EVALSHA"]
        plain = redis.Redis.from_url(server.url)
        modes = [("pipelined", batch, 0.0), ("one-by-one", 1, 0.0),
                 *((f"gap {g:g} ms", 1, g) for g in gaps)]
        reference: list[Any] | None = None
        for round_ in range(rounds):
            for name, size, gap in modes if round_ % 2 == 0 else list(reversed(modes)):
                restore(plain, snapshot)
                cpu, inside, replies = replay(plain, commands, size, gap)
                if reference is None:
                    reference = replies
                else:
                    cost.differ += sum(1 for i in compared if reference[i] != replies[i])
                per = cost.modes.setdefault(name, ([], []))
                per[0].append(cpu / decisions * 1e6)
                per[1].append(inside / decisions)
        cost.modes = {name: cost.modes[name] for name, _, _ in modes}
        # one more pipelined round with SLOWLOG recording every command: each kind's own
        # time, measured inside the whole stream (replayed alone, a kind would find the
        # user's keys colder than after the read that precedes its commit)
        restore(plain, snapshot)
        plain.config_set("slowlog-max-len", 8 * len(commands))
        plain.config_set("slowlog-log-slower-than", 0)
        plain.slowlog_reset()
        replay(plain, commands, batch, 0.0)
        plain.config_set("slowlog-log-slower-than", 10_000)
        by_name = {c[1] if c[0] == "EVALSHA" else c[0]: kind_of(c, names) for c in commands}
        usec: dict[str, list[int]] = collections.defaultdict(list)
        for entry in plain.execute_command("SLOWLOG", "GET", -1):  # type: ignore[no-untyped-call]
            command = [_text(x) for x in entry[3][:2]]
            kind = by_name.get(command[1] if command[0].upper() == "EVALSHA" else command[0].upper())
            if kind is not None and command[0].upper() in ("EVALSHA", "XADD"):
                usec[kind].append(int(entry[2]))
        cost.inside_by_kind = {kind: statistics.fmean(usec[kind]) for kind in kinds if usec[kind]}
        plain.close()
    return cost


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_node", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000, help="recipient population")
    parser.add_argument("--decisions", type=int, default=3_000, help="decisions recorded")
    parser.add_argument("--warmup", type=int, default=300,
                        help="decisions before the snapshot, so ledgers have some history")
    parser.add_argument("--rounds", type=int, default=3, help="replays per mode")
    parser.add_argument("--batch", type=int, default=20, help="commands per pipelined write")
    parser.add_argument("--gap-ms", default="1",
                        help="comma-separated idle gaps for the gap mode ('' skips it)")
    add_model_argument(parser)
    args = parser.parse_args(argv)
    if args.users < 1 or args.decisions < 1 or args.rounds < 1 or args.batch < 1:
        parser.error("--users, --decisions, --rounds and --batch must be >= 1")
    try:
        gaps = tuple(float(g) for g in args.gap_ms.split(",") if g.strip())
    except ValueError:
        parser.error("--gap-ms: comma-separated numbers of milliseconds")
    if any(not 0 < g <= 100 for g in gaps):
        parser.error("--gap-ms: each gap must be in (0, 100] ms")
    model = resolve_model(args.model)
    print(model.describe())
    t0 = time.perf_counter()
    cost = measure(args.users, args.decisions, model, warmup=args.warmup, rounds=args.rounds,
                   batch=args.batch, gaps=gaps)
    print(f"recorded {cost.commands:,} commands of {cost.decisions:,} decisions "
          f"({cost.keys:,} keys in the snapshot); measured in {time.perf_counter() - t0:.0f} s")
    print("per decision: " + ", ".join(f"{kind} {n:.2f}" for kind, n in cost.per_decision.items()))
    print("\n" + cost.table())
    print(f"\nreplies that differ from the first round: {cost.differ}")
    print(f"one Redis node's ceiling: {cost.ceiling:,.0f} decisions/s "
          f"(1 core / {cost.saturated:.1f} µs of Redis CPU per decision, pipelined)")
    return 0 if cost.differ == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
