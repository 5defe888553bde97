"""Auto-pipelining of script calls (api/redis_client.py ``AutoPipeline``), against the real
Redis targets: concurrent calls share writes, yet each caller gets exactly its own reply,
a script's error stays its own, a lost script cache costs no call twice, and a Cluster
client keeps redis-py's per-command path."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from api.redis_client import AutoPipeline, RedisClient, ScriptCaller
from api.store import Store

ECHO = "redis.call('INCR', KEYS[1]) return ARGV[1]"
FAIL_ON_X = "if ARGV[1] == 'x' then return redis.error_reply('boom') end return ARGV[1]"


class CountingPipeline(AutoPipeline):
    batches = 0

    async def _send(self, batch):  # type: ignore[no-untyped-def]
        type(self).batches += 1
        await super()._send(batch)


def caller(client: RedisClient, source: str) -> tuple[Any, CountingPipeline | None]:
    """The script, at most 32 calls in flight (as the store's gate does: the cluster
    client's pools refuse more connections than their limit)."""
    pipeline = None if isinstance(client, RedisCluster) else CountingPipeline(client)
    script = ScriptCaller(client.register_script(source), pipeline)
    gate = asyncio.Semaphore(32)

    async def call(keys: list[str], args: list[str]) -> Any:
        async with gate:
            return await script(keys=keys, args=args)

    return call, pipeline


async def test_concurrent_calls_share_writes_and_each_gets_its_own_reply(
        redis_client: RedisClient) -> None:
    echo, pipeline = caller(redis_client, ECHO)
    CountingPipeline.batches = 0
    replies = await asyncio.gather(*(echo(keys=["{t:u}:n"], args=[str(i)]) for i in range(300)))
    assert replies == [str(i).encode() for i in range(300)]
    assert int(await redis_client.get("{t:u}:n")) == 300  # every script ran exactly once
    if pipeline is not None:
        assert 1 <= CountingPipeline.batches <= 100  # 300 calls, far fewer writes


async def test_a_script_error_fails_only_its_own_call(redis_client: RedisClient) -> None:
    script, _ = caller(redis_client, FAIL_ON_X)
    results = await asyncio.gather(*(script(keys=["{t:u}:k"], args=[a]) for a in "abxcd"),
                                   return_exceptions=True)
    assert results[:2] == [b"a", b"b"] and results[3:] == [b"c", b"d"]
    assert isinstance(results[2], ResponseError) and "boom" in str(results[2])


async def test_a_flushed_script_cache_reloads_and_runs_each_call_once(
        redis_client: RedisClient) -> None:
    echo, _ = caller(redis_client, ECHO)
    assert await echo(keys=["{t:u}:n"], args=["1"]) == b"1"
    await redis_client.script_flush()  # a restarted Redis has no scripts
    replies = await asyncio.gather(*(echo(keys=["{t:u}:n"], args=[str(i)]) for i in range(20)))
    assert replies == [str(i).encode() for i in range(20)]
    assert int(await redis_client.get("{t:u}:n")) == 21


@pytest.mark.parametrize("auto", [True, False])
async def test_the_store_pipelines_on_one_redis_only(redis_client: RedisClient, auto: bool) -> None:
    store = Store(redis_client, auto_pipeline=auto)
    assert (store._pipeline is not None) == (auto and not isinstance(redis_client, RedisCluster))
    # every script the store registers (read, commit, ... and any added later) is wrapped
    assert not [name for name, v in vars(store).items() if isinstance(v, AsyncScript)]
    counts = await asyncio.gather(*(store.floor_call("t", f"u{i}") for i in range(50)))
    assert counts == [0] * 50
