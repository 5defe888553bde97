"""The score step alone: ``api.scoring.choose`` on the plans real decisions build, for
recipients without a profile (the ``bench_engine`` population) and with one.

``bench_engine``'s recipients have no profile events, so every one of them is a "new user"
who keeps the earliest instant; a user with history takes the ranked path (every slot
annotated and handed to ``commit.lua``). This runs ``--decisions`` decisions through the
engine against an embedded Redis, keeps each ``choose`` call's inputs, then times
``choose`` on them again (one thread, median and p90 µs per call) with no profile and with
a few weeks of history (``loadtests.bench_scoring.profile_with_history``).

    python -m loadtests.bench_choose [--model bundled|heuristic|DIR] [--decisions 400]

Scores with the benchmarks' LightGBM model by default (loadtests/bench_model.py). Besides
wall time per call it prints the process CPU per call over the whole round (less sensitive
to other work on a shared machine than wall time).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

import numpy as np

import api.engine
from api.redis_client import make_redis
from api.redis_server import EmbeddedRedis
from api.scoring import ActiveModel, choose
from api.settings import Settings
from loadtests.bench_engine import TENANT, Bench
from loadtests.bench_model import BenchModel
from loadtests.bench_model import add_argument as add_model_argument
from loadtests.bench_model import resolve as resolve_model
from loadtests.bench_scoring import profile_with_history


def capture(decisions: int, model: BenchModel) -> tuple[ActiveModel, list[tuple[Any, ...]]]:
    """Run real decisions, recording what the engine passed to ``choose``."""
    captured: list[tuple[Any, ...]] = []
    namespace = vars(api.engine)  # the name the engine calls
    real = namespace["choose"]

    def spy(model: ActiveModel, plan: Any, profile: Any, **kwargs: Any) -> Any:
        captured.append((plan, kwargs))
        return real(model, plan, profile, **kwargs)

    async def run(url: str) -> ActiveModel:
        client = make_redis(Settings(redis_url=url, redis_max_connections=8,
                                     redis_timeout_seconds=5.0))
        bench = Bench(client, 300, model)
        await bench.seed()
        for _ in range(decisions):
            await bench.engine.decide(TENANT, bench.next_request())
        active = await bench.engine.tenant_models.model_for(TENANT)
        await bench.engine.store.settle()  # the log appends the answers did not wait for
        await client.aclose()
        return active

    namespace["choose"] = spy
    try:
        with EmbeddedRedis() as redis:
            active = asyncio.run(run(redis.url))
    finally:
        namespace["choose"] = real
    return active, captured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_choose",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser)
    parser.add_argument("--decisions", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    bench_model = resolve_model(args.model)
    print(bench_model.describe())
    model, inputs = capture(args.decisions, bench_model)
    rng = np.random.default_rng(1)
    profiles = [profile_with_history(rng) for _ in range(20)]
    windows = statistics.fmean(len(plan.cands) for plan, _ in inputs)
    print(f"scoring with {model.version}; {len(inputs)} plans, {windows:.2f} channel windows "
          "each; µs per choose call, median / p90 wall, mean CPU")
    for label, with_profile in (("no profile", False), ("with history", True)):
        for _ in range(args.rounds):
            times: list[float] = []
            c0 = time.process_time()
            for k, (plan, kwargs) in enumerate(inputs):
                profile = profiles[k % len(profiles)] if with_profile else None
                t0 = time.perf_counter_ns()
                choose(model, plan, profile, **kwargs)
                times.append((time.perf_counter_ns() - t0) / 1000)
            used = time.process_time() - c0
            times.sort()
            print(f"  {label:<13} {statistics.median(times):6.0f} / "
                  f"{times[int(0.9 * len(times))]:6.0f}   CPU {1e6 * used / len(times):6.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
