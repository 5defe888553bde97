"""Shared fixtures: real Redis servers for the whole session, flushed per test.

Every Redis test runs against the embedded server (what a fresh laptop has), against a
single-node Redis Cluster started from the same binary (a cluster node rejects any command
or script whose keys span slots, so this proves the key schema), and, when ``REDIS_URL`` is
set, against that external Redis too.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import AsyncIterator, Iterator

import msgspec
import pytest
import redis

from api.redis_client import RedisClient, make_redis
from api.redis_server import EmbeddedRedis
from api.settings import Settings

REDIS_TARGETS = ["embedded", "cluster"] + (["external"] if os.environ.get("REDIS_URL") else [])


class RedisTarget(msgspec.Struct, frozen=True):
    name: str
    url: str
    cluster: bool


@pytest.fixture(scope="session")
def embedded_redis() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


def _free_cluster_port() -> int:
    """A free loopback port whose cluster-bus port (+10000) is free too. Not the kernel's
    ephemeral pick: that can exceed 55535, which a cluster node refuses to use."""
    for port in random.Random().sample(range(20000, 30000), 200):
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for the test cluster node")


@pytest.fixture(scope="session")
def embedded_cluster() -> Iterator[str]:
    """One cluster-enabled node owning all 16384 slots, on loopback only. Readiness is the
    server's own log line, not a poll: a node only reports "Cluster state changed: ok"
    once its slots are covered (and Redis holds that back ~2 s after start)."""
    server = EmbeddedRedis(port=_free_cluster_port(), extra_args=[
        "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
    with server:
        node = redis.Redis(unix_socket_path=server.socket_path)
        node.execute_command("CLUSTER", "ADDSLOTS", *range(16384))
        node.close()
        if not server.wait_for_log("Cluster state changed: ok"):
            raise RuntimeError(f"single-node cluster did not become ready: {server.log_tail()}")
        yield server.tcp_url


@pytest.fixture(params=REDIS_TARGETS, scope="session")
def redis_target(request: pytest.FixtureRequest) -> RedisTarget:
    if request.param == "external":
        return RedisTarget("external", os.environ["REDIS_URL"], cluster=False)
    if request.param == "cluster":
        return RedisTarget("cluster", request.getfixturevalue("embedded_cluster"), cluster=True)
    server: EmbeddedRedis = request.getfixturevalue("embedded_redis")
    return RedisTarget("embedded", server.url, cluster=False)


@pytest.fixture
def redis_settings(redis_target: RedisTarget) -> Settings:
    return Settings(redis_url=redis_target.url, redis_cluster=redis_target.cluster,
                    log_decisions=False, redis_timeout_seconds=2.0)


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
