"""What following the model pointers costs a decision (api/model_pointer.py).

``TenantModels.model_for`` runs once per decision: within the refresh interval it is a
dict lookup; once the interval has passed it re-reads the tenant's and the global pointer
id (two small HMGETs, concurrently). Against an embedded redis-server:

    python -m loadtests.bench_model_pointer
"""

from __future__ import annotations

import asyncio
import tempfile
import time

from api.clock import SystemClock
from api.engine import Engine
from api.metrics import Metrics
from api.redis_client import make_redis
from api.redis_server import EmbeddedRedis
from api.settings import Settings
from api.store import Store


async def _measure(url: str, data_dir: str, cached: int = 100_000, checks: int = 2_000) -> None:
    settings = Settings(redis_url=url, log_decisions=False, data_dir=data_dir)
    client = make_redis(settings)
    try:
        engine = Engine(Store(client), settings, SystemClock(), Metrics())
        follower = engine.tenant_models
        await follower.model_for("acme")
        started = time.perf_counter()
        for _ in range(cached):
            await follower.model_for("acme")
        hot = (time.perf_counter() - started) / cached * 1e6
        # refresh 0: every call re-checks, which is what one call a second costs
        follower = type(follower)(engine.store, engine.models, engine.metrics,
                                  refresh_seconds=0.0)
        started = time.perf_counter()
        for _ in range(checks):
            await follower.model_for("acme")
        cold = (time.perf_counter() - started) / checks * 1e6
        print(f"model_for: {hot:.2f} µs within the refresh interval, {cold:.0f} µs when it "
              "re-reads the pointers (once a second per tenant and worker)")
    finally:
        await client.aclose()


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis() as server:
        asyncio.run(_measure(server.url, tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
