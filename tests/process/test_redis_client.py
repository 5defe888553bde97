"""The production Redis client after Redis went away and came back, and when a reply is
lost: a stale pooled connection is replaced before a command is sent on it, and a command
that may have run is never sent twice."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Iterator

import pytest
import redis

from api.redis_client import AutoPipeline, ScriptCaller, make_redis
from api.redis_server import EmbeddedRedis
from api.settings import Settings
from loadtests.iterations import iterations_per_call
from tests.conftest import _free_cluster_port


@pytest.fixture(scope="module", params=["unix", "tcp"])
def private_redis(request: pytest.FixtureRequest) -> Iterator[str]:
    """Its own server: these tests kill every client connection and pause writes."""
    tcp = request.param == "tcp"
    with EmbeddedRedis(port=_free_cluster_port() if tcp else 0) as server:
        yield server.tcp_url if tcp else server.url


async def test_pooled_connection_closed_by_the_server_is_replaced_before_sending(
        private_redis: str) -> None:
    """Every connection closed server-side while idle in the pool (what a Redis restart
    does): the next command still succeeds, and runs exactly once."""
    client = make_redis(Settings(redis_url=private_redis, redis_max_connections=1,
                                 redis_timeout_seconds=2.0))
    admin = redis.Redis.from_url(private_redis)
    try:
        await client.set("k", 1)
        assert admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes") == 1
        assert await client.incr("k") == 2
        assert await client.ping()
    finally:
        await client.aclose()
        admin.close()


async def test_a_command_whose_reply_is_lost_is_not_sent_again(private_redis: str) -> None:
    """Redis holds the write (CLIENT PAUSE), the client's read times out, Redis executes it
    later: a retry would have applied it twice."""
    client = make_redis(Settings(redis_url=private_redis, redis_max_connections=1,
                                 redis_timeout_seconds=0.2))
    admin = redis.Redis.from_url(private_redis)
    try:
        await client.set("n", 0)
        admin.execute_command("CLIENT", "PAUSE", 600, "WRITE")
        with pytest.raises(redis.exceptions.TimeoutError):
            await client.incr("n")
        admin.incr("probe")  # a write: blocks until the pause is over and the queue ran
        assert admin.get("n") == b"1"
    finally:
        await client.aclose()
        admin.close()


INCR = "return redis.call('INCR', KEYS[1])"


async def test_connections_the_pipeline_keeps_are_replaced_once_the_server_closed_them(
        private_redis: str) -> None:
    """The auto-pipeline keeps one connection checked out between batches (no pool round
    trip per batch). Closed server-side while kept (a Redis restart), that is noticed
    before anything is written on it: every call succeeds and runs exactly once."""
    client = make_redis(Settings(redis_url=private_redis, redis_max_connections=16,
                                 redis_timeout_seconds=2.0))
    admin = redis.Redis.from_url(private_redis)
    pipeline = AutoPipeline(client)
    incr = ScriptCaller(client.register_script(INCR), pipeline)
    try:
        await client.delete("kept")
        for _ in range(3):  # batches one after another: one kept connection serves them
            await asyncio.gather(*(incr(keys=["kept"]) for _ in range(10)))
        assert admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes") >= 1
        replies = await asyncio.gather(*(incr(keys=["kept"]) for _ in range(10)))
        assert sorted(replies) == list(range(31, 41))
        assert admin.get("kept") == b"40"
    finally:
        await client.aclose()
        admin.close()


@pytest.mark.parametrize("max_connections", [1, 3, 4, 64])
async def test_the_pipeline_never_keeps_what_the_rest_of_the_client_needs(
        private_redis: str, max_connections: int) -> None:
    """One connection at most stays with the pipeline (none below 4 connections): with
    every other connection busy, a plain command still gets one at once."""
    client = make_redis(Settings(redis_url=private_redis, redis_max_connections=max_connections,
                                 redis_timeout_seconds=0.5))
    pipeline = AutoPipeline(client)
    incr = ScriptCaller(client.register_script(INCR), pipeline)
    try:
        await asyncio.gather(*(incr(keys=[f"{{k{i}}}"]) for i in range(20)))
        kept = 1 if max_connections >= 4 else 0
        pool = client.connection_pool
        others = [await pool.get_connection() for _ in range(max_connections - kept - 1)]
        try:
            assert await client.ping()  # the last free connection: no wait, no timeout
        finally:
            for conn in others:
                await pool.release(conn)
    finally:
        await client.aclose()


async def test_a_round_trip_spans_four_iterations(private_redis: str) -> None:
    """On a loaded loop a pipelined call spans four iterations: the one that queues it,
    the one that writes the batch on the kept connection (``_flush``), the one whose poll
    receives the reply and resolves the call (``_ReplyRouter.data_received``), and the
    caller's. Read by a task through redis-py's reader it spanned five (the task woke one
    iteration after the reply arrived), and seven when that task also wrote it
    (docs/benchmarks.md, "Loop iterations per round trip")."""
    client = make_redis(Settings(redis_url=private_redis, redis_max_connections=16,
                                 redis_timeout_seconds=2.0))
    pipeline = AutoPipeline(client)
    incr = ScriptCaller(client.register_script(INCR), pipeline)
    try:
        await incr(keys=["iterations"])  # the first call loads the script (NOSCRIPT)
        counts = await iterations_per_call(lambda: incr(keys=["iterations"]), 0.005)
        assert statistics.median(counts) <= 4, counts
    finally:
        await client.aclose()


ECHO_AFTER_INCR = "redis.call('INCR', KEYS[1]) return ARGV[1]"


async def _on_the_kept_connection(echo: ScriptCaller, key: str) -> None:
    """Two calls: the first loads the script (NOSCRIPT); the pipeline keeps the connection
    the second used, and the calls after it go out on that one."""
    for _ in range(2):
        assert await echo(keys=[key], args=["warm"]) == b"warm"


def _pipelined(url: str, timeout: float) -> tuple[redis.asyncio.Redis, ScriptCaller]:
    client = make_redis(Settings(redis_url=url, redis_max_connections=16,
                                 redis_timeout_seconds=timeout))
    assert isinstance(client, redis.asyncio.Redis)
    return client, ScriptCaller(client.register_script(ECHO_AFTER_INCR), AutoPipeline(client))


async def test_pipelined_calls_whose_replies_are_late_fail_and_are_not_sent_again(
        private_redis: str) -> None:
    """Redis holds the batch (CLIENT PAUSE) past the socket timeout: every call waiting on
    the kept connection fails with a timeout, the connection is dropped, and nothing is
    sent twice; the next call gets a fresh connection."""
    client, echo = _pipelined(private_redis, 0.2)
    admin = redis.Redis.from_url(private_redis)
    try:
        await client.delete("late")
        await _on_the_kept_connection(echo, "late")
        admin.execute_command("CLIENT", "PAUSE", 600, "WRITE")
        results = await asyncio.gather(*(echo(keys=["late"], args=[str(i)]) for i in range(5)),
                                       return_exceptions=True)
        assert all(isinstance(r, redis.exceptions.TimeoutError) for r in results), results
        admin.incr("probe")  # a write: blocks until the pause is over and the queue ran
        ran = int(admin.get("late") or 0) - 2
        assert ran in (0, 5)  # the batch ran once or (its connection gone first) not at all
        assert await echo(keys=["late"], args=["after"]) == b"after"
        assert int(admin.get("late") or 0) == ran + 3
    finally:
        await client.aclose()
        admin.close()


async def test_calls_waiting_on_a_connection_the_server_closes_fail_at_once(
        private_redis: str) -> None:
    """The kept connection is killed while a batch waits (Redis paused): its calls fail
    as a lost connection, without waiting for the timeout, and the next call succeeds."""
    client, echo = _pipelined(private_redis, 5.0)
    admin = redis.Redis.from_url(private_redis)
    try:
        await _on_the_kept_connection(echo, "killed")
        admin.execute_command("CLIENT", "PAUSE", 2000, "WRITE")
        try:
            calls = asyncio.gather(*(echo(keys=["killed"], args=[str(i)]) for i in range(5)),
                                   return_exceptions=True)
            await asyncio.sleep(0)  # let the flush write the batch
            await asyncio.sleep(0)
            started = asyncio.get_running_loop().time()
            admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            results = await calls
            assert asyncio.get_running_loop().time() - started < 1.0
            assert all(isinstance(r, redis.exceptions.ConnectionError) for r in results), results
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
        assert await echo(keys=["killed"], args=["after"]) == b"after"
    finally:
        await client.aclose()
        admin.close()


async def test_a_cancelled_call_leaves_every_other_reply_with_its_own_caller(
        private_redis: str) -> None:
    """Replies are matched to calls by their order on the connection: a caller that gives
    up (its request was cancelled) still has its reply read and dropped, so the calls
    written after it get theirs, not a neighbour's."""
    client, echo = _pipelined(private_redis, 5.0)
    admin = redis.Redis.from_url(private_redis)
    try:
        await _on_the_kept_connection(echo, "order")
        admin.execute_command("CLIENT", "PAUSE", 300, "WRITE")
        tasks = [asyncio.ensure_future(echo(keys=["order"], args=[str(i)])) for i in range(6)]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        tasks[2].cancel()
        later = [asyncio.ensure_future(echo(keys=["order"], args=[f"later{i}"])) for i in range(3)]
        results = await asyncio.gather(*tasks, *later, return_exceptions=True)
        assert isinstance(results[2], asyncio.CancelledError)
        assert results[:2] + results[3:] == [b"0", b"1", b"3", b"4", b"5",
                                              b"later0", b"later1", b"later2"]
        assert admin.get("order") == b"11"  # the cancelled one ran too: it had been written
    finally:
        await client.aclose()
        admin.close()


def test_the_kept_connection_routes_replies_under_uvloop(private_redis: str) -> None:
    """The service runs on uvloop (``api/serve.py``), whose transports take the router as
    their protocol too: replies reach their calls, a killed connection is replaced, and a
    round trip spans no more iterations than on asyncio's loop."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> list[int]:
        client, echo = _pipelined(private_redis, 2.0)
        admin = redis.asyncio.Redis.from_url(private_redis)
        try:
            replies = await asyncio.gather(*(echo(keys=["uv"], args=[str(i)]) for i in range(50)))
            assert replies == [str(i).encode() for i in range(50)]
            await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            assert await echo(keys=["uv"], args=["after"]) == b"after"
            return await iterations_per_call(lambda: echo(keys=["uv"], args=["x"]), 0.005)
        finally:
            await client.aclose()
            await admin.aclose()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        counts = runner.run(main())
    assert statistics.median(counts) <= 4, counts
