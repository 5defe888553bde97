from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from api.clock import FixedClock
from api.redis_client import RedisClient
from api.settings import Settings
from tests.integration.conftest import NOON_NY


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOON_NY)


@pytest.fixture
async def client(redis_client: RedisClient, redis_settings: Settings,
                 clock: FixedClock) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    """The app builds its own client from the URL: litestar's test client runs the app on
    its own event loop, and a redis connection belongs to the loop that opened it.
    ``redis_client`` has flushed the database first."""
    app = create_app(redis_settings, clock=clock)
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


@asynccontextmanager
async def worker(settings: Settings, **changes: Any) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    """An app of ``settings`` with ``changes`` (e.g. the format it writes), at NOON_NY:
    one worker of a release among others sharing one Redis."""
    app = create_app(msgspec.structs.replace(settings, **changes), clock=FixedClock(NOON_NY))
    async with AsyncTestClient(app=app) as test_client:
        yield test_client
