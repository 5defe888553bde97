"""``POST /v1/_floor``, the benchmark's least-Redis yardstick: routed only with the benchmark
endpoints, one script call on the recipient's slot, nothing written, not documented."""

from __future__ import annotations

import msgspec
from litestar.testing import AsyncTestClient

from api.app import create_app
from api.clock import FixedClock
from api.redis_client import RedisClient
from api.settings import Settings

DECISION = {"message_id": "f1", "user_id": "u1", "channels": ["email"]}


async def test_floor_only_when_benchmarking_and_writes_nothing(
        redis_client: RedisClient, redis_settings: Settings, clock: FixedClock) -> None:
    async with AsyncTestClient(app=create_app(redis_settings, clock=clock)) as c:
        assert (await c.post("/v1/_floor", json=DECISION)).status_code == 404
    bench = msgspec.structs.replace(redis_settings, benchmark_endpoints=True)
    async with AsyncTestClient(app=create_app(bench, clock=clock)) as c:
        answers = [await c.post("/v1/_floor", json={**DECISION, "user_id": f"u{i}"})
                   for i in range(3)]
        assert all(r.status_code == 200 and r.json() == {"message_id": "f1"} for r in answers)
        assert "/v1/_floor" not in (await c.get("/docs/openapi.json")).json()["paths"]
        bad = await c.post("/v1/_floor", json={"user_id": "u1"})
        assert bad.status_code == 400  # the same strict decoding as a decision
    assert await redis_client.keys("*") == []
