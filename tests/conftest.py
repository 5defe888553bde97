"""Shared fixtures: a real redis-server for the whole session, flushed per test.

Every Redis test runs against the embedded server (what a fresh laptop has) and, when
``REDIS_URL`` is set, against that external Redis too.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from api.redis_server import EmbeddedRedis

REDIS_TARGETS = ["embedded"] + (["external"] if os.environ.get("REDIS_URL") else [])


@pytest.fixture(scope="session")
def embedded_redis() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(params=REDIS_TARGETS, scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    if request.param == "external":
        return os.environ["REDIS_URL"]
    server: EmbeddedRedis = request.getfixturevalue("embedded_redis")
    return server.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()
