"""The production Redis client after Redis went away and came back, and when a reply is
lost: a stale pooled connection is replaced before a command is sent on it, and a command
that may have run is never sent twice."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from api.redis_client import make_redis
from api.redis_server import EmbeddedRedis
from api.settings import Settings
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
