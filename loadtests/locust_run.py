"""One command for the locust suite, headless: ``python -m loadtests.locust_run``.

It starts the service unless ``--host`` names one (embedded in-memory redis-server plus
``uvicorn --workers W``, exactly as loadtests/bench_decisions.py does), runs
``locust -f loadtests/locustfile.py --headless --processes P --sendwise-seed`` for
``--duration`` seconds with ``--users`` simulated connections, and prints:

- requests/s, p50/p95/p99 and failures, overall and for decisions (from locust's CSV);
- the CPU the generator (locust, all its processes) and the server (uvicorn workers,
  redis-server) used, in cores, so a reader can tell whether the generator was the limit
  (on a shared 2-core box they compete; a generator near P cores is the bottleneck).

It writes, under ``--out`` (default ``./locust-results``): ``sendwise_stats.csv``,
``sendwise_stats_history.csv``, ``sendwise_failures.csv``, ``sendwise_exceptions.csv``
(locust's CSV report), ``report.html`` (locust's HTML report) and ``locust.log`` (its
output, with the seeding line and the cap spot check). Exit status: 0 when no request failed
and no answer was wrong, else 1.

    python -m loadtests.locust_run --users 64 --duration 60
    python -m loadtests.locust_run --host http://127.0.0.1:8000 --processes 2 --duration 120
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.locust_run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="", help="target base URL (default: start a service)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers of the started service")
    parser.add_argument("--users", type=int, default=64, help="simulated platform connections")
    parser.add_argument("--spawn-rate", type=float, default=0.0, help="users/s (default: all in 1 s)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                        help="locust worker processes (default: one per core)")
    parser.add_argument("--population", type=int, default=100_000, help="recipients (Zipf)")
    parser.add_argument("--seed-users", type=int, default=2_000,
                        help="recipients of tenant a given preferences (b: half)")
    parser.add_argument("--tenant-prefix", default="loadtest")
    parser.add_argument("--keys", default="", help="a=KEY,b=KEY when the service has API keys")
    parser.add_argument("--out", type=Path, default=Path("locust-results"))
    args = parser.parse_args(argv)
    if not 1 <= args.users <= 10_000 or not 1 <= args.duration <= 86_400 or args.processes < 1:
        parser.error("--users 1..10000, --duration 1..86400, --processes >= 1")
    return args


def read_stats(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as handle:
        return {row["Name"]: row for row in csv.DictReader(handle)}


def _row(label: str, row: dict[str, str] | None) -> str:
    if row is None:
        return f"{label:<28} (no requests)"
    return (f"{label:<28} {float(row['Requests/s']):>8,.0f} req/s  p50 {row['50%']:>5} ms  "
            f"p95 {row['95%']:>5} ms  p99 {row['99%']:>5} ms  requests {int(row['Request Count']):,}"
            f"  failures {int(row['Failure Count']):,}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    service = None
    host = args.host.rstrip("/")
    if not host:
        from loadtests.bench_decisions import Service

        service = Service(args.workers)
        service.start()
        host = f"http://127.0.0.1:{service.port}"
    try:
        prefix = args.out / "sendwise"
        cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
               "--host", host, "-u", str(args.users),
               "-r", str(args.spawn_rate or args.users), "-t", f"{args.duration:g}s",
               "--csv", str(prefix), "--html", str(args.out / "report.html"),
               "--only-summary", "--stop-timeout", "5", "--sendwise-seed",
               "--sendwise-users", str(args.population),
               "--sendwise-seed-users", str(args.seed_users),
               "--sendwise-tenant-prefix", args.tenant_prefix]
        if args.keys:
            cmd += ["--sendwise-keys", args.keys]
        if args.processes > 1:
            cmd += ["--processes", str(args.processes)]
        g0 = _children_cpu()
        s0 = service.server_cpu() if service else {}
        r0 = service.redis_cpu() if service else 0.0
        t0 = time.perf_counter()
        with (args.out / "locust.log").open("w") as log:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,  # noqa: S603
                                check=False, timeout=args.duration + 300).returncode
        wall = time.perf_counter() - t0
        generator = _children_cpu() - g0
        server = (sum(c - s0.get(pid, 0.0) for pid, c in service.server_cpu().items())
                  if service else float("nan"))
        redis = service.redis_cpu() - r0 if service else float("nan")
        output = (args.out / "locust.log").read_text()
        for line in output.splitlines():
            if line.startswith(("sendwise:", "  u")):  # the seeding line, the spot check
                print(line)
        stats_path = Path(f"{prefix}_stats.csv")
        if not stats_path.exists():
            print(output[-3000:], file=sys.stderr)
            return rc or 1
        stats = read_stats(stats_path)
        print(_row("decisions", stats.get("/v1/decisions")))
        print(_row("decisions (retries)", stats.get("/v1/decisions (retry)")))
        print(_row("all requests", stats.get("Aggregated")))
        print(f"CPU over {wall:.0f} s wall: generator (locust x{args.processes}) "
              f"{generator / wall:.2f} cores; server "
              + (f"{server / wall:.2f} cores, redis {redis / wall:.2f} cores"
                 if service else "(remote: not measured)"))
        total = stats.get("Aggregated")
        failures = int(total["Failure Count"]) if total else 0
        print(f"failures: {failures:,} (details in {prefix}_failures.csv); "
              f"reports: {prefix}_stats.csv, {args.out / 'report.html'}")
        return 1 if failures or rc else 0
    finally:
        if service is not None:
            service.stop()


if __name__ == "__main__":
    sys.exit(main())
