"""Auto-pipelining of script calls (api/redis_client.py ``AutoPipeline``), against the real
Redis targets: concurrent calls share writes, yet each caller gets exactly its own reply,
a script's error stays its own, a lost script cache costs no call twice, and a Cluster
client keeps redis-py's per-command path."""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

import pytest
import redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError, ResponseError

from api.redis_client import (
    AutoPipeline,
    ClusterAutoPipeline,
    RedisClient,
    ScriptCaller,
    make_redis,
)
from api.settings import Settings
from api.store import Store
from loadtests.iterations import iterations_per_call

ECHO = "redis.call('INCR', KEYS[1]) return ARGV[1]"
FAIL_ON_X = "if ARGV[1] == 'x' then return redis.error_reply('boom') end return ARGV[1]"


class CountingPipeline(AutoPipeline):
    batches = 0

    def _take(self):  # type: ignore[no-untyped-def]
        batch = super()._take()
        type(self).batches += bool(batch)
        return batch


class CountingClusterPipeline(ClusterAutoPipeline):
    batches = 0

    def _take(self):  # type: ignore[no-untyped-def]
        batch = super()._take()
        type(self).batches += bool(batch)
        return batch


def caller(client: RedisClient, source: str
           ) -> tuple[Any, CountingPipeline | CountingClusterPipeline]:
    """The script, at most 32 calls in flight (as the store's gate does: the cluster
    client's pools refuse more connections than their limit)."""
    pipeline = (CountingClusterPipeline(client) if isinstance(client, RedisCluster)
                else CountingPipeline(client))
    script = ScriptCaller(client.register_script(source), pipeline)
    gate = asyncio.Semaphore(32)

    async def call(keys: list[str], args: list[str]) -> Any:
        async with gate:
            return await script(keys=keys, args=args)

    return call, pipeline


async def test_concurrent_calls_share_writes_and_each_gets_its_own_reply(
        redis_client: RedisClient) -> None:
    echo, pipeline = caller(redis_client, ECHO)
    await echo(keys=["{t:u}:warm"], args=["0"])  # a cluster client loads its slot map first
    type(pipeline).batches = 0
    replies = await asyncio.gather(*(echo(keys=["{t:u}:n"], args=[str(i)]) for i in range(300)))
    assert replies == [str(i).encode() for i in range(300)]
    assert int(await redis_client.get("{t:u}:n")) == 300  # every script ran exactly once
    assert 1 <= type(pipeline).batches <= 100  # 300 calls, far fewer writes


async def test_calls_on_many_slots_each_reach_their_own_keys(redis_client: RedisClient) -> None:
    """On a cluster the batch is split per master: 200 users' keys over every node."""
    echo, _ = caller(redis_client, ECHO)
    replies = await asyncio.gather(*(echo(keys=[f"{{t:u{i}}}:n"], args=[str(i)])
                                     for i in range(200)))
    assert replies == [str(i).encode() for i in range(200)]
    values = [await redis_client.get(f"{{t:u{i}}}:n") for i in range(200)]
    assert values == [b"1"] * 200


async def test_a_call_sent_to_the_wrong_master_runs_once_after_its_redirection(
        redis_client: RedisClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stale slot map: the batch goes to a master that does not own the slot, which
    answers MOVED without running the script; the call then goes alone through redis-py's
    cluster path, which follows the redirection. Every script runs exactly once."""
    if not isinstance(redis_client, RedisCluster):
        pytest.skip("redirections exist on a Redis Cluster only")
    echo, _ = caller(redis_client, ECHO)
    await echo(keys=["{t:u}:n"], args=["0"])
    owner = redis_client.get_node_from_key("{t:u}:n")
    other = next(n for n in redis_client.get_primaries() if n.name != owner.name)
    monkeypatch.setattr(redis_client, "get_node_from_key", lambda key, replica=False: other)
    alone = 0
    per_command = AsyncScript.__call__

    async def counted(self: AsyncScript, *args: Any, **kwargs: Any) -> Any:
        nonlocal alone
        alone += 1
        return await per_command(self, *args, **kwargs)

    monkeypatch.setattr(AsyncScript, "__call__", counted)
    replies = await asyncio.gather(*(echo(keys=["{t:u}:n"], args=[str(i)]) for i in range(1, 21)))
    assert replies == [str(i).encode() for i in range(1, 21)]
    assert alone == 20  # each was refused (MOVED) by the wrong master, then sent alone
    monkeypatch.undo()
    assert int(await redis_client.get("{t:u}:n")) == 21


async def test_plain_commands_share_the_batches_and_reach_their_own_keys(
        redis_client: RedisClient) -> None:
    """``execute`` (the decision log's ``XADD``) goes through the same batches as the
    scripts, routed on a cluster by its first argument, the key."""
    echo, pipeline = caller(redis_client, ECHO)
    await echo(keys=["{t:u}:warm"], args=["0"])
    keys = [f"{{t:u{i}}}:s" for i in range(100)]
    ids = await asyncio.gather(*(pipeline.execute("XADD", key, "*", "n", str(i))
                                 for i, key in enumerate(keys)),
                               echo(keys=["{t:u}:n"], args=["x"]))
    assert ids[-1] == b"x"
    for i, key in enumerate(keys):
        assert await redis_client.xrange(key) == [(ids[i], {b"n": str(i).encode()})]


async def test_a_plain_command_sent_to_the_wrong_master_runs_once(
        redis_client: RedisClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stale slot map: the master answers MOVED without running the ``XADD``; it then
    goes alone through redis-py's cluster path and lands once."""
    if not isinstance(redis_client, RedisCluster):
        pytest.skip("redirections exist on a Redis Cluster only")
    _, pipeline = caller(redis_client, ECHO)
    await redis_client.set("{t:u}:warm", 1)
    owner = redis_client.get_node_from_key("{t:u}:s")
    other = next(n for n in redis_client.get_primaries() if n.name != owner.name)
    monkeypatch.setattr(redis_client, "get_node_from_key", lambda key, replica=False: other)
    await asyncio.gather(*(pipeline.execute("XADD", "{t:u}:s", "*", "n", str(i))
                           for i in range(20)))
    monkeypatch.undo()
    entries = await redis_client.xrange("{t:u}:s")
    assert sorted(int(fields[b"n"]) for _, fields in entries) == list(range(20))


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
async def test_the_store_pipelines_on_every_target(redis_client: RedisClient, auto: bool) -> None:
    store = Store(redis_client, auto_pipeline=auto)
    kind = ClusterAutoPipeline if isinstance(redis_client, RedisCluster) else AutoPipeline
    assert isinstance(store._pipeline, kind) if auto else store._pipeline is None
    # every script the store registers (read, commit, ... and any added later) is wrapped
    assert not [name for name, v in vars(store).items() if isinstance(v, AsyncScript)]
    counts = await asyncio.gather(*(store.floor_call("t", f"u{i}") for i in range(50)))
    assert counts == [0] * 50


async def test_connections_the_cluster_closed_are_replaced_before_a_batch_is_sent(
        redis_client: RedisClient) -> None:
    """Every node drops its clients (as a restart does): the next batch notices the close on
    its idle connection before writing, reconnects, and no call fails."""
    if not isinstance(redis_client, RedisCluster):
        pytest.skip("the single-node pool has its own check (tests/process/test_redis_client.py)")
    echo, _ = caller(redis_client, ECHO)
    keys = [f"{{t:u{i}}}:n" for i in range(60)]
    await asyncio.gather(*(echo(keys=[k], args=["0"]) for k in keys))
    for node in redis_client.get_primaries():
        await redis_client.execute_command("CLIENT", "KILL", "TYPE", "normal", target_nodes=node)
    replies = await asyncio.gather(*(echo(keys=[k], args=["1"]) for k in keys))
    assert replies == [b"1"] * 60


async def test_a_call_spans_four_loop_iterations_on_a_busy_loop(redis_client: RedisClient) -> None:
    """Queued, written by the flush itself, received and resolved, resumed: on one Redis and
    on a cluster alike (tests/process/test_redis_client.py names the steps). Read through
    redis-py by the batch's task: 5 on both; written by that task too: 7 and 6."""
    echo, _ = caller(redis_client, ECHO)
    await echo(keys=["{t:u}:warm"], args=["0"])  # loads the script (and a cluster's slot map)
    await echo(keys=["{t:u}:warm"], args=["0"])  # now on the connection kept for its node
    counts = await iterations_per_call(lambda: echo(keys=["{t:u}:it"], args=["1"]), 0.005)
    assert statistics.median(counts) <= 4, counts


async def test_a_node_that_drops_waiting_calls_fails_only_them_and_recovers(
        redis_client: RedisClient) -> None:
    """One master pauses, then drops its clients while a batch waits on the connection
    kept for it: those calls fail as a lost connection (their scripts may have run), the
    other masters' calls succeed, and the next calls on every node succeed."""
    if not isinstance(redis_client, RedisCluster):
        pytest.skip("tests/process/test_redis_client.py kills a single node's connections")
    echo, _ = caller(redis_client, ECHO)
    keys = [f"{{t:d{i}}}:n" for i in range(30)]  # all in flight at once (the gate's 32)
    for _ in range(2):  # the second round runs on the connections kept per node
        await asyncio.gather(*(echo(keys=[k], args=["0"]) for k in keys))
    paused = redis_client.get_node_from_key(keys[0])
    admin = redis.Redis(host=paused.host, port=paused.port)  # a connection of its own
    admin.execute_command("CLIENT", "PAUSE", 2000, "WRITE")
    try:
        calls = asyncio.gather(*(echo(keys=[k], args=["1"]) for k in keys),
                               return_exceptions=True)
        await asyncio.sleep(0)  # the calls queue, then the flush writes them
        await asyncio.sleep(0)
        admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        results = await calls
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()
    on_paused = [redis_client.get_node_from_key(k).name == paused.name for k in keys]
    assert all(isinstance(r, ConnectionError) for r, p in zip(results, on_paused, strict=True) if p), results
    assert all(r == b"1" for r, p in zip(results, on_paused, strict=True) if not p)
    replies = await asyncio.gather(*(echo(keys=[k], args=["2"]) for k in keys))
    assert replies == [b"2"] * 30


async def test_a_client_closed_while_a_slot_map_reload_is_pending_closes_every_connection(
        redis_client: RedisClient, redis_settings: Settings) -> None:
    """A node failure marks the slot map for reloading until the next command; redis-py's
    ``aclose`` closed nothing in between (``InitFirstRedisCluster.aclose``)."""
    if not isinstance(redis_client, RedisCluster):
        pytest.skip("a Redis Cluster client only")
    client = make_redis(redis_settings)
    assert isinstance(client, RedisCluster)
    echo, _ = caller(client, ECHO)
    await asyncio.gather(*(echo(keys=[f"{{t:c{i}}}:n"], args=["0"]) for i in range(30)))
    nodes = list(client.get_nodes())
    client._initialize = True  # what a failed batch or command leaves until the next command
    await client.aclose()
    still_open = [conn for node in nodes for conn in node._connections if conn.is_connected]
    assert still_open == []
