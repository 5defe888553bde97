"""The one way the service builds its Redis client.

A *blocking* pool: under a burst, requests wait (up to the timeout) for one of at most
``redis_max_connections`` connections instead of failing fast with MaxConnectionsError
(redis-py's default pool) or opening unbounded connections against Redis' maxclients.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from api.settings import Settings

#: what the store talks to: one Redis, or a Redis Cluster (every script touches one slot)
RedisClient = aioredis.Redis | RedisCluster


def make_redis(settings: Settings) -> RedisClient:
    if settings.redis_url is None:
        raise RuntimeError("a Redis URL is needed (REDIS_URL, or the embedded server)")
    if settings.redis_cluster:
        return RedisCluster.from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            socket_timeout=settings.redis_timeout_seconds,
            socket_connect_timeout=settings.redis_timeout_seconds,
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=max(1.0, settings.redis_timeout_seconds * 4),
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        health_check_interval=30,
    )
    return aioredis.Redis.from_pool(pool)  # the client owns (and closes) the pool
