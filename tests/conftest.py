"""Shared fixtures: real Redis servers for the whole session, flushed per test.

Every Redis test runs against the embedded server (what a fresh laptop has), against a
single-node Redis Cluster started from the same binary (a cluster node rejects any command
or script whose keys span slots, so this proves the key schema), and, when ``REDIS_URL`` is
set, against that external Redis too.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator

import msgspec
import pytest
import redis

from api.redis_client import RedisClient, make_redis
from api.redis_server import EmbeddedRedis, find_redis_server
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def embedded_cluster() -> Iterator[str]:
    """One cluster-enabled node owning all 16384 slots, on loopback only."""
    workdir = tempfile.mkdtemp(prefix="sendwise-cluster-")
    port = _free_port()
    proc = subprocess.Popen(  # noqa: S603 - fixed argv
        [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1",
         "--cluster-enabled", "yes", "--cluster-config-file", f"{workdir}/nodes.conf",
         "--dir", workdir, "--save", "", "--appendonly", "no", "--daemonize", "no",
         "--logfile", f"{workdir}/redis.log"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        node = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                node.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        node.execute_command("CLUSTER", "ADDSLOTS", *range(16384))
        while b"cluster_state:ok" not in node.execute_command("CLUSTER", "INFO"):
            if time.monotonic() > deadline:
                raise RuntimeError("single-node cluster did not become ready")
            time.sleep(0.01)
        node.close()
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


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
