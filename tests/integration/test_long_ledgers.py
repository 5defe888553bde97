"""Long ledgers: commit.lua skims the entries of categories no shipped cap counts.

Above a few entries, when caps are all that reads the ledger (no conflict window, no
preemption), commit.lua reads a member's category from its bytes and does not decode the
members of categories that no cap of the plan counts (docs/benchmarks.md, "commit.lua on
long ledgers"). These tests give one recipient a ledger well past that threshold, mostly
of exempt (transactional) sends, and check that every answer is the one the caps call for:
skimmed entries still count where a cap counts them, the counted ones are all still
read, and a retry whose record expired still finds its own skimmed reservation, for
message ids of every MessagePack string size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from api.clock import FixedClock
from api.engine import Engine
from api.keys import user_keys
from api.redis_client import RedisClient
from api.settings import Settings
from tests.integration.conftest import EXACT, TENANT, req

TTL = Settings().idempotency_ttl_seconds * 1000
#: more entries than commit.lua's SKIM_FROM (8), so the skim is on
TRANSACTIONAL = 12


async def _transactional(engine: Engine, count: int, prefix: str = "t") -> None:
    for i in range(count):
        answer = await engine.decide(TENANT, req(message_id=f"{prefix}{i}",
                                                 category="transactional"))
        assert answer.decision == "send"


def codes(answer: Any) -> list[str]:
    return [r.code for r in answer.reasons]


async def test_a_cap_still_counts_its_own_category_among_many_skimmed_entries(
        engine: Engine, set_policy: Callable[..., Any], redis_client: RedisClient) -> None:
    await set_policy(caps=[{"id": "promo-3", "limit": 3, "window_minutes": 1440,
                            "scope": {"categories": ["promotional"]}}], quiet_hours=[],
                     **EXACT)
    await _transactional(engine, TRANSACTIONAL)
    sent = [await engine.decide(TENANT, req(message_id=f"p{i}")) for i in range(3)]
    assert [a.decision for a in sent] == ["send"] * 3
    fourth = await engine.decide(TENANT, req(message_id="p3"))
    assert fourth.decision == "defer" and codes(fourth) == ["frequency_cap"]
    assert await redis_client.zcard(user_keys(TENANT, "u1").ledger) == TRANSACTIONAL + 4


async def test_skimmed_entries_count_when_the_policy_counts_exempt_messages(
        engine: Engine, set_policy: Callable[..., Any]) -> None:
    await set_policy(caps=[{"id": "twelve-a-day", "limit": TRANSACTIONAL,
                            "window_minutes": 1440}],
                     exempt_count_toward_caps=True, quiet_hours=[], **EXACT)
    await _transactional(engine, TRANSACTIONAL)
    promo = await engine.decide(TENANT, req(message_id="p"))
    assert promo.decision == "defer" and codes(promo) == ["frequency_cap"]


async def test_a_cap_over_another_category_ignores_the_skimmed_ones(
        engine: Engine, set_policy: Callable[..., Any]) -> None:
    await set_policy(caps=[{"id": "one-a-day", "limit": 1, "window_minutes": 1440}],
                     quiet_hours=[], **EXACT)
    await _transactional(engine, TRANSACTIONAL)
    first = await engine.decide(TENANT, req(message_id="p0"))
    second = await engine.decide(TENANT, req(message_id="p1"))
    assert first.decision == "send"
    assert second.decision == "defer" and codes(second) == ["frequency_cap"]


#: packed as a fixstr, a str8 and a str16 (100 three-byte characters: 300 bytes)
@pytest.mark.parametrize("mid", ["x" * 5, "x" * 40, "\u20ac" * 100])
async def test_a_retry_finds_its_skimmed_reservation_after_its_record_expired(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any], mid: str) -> None:
    await set_policy(caps=[{"id": "promo-3", "limit": 3, "window_minutes": 1440,
                            "scope": {"categories": ["promotional"]}}], quiet_hours=[],
                     **EXACT)
    await _transactional(engine, TRANSACTIONAL)
    first = await engine.decide(TENANT, req(message_id=mid, category="transactional"))
    await _transactional(engine, 2, prefix="later")
    clock.advance(TTL)  # the record has expired; the reservation is in the ledger still
    retry = await engine.decide(TENANT, req(message_id=mid, category="transactional"))
    assert retry.replayed and retry.send_at == first.send_at
    promo = await engine.decide(TENANT, req(message_id="promo"))
    assert promo.decision == "send"
