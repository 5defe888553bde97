"""The send-time profile is written in the deflated format 3 (``Profile.to_compact_bytes``),
and a profile the previous release wrote in format 2 is still read, scored and carried
over (rewritten as format 3) by the next write."""

from __future__ import annotations

from api.engine import Engine
from api.keys import user_keys
from api.redis_client import RedisClient
from models.profile import COMPACT_FORMAT_VERSION, FORMAT_VERSION, Profile
from tests.integration.conftest import TENANT, req
from tests.integration.test_scoring import evening_events


async def test_profiles_are_written_in_format_3_and_format_2_is_still_read(
        engine: Engine, redis_client: RedisClient) -> None:
    key = user_keys(TENANT, "u1").profile
    await engine.record_events(TENANT, evening_events("u1", days=7))
    raw = bytes(await redis_client.hget(key, "p"))
    assert raw[0] == COMPACT_FORMAT_VERSION
    profile = Profile.from_bytes(raw)
    # as the previous release stored it: format 2, same history
    await redis_client.hset(key, "p", profile.to_bytes())
    assert bytes(await redis_client.hget(key, "p"))[0] == FORMAT_VERSION
    decided = await engine.decide(TENANT, req(message_id="m1"))
    assert decided.score is not None  # scored on the stored history, not as a new user
    await engine.record_events(TENANT, evening_events("u1", days=14)[-3:])  # a new write
    raw = bytes(await redis_client.hget(key, "p"))
    assert raw[0] == COMPACT_FORMAT_VERSION
    again = Profile.from_bytes(raw)
    assert again.counts.sum() > profile.counts.sum()  # the old history plus the new events
