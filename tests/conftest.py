"""Shared fixtures: real Redis servers for the whole session, flushed per test.

Every Redis test runs against the embedded server (what a fresh laptop has), against a
three-master Redis Cluster started from the same binary (a cluster node rejects any command
or script whose keys span slots, so this proves the key schema; three masters make the
client route every user's keys to the node owning their slot, as in production), and, when
``REDIS_URL`` is set, against that external Redis too.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import msgspec
import pytest

from api.ids import Secret
from api.redis_client import RedisClient, make_redis
from api.redis_server import EmbeddedRedis, embedded_cluster, free_cluster_port
from api.settings import Settings

REDIS_TARGETS = ["embedded", "cluster3"] + (["external"] if os.environ.get("REDIS_URL") else [])
#: the decision-id secret of every test (none falls back to a file in the working directory)
TEST_ID_KEY = Secret(b"sendwise tests: decision-id key!")


class RedisTarget(msgspec.Struct, frozen=True):
    name: str
    url: str
    cluster: bool


@pytest.fixture(scope="session")
def embedded_redis() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


#: tests/process start single TCP nodes on such ports
_free_cluster_port = free_cluster_port
#: the test cluster's size: three masters make the client route every user's keys to the node
#: owning their slot, as in production
CLUSTER_MASTERS = 3


@pytest.fixture(scope="session")
def embedded_cluster3() -> Iterator[str]:
    """Three cluster-enabled masters on loopback (api/redis_server.py ``embedded_cluster``)."""
    with embedded_cluster(CLUSTER_MASTERS) as servers:
        yield servers[0].tcp_url


@pytest.fixture(params=REDIS_TARGETS, scope="session")
def redis_target(request: pytest.FixtureRequest) -> RedisTarget:
    if request.param == "external":
        return RedisTarget("external", os.environ["REDIS_URL"], cluster=False)
    if request.param == "cluster3":
        return RedisTarget("cluster3", request.getfixturevalue("embedded_cluster3"), cluster=True)
    server: EmbeddedRedis = request.getfixturevalue("embedded_redis")
    return RedisTarget("embedded", server.url, cluster=False)


@pytest.fixture
def redis_settings(redis_target: RedisTarget) -> Settings:
    return Settings(redis_url=redis_target.url, redis_cluster=redis_target.cluster,
                    log_decisions=False, redis_timeout_seconds=2.0, id_key=TEST_ID_KEY)


@pytest.fixture
def redis_url(redis_target: RedisTarget) -> str:
    return redis_target.url


@pytest.fixture
async def redis_client(redis_settings: Settings) -> AsyncIterator[RedisClient]:
    client = make_redis(redis_settings)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()
