"""``sendwise serve`` as a real subprocess, for tests about processes, sockets and crashes.

Everything waits on events -- a log line, a process exit (pidfd), a connect attempt --
bounded by a deadline; nothing sleeps on the clock.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
STARTUP_SECONDS = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class Lines:
    """A stream's lines, read on a daemon thread, waited on with a condition."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._closed = False
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def wait(self, predicate: Callable[[list[str]], bool], timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self.lines) or self._closed,
                                          timeout) and predicate(self.lines)

    def wait_closed(self, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._closed, timeout)


def json_lines(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines if line.strip()]


class Served:
    """One ``sendwise serve`` process (own session, so its whole group can be killed)."""

    def __init__(self, *args: str, env: Mapping[str, str], port: int | None = None) -> None:
        self.port = port or free_port()
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith("SENDWISE_") and k != "REDIS_URL"}
        full_env.update(env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sendwise", "serve", "--port", str(self.port), *args],
            cwd=ROOT, env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.stdout = Lines(self.proc.stdout)
        self.stderr = Lines(self.proc.stderr)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_workers(self, count: int) -> list[int]:
        """Pids of the first ``count`` workers that logged ``worker_started``. The port was
        bound before any worker started, so a connection made now waits in the backlog."""
        def started(lines: list[str]) -> bool:
            return sum('"worker_started"' in line for line in lines) >= count

        assert self.stdout.wait(started, STARTUP_SECONDS), self.describe()
        return [json.loads(line)["pid"] for line in self.stdout.lines
                if '"worker_started"' in line][:count]

    def request(self, method: str, path: str, body: Any = None,
                timeout: float = 10.0) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            payload = None if body is None else json.dumps(body)
            conn.request(method, path, body=payload,
                         headers={"content-type": "application/json"} if body is not None else {})
            response = conn.getresponse()
            raw = response.read()
            if response.getheader("content-type", "").startswith("application/json"):
                return response.status, json.loads(raw)
            return response.status, raw.decode(errors="replace")
        finally:
            conn.close()

    def describe(self) -> str:
        return (f"exit={self.proc.poll()}\nstdout:\n" + "\n".join(self.stdout.lines[-20:])
                + "\nstderr:\n" + "\n".join(self.stderr.lines[-20:]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.stdout.wait_closed(5)
        self.stderr.wait_closed(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def served(*args: str, env: Mapping[str, str], port: int | None = None) -> Iterator[Served]:
    server = Served(*args, env=env, port=port)
    try:
        yield server
    finally:
        server.stop()


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc), taken while the tree is intact."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    """Wait (on pidfds, no polling) until every pid has exited; return those still alive."""
    deadline = time.monotonic() + timeout
    alive: set[int] = set()
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                alive.add(pid)
        finally:
            os.close(fd)
    return alive


def requires_linux() -> pytest.MarkDecorator:
    return pytest.mark.skipif(not sys.platform.startswith("linux"),
                              reason="pidfds, /proc and PR_SET_PDEATHSIG are Linux")


def tcp_sockets(port: int) -> dict[int, str]:
    """Socket inode -> state (``LISTEN``, ``ESTABLISHED``, ...) of every TCP socket whose
    local port is ``port``, from /proc/net/tcp and tcp6."""
    states = {"01": "ESTABLISHED", "0A": "LISTEN"}
    found: dict[int, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as handle:
            for line in list(handle)[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    found[int(fields[9])] = states.get(fields[3], fields[3])
    return found


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process ``pid`` holds open."""
    inodes: set[int] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(int(target[len("socket:["):-1]))
    return inodes
