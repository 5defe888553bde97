"""A small HTTP/1.1 keep-alive load generator on raw asyncio protocols (no HTTP library).

Why not httpx/aiohttp: on a 2-core box the load generator shares the CPU with the server,
and a client library costs more per request than the service's trivial endpoint does
(docs/architecture.md, Performance: one locust process tops out below one uvicorn worker). A bare
``asyncio.Protocol`` that writes a prebuilt request and parses ``Content-Length`` framing is
several times cheaper, so the numbers describe the server rather than the client.

Two shapes:

* closed loop (``closed_loop``): C connections, each sends its next request as soon as the
  previous answer arrives. Finds the ceiling; latency there is mostly queueing.
* open loop (``open_loop``): requests start on a fixed schedule (``rate`` per second)
  whatever the server does, on as many connections as needed. Latency is measured from the
  *scheduled* start, so a stall is charged to every request it delayed (no coordinated
  omission). This is the "p50/p99 at a fixed load" of docs/benchmarks.md.

Both run inside ``run_phase`` in a child process (``multiprocessing`` spawn), which reports
its own CPU time so the caller can show the generator's cost beside the server's.
Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from array import array
from collections.abc import Callable
from typing import Any, cast

import msgspec

from loadtests.population import RequestFactory

HOST = "127.0.0.1"
_json = msgspec.json.Encoder()


class PhaseSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What one generator process does for one phase (picklable across spawn)."""

    port: int
    path: str
    seconds: float
    users: int
    prefix: str
    seed: int
    concurrency: int = 0  # closed loop: connections
    rate: float = 0.0  # open loop: requests per second (this process's share)
    max_connections: int = 512


class PhaseResult(msgspec.Struct, kw_only=True):
    """Raw results of one generator process; latencies are milliseconds."""

    requests: int = 0
    elapsed: float = 0.0
    latencies: bytes = b""
    statuses: dict[int, int] = msgspec.field(default_factory=dict)
    decisions: dict[str, int] = msgspec.field(default_factory=dict)
    errors: int = 0
    cpu_seconds: float = 0.0
    max_lag_ms: float = 0.0
    connections: int = 0
    #: the slowest request: its start (``time.perf_counter``, the same clock in every
    #: process) and its latency, so a stall can be matched with the machine's scheduler
    #: at that instant (``loadtests/schedwatch.py``)
    worst_at: float = 0.0
    worst_ms: float = 0.0


def build_request(port: int, method: str, path: str, body: bytes | None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
    if body is None:
        return (head + "\r\n").encode()
    return (head + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body


class Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is None:
            return
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).lower()
        at = head.find(b"content-length:")
        if at < 0:  # chunked or close-delimited: not produced by this service
            self._fail(ConnectionError("response without content-length"))
            return
        stop = head.find(b"\r\n", at)
        length = int(head[at + 15: stop if stop >= 0 else len(head)])
        total = end + 4 + length
        if len(buf) < total:
            return
        status = int(head[9:12])
        body = bytes(buf[end + 4: total])
        del buf[:total]
        waiter, self.waiter = self.waiter, None
        if not waiter.done():
            waiter.set_result((status, body))

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError("connection closed by the server"))

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.closed or self.transport is None:
            raise ConnectionError("connection is closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


async def connect(port: int) -> Connection:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(Connection, HOST, port)
    return proto


def decision_of(body: bytes) -> str:
    """The ``decision`` field of a decision response without decoding the whole body."""
    at = body.find(b'"decision":"')
    if at < 0:
        return "other"
    start = at + 12
    return body[start: body.find(b'"', start)].decode()


class _Recorder:
    def __init__(self) -> None:
        self.latencies = array("d")
        self.statuses: dict[int, int] = {}
        self.decisions: dict[str, int] = {}
        self.errors = 0
        self.worst_at = 0.0
        self.worst_ms = 0.0

    def record(self, started: float, status: int, body: bytes) -> None:
        ms = (time.perf_counter() - started) * 1000.0
        self.latencies.append(ms)
        if ms > self.worst_ms:
            self.worst_at, self.worst_ms = started, ms
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == 200:
            kind = decision_of(body)
            self.decisions[kind] = self.decisions.get(kind, 0) + 1


def _bodies(spec: PhaseSpec) -> Callable[[], bytes]:
    factory = RequestFactory(spec.users, prefix=spec.prefix, seed=spec.seed)
    head = f"POST {spec.path} HTTP/1.1\r\nHost: {HOST}:{spec.port}\r\n" \
           "Content-Type: application/json\r\nContent-Length: "

    def next_request() -> bytes:
        body = _json.encode(factory.body())
        return f"{head}{len(body)}\r\n\r\n".encode() + body

    return next_request


async def closed_loop(spec: PhaseSpec) -> PhaseResult:
    next_request = _bodies(spec)
    rec = _Recorder()
    conns = [await connect(spec.port) for _ in range(spec.concurrency)]
    stop_at = time.perf_counter() + spec.seconds

    async def user(conn: Connection) -> None:
        while time.perf_counter() < stop_at:
            raw = next_request()
            started = time.perf_counter()
            try:
                status, body = await conn.request(raw)
            except ConnectionError:
                rec.errors += 1
                conn = await connect(spec.port)
                continue
            rec.record(started, status, body)

    t0 = time.perf_counter()
    await asyncio.gather(*(user(c) for c in conns))
    elapsed = time.perf_counter() - t0
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    return PhaseResult(requests=len(rec.latencies), elapsed=elapsed,
                       latencies=rec.latencies.tobytes(), statuses=rec.statuses,
                       decisions=rec.decisions, errors=rec.errors, connections=len(conns),
                       worst_at=rec.worst_at, worst_ms=rec.worst_ms)


async def open_loop(spec: PhaseSpec) -> PhaseResult:
    """Fire request i at t0 + i/rate; latency counts from that scheduled instant."""
    next_request = _bodies(spec)
    rec = _Recorder()
    idle: list[Connection] = []
    opened = 0
    slots = asyncio.Semaphore(spec.max_connections)
    tasks: set[asyncio.Task[None]] = set()
    interval = 1.0 / spec.rate
    total = int(spec.rate * spec.seconds)
    max_lag = 0.0

    async def fire(scheduled: float, raw: bytes) -> None:
        nonlocal opened
        async with slots:
            conn = None
            while idle and (conn is None or conn.closed):
                conn = idle.pop()  # skip connections the server closed while idle
            for attempt in (1, 2):
                if conn is None or conn.closed:
                    conn = await connect(spec.port)
                    opened += 1
                try:
                    status, body = await conn.request(raw)
                    break
                except ConnectionError:
                    # an idle keep-alive connection the server closed as we wrote (uvicorn's
                    # keep-alive timeout): the request never reached the app, so retry once
                    conn = None
                    if attempt == 2:
                        rec.errors += 1
                        return
            rec.record(scheduled, status, body)
            if not conn.closed:
                idle.append(conn)

    t0 = time.perf_counter() + 0.05
    sent = 0
    while sent < total:
        now = time.perf_counter()
        due = min(total, int((now - t0) / interval) + 1) if now >= t0 else 0
        while sent < due:
            scheduled = t0 + sent * interval
            max_lag = max(max_lag, now - scheduled)
            task = asyncio.create_task(fire(scheduled, next_request()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        next_at = t0 + sent * interval
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    elapsed = time.perf_counter() - t0
    for c in idle:
        if c.transport is not None:
            c.transport.close()
    return PhaseResult(requests=len(rec.latencies), elapsed=elapsed,
                       latencies=rec.latencies.tobytes(), statuses=rec.statuses,
                       decisions=rec.decisions, errors=rec.errors,
                       max_lag_ms=max_lag * 1000.0, connections=opened,
                       worst_at=rec.worst_at, worst_ms=rec.worst_ms)


def run_phase(spec: PhaseSpec) -> PhaseResult:
    """Entry point of a generator process: run one phase and report its own CPU time."""
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is installed with uvicorn[standard]
        runner = asyncio.run
    before = resource.getrusage(resource.RUSAGE_SELF)
    result: PhaseResult = runner(open_loop(spec) if spec.rate > 0 else closed_loop(spec))
    after = resource.getrusage(resource.RUSAGE_SELF)
    result.cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result


def latencies_of(result: PhaseResult) -> array[float]:
    values = array("d")
    values.frombytes(result.latencies)
    return values


async def send_all(port: int, requests: list[tuple[str, str, bytes | None]],
                   concurrency: int = 32) -> dict[int, int]:
    """Send prebuilt (method, path, body) requests with ``concurrency`` keep-alive
    connections; used to seed the policy and preferences. Returns status counts."""
    statuses: dict[int, int] = {}
    queue = list(reversed(requests))

    async def worker() -> None:
        conn = await connect(port)
        while queue:
            method, path, body = queue.pop()
            status, _ = await conn.request(build_request(port, method, path, body))
            statuses[status] = statuses.get(status, 0) + 1
        if conn.transport is not None:
            conn.transport.close()

    await asyncio.gather(*(worker() for _ in range(min(concurrency, max(1, len(requests))))))
    return statuses
