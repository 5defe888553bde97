"""The decision core end to end against a real redis-server (the invariants of docs/architecture.md)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from api.clock import FixedClock
from api.engine import Engine
from api.errors import ConflictError
from api.schemas import ChannelPreference, Event, FrequencyLimit, Preferences
from tests.integration.conftest import EXACT, NOON_NY, TENANT, at, req

HOUR = 3_600_000
DAY = 24 * HOUR


def codes(response: Any) -> list[str]:
    return [r.code for r in response.reasons]


async def test_daytime_promotional_sends_now(engine: Engine) -> None:
    r = await engine.decide(TENANT, req())
    assert r.decision == "send"
    assert r.channel == "email"
    assert r.send_at == dt.datetime(2026, 6, 10, 16, tzinfo=dt.UTC)
    assert r.local_send_at is not None and r.local_send_at.utcoffset() == dt.timedelta(hours=-4)
    assert r.reasons == []
    assert r.policy_version == "0"


async def test_quiet_hours_defer_to_local_morning(engine: Engine, clock: FixedClock) -> None:
    """The default policy spreads the deferral over 30 minutes after the quiet hours end;
    the reason keeps the instant they end."""
    clock.value = at("2026-06-10T22:30:00-04:00")
    r = await engine.decide(TENANT, req())
    assert r.decision == "defer"
    morning = dt.datetime.fromisoformat("2026-06-11T08:00:00-04:00")
    assert r.send_at is not None and morning <= r.send_at < morning + dt.timedelta(minutes=30)
    assert codes(r) == ["quiet_hours"]
    assert r.reasons[0].rule == "default-quiet-hours"
    assert r.reasons[0].until == morning


async def test_cap_defers_to_the_instant_the_window_frees(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any]) -> None:
    await set_policy(caps=[{"id": "two-a-day", "limit": 2, "window_minutes": 1440}], **EXACT)
    first = await engine.decide(TENANT, req(message_id="a"))
    clock.advance(HOUR)
    await engine.decide(TENANT, req(message_id="b"))
    clock.advance(HOUR)
    third = await engine.decide(TENANT, req(message_id="c"))
    assert third.decision == "defer"
    assert first.send_at is not None
    assert third.send_at == first.send_at + dt.timedelta(days=1)
    assert codes(third) == ["frequency_cap"]
    assert third.reasons[0].rule == "two-a-day"
    assert third.policy_version == "1"


async def test_cap_past_deadline_suppresses_with_until(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any]) -> None:
    await set_policy(caps=[{"id": "one-a-day", "limit": 1, "window_minutes": 1440}])
    await engine.decide(TENANT, req(message_id="a"))
    deadline = dt.datetime.fromtimestamp((NOON_NY + 6 * HOUR) / 1000, dt.UTC)
    r = await engine.decide(TENANT, req(message_id="b", deadline=deadline))
    assert r.decision == "suppress"
    assert r.send_at is None and r.channel is None
    assert "frequency_cap" in codes(r)
    cap = next(x for x in r.reasons if x.code == "frequency_cap")
    assert cap.until == dt.datetime.fromtimestamp((NOON_NY + DAY) / 1000, dt.UTC)
    assert codes(r)[-1] == "deadline_exceeded"


async def test_cap_and_quiet_hours_chain(engine: Engine, clock: FixedClock,
                                         set_policy: Callable[..., Any]) -> None:
    """Capped until 23:00 (quiet), so the answer is 08:00 next morning, naming both."""
    await set_policy(caps=[{"id": "one-per-11h", "limit": 1, "window_minutes": 660}], **EXACT)
    await engine.decide(TENANT, req(message_id="a"))
    clock.advance(HOUR)
    r = await engine.decide(TENANT, req(message_id="b"))
    assert r.send_at == dt.datetime.fromisoformat("2026-06-11T08:00:00-04:00")
    assert codes(r) == ["frequency_cap", "quiet_hours"]


async def test_future_reservations_count(engine: Engine, clock: FixedClock,
                                         set_policy: Callable[..., Any]) -> None:
    """Two messages deferred out of quiet hours never land in the same capped window."""
    await set_policy(caps=[{"id": "one-a-day", "limit": 1, "window_minutes": 1440}], **EXACT)
    clock.value = at("2026-06-10T23:00:00-04:00")
    a = await engine.decide(TENANT, req(message_id="a"))
    b = await engine.decide(TENANT, req(message_id="b"))
    assert a.send_at == dt.datetime.fromisoformat("2026-06-11T08:00:00-04:00")
    assert b.send_at == dt.datetime.fromisoformat("2026-06-12T08:00:00-04:00")
    assert codes(b) == ["quiet_hours", "frequency_cap"]


async def test_idempotent_retry_returns_same_decision_and_counts_once(engine: Engine) -> None:
    first = await engine.decide(TENANT, req())
    again = await engine.decide(TENANT, req())
    assert again.replayed and not first.replayed
    assert again.decision_id == first.decision_id
    assert (again.decision, again.channel, again.send_at, again.reasons) == (
        first.decision, first.channel, first.send_at, first.reasons)
    assert len(await engine.store.ledger(TENANT, "u1")) == 1


async def test_message_id_reuse_for_other_content_is_a_conflict(engine: Engine) -> None:
    await engine.decide(TENANT, req())
    with pytest.raises(ConflictError) as err:
        await engine.decide(TENANT, req(channels=["sms"]))
    assert err.value.code == "idempotency_conflict"
    assert err.value.field == "message_id"


async def test_dry_run_writes_nothing(engine: Engine, redis_client: Any) -> None:
    r = await engine.decide(TENANT, req(dry_run=True))
    assert r.decision == "send" and r.dry_run
    assert await redis_client.dbsize() == 0
    real = await engine.decide(TENANT, req())
    assert not real.replayed and not real.dry_run


async def test_consent_opt_out_falls_back_to_next_channel(engine: Engine) -> None:
    await engine.store.put_preferences(TENANT, "u1", Preferences(
        channels={"email": ChannelPreference(consent="opted_out")}))
    r = await engine.decide(TENANT, req(channels=["email", "sms"]))
    assert r.decision == "send" and r.channel == "sms"
    assert r.reasons[0].code == "no_consent" and r.reasons[0].channel == "email"


async def test_whatsapp_needs_recorded_opt_in(engine: Engine) -> None:
    r = await engine.decide(TENANT, req(message_id="a", channels=["whatsapp"]))
    assert r.decision == "suppress"
    assert codes(r) == ["opt_in_required", "no_channel_available"]
    await engine.store.put_preferences(TENANT, "u1", Preferences(
        channels={"whatsapp": ChannelPreference(consent="opted_in")}))
    r = await engine.decide(TENANT, req(message_id="b", channels=["whatsapp"]))
    assert r.decision == "send" and r.channel == "whatsapp"


async def test_unsubscribed_event_takes_effect_next_decision(engine: Engine) -> None:
    when = dt.datetime.fromtimestamp(NOON_NY / 1000, dt.UTC)
    await engine.store.apply_events(TENANT, [Event(type="unsubscribed", user_id="u1", at=when,
                                                   channel="email")])
    r = await engine.decide(TENANT, req(channels=["email"]))
    assert r.decision == "suppress"
    assert r.reasons[0].rule == "events.unsubscribed"


async def test_explicit_opt_in_clears_event_opt_out(engine: Engine) -> None:
    when = dt.datetime.fromtimestamp(NOON_NY / 1000, dt.UTC)
    await engine.store.apply_events(TENANT, [Event(type="complained", user_id="u1", at=when,
                                                   channel="email")])
    await engine.store.put_preferences(TENANT, "u1", Preferences(
        channels={"email": ChannelPreference(consent="opted_in")}))
    assert (await engine.decide(TENANT, req())).decision == "send"


async def test_converted_campaign_is_suppressed(engine: Engine) -> None:
    when = dt.datetime.fromtimestamp(NOON_NY / 1000, dt.UTC)
    await engine.store.apply_events(TENANT, [Event(type="converted", user_id="u1", at=when,
                                                   campaign_id="spring")])
    r = await engine.decide(TENANT, req(campaign_id="spring"))
    assert r.decision == "suppress" and codes(r) == ["already_converted"]
    assert r.reasons[0].until == when + dt.timedelta(days=30)
    other = await engine.decide(TENANT, req(message_id="m2", campaign_id="summer"))
    assert other.decision == "send"


async def test_topic_opt_out(engine: Engine) -> None:
    await engine.store.put_preferences(TENANT, "u1", Preferences(topic_opt_outs=["sports"]))
    r = await engine.decide(TENANT, req(tags=["sports", "sale"]))
    assert r.decision == "suppress" and codes(r) == ["topic_opted_out"]


async def test_conflicting_offer_deferred_and_duplicate_suppressed(
        engine: Engine, set_policy: Callable[..., Any]) -> None:
    await set_policy(caps=[], **EXACT)  # about offers, not spacing
    first = await engine.decide(TENANT, req(message_id="a", channels=["sms"],
                                            offer={"id": "bogo", "group": "spring-sale"}))
    assert first.decision == "send" and first.send_at is not None
    other = await engine.decide(TENANT, req(message_id="b", channels=["email"],
                                            offer={"id": "20off", "group": "spring-sale"}))
    assert other.decision == "defer"
    assert codes(other) == ["conflicting_offer"]
    assert other.send_at == first.send_at + dt.timedelta(hours=72)
    dup = await engine.decide(TENANT, req(message_id="c", channels=["email"],
                                          offer={"id": "bogo", "group": "spring-sale"}))
    assert dup.decision == "suppress" and codes(dup) == ["duplicate_offer"]
    assert dup.reasons[0].channel == "sms"


async def test_transactional_is_exempt_from_quiet_hours_and_caps(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any]) -> None:
    await set_policy(caps=[{"id": "one-a-day", "limit": 1, "window_minutes": 1440}], **EXACT)
    clock.value = at("2026-06-10T23:30:00-04:00")
    for i in range(3):
        r = await engine.decide(TENANT, req(message_id=f"t{i}", category="transactional"))
        assert r.decision == "send", r
    promo = await engine.decide(TENANT, req(message_id="p"))
    assert promo.send_at == dt.datetime.fromisoformat("2026-06-11T08:00:00-04:00")
    assert codes(promo) == ["quiet_hours"]  # transactional sends did not count


async def test_transactional_counts_when_policy_says_so(
        engine: Engine, set_policy: Callable[..., Any]) -> None:
    await set_policy(caps=[{"id": "one-a-day", "limit": 1, "window_minutes": 1440}],
                     exempt_count_toward_caps=True)
    await engine.decide(TENANT, req(message_id="t", category="transactional"))
    promo = await engine.decide(TENANT, req(message_id="p"))
    assert promo.decision == "defer" and codes(promo) == ["frequency_cap"]


async def test_cancel_releases_the_reservation(engine: Engine,
                                               set_policy: Callable[..., Any]) -> None:
    await set_policy(caps=[{"id": "one-a-day", "limit": 1, "window_minutes": 1440}])
    a = await engine.decide(TENANT, req(message_id="a"))
    cancelled = await engine.cancel(TENANT, a.decision_id)
    assert cancelled.released and cancelled.message_id == "a"
    b = await engine.decide(TENANT, req(message_id="b"))
    assert b.decision == "send"
    again = await engine.cancel(TENANT, a.decision_id)
    assert not again.released and again.cancelled_at == cancelled.cancelled_at
    replay = await engine.decide(TENANT, req(message_id="a"))
    assert replay.cancelled_at == cancelled.cancelled_at


async def test_calendar_day_cap_uses_local_midnight(
        engine: Engine, clock: FixedClock, set_policy: Callable[..., Any]) -> None:
    await set_policy(caps=[{"id": "one-per-local-day", "limit": 1, "calendar": "day"}],
                     quiet_hours=[], **EXACT)
    clock.value = at("2026-06-10T20:00:00-04:00")
    await engine.decide(TENANT, req(message_id="a"))
    r = await engine.decide(TENANT, req(message_id="b"))
    assert r.send_at == dt.datetime.fromisoformat("2026-06-11T00:00:00-04:00")


async def test_user_frequency_limit(engine: Engine, set_policy: Callable[..., Any]) -> None:
    await set_policy(caps=[], **EXACT)  # the recipient's own limit alone
    limits = [FrequencyLimit(limit=1, window_minutes=2880)]
    await engine.store.put_preferences(TENANT, "u1", Preferences(frequency_limits=limits))
    await engine.decide(TENANT, req(message_id="a"))
    r = await engine.decide(TENANT, req(message_id="b"))
    assert r.decision == "defer" and codes(r) == ["user_frequency_limit"]
    assert r.reasons[0].rule == "preferences.frequency_limits[0]"
    assert r.send_at == dt.datetime.fromtimestamp((NOON_NY + 2 * DAY) / 1000, dt.UTC)


async def test_limit_reaching_the_defer_horizon_suppresses(
        engine: Engine, set_policy: Callable[..., Any]) -> None:
    await set_policy(caps=[])  # the recipient's own limit alone
    limits = [FrequencyLimit(limit=1, window_minutes=7 * 1440)]
    await engine.store.put_preferences(TENANT, "u1", Preferences(frequency_limits=limits))
    await engine.decide(TENANT, req(message_id="a"))
    r = await engine.decide(TENANT, req(message_id="b"))
    assert r.decision == "suppress"
    assert codes(r) == ["user_frequency_limit", "max_defer_exceeded"]


async def test_user_limit_zero_blocks_the_channel(engine: Engine) -> None:
    limits = [FrequencyLimit(limit=0, window_minutes=1440, channels=["email"])]
    await engine.store.put_preferences(TENANT, "u1", Preferences(frequency_limits=limits))
    r = await engine.decide(TENANT, req(channels=["email", "push"]))
    assert r.decision == "send" and r.channel == "push"


async def test_not_before_defers(engine: Engine, set_policy: Callable[..., Any]) -> None:
    await set_policy(**EXACT)
    nb = dt.datetime.fromtimestamp((NOON_NY + 2 * HOUR) / 1000, dt.UTC)
    r = await engine.decide(TENANT, req(not_before=nb))
    assert r.decision == "defer" and r.send_at == nb and codes(r) == ["not_before"]


async def test_florida_sms_window_and_three_per_day(engine: Engine, clock: FixedClock,
                                                    set_policy: Callable[..., Any]) -> None:
    """FTSA: 08:00-20:00 and at most 3 per rolling 24 h; TCPA alone would allow 20:30."""
    await set_policy(caps=[], **EXACT)
    fl = {"channels": ["sms"], "phone": "+13055550123", "timezone": None}
    clock.value = at("2026-06-10T20:30:00-04:00")
    late = await engine.decide(TENANT, req(message_id="late", **fl))
    assert late.decision == "defer"
    assert late.send_at == dt.datetime.fromisoformat("2026-06-11T08:00:00-04:00")
    assert late.timezone == "America/New_York"
    rules = {r.rule for r in late.reasons}
    assert any(rule.startswith("us-fl-ftsa@") for rule in rules)
    clock.value = at("2026-06-11T09:00:00-04:00")
    for i in range(2):
        assert (await engine.decide(TENANT, req(message_id=f"d{i}", **fl))).decision == "send"
    fourth = await engine.decide(TENANT, req(message_id="d3", **fl))
    assert fourth.decision == "defer"
    assert fourth.reasons[0].code == "jurisdiction_cap"
    assert fourth.reasons[0].rule.startswith("us-fl-ftsa@")
    # the first of the three was reserved for 08:00 on the 11th: 24 h later it frees
    assert fourth.send_at == dt.datetime.fromisoformat("2026-06-12T08:00:00-04:00")


async def test_tcpa_applies_to_us_sms_but_not_email(engine: Engine, clock: FixedClock,
                                                    set_policy: Callable[..., Any]) -> None:
    await set_policy(caps=[], quiet_hours=[])
    clock.value = at("2026-06-10T21:15:00-04:00")
    sms = await engine.decide(TENANT, req(message_id="s", channels=["sms"], country="US",
                                          region="NY"))
    assert sms.decision == "defer" and sms.reasons[0].rule.startswith("us-tcpa@")
    email = await engine.decide(TENANT, req(message_id="e", channels=["email"], country="US"))
    assert email.decision == "send"


async def test_france_no_commercial_sms_on_sunday(engine: Engine, clock: FixedClock,
                                                  set_policy: Callable[..., Any]) -> None:
    await set_policy(caps=[], quiet_hours=[], **EXACT)
    clock.value = at("2026-06-14T11:00:00+02:00")  # a Sunday
    r = await engine.decide(TENANT, req(channels=["sms"], phone="+33612345678", timezone=None))
    assert r.decision == "defer"
    assert r.send_at == dt.datetime.fromisoformat("2026-06-15T08:00:00+02:00")
    assert r.timezone == "Europe/Paris"
    assert r.reasons[0].rule.startswith("fr-sms-commercial@")


async def test_custom_category_accepted_on_a_cold_policy_cache(
        engine: Engine, redis_client: Any, clock: FixedClock) -> None:
    """A worker that has not cached the tenant's policy yet must not judge the category
    against the default policy."""
    from api.policy import Policy
    from api.store import Store

    policy = Policy(categories=["transactional", "promotional", "newsletter"])
    await Store(redis_client).put_policy(TENANT, policy, None, clock.now_ms())
    cold = Engine(Store(redis_client), engine.settings, clock)
    r = await cold.decide(TENANT, req(category="newsletter"))
    assert r.decision == "send"
    assert r.policy_version == "1"
