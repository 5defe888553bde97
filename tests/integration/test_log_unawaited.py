"""A decision is answered without waiting for its log append's reply, and the append has
reached Redis before the answer (api/decision_log.py, ``Store.append_log_now``). On a
Cluster the append is awaited as before; both must hold the same promise to a client that
reads the log once it has its answer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import redis

from api.engine import Engine
from api.keys import log_bucket, log_key
from api.redis_client import RedisClient
from api.store import Store
from tests.conftest import RedisTarget
from tests.integration.conftest import TENANT, req


def sync_client(target: RedisTarget) -> Any:
    return (redis.RedisCluster.from_url(target.url) if target.cluster
            else redis.Redis.from_url(target.url))


def capture(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What each ``append_log_now`` call returned: its futures, or None (awaited instead)."""
    seen: list[Any] = []
    original = engine.store.append_log_now

    def spy(commands: Any) -> Any:
        seen.append(original(commands))
        return seen[-1]

    monkeypatch.setattr(engine.store, "append_log_now", spy)
    return seen


async def test_the_answer_does_not_wait_for_the_append_which_is_already_in_redis(
        engine: Engine, set_policy: Callable[..., Any], redis_target: RedisTarget,
        monkeypatch: pytest.MonkeyPatch) -> None:
    await set_policy(quiet_hours=[])
    await engine.decide(TENANT, req(message_id="warm", user_id="u0"))  # a kept connection
    seen = capture(engine, monkeypatch)
    answer = await engine.decide(TENANT, req(message_id="m1", user_id="u1"))
    assert answer.decision == "send"
    # nothing has yielded to the event loop since the answer: its reply cannot have been read
    [futures] = seen
    if redis_target.cluster:
        assert futures is None  # a Cluster's append is awaited (no kept connection per slot)
    else:
        assert [f.done() for f in futures] == [False]
    # a client reading the log on a connection of its own, before this loop runs again,
    # finds the entry: the XADD reached Redis' socket before the answer was returned
    client = sync_client(redis_target)
    try:
        entries = client.xrange(log_key(TENANT, log_bucket("u1")))
    finally:
        client.close()
    assert [fields[b"u"] for _, fields in entries][-1:] == [b"u1"]
    if futures is not None:
        assert [await f for f in futures] == [entries[-1][0]]
    assert await engine.store.settle() == 0
    assert engine.log.failures == 0


async def test_an_append_that_fails_after_the_answer_is_counted_when_its_reply_comes(
        engine: Engine, set_policy: Callable[..., Any], redis_target: RedisTarget) -> None:
    await set_policy(quiet_hours=[])
    await engine.decide(TENANT, req(message_id="warm", user_id="u0"))
    client = sync_client(redis_target)
    try:
        client.set(log_key(TENANT, log_bucket("u1")), "not a stream")  # XADD: WRONGTYPE
    finally:
        client.close()
    answer = await engine.decide(TENANT, req(message_id="m1", user_id="u1"))
    assert answer.decision == "send"  # the log never fails a decision
    await engine.store.settle()
    assert engine.log.failures == 1
    assert engine.metrics.registry.get_sample_value(
        "sendwise_decision_log_failures_total") == 1
    # the connection is intact: the next decision's append succeeds
    await engine.decide(TENANT, req(message_id="m2", user_id="u2"))
    await engine.store.settle()
    assert engine.log.failures == 1


async def test_settle_waits_for_the_replies_nobody_awaited_or_says_how_many_are_left(
        redis_client: RedisClient, redis_target: RedisTarget) -> None:
    if redis_target.name != "embedded":
        pytest.skip("pauses the server's writes: the embedded server only (the Cluster's "
                    "appends are awaited, the machine's Redis is shared)")
    store = Store(redis_client)
    await store.append_log([("XADD", "log", "*", "n", "0")])  # a kept connection from here
    pause = sync_client(redis_target)
    try:
        pause.execute_command("CLIENT", "PAUSE", 500, "WRITE")  # XADD waits half a second
        futures = store.append_log_now([("XADD", "log", "*", "n", "1"),
                                        ("XADD", "log", "*", "n", "2")])
        assert futures is not None
        assert await store.settle(within=0.05) == 2  # gave up, the replies still to come
        assert await store.settle(within=10.0) == 0  # the pause ended, both answered
        assert all(isinstance(f.result(), bytes) for f in futures)
        assert pause.xlen("log") == 3
    finally:
        pause.execute_command("CLIENT", "UNPAUSE")
        pause.close()


async def test_without_a_kept_connection_nothing_is_sent_and_the_caller_awaits(
        redis_client: RedisClient, redis_target: RedisTarget) -> None:
    store = Store(redis_client)  # no batch sent yet: the pipeline keeps no connection
    assert store.append_log_now([("XADD", "log", "*", "n", "1")]) is None
    await asyncio.sleep(0)  # anything queued would be flushed in this iteration
    client = sync_client(redis_target)
    try:
        assert client.exists("log") == 0
    finally:
        client.close()
    assert await store.settle() == 0
