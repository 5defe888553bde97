"""``SENDWISE_DECISION_CONCURRENCY`` side by side: the admission gate (api/admission.py)
against no gate, or several limits, on fresh services in alternating order.

For each value and round: start the service of ``bench_decisions`` (embedded Redis,
uvicorn, ``--workers``, the benchmark's LightGBM model), seed it, warm it up, measure the
closed-loop ceiling with wrk, then run decisions at ``--share`` of that ceiling on the
open-loop generator (``loadtests/httpload.py``: latency from the scheduled start) and print
the ceiling and the fixed-load p50 / p99 / max. Rounds alternate the order of the values,
so a machine that slows down during the run does not favour one of them.

    python -m loadtests.bench_admission --values 0,8 --rounds 2 --workers 2

Needs ``wrk`` on PATH. Each service takes ~30 s (seeding 10,000 recipients with histories).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time

from loadtests import httpload
from loadtests.bench_decisions import Service, run_wrk, seed_tenant
from loadtests.bench_model import BenchModel
from loadtests.bench_model import add_argument as add_model_argument
from loadtests.bench_model import resolve as resolve_model

USERS = 10_000


def one(value: str, workers: int, share: float, seconds: float, seed: int,
        model: BenchModel) -> tuple[float, float, float, float]:
    """(ceiling req/s, fixed-load p50, p99, max ms) of one fresh service."""
    os.environ["SENDWISE_DECISION_CONCURRENCY"] = value
    service = Service(workers, model=model)
    try:
        service.start()
        seed_tenant(service.port, USERS)
        run_wrk(service, "/v1/decisions", 3, 32, USERS, f"warm{seed}", 1)
        closed = run_wrk(service, "/v1/decisions", 5, 32, USERS, f"closed{seed}", 1)
        ceiling = closed["requests"] / (closed["duration_us"] / 1e6)
        spec = httpload.PhaseSpec(port=service.port, path="/v1/decisions", seconds=seconds,
                                  users=USERS, prefix=f"adm{value}-{time.time_ns()}",
                                  seed=seed, rate=round(share * ceiling, -1))
        latencies = sorted(httpload.latencies_of(httpload.run_phase(spec)))
        return (ceiling, latencies[len(latencies) // 2],
                latencies[int(len(latencies) * 0.99)], latencies[-1])
    finally:
        service.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_admission",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--values", default="0,8",
                        help="SENDWISE_DECISION_CONCURRENCY values to compare (0: no gate)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--share", type=float, default=0.6,
                        help="fixed load as a share of each service's own ceiling")
    parser.add_argument("--seconds", type=float, default=12.0, help="fixed-load run length")
    add_model_argument(parser)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("needs wrk on PATH (Debian package wrk)")
    values = [v.strip() for v in args.values.split(",") if v.strip()]
    model = resolve_model(args.model)
    print(model.describe())
    results: dict[str, list[tuple[float, float, float, float]]] = {v: [] for v in values}
    for rnd in range(args.rounds):
        for value in values if rnd % 2 == 0 else values[::-1]:
            ceiling, p50, p99, top = one(value, args.workers, args.share, args.seconds,
                                         7 + rnd, model)
            results[value].append((ceiling, p50, p99, top))
            print(f"SENDWISE_DECISION_CONCURRENCY={value:>3}  {args.workers}w: ceiling "
                  f"{ceiling:6,.0f}/s; at {args.share:.0%} p50 {p50:6.2f}  p99 {p99:7.2f}  "
                  f"max {top:7.1f} ms", flush=True)
    print("\nmedians over the rounds:")
    for value, rows in results.items():
        print(f"  {value:>3}: ceiling {statistics.median(r[0] for r in rows):6,.0f}/s, p99 "
              f"{statistics.median(r[2] for r in rows):7.2f} ms, max "
              f"{statistics.median(r[3] for r in rows):7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
