"""A policy PUT on one worker reaches the others within the refresh interval (1 s)."""

from __future__ import annotations

from api.policy import Policy
from api.policy_cache import PolicyCache
from api.redis_client import RedisClient
from api.store import Store


class Ticker:
    """A monotonic clock tests move by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_other_workers_see_a_new_policy_within_the_refresh(
        redis_client: RedisClient) -> None:
    store = Store(redis_client)
    ticker = Ticker()
    cache = PolicyCache(store, refresh_seconds=1.0, monotonic=ticker)
    assert (await cache.get("t")).version == 0  # nothing stored: the default

    await store.put_policy("t", Policy(max_defer_minutes=60), None, now=0)  # "another worker"
    ticker.now += 0.9
    assert (await cache.get("t")).version == 0  # still inside the refresh interval
    ticker.now += 0.2
    fresh = await cache.get("t")
    assert (fresh.version, fresh.max_defer_minutes) == (1, 60)


async def test_an_unchanged_version_is_not_refetched(redis_client: RedisClient) -> None:
    store = Store(redis_client)
    ticker = Ticker()
    cache = PolicyCache(store, monotonic=ticker)
    await store.put_policy("t", Policy(), None, now=0)
    first = await cache.get("t")
    ticker.now += 5
    assert await cache.get("t") is first  # only the version was read, same object kept


async def test_the_serving_worker_sees_its_own_put_at_once(redis_client: RedisClient) -> None:
    store = Store(redis_client)
    cache = PolicyCache(store, monotonic=Ticker())
    await cache.get("t")
    stored = await store.put_policy("t", Policy(max_defer_minutes=30), None, now=0)
    cache.put("t", stored)
    assert (await cache.get("t")).max_defer_minutes == 30
