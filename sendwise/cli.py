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

    def run(args: argparse.Namespace) -> int:
        from api.serve import serve as run_serve

        return run_serve(host=args.host, port=args.port, workers=args.workers,
                         insecure_no_auth=args.insecure_no_auth)

    serve.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sendwise", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
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
