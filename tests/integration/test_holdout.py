"""Holdouts through the real engine and Redis: a held-out message is suppressed with reason
``holdout``, reserves nothing and counts toward no cap, is recorded (a retry answers the
same) and logged with its group; transactional messages go through; dry runs answer the
same without a trace; a merged id follows the person's current id; concurrent decisions
keep both the groups and the caps exact."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec

from api import lifecycle
from api.clock import FixedClock
from api.engine import Engine
from api.holdout import HoldoutSettings, in_campaign_holdout, in_global_group
from api.keys import log_bucket, log_key
from api.log_entry import decode_entry
from api.redis_client import RedisClient
from tests.integration.conftest import TENANT, req

HOLDOUT = {"salt": "it-salt", "global_percent": 30.0, "campaigns": {"spring": 40.0}}
SETTINGS = msgspec.convert(HOLDOUT, HoldoutSettings)


def users(*, global_: bool, campaign: bool | None = None, count: int = 1) -> list[str]:
    found = [f"u{i}" for i in range(2000)
             if in_global_group(SETTINGS, TENANT, f"u{i}") == global_
             and (campaign is None
                  or in_campaign_holdout(SETTINGS, TENANT, f"u{i}", "spring") == campaign)]
    return found[:count]


async def logged(redis_client: RedisClient, user: str) -> list[dict[str, str]]:
    raw = await redis_client.xrange(log_key(TENANT, log_bucket(user)))
    entries = [decode_entry(fields) for _, fields in raw]
    return [e for e in entries if e.get("user_id") == user and e.get("kind") == "decision"]


async def test_held_out_message_is_suppressed_recorded_and_logged(
        engine: Engine, set_policy: Callable[..., Any], redis_client: RedisClient) -> None:
    await set_policy(quiet_hours=[], holdout=HOLDOUT)
    [user] = users(global_=True)
    answer = await engine.decide(TENANT, req(user_id=user, campaign_id="spring"))
    assert answer.decision == "suppress" and answer.channel is None and answer.send_at is None
    assert [(r.code, r.rule) for r in answer.reasons] == [
        ("holdout", "policy.holdout.global_percent")]
    assert await engine.store.ledger(TENANT, user) == []  # nothing reserved

    retry = await engine.decide(TENANT, req(user_id=user, campaign_id="spring"))
    assert retry.replayed and msgspec.structs.replace(retry, replayed=False) == answer

    [entry] = await logged(redis_client, user)  # the replay is not logged again
    assert (entry["decision"], entry["reasons"], entry["holdout"], entry["campaign"]) == (
        "suppress", "holdout", "global", "spring")


async def test_campaign_holdout_is_logged_as_campaign_and_spares_other_campaigns(
        engine: Engine, set_policy: Callable[..., Any], redis_client: RedisClient) -> None:
    await set_policy(quiet_hours=[], holdout=HOLDOUT)
    [user] = users(global_=False, campaign=True)
    held = await engine.decide(TENANT, req(user_id=user, message_id="a", campaign_id="spring"))
    other = await engine.decide(TENANT, req(user_id=user, message_id="b", campaign_id="fall"))
    assert held.decision == "suppress"
    assert [(r.code, r.rule) for r in held.reasons] == [
        ("holdout", "policy.holdout.campaigns.spring")]
    assert other.decision == "send"
    entries = {e["message_id"]: e for e in await logged(redis_client, user)}
    assert entries["a"]["holdout"] == "campaign" and entries["b"]["holdout"] == ""
    assert len(await engine.store.ledger(TENANT, user)) == 1


async def test_held_out_messages_count_toward_no_cap_and_transactional_goes_through(
        engine: Engine, set_policy: Callable[..., Any]) -> None:
    """With a cap of 1 promotional message a day, a held-out recipient's five promotional
    messages reserve nothing; their receipt is sent and reserved as usual."""
    await set_policy(quiet_hours=[], holdout=HOLDOUT,
                     caps=[{"id": "one", "limit": 1, "window_minutes": 1440,
                            "scope": {"categories": ["promotional"]}}])
    [user] = users(global_=True)
    for i in range(5):
        answer = await engine.decide(TENANT, req(user_id=user, message_id=f"p{i}"))
        assert answer.decision == "suppress" and answer.reasons[0].code == "holdout"
    receipt = await engine.decide(TENANT, req(user_id=user, message_id="r",
                                              category="transactional"))
    assert receipt.decision == "send" and receipt.reasons == []
    assert len(await engine.store.ledger(TENANT, user)) == 1


async def test_dry_run_answers_the_holdout_without_a_trace(
        engine: Engine, set_policy: Callable[..., Any], redis_client: RedisClient) -> None:
    """A dry run says what the real decision would say (the timeline page shows a held-out
    recipient as held out), and like every dry run stores and logs nothing."""
    await set_policy(quiet_hours=[], holdout=HOLDOUT)
    [user] = users(global_=True)
    dry = await engine.decide(TENANT, req(user_id=user, dry_run=True))
    assert dry.decision == "suppress" and dry.dry_run and dry.reasons[0].code == "holdout"
    assert await logged(redis_client, user) == []
    real = await engine.decide(TENANT, req(user_id=user))
    assert not real.replayed and real.decision == "suppress"


async def test_no_holdout_policy_holds_nobody_out(engine: Engine,
                                                  set_policy: Callable[..., Any]) -> None:
    await set_policy(quiet_hours=[])
    answers = await asyncio.gather(*(engine.decide(TENANT, req(user_id=f"u{i}",
                                                               campaign_id="spring"))
                                     for i in range(30)))
    assert {a.decision for a in answers} == {"send"}


async def test_a_merged_id_is_decided_with_the_current_ids_membership(
        engine: Engine, set_policy: Callable[..., Any], clock: FixedClock) -> None:
    await set_policy(quiet_hours=[], holdout=HOLDOUT)
    [held] = users(global_=True)
    [free] = users(global_=False, campaign=False)
    await lifecycle.merge(engine.store, TENANT, free, held, clock.now_ms())
    answer = await engine.decide(TENANT, req(user_id=free, message_id="after-merge"))
    assert answer.decision == "suppress" and answer.reasons[0].code == "holdout"


async def test_concurrent_decisions_keep_groups_and_caps_exact(
        engine: Engine, set_policy: Callable[..., Any]) -> None:
    """60 recipients x 3 messages of one campaign at once, a cap of 1 a day: every member
    of either group is suppressed with reason holdout and holds no reservation; every
    other recipient gets exactly one send now (the cap) and two reservations deferred to
    the following days, whatever the interleaving."""
    await set_policy(quiet_hours=[], holdout=HOLDOUT,
                     caps=[{"id": "one", "limit": 1, "window_minutes": 1440,
                            "scope": {"categories": ["promotional"]}}],
                     send_time={"exploration_rate": 0.0})  # no send explores a later slot
    people = [f"u{i}" for i in range(60)]
    calls = [req(user_id=u, message_id=f"{u}-{k}", campaign_id="spring")
             for k in range(3) for u in people]
    answers = await asyncio.gather(*(engine.decide(TENANT, c) for c in calls))
    sends: dict[str, int] = {}
    for call, answer in zip(calls, answers, strict=True):
        out = (in_global_group(SETTINGS, TENANT, call.user_id)
               or in_campaign_holdout(SETTINGS, TENANT, call.user_id, "spring"))
        assert (answer.decision == "suppress" and answer.reasons[0].code == "holdout") == out
        sends[call.user_id] = sends.get(call.user_id, 0) + (answer.decision == "send")
    ledgers = await asyncio.gather(*(engine.store.ledger(TENANT, u) for u in people))
    for user, ledger in zip(people, ledgers, strict=True):
        out = (in_global_group(SETTINGS, TENANT, user)
               or in_campaign_holdout(SETTINGS, TENANT, user, "spring"))
        assert (len(ledger), sends[user]) == ((0, 0) if out else (3, 1)), user
    assert 0 < sum(len(ledger) == 0 for ledger in ledgers) < len(people)
