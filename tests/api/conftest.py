from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from litestar.testing import AsyncTestClient

from api.app import create_app
from api.clock import FixedClock
from api.settings import Settings
from tests.integration.conftest import NOON_NY


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOON_NY)


@pytest.fixture
async def client(redis_client: aioredis.Redis, redis_url: str,
                 clock: FixedClock) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    """The app builds its own client from the URL: litestar's test client runs the app on
    its own event loop, and a redis connection belongs to the loop that opened it.
    ``redis_client`` has flushed the database first."""
    app = create_app(Settings(redis_url=redis_url, log_decisions=False), clock=clock)
    async with AsyncTestClient(app=app) as test_client:
        yield test_client
