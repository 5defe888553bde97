"""The production Redis client after Redis went away and came back, and when a reply is
lost: a stale pooled connection is replaced before a command is sent on it, and a command
that may have run is never sent twice."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Iterator

import pytest
import redis

from api.redis_client import IDLE_CONNECTIONS, AutoPipeline, ScriptCaller, make_redis
from api.redis_server import EmbeddedRedis
from api.settings import Settings
from tests.conftest import _free_cluster_port
from tests.iterations import iterations_per_call


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
    """The auto-pipeline keeps its last connections checked out between batches (no pool
    round trip per batch). Closed server-side while kept (a Redis restart), each is noticed
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
    """At most a quarter of the pool stays with the pipeline (none below 4 connections):
    with every other connection busy, a plain command still gets one at once."""
    client = make_redis(Settings(redis_url=private_redis, redis_max_connections=max_connections,
                                 redis_timeout_seconds=0.5))
    pipeline = AutoPipeline(client)
    incr = ScriptCaller(client.register_script(INCR), pipeline)
    try:
        await asyncio.gather(*(incr(keys=[f"{{k{i}}}"]) for i in range(20)))
        kept = min(IDLE_CONNECTIONS, max_connections // 4)
        pool = client.connection_pool
        others = [await pool.get_connection() for _ in range(max_connections - kept - 1)]
        try:
            assert await client.ping()  # the last free connection: no wait, no timeout
        finally:
            for conn in others:
                await pool.release(conn)
    finally:
        await client.aclose()


async def test_a_batch_is_written_in_the_iteration_that_flushes_it(private_redis: str) -> None:
    """On a loaded loop a pipelined call spans five iterations: the one that queues it,
    the one that writes the batch on a kept connection (``_flush``), the one whose poll
    receives the reply, the one where the batch's task reads it, and the caller's. Sent by
    redis-py's ``send_packed_command`` from the batch's task, it spanned seven: the task
    started one iteration after the flush, and the write ran in a task of its own
    (``asyncio.wait_for``) whose completion took two more (docs/benchmarks.md, "Loop
    iterations per round trip")."""
    client = make_redis(Settings(redis_url=private_redis, redis_max_connections=16,
                                 redis_timeout_seconds=2.0))
    pipeline = AutoPipeline(client)
    incr = ScriptCaller(client.register_script(INCR), pipeline)
    try:
        await incr(keys=["iterations"])  # the first call loads the script (NOSCRIPT)
        counts = await iterations_per_call(lambda: incr(keys=["iterations"]), 0.005)
        assert statistics.median(counts) <= 5, counts
    finally:
        await client.aclose()
