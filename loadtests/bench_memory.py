"""Redis memory of the per-user values this repository controls, measured with MEMORY USAGE
(SAMPLES 0) on an embedded redis-server (docs/benchmarks.md, "Memory per active user"):

* idempotency records written by the real engine for a fixed request sequence (the
  ``bench_engine`` workload): mean stored length and MEMORY USAGE per record (the user's
  records hash divided by its records; a previous release's per-message keys counted the
  same way), the hashes' encodings, and per active user by kind of key;
* the send-time profile hash (``p`` + ``seen`` + ``eng`` + ``rev``, as ``api/profiles.py``
  writes it) for three users, in profile format 2 and the compact format 3, with Redis'
  default ``hash-max-ziplist-value`` and with 2048.

The same decisions (same message ids, users, policy and preferences; the clock is real)
in record format 2 to 6 (``SENDWISE_RECORD_FORMAT``), preference documents in format 1
and 2 (``SENDWISE_PREFERENCES_FORMAT``), and with message ids as long as
``bench_decisions``' (``--message-prefix``) at the embedded server's
``zset-max-ziplist-value`` and at Redis' default 64:

    python -m loadtests.bench_memory
    python -m loadtests.bench_memory --record-format 5
    python -m loadtests.bench_memory --preferences-format 1
    python -m loadtests.bench_memory --message-prefix 1-1w1r-decisions-0-0 --zset-max-ziplist-value 64
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics

import msgspec
import numpy as np
import redis

from api.record_codes import RECORD_FORMAT
from api.redis_client import make_redis
from api.redis_server import EmbeddedRedis
from api.render import record_parts
from api.settings import Settings
from loadtests.bench_engine import Bench
from loadtests.bench_scoring import NOW, profile_with_history
from models.profile import Profile


async def _decide(url: str, users: int, decisions: int, *, record_format: int = RECORD_FORMAT,
                  prefix: str = "e", preferences_format: int = 2) -> None:
    client = make_redis(Settings(redis_url=url))
    try:
        bench = Bench(client, users)
        bench.engine.settings = msgspec.structs.replace(bench.engine.settings,
                                                        record_format=record_format)
        bench.engine.store.preferences_format = preferences_format
        bench.factory.prefix = prefix  # the same message ids in every run
        await bench.seed()
        await bench.end_to_end(decisions)
        await bench.engine.store.settle()  # the log appends the answers did not wait for
    finally:
        await client.aclose()


def records(url: str, users: int, decisions: int, *, record_format: int = RECORD_FORMAT,
            prefix: str = "e", preferences_format: int = 2) -> None:
    asyncio.run(_decide(url, users, decisions, record_format=record_format, prefix=prefix,
                        preferences_format=preferences_format))
    r = redis.Redis.from_url(url)
    stored = count = context = outcome = 0
    ledgers: dict[str, int] = {}
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
            for value in values:  # "<expiry> <record>" (api/render.py: record_parts)
                parts = record_parts(value.partition(b" ")[2])
                context += len(parts[0])
                outcome += len(parts[1])
            usage += used
            encoding = r.object("encoding", key)
            label = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
            encodings[label] = encodings.get(label, 0) + 1
        elif kind == "ledger":
            encoding = r.object("encoding", key)
            label = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
            ledgers[label] = ledgers.get(label, 0) + 1
        elif kind == "record":  # a previous release's key per message
            count += 1
            stored += int(r.strlen(key))
            usage += used
    active = [kinds for kinds in per_user.values() if "ledger" in kinds]
    print(f"{decisions:,} decisions, {users:,} users: {count:,} records, mean stored "
          f"{stored / count:.0f} B (context {context / count:.0f}, outcome "
          f"{outcome / count:.0f}), MEMORY USAGE per record {usage / count:.0f} B; "
          f"records hashes by encoding: {encodings}; ledgers by encoding: {ledgers}")
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
    parser.add_argument("--record-format", type=int, choices=[2, 3, 4, 5, 6], default=RECORD_FORMAT,
                        help="the format records are written in (SENDWISE_RECORD_FORMAT)")
    parser.add_argument("--preferences-format", type=int, choices=[1, 2], default=2,
                        help="the format preference documents are written in "
                             "(SENDWISE_PREFERENCES_FORMAT)")
    parser.add_argument("--message-prefix", default="e",
                        help="message ids are <prefix>-<n>; bench_decisions' are ~25 characters")
    parser.add_argument("--zset-max-ziplist-value", type=int, default=None,
                        help="the server's setting for this run (default: the embedded one's)")
    args = parser.parse_args(argv)
    with EmbeddedRedis() as server:
        if args.zset_max_ziplist_value is not None:
            redis.Redis.from_url(server.url).config_set("zset-max-ziplist-value",
                                                        args.zset_max_ziplist_value)
        records(server.url, args.users, args.decisions, record_format=args.record_format,
                prefix=args.message_prefix, preferences_format=args.preferences_format)
        profiles(server.url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
