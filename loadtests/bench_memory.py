"""Redis memory of the per-user values this repository controls, measured with MEMORY USAGE
(SAMPLES 0) on an embedded redis-server (docs/benchmarks.md, "Memory per active user"):

* idempotency records written by the real engine for a fixed request sequence (the
  ``bench_engine`` workload): mean stored length and MEMORY USAGE per record (the user's
  records hash divided by its records; a previous release's per-message keys counted the
  same way), the hashes' encodings, and per active user by kind of key;
* the send-time profile hash (``p`` + ``seen`` + ``eng`` + ``rev``, as ``api/profiles.py``
  writes it) for three users, in profile format 2 and the compact format 3, with Redis'
  default ``hash-max-ziplist-value`` and with 2048.

    python -m loadtests.bench_memory
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics

import numpy as np
import redis

from api.redis_client import make_redis
from api.redis_server import EmbeddedRedis
from api.settings import Settings
from loadtests.bench_engine import Bench
from loadtests.bench_scoring import NOW, profile_with_history
from models.profile import Profile


async def _decide(url: str, users: int, decisions: int) -> None:
    client = make_redis(Settings(redis_url=url))
    try:
        bench = Bench(client, users)
        bench.factory.prefix = "e"  # the same message ids in every run
        await bench.seed()
        await bench.end_to_end(decisions)
    finally:
        await client.aclose()


def records(url: str, users: int, decisions: int) -> None:
    asyncio.run(_decide(url, users, decisions))
    r = redis.Redis.from_url(url)
    stored = count = 0
    usage = 0
    encodings: dict[str, int] = {}
    per_user: dict[str, dict[str, int]] = {}
    for key in r.scan_iter(match="sw:{*", count=5000):
        name = key.decode()
        base, _, rest = name.partition("}:")
        kind = "record" if rest.startswith("m:") or rest == "recs" else rest.split(":", 1)[0]
        used = int(r.memory_usage(key, samples=0) or 0)
        kinds = per_user.setdefault(base, {})
        kinds[kind] = kinds.get(kind, 0) + used
        if rest == "recs":  # api/keys.py: message id -> "<expiry ms> <record>", "" -> marker
            values = [v for f, v in r.hgetall(key).items() if f != b""]
            count += len(values)
            stored += sum(len(v) for v in values)
            usage += used
            encoding = r.object("encoding", key)
            label = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
            encodings[label] = encodings.get(label, 0) + 1
        elif kind == "record":  # a previous release's key per message
            count += 1
            stored += int(r.strlen(key))
            usage += used
    active = [kinds for kinds in per_user.values() if "ledger" in kinds]
    print(f"{decisions:,} decisions, {users:,} users: {count:,} records, mean stored "
          f"{stored / count:.0f} B, MEMORY USAGE per record {usage / count:.0f} B; "
          f"records hashes by encoding: {encodings}")
    for kind in sorted({k for kinds in active for k in kinds}):
        mean = sum(kinds.get(kind, 0) for kinds in active) / len(active)
        print(f"  per active user ({len(active)}): {kind:<8} {mean:7.0f} B")
    print(f"  per active user, total {statistics.fmean(sum(k.values()) for k in active):.0f} B")


def profiles(url: str) -> None:
    r = redis.Redis.from_url(url)
    rng = np.random.default_rng(1)
    sparse = Profile()
    for i in range(5):
        sparse.record_activity(NOW - i * 3 * 86400, int(rng.integers(0, 168)))
    sparse.record_send(NOW, 1)
    cases = [("new (no events)", Profile(), 0, 0), ("sparse: 5 events, 1 send", sparse, 6, 1),
             ("80 events, 20 sends", profile_with_history(rng), 80, 6)]
    key = "sw:{bench:profile-user}:profile"
    print("\n| profile | format | p bytes | hash-max-ziplist-value | encoding | MEMORY USAGE |")
    print("|---|---|---|---|---|---|")
    old = r.config_get("hash-max-ziplist-value")["hash-max-ziplist-value"]
    try:
        for name, profile, seen, engaged in cases:
            for label, raw in (("2", profile.to_bytes()), ("3", profile.to_compact_bytes())):
                for limit in ("64", "2048"):
                    r.config_set("hash-max-ziplist-value", limit)
                    r.delete(key)
                    r.hset(key, mapping={"p": raw, "seen": os.urandom(8 * seen),
                                         "eng": os.urandom(8 * engaged), "rev": 7})
                    r.pexpire(key, 86_400_000)
                    encoding = r.object("encoding", key)
                    print(f"| {name} | {label} | {len(raw)} | {limit} | "
                          f"{encoding.decode() if isinstance(encoding, bytes) else encoding} | "
                          f"{r.memory_usage(key, samples=0)} |")
    finally:
        r.config_set("hash-max-ziplist-value", old)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--decisions", type=int, default=3000)
    args = parser.parse_args(argv)
    with EmbeddedRedis() as server:
        records(server.url, args.users, args.decisions)
        profiles(server.url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
