"""The load test's answer checker (loadtests/checks.py) catches forged wrong answers.

Each test takes one answer the checker accepts and breaks one promise in it: a load test
that passes a wrong answer would report a broken service as healthy.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.schemas import DecisionResponse, Reason
from loadtests.checks import Checker, Recipient, cap_violations, in_window
from loadtests.population import policy_document, policy_document_b

T = "t-a"
UTC = dt.UTC
#: 16:00 UTC = 12:00 in New York (June): outside the 21:00-08:00 quiet hours
NOON_NY = dt.datetime(2026, 6, 10, 16, 0, tzinfo=UTC)


def checker() -> Checker:
    return Checker({T: policy_document(), "t-b": policy_document_b()}, {
        T: {"u1": Recipient(zone="America/New_York"),
            "u2": Recipient(zone="Europe/Paris", quiet_hours=[{"start": "12:00", "end": "14:00"}],
                            frequency_limits=[{"limit": 2, "window_minutes": 1440}])}})


def body(**overrides: Any) -> dict[str, Any]:
    return {"message_id": "m1", "user_id": "u1", "channels": ["email", "sms"], **overrides}


def answer(**overrides: Any) -> DecisionResponse:
    fields: dict[str, Any] = {
        "decision_id": "d1", "message_id": "m1", "decision": "send", "channel": "email",
        "send_at": NOON_NY, "local_send_at": NOON_NY.astimezone(dt.timezone(dt.timedelta(hours=-4))),
        "timezone": "America/New_York", "reasons": [], "policy_version": "v1",
        "decided_at": NOON_NY}
    fields.update(overrides)
    return DecisionResponse(**fields)


def raw(resp: DecisionResponse) -> bytes:
    return msgspec.json.encode(resp)


def test_a_right_answer_passes() -> None:
    assert checker().check_decision(T, body(), raw(answer())) is None
    deferred = answer(decision="defer", send_at=NOON_NY + dt.timedelta(hours=2),
                      reasons=[Reason(code="frequency_cap", rule="promotional-daily")])
    assert checker().check_decision(T, body(), raw(deferred)) is None
    suppressed = answer(decision="suppress", channel=None, send_at=None, local_send_at=None)
    assert checker().check_decision(T, body(), raw(suppressed)) is None


@pytest.mark.parametrize("forged", [
    b'{"decision": "send"}',
    b"not json",
    raw(answer()).replace(b'"decision":"send"', b'"decision":"maybe"'),
])
def test_an_answer_that_is_not_a_decision_response_fails(forged: bytes) -> None:
    assert "not a valid DecisionResponse" in (checker().check_decision(T, body(), forged) or "")


@pytest.mark.parametrize(("forged", "why"), [
    (answer(message_id="other"), "answer is for message"),
    (answer(channel="push"), "not requested"),
    (answer(send_at=None), "no send_at"),
    (answer(decision="suppress"), "suppress answer carries"),
    (answer(decision="defer"), "not after decided_at"),
    (answer(reasons=[Reason(code="made_up", rule="x")]), "unknown reason codes"),
    (answer(timezone="UTC"), "the recipient's is America/New_York"),
])
def test_an_incoherent_answer_fails(forged: DecisionResponse, why: str) -> None:
    assert why in (checker().check_decision(T, body(), raw(forged)) or "")


def test_a_send_at_after_the_deadline_fails() -> None:
    late = answer(decision="defer", send_at=NOON_NY + dt.timedelta(hours=5))
    problem = checker().check_decision(T, body(deadline="2026-06-10T18:00:00Z"), raw(late))
    assert "after the deadline" in (problem or "")


def test_send_at_in_the_policy_quiet_hours_fails_unless_exempt() -> None:
    night = NOON_NY.replace(hour=3)  # 23:00 in New York
    problem = checker().check_decision(T, body(), raw(answer(send_at=night, decided_at=night)))
    assert "quiet hours default-quiet-hours" in (problem or "")
    transactional = body(category="transactional")
    assert checker().check_decision(T, transactional, raw(answer(send_at=night, decided_at=night))) is None


def test_send_at_in_the_recipients_own_quiet_hours_fails() -> None:
    lunch_paris = NOON_NY.replace(hour=11)  # 13:00 in Paris
    forged = answer(send_at=lunch_paris, decided_at=lunch_paris, timezone="Europe/Paris")
    problem = checker().check_decision(T, body(user_id="u2"), raw(forged))
    assert "recipient's own quiet hours" in (problem or "")


def test_a_channel_scoped_quiet_window_binds_only_its_channel() -> None:
    evening = NOON_NY.replace(hour=1)  # 20:00 in Chicago, tenant b's default zone
    sms = answer(channel="sms", send_at=evening, decided_at=evening, timezone="America/Chicago")
    assert "sms-evening" in (checker().check_decision("t-b", body(), raw(sms)) or "")
    email = msgspec.structs.replace(sms, channel="email")
    assert checker().check_decision("t-b", body(), raw(email)) is None


def test_retries_must_repeat_the_first_answer_byte_for_byte() -> None:
    c = checker()
    assert c.check_decision(T, body(), raw(answer())) is None
    replay = raw(answer(replayed=True))
    assert c.check_decision(T, body(), replay, retry=True) is None
    assert c.check_decision(T, body(), replay, retry=True) is None
    other = answer(replayed=True, decision="defer", send_at=NOON_NY + dt.timedelta(hours=1))
    assert "retry answered defer" in (c.check_decision(T, body(), raw(other), retry=True) or "")
    assert "not marked replayed" in (c.check_decision(T, body(), raw(answer()), retry=True) or "")
    reordered = b'{"replayed":true,' + replay[1:].replace(b',"replayed":true', b"")
    assert "not byte-identical" in (c.check_decision(T, body(), reordered, retry=True) or "")


def _entry(at: dt.datetime, channel: str = "email", category: str = "promotional") -> dict[str, Any]:
    return {"message_id": f"m{at.timestamp()}", "channel": channel, "category": category,
            "send_at": at.isoformat()}


def test_cap_spot_check_finds_a_window_over_its_limit() -> None:
    policy, who = policy_document(), Recipient(zone="America/New_York")
    hours = [NOON_NY + dt.timedelta(hours=h) for h in (0, 5, 10)]
    ok = {"user_id": "u1", "entries": [_entry(t) for t in hours]}
    assert cap_violations(policy, who, ok) == []
    # a fourth promotional message 23 h after the first: 4 within 1440 min
    over = {"user_id": "u1", "entries": ok["entries"] + [_entry(NOON_NY + dt.timedelta(hours=23))]}
    assert any("promotional-daily" in v for v in cap_violations(policy, who, over))
    # exactly 24 h later opens a new window; transactional never counts
    later = {"user_id": "u1", "entries": ok["entries"] + [
        _entry(NOON_NY + dt.timedelta(hours=24)),
        _entry(NOON_NY + dt.timedelta(hours=1), category="transactional")]}
    assert cap_violations(policy, who, later) == []


def test_cap_spot_check_counts_calendar_days_and_own_limits_on_the_local_clock() -> None:
    policy, who = policy_document(), Recipient(zone="America/New_York")
    # 01:00 and 03:00 UTC on June 11 are both June 10 in New York: 2 SMS on one local day
    sms = [_entry(dt.datetime(2026, 6, 11, h, tzinfo=UTC), channel="sms", category="lifecycle")
           for h in (1, 3)]
    assert any("sms-calendar-day" in v for v in cap_violations(policy, who, {"user_id": "u", "entries": sms}))
    apart = [_entry(dt.datetime(2026, 6, 11, h, tzinfo=UTC), channel="sms", category="lifecycle")
             for h in (1, 5)]  # 21:00 June 10 and 01:00 June 11 local
    assert cap_violations(policy, who, {"user_id": "u", "entries": apart}) == []
    own = Recipient(zone="UTC", frequency_limits=[{"limit": 2, "window_minutes": 1440}])
    three = [_entry(NOON_NY + dt.timedelta(hours=h), category="lifecycle") for h in (0, 1, 2)]
    found = cap_violations(policy, own, {"user_id": "u", "entries": three})
    assert any("preferences.frequency_limits[0]" in v for v in found)


hhmm = st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.integers(0, 59))


@given(st.datetimes(), hhmm, hhmm)
def test_a_window_and_its_complement_partition_the_day(at: dt.datetime, start: str, end: str) -> None:
    if start != end:
        assert in_window(at, start, end) != in_window(at, end, start)
