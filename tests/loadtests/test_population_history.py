"""The benchmark population's send-time history (loadtests/population.py ``history_events``):
deterministic, about half of the recipients, in the past, and valid event batches."""

from __future__ import annotations

import datetime as dt

import msgspec

from api.schemas import EventBatch
from loadtests.population import HISTORY_SHARE, history_events, user_id

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)


def test_history_is_a_pure_function_of_the_recipient() -> None:
    assert [history_events(i, NOW) for i in range(50)] == [history_events(i, NOW)
                                                           for i in range(50)]


def test_about_half_have_a_history_of_past_events_the_api_accepts() -> None:
    histories = [history_events(i, NOW) for i in range(2000)]
    share = sum(bool(h) for h in histories) / len(histories)
    assert abs(share - HISTORY_SHARE) < 0.05
    for index, events in enumerate(histories):
        if not events:
            continue
        assert 3 <= len(events) <= 40
        batch = msgspec.json.decode(msgspec.json.encode({"events": events}), type=EventBatch)
        for event in batch.events:
            assert event.user_id == user_id(index) and event.type == "activity"
            assert NOW - dt.timedelta(days=29) < event.at < NOW
