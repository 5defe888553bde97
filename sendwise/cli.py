"""The ``sendwise`` command: ``serve`` (the API) plus the ML commands from ``training``.

Heavy imports happen inside each command so ``sendwise --help`` stays instant and the
serving path never imports the training stack.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="run the decision API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="API worker processes")
    serve.add_argument("--insecure-no-auth", action="store_true",
                       help="allow a non-loopback --host without API keys (SENDWISE_API_KEYS): "
                            "every client can then act as any tenant")
    serve.add_argument("--model", metavar="DIR",
                       help="model artifact scoring decisions (sets SENDWISE_MODEL_DIR for "
                            "every worker); refused unless it passed its champion gate, and "
                            "then the heuristic scores")

    def run(args: argparse.Namespace) -> int:
        import os

        from api.serve import serve as run_serve

        if args.model:
            os.environ["SENDWISE_MODEL_DIR"] = str(args.model)

        return run_serve(host=args.host, port=args.port, workers=args.workers,
                         insecure_no_auth=args.insecure_no_auth)

    serve.set_defaults(func=run)


def _add_keys(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="mint API keys and the decision-id secret")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    new = actions.add_parser(
        "new", help="mint an API key: the key goes to stderr (shown once), the line to store "
                    "to stdout (append it to SENDWISE_API_KEYS_FILE)")
    new.add_argument("--tenant", required=True)
    new.add_argument("--role", choices=["decide", "admin"], required=True)
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
    parser = argparse.ArgumentParser(prog="sendwise", description=__doc__)
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
