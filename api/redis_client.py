"""The one way the service builds its Redis client.

A *blocking* pool: under a burst, requests wait (up to the timeout) for one of at most
``redis_max_connections`` connections instead of failing fast with MaxConnectionsError
(redis-py's default pool) or opening unbounded connections against Redis' maxclients.

After Redis restarts, every pooled connection is dead, and redis-py does not always notice
before it writes a command on one: its check at checkout is skipped on TCP while
"maintenance notifications" are on (redis-py 8's default), and elsewhere reads with a zero
timeout, which can expire before the event loop has polled the socket. The command then
fails and the decision falls back although Redis is up. The notifications are turned off,
and two guards added, both safe for scripts that write:

- at checkout, the kernel is asked directly (``poll``) whether an idle connection has
  input pending; on a connection with no request in flight that can only be the server's
  close (or garbage), so the connection is replaced before anything is sent on it;
- a command whose *sending* failed (the socket broke before the command left this
  process; Redis executes nothing it has not fully read) is retried once on a fresh
  connection. A failure while reading the reply is never retried: the script may have
  run, and running a commit twice is exactly what must not happen. That decision falls
  back instead.

docs/production.md describes what the operator sees.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import select
from collections.abc import Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AskError,
    ClusterDownError,
    InvalidResponse,
    MaxConnectionsError,
    NoScriptError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig

from api.settings import Settings

_hiredis_pack = hiredis.pack_command

#: what the store talks to: one Redis, or a Redis Cluster (every script touches one slot)
RedisClient = aioredis.Redis | RedisCluster


class CommandNotSentError(RedisConnectionError):
    """Writing a command failed: Redis cannot have executed it, so it may be sent again."""


def _input_pending(conn: AbstractConnection) -> bool:
    """True when the kernel holds input (or the peer's close) for an idle connection, or
    when its transport is already closed (the event loop saw the close first: the socket
    has no descriptor left to ask about)."""
    writer = getattr(conn, "_writer", None)
    if writer is None:
        return False
    if writer.transport.is_closing():
        return True
    sock = writer.get_extra_info("socket")
    if sock is None:
        return False
    fd = sock.fileno()
    if fd < 0:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


class _FreshConnectionMixin(AbstractConnection):
    async def can_read(self) -> bool:
        return _input_pending(self) or await super().can_read()

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise CommandNotSentError(f"command not sent: {exc}") from exc


class FreshConnection(_FreshConnectionMixin, Connection):
    """TCP connection with the two guards of this module."""


class FreshUnixConnection(_FreshConnectionMixin, UnixDomainSocketConnection):
    """Unix-socket connection with the two guards of this module."""


class InitFirstRedisCluster(RedisCluster):
    """redis-py's cluster client (7.x and 8.1) breaks when its first commands arrive
    concurrently on a multi-master cluster: they route before the slot map is loaded, then
    its recovery disconnects connections other commands are using ("'NoneType' object has
    no attribute 'writelines'", "Connection closed by server"). Every command first waits
    for the (locked, once-only) initialization, which is what a warmed-up client does."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self._initialize:
            await self.initialize()
        return await super().execute_command(*args, **kwargs)

    async def aclose(self) -> None:
        """Close every node's connections, also while a slot-map reload is pending.

        redis-py's ``aclose`` closes nothing while ``_initialize`` is set, and a node
        failure sets it (redis-py's own command path, and ``ClusterAutoPipeline``) until
        the next command reloads the map: a client closed in between left every
        connection open (found by a test that kills a node's clients: ~30 sockets)."""
        self._initialize = False
        await super().aclose()


def make_redis(settings: Settings) -> RedisClient:
    if settings.redis_url is None:
        raise RuntimeError("a Redis URL is needed (REDIS_URL, or the embedded server)")
    if settings.redis_cluster:
        return InitFirstRedisCluster.from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            socket_timeout=settings.redis_timeout_seconds,
            socket_connect_timeout=settings.redis_timeout_seconds,
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=max(1.0, settings.redis_timeout_seconds * 4),
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        health_check_interval=30,
        # only CommandNotSentError is retried: a Retry's default error list would also
        # re-send commands whose reply was lost
        retry=Retry(NoBackoff(), 1, supported_errors=(CommandNotSentError,)),
        retry_on_error=[CommandNotSentError],
        # redis-py 8 enables these on TCP by default ("auto"), and while enabled its pool
        # skips the stale-connection check at checkout entirely: after a Redis restart the
        # first command on each pooled connection failed. They are a managed-Redis
        # feature over RESP3; this client speaks RESP2.
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
    )
    # from_url picks the class from the URL's scheme; keep that choice, add the guards
    # (TLS connections keep redis-py's class: the kernel cannot see into their stream)
    guarded = {Connection: FreshConnection, UnixDomainSocketConnection: FreshUnixConnection}
    pool.connection_class = guarded.get(pool.connection_class, pool.connection_class)
    return aioredis.Redis.from_pool(pool)  # the client owns (and closes) the pool


# ------------------------------------------------------------------ auto-pipelining


class ScriptCaller:
    """One Lua script as the store calls it: ``await script(keys=[...], args=[...])``.

    Calls go through the store's auto-pipeline, shared by every script of the store:
    ``AutoPipeline`` on a single Redis, ``ClusterAutoPipeline`` on a Cluster (not redis-py's
    cluster pipelines: they may re-send a command after a connection error, which a commit
    must never be). Without one (``SENDWISE_REDIS_AUTO_PIPELINE=0``), redis-py's ``Script``
    per call."""

    def __init__(self, script: AsyncScript,
                 pipeline: AutoPipeline | ClusterAutoPipeline | None) -> None:
        self._script = script
        self._pipeline = pipeline

    async def __call__(self, keys: list[Any] | tuple[Any, ...] = (),
                       args: list[Any] | tuple[Any, ...] = ()) -> Any:
        if self._pipeline is None:
            return await self._script(keys=list(keys), args=list(args))
        return await self._pipeline.evalsha(self._script, keys, args)


class _NotExecutedError(Exception):
    """A batched call that Redis answered without running it (a redirection, a cluster
    state error, NOSCRIPT) or that was never sent: the caller re-issues it alone, through
    redis-py's own path, which knows how to follow the redirection or load the script."""


_Batch = list[tuple[tuple[Any, ...], "asyncio.Future[Any]"]]


class _Coalescer:
    """The queue both auto-pipelines share: calls issued in one event-loop iteration wait in
    it, and ``_flush`` (scheduled once per iteration) sends them."""

    def __init__(self) -> None:
        self._queue: _Batch = []
        self._scheduled = False

    def _enqueue(self, command: tuple[Any, ...]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((command, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _take(self) -> _Batch:
        batch, self._queue, self._scheduled = self._queue, [], False
        return batch

    def _flush(self) -> None:
        raise NotImplementedError

    @staticmethod
    def _spawn(send: Any) -> None:
        task = asyncio.ensure_future(send)
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)


def _settle(future: asyncio.Future[Any], reply: Any,
            not_run: tuple[type[Exception], ...]) -> None:
    """Give ``future`` its reply, however it was read (``_read_replies``, or
    ``_ReplyRouter.data_received``). A script's own error fails that call only (the stream
    is intact); a reply of a ``not_run`` kind (the node did not run the command) fails it
    with ``_NotExecutedError``, so it goes again alone. A call whose caller gave up
    (cancelled) drops its reply."""
    if future.done():
        return
    if isinstance(reply, not_run):
        future.set_exception(_NotExecutedError())
    elif isinstance(reply, ResponseError):
        future.set_exception(reply)
    else:
        future.set_result(reply)


async def _read_replies(conn: AbstractConnection, batch: _Batch,
                        not_run: tuple[type[Exception], ...] = ()) -> None:
    """Read one reply per call of ``batch``, in order, into its future (``_settle``). Any
    other failure propagates: the caller fails the calls still waiting."""
    for _, future in batch:
        try:
            reply = await conn.read_response()
        except ResponseError as exc:  # redis-py raises a reply that is an error
            reply = exc
        _settle(future, reply, not_run)


def _writer(conn: AbstractConnection) -> asyncio.StreamWriter:
    """A connected connection's stream writer (redis-py keeps it in ``_writer``)."""
    writer = conn._writer
    if writer is None:
        raise CommandNotSentError("command not sent: the connection is closed")
    return writer


class _ReplyRouter(asyncio.Protocol):
    """Sits between a connection's transport and redis-py's stream protocol and hands each
    reply to the call that waits for it, in ``data_received``: in the event-loop iteration
    whose poll received it.

    Why: through redis-py's reader a reply first wakes a reading task, which parses it and
    resolves the callers' futures, and the callers resume one iteration later again; on a
    loaded worker an iteration runs every request that is ready (a millisecond or more),
    so each hop is what a round trip costs, not Redis (docs/benchmarks.md, "Loop
    iterations per round trip"). Here a round trip spans four iterations: queued, written,
    received and resolved, resumed. There is no reading task per batch either.

    Replies come back in the order the commands were written, so the calls waiting are a
    queue, and batches may follow each other on the connection before the earlier ones
    are answered. While nothing waits, everything passes to redis-py's protocol untouched;
    input then (a server's close, or garbage) breaks the router, so the owner retires the
    connection. A call whose reply does not come within the socket timeout fails, and so
    does every call behind it: the connection is aborted, never reused, and nothing is sent
    again (a script may have run). Errors are the ones redis-py raises: a script's error
    fails its own call, a reply of a ``not_run`` kind (the node did not run the command)
    fails it with ``_NotExecutedError`` so it goes again alone, and a lost connection or
    unreadable stream fails every call still waiting."""

    def __init__(self, conn: AbstractConnection,
                 not_run: tuple[type[Exception], ...] = ()) -> None:
        self.conn = conn
        self.transport = _writer(conn).transport
        self._inner: Any = self.transport.get_protocol()
        parser: Any = conn._parser
        options: dict[str, Any] = {"protocolError": InvalidResponse,
                                   "replyError": parser.parse_error}
        if conn.encoder.decode_responses:
            options.update(encoding=conn.encoder.encoding, errors=conn.encoder.encoding_errors)
        self._reader = hiredis.Reader(**options)
        self._not_run = not_run
        #: the calls written and not yet answered, oldest first; the last call of each
        #: batch carries the timer that fails it if Redis has not answered in time
        self._waiting: collections.deque[
            tuple[asyncio.Future[Any], asyncio.TimerHandle | None]] = collections.deque()
        self._timeout = conn.socket_timeout
        self.broken = False
        #: whether breaking failed calls that were waiting (not only an idle close)
        self.failed = False
        self.transport.set_protocol(self)

    @property
    def busy(self) -> bool:
        return bool(self._waiting)

    def usable(self) -> bool:
        """Whether a batch may be written on it now: not broken, not closing, and (when idle)
        with no input pending in the kernel, which on an idle connection can only be the
        server's close that the loop has not polled yet (a Redis restart)."""
        return not (self.broken or self.transport.is_closing()
                    or (not self._waiting and _input_pending(self.conn)))

    def expect(self, batch: _Batch) -> None:
        """The calls of ``batch``, just written, wait for their replies in order."""
        timer = (None if self._timeout is None else
                 asyncio.get_running_loop().call_later(self._timeout, self._timed_out))
        last = len(batch) - 1
        self._waiting.extend((future, timer if i == last else None)
                             for i, (_, future) in enumerate(batch))

    def data_received(self, data: bytes) -> None:
        if not self._waiting:
            self._break(RedisConnectionError("unexpected input on an idle connection"))
            self._inner.data_received(data)
            return
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        try:
            while waiting:
                reply = reader.gets()
                if reply is False:  # hiredis: no complete reply buffered yet
                    return
                future, timer = waiting.popleft()
                if timer is not None:
                    timer.cancel()
                if isinstance(reply, RedisConnectionError):  # redis-py raises these too
                    if not future.done():
                        future.set_exception(reply)
                    self._break(reply)
                    return
                _settle(future, reply, self._not_run)
        except InvalidResponse as exc:
            self._break(RedisConnectionError(f"unreadable reply: {exc}"))
            return
        if reader.has_data():  # more than the calls asked for
            self._break(RedisConnectionError("unexpected input after the last reply"))

    def eof_received(self) -> bool | None:
        self._break(RedisConnectionError("Connection closed by server."))
        return self._inner.eof_received()  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self._break(RedisConnectionError(f"Connection lost: {exc!r}" if exc else
                                         "Connection closed."))
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()  # redis-py's drain waits on its own protocol

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def _timed_out(self) -> None:
        self._break(RedisTimeoutError(f"Timeout reading from {self.conn._host_error()}"))

    def _break(self, exc: Exception) -> None:
        """Fail every call still waiting and abort the connection: nothing more is read
        from it (a late reply must not reach a later call) and its owner retires it."""
        self.broken = True
        waiting, self._waiting = self._waiting, collections.deque()
        self.failed = self.failed or bool(waiting)
        for future, timer in waiting:
            if timer is not None:
                timer.cancel()
            if not future.done():
                future.set_exception(exc)
        self.transport.abort()


def _write_routed(router: _ReplyRouter | None, batch: _Batch) -> bool:
    """Pack ``batch`` and hand it to ``router``'s transport now, in the iteration that
    flushes it (both auto-pipelines' ``_flush``), and queue its calls for their replies.
    False when it was not written: no router, an argument the packer refuses (``_send``
    packs again and fails the batch as it always did), or a write the kernel refused (the
    transport closes at once, before any of it left); the batch may then go through
    ``_send``."""
    if router is None:
        return False
    try:
        packed = pack_commands(router.conn, [command for command, _ in batch])
        _writer(router.conn).writelines(packed)
    except Exception:
        return False
    if router.transport.is_closing():
        return False
    router.expect(batch)
    return True


class AutoPipeline(_Coalescer):
    """Coalesces the script calls that concurrent requests issue in one event-loop iteration
    into one write, on the one connection the pipeline keeps (``_ReplyRouter``: each reply
    resolves its call as it arrives; batches follow each other without waiting).

    Why: a decision's two round trips used to cost ~700 µs client-side together (redis-py's
    per-command path: pool checkout under a lock, packing, a timeout context, parsing, one
    event-loop wake-up each) and one ``read``/``write`` system call pair per command in
    redis-server too. With N requests in flight, one batch pays those fixed costs once for
    N commands (docs/benchmarks.md). Each EVALSHA stays atomic inside Redis; a batch is no
    transaction and needs none.

    Failure semantics are the module's: a batch is sent again only when every earlier send
    of it failed before anything left this process (a write the kernel refused on the kept
    connection, ``CommandNotSentError`` on a pool connection); a failure while reading
    fails every call whose reply was not read (their scripts may have run) and the
    connection is dropped. A NOSCRIPT reply (Redis restarted and lost its script cache)
    means that script did not run: it is loaded and that call sent again.
    Without a usable kept connection (the first batches, or after a failure) a batch checks
    one out of the pool and is read through redis-py; the first such connection to finish
    cleanly becomes the kept one.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        super().__init__()
        self._client = client
        self._pool = client.connection_pool
        #: the kept connection's router; kept only when the pool has at least 4 connections,
        #: so that the health check and script loads never wait on the pipeline's
        self._routed: _ReplyRouter | None = None
        self.keeps = int(getattr(self._pool, "max_connections", 0) >= 4)

    def _router(self) -> _ReplyRouter | None:
        """The kept connection's router if a batch can be written on it now; a kept
        connection that cannot (broken, closed by the server) is disconnected and goes
        back to the pool, which reconnects it before handing it out again."""
        router = self._routed
        if router is None or router.usable():
            return router
        self._routed = None
        self._spawn(self._discard(router.conn))
        return None

    async def _discard(self, conn: AbstractConnection) -> None:
        with contextlib.suppress(Exception):
            await conn.disconnect()
        await self._pool.release(conn)

    async def evalsha(self, script: AsyncScript, keys: list[Any] | tuple[Any, ...],
                      args: list[Any] | tuple[Any, ...]) -> Any:
        for _ in range(2):  # the second pass only after a NOSCRIPT reply
            try:
                return await self._enqueue(("EVALSHA", script.sha, len(keys), *keys, *args))
            except NoScriptError:
                await self._client.script_load(script.script)
        return await script(keys=list(keys), args=list(args))

    async def execute(self, *command: Any) -> Any:
        """One plain command (not a script), e.g. the decision log's ``XADD``, batched with
        the scripts of the same event-loop iteration."""
        return await self._enqueue(command)

    def send_now(self, commands: Sequence[tuple[Any, ...]]) -> list[asyncio.Future[Any]] | None:
        """Write ``commands`` on the kept connection at once, together with whatever this
        iteration has queued, and return their replies' futures without waiting on them;
        None, and nothing sent, when there is no usable kept connection (the caller then
        awaits ``execute`` as before).

        Why: a command whose reply changes nothing the caller answers (the decision log's
        ``XADD``) need not hold the request for a round trip. Waiting for it cost the
        decision its last round trip (docs/benchmarks.md, "The decision log's reply off the
        answer's path").
        The write happens here, before the caller goes on, so whatever the caller does next
        (answering its request) happens after the command reached Redis' socket: a client
        that reads the log once it has its answer finds the entry. No task is spawned: the
        router resolves the futures as the replies arrive."""
        router = self._router()
        if router is None:
            return None
        futures = [self._enqueue(command) for command in commands]
        self._write(router)  # the flush ``_enqueue`` scheduled will find nothing left
        return futures

    def _flush(self) -> None:
        """Write the batch on the kept connection, in this iteration; its replies resolve the
        calls as they arrive (``_ReplyRouter``). Otherwise a task sends it (``_send``).

        Why write here: redis-py's ``send_packed_command`` wraps its write in
        ``asyncio.wait_for`` (a socket timeout is set), which on Python 3.11 runs it in a
        task of its own: the command left one event-loop iteration later and the batch's
        task resumed two iterations after that (docs/benchmarks.md, "Loop iterations per
        round trip"). A write that fails in the kernel closes the transport at once, before
        any of it left: that batch then goes through ``_send`` on another connection."""
        self._write(self._router())

    def _write(self, router: _ReplyRouter | None) -> None:
        """Write what is queued on ``router`` (the kept connection's, just checked), or send
        it through ``_send`` when there is none or the write fails."""
        batch = self._take()
        if not batch:
            return
        if not _write_routed(router, batch):
            self._router()  # retires the connection if the write broke it
            self._spawn(self._send(batch))

    async def _send(self, batch: _Batch) -> None:
        """Send ``batch`` on a connection from the pool and read its replies through
        redis-py; the connection becomes the kept one if there is none, else goes back."""
        try:
            conn = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        except BaseException as exc:
            _fail(batch, exc)
            return
        clean = False
        try:
            packed = pack_commands(conn, [command for command, _ in batch])
            try:
                await conn.send_packed_command(packed, check_health=False)
            except CommandNotSentError:
                await conn.disconnect()
                await conn.send_packed_command(packed, check_health=False)
            await _read_replies(conn, batch)
            clean = True
        except BaseException as exc:
            _fail(batch, exc)  # first: the calls still waiting must not wait on a dying connection
            with contextlib.suppress(Exception):
                await conn.disconnect()
            if not isinstance(exc, Exception):
                raise  # cancellation (shutdown): the callers have their error already
        finally:
            if clean and self.keeps and self._routed is None and conn.is_connected:
                self._routed = _ReplyRouter(conn)  # every reply read: nothing pending on it
            else:
                await self._pool.release(conn)


class ClusterAutoPipeline(_Coalescer):
    """``AutoPipeline`` for a Redis Cluster: the script calls issued in one event-loop
    iteration are grouped by the master that owns their keys' slot (every script of the
    store touches one slot), and each group is one write on one of that node's
    connections, its replies read in order.

    Why: on a cluster, redis-py's per-command path costs every call a connection checkout,
    its own write and read and its own event-loop wake-ups, and Redis one read/write system
    call pair per command (a 3-master cluster spent ~160 µs of Redis CPU per decision vs
    ~85 µs for one auto-pipelined Redis: docs/benchmarks.md).

    Safety is the single-node pipeline's, with one difference: a reply that says the
    command did **not** run (MOVED, ASK, TRYAGAIN, CLUSTERDOWN, NOSCRIPT) makes that one
    call re-issue itself through redis-py's cluster path, which follows redirections,
    refreshes the slot map and reloads scripts; nothing that may have run is ever sent
    twice. A batch whose connection cannot be had (the node's pool is exhausted, the slot
    map is not loaded yet) goes the per-command path too, before anything was sent. A
    failure while sending or reading fails every call whose reply was not read (its
    script may have run; the decision falls back) and drops the connection.
    """

    def __init__(self, client: RedisCluster) -> None:
        super().__init__()
        self._client = client
        #: per master (by name), the node and the router of the one connection kept for
        #: it (released to that node object); kept only when a node's pool has at least 4
        #: connections
        self._routed: dict[str, tuple[Any, _ReplyRouter]] = {}
        self.keeps = int(client.nodes_manager.connection_kwargs.get("max_connections", 0) >= 4)

    async def evalsha(self, script: AsyncScript, keys: list[Any] | tuple[Any, ...],
                      args: list[Any] | tuple[Any, ...]) -> Any:
        try:
            return await self._enqueue(("EVALSHA", script.sha, len(keys), *keys, *args))
        except _NotExecutedError:
            return await script(keys=list(keys), args=list(args))

    async def execute(self, *command: Any) -> Any:
        """One plain command whose first argument is its only key (``XADD key ...``),
        batched with the scripts for that key's master; redis-py's cluster path when the
        node did not run it."""
        try:
            return await self._enqueue(command)
        except _NotExecutedError:
            return await self._client.execute_command(*command)

    def _flush(self) -> None:
        batch = self._take()
        groups: dict[str, tuple[Any, _Batch]] = {}
        for item in batch:
            command, future = item
            # EVALSHA sha numkeys key...; any other command: its first argument is the key
            key = (command[1] if command[0] != "EVALSHA"
                   else command[3] if command[2] else None)
            try:
                node = (None if self._client._initialize or key is None
                        else self._client.get_node_from_key(key))
            except SlotNotCoveredError:  # not in the map yet: the per-command path
                node = None
            if node is None:
                future.set_exception(_NotExecutedError())
                continue
            groups.setdefault(node.name, (node, []))[1].append(item)
        for node, items in groups.values():
            if not _write_routed(self._router(node), items):
                self._router(node)  # retires the connection if the write broke it
                self._spawn(self._send(node, items))

    def _router(self, node: Any) -> _ReplyRouter | None:
        """The router of the connection kept for ``node`` if a batch can be written on it
        now (``AutoPipeline._router``) and redis-py has not marked the connection for
        reconnection (it marks every connection when the slot map changes). One that
        broke while calls waited on it also means what any failed batch means here: the
        node's idle connections are dropped and the slot map reloaded (a failover moves
        the slots) before the next batch."""
        kept = self._routed.get(node.name)
        if kept is None:
            return None
        if kept[1].usable() and not kept[1].conn.should_reconnect():  # type: ignore[no-untyped-call]
            return kept[1]
        owner, router = self._routed.pop(node.name)
        self._spawn(self._retire(owner, router.conn, failed=router.failed))
        return None

    async def _retire(self, node: Any, conn: Any, failed: bool) -> None:
        with contextlib.suppress(Exception):
            await conn.disconnect()
        if failed:
            await self._node_failed(node)
        node.release(conn)

    async def _node_failed(self, node: Any) -> None:
        """What redis-py's cluster client does on a node failure: drop the node's idle
        connections and reload the slot map before the next batch; until then calls take
        the per-command path."""
        node.update_active_connections_for_reconnect()
        with contextlib.suppress(Exception):
            await node.disconnect_free_connections()
        self._client._initialize = True

    async def _send(self, node: Any, batch: _Batch) -> None:
        """Send ``batch`` on a connection of ``node`` and read its replies through redis-py;
        the connection is kept for ``node`` if it has none, else goes back."""
        try:
            conn = node.acquire_connection()
        except MaxConnectionsError:  # nothing was sent: each call goes alone
            _fail(batch, _NotExecutedError())
            return
        clean = False
        try:
            await node.disconnect_if_needed(conn)
            if _input_pending(conn):  # idle, yet readable: the server closed it (restart)
                await conn.disconnect()  # sending reconnects first
            packed = pack_commands(conn, [command for command, _ in batch])
            await conn.send_packed_command(packed, check_health=False)
            await _read_replies(conn, batch, _NOT_RUN_ON_THIS_NODE)
            clean = True
        except BaseException as exc:
            _fail(batch, exc)
            with contextlib.suppress(Exception):
                await conn.disconnect()
            if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
                await self._node_failed(node)
            if not isinstance(exc, Exception):
                raise
        finally:
            if clean and self.keeps and node.name not in self._routed and conn.is_connected:
                self._routed[node.name] = (node, _ReplyRouter(conn, _NOT_RUN_ON_THIS_NODE))
            else:
                node.release(conn)


#: replies that say a cluster node did not run the command (MovedError is an AskError):
#: that call goes again alone, through redis-py's cluster path
_NOT_RUN_ON_THIS_NODE = (AskError, TryAgainError, ClusterDownError, NoScriptError)


def pack_commands(conn: AbstractConnection, commands: list[tuple[Any, ...]]) -> list[bytes]:
    """RESP encoding of ``commands`` as one buffer, by hiredis' packer (C; hiredis is the
    reply parser redis-py already uses here). The store's arguments are bytes, str and int;
    redis-py's general encoder was a tenth of a decision's client CPU, and a packer of our
    own in Python still cost ~2.9 µs per command against hiredis' ~1.2
    (docs/benchmarks.md, "The pool on the hot path"). A command with an argument hiredis
    refuses (anything but bytes, str, int and float) goes through redis-py's packer, which
    encodes or refuses it as it always did. Both write the same bytes
    (``tests/unit/test_resp_pack.py``)."""
    try:
        return [b"".join([_hiredis_pack(command) for command in commands])]
    except TypeError:
        out: list[bytes] = []
        for command in commands:
            try:
                out.append(_hiredis_pack(command))
            except TypeError:
                out.extend(conn.pack_command(*command))
        return [b"".join(out)]


#: strong references to in-flight batch tasks (the event loop keeps only weak ones)
_BACKGROUND: set[asyncio.Task[None]] = set()


def _fail(batch: _Batch, exc: BaseException) -> None:
    """Fail the calls of ``batch`` still waiting (those whose reply was read keep it)."""
    for _, future in batch:
        if not future.done():
            future.set_exception(exc if isinstance(exc, Exception) else RedisConnectionError(str(exc)))
