"""Through HTTP: a decision's log entry is in Redis by the time its answer arrives, although
the answer did not wait for the append's reply; a stopping worker waits for the replies
still open (``Store.settle`` in the app's shutdown)."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from api.keys import log_bucket, log_key
from api.log_entry import decode_entry
from api.settings import Settings
from api.store import Store
from tests.api.conftest import worker
from tests.conftest import RedisTarget

TENANT = "default"


async def test_each_answer_finds_its_entry_logged_and_shutdown_settles_the_rest(
        redis_client: Any, redis_settings: Settings, redis_target: RedisTarget,
        monkeypatch: pytest.MonkeyPatch) -> None:
    settled: list[int] = []
    original = Store.settle

    async def spy(self: Store, within: float = 2.0) -> int:
        left = await original(self, within)
        settled.append(left)
        return left

    monkeypatch.setattr(Store, "settle", spy)
    reader: Any = (redis.RedisCluster.from_url(redis_target.url) if redis_target.cluster
                   else redis.Redis.from_url(redis_target.url))
    try:
        async with worker(redis_settings) as http:
            for i in range(5):
                user = f"u{i}"
                r = await http.post("/v1/decisions", json={
                    "message_id": f"m{i}", "user_id": user, "channels": ["email"],
                    "timezone": "America/New_York"})
                assert r.status_code == 200, r.text
                entries = reader.xrange(log_key(TENANT, log_bucket(user)))
                assert [(decode_entry(e)["user_id"], decode_entry(e)["message_id"])
                        for _, e in entries][-1:] == [(user, f"m{i}")], entries
            app: Any = http.app
            engine = app.state.engine
        assert settled == [0]  # the shutdown waited for every reply, and none was left
        assert engine.log.failures == 0
    finally:
        reader.close()
