"""A stored decision record no worker of this release can read: damaged, or written by a
newer release in a framing this one does not know. A retry of its message is not decided
again (it may have been sent), the decision's status answers 409 ``record_unreadable``
naming it, a cancel still releases its reservation, and the recipient's timeline and export
still show the ledger entry, without the decision it came from."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest

from api.keys import user_keys
from api.redis_client import RedisClient
from api.settings import Settings
from tests.api.conftest import worker

DECISION = {"message_id": "m1", "user_id": "u1", "channels": ["email"],
            "timezone": "America/New_York"}


def _one_element(record: bytes) -> bytes:
    """Format 6 whose header says two elements but holds only the context."""
    return b"\x92" + msgspec.msgpack.encode(msgspec.msgpack.decode(record)[0])


#: (record format written, what is done to the record, name)
DAMAGE: list[tuple[int, Callable[[bytes], bytes], str]] = [
    (6, _one_element, "format6-one-element"),
    (6, lambda r: r[: len(r) // 2], "format6-truncated"),
    (6, lambda r: b"\x92\xc1\xc1", "format6-never-used-byte"),
    (5, lambda r: r[: r.index(b"\n") + 3], "json-outcome-cut"),
    (5, lambda r: b'[17,"x"' + r[r.index(b"\n"):], "json-context-cut"),
    (6, lambda r: b"\x07newer-release", "unknown-framing"),
]


@pytest.mark.parametrize(("record_format", "damage"), [(f, d) for f, d, _ in DAMAGE],
                         ids=[name for _, _, name in DAMAGE])
async def test_an_unreadable_record_is_never_decided_again_and_still_cancels(
        redis_client: RedisClient, redis_settings: Settings, record_format: int,
        damage: Callable[[bytes], bytes]) -> None:
    keys = user_keys("default", "u1")
    async with worker(redis_settings, record_format=record_format) as client:
        first = await client.post("/v1/decisions", json=DECISION)
        assert first.status_code == 200, first.text
        assert first.json()["decision"] == "send"
        decision_id = first.json()["decision_id"]
        stored = await redis_client.hget(keys.records, "m1")
        assert isinstance(stored, bytes)
        expiry, _, record = stored.partition(b" ")
        damaged = expiry + b" " + damage(record)
        await redis_client.hset(keys.records, "m1", damaged)

        retry = await client.post("/v1/decisions", json=DECISION)
        assert retry.status_code == 409, retry.text
        assert (retry.json()["code"], retry.json()["field"]) == ("record_unreadable",
                                                                 "message_id")
        assert "not decided again" in retry.json()["message"]
        # nothing written: the reservation and the record as they were
        assert await redis_client.zcard(keys.ledger) == 1
        assert await redis_client.hget(keys.records, "m1") == damaged

        status = await client.get(f"/v1/decisions/{decision_id}")
        assert status.status_code == 409, status.text
        assert (status.json()["code"], status.json()["field"]) == ("record_unreadable",
                                                                   "decision_id")

        # the ledger is the truth the caps count: shown, without the decision's answer
        timeline = await client.get("/v1/users/u1/timeline")
        assert timeline.status_code == 200, timeline.text
        [entry] = timeline.json()["entries"]
        assert (entry["message_id"], entry["decision_id"], entry["decision"],
                entry["reasons"]) == ("m1", decision_id, None, None)
        export = await client.get("/v1/users/u1/export")
        assert export.status_code == 200, export.text
        assert [e["decision"] for e in export.json()["ledger"]] == [None]

        cancel = await client.post(f"/v1/decisions/{decision_id}/cancel")
        assert cancel.status_code == 200, cancel.text
        assert cancel.json()["released"] is True
        assert await redis_client.zcard(keys.ledger) == 0
        again = await client.post(f"/v1/decisions/{decision_id}/cancel")
        assert again.status_code == 200, again.text
        assert again.json()["released"] is False

        other = await client.post("/v1/decisions", json={**DECISION, "message_id": "m2"})
        assert other.status_code == 200, other.text
        metrics = (await client.get("/metrics")).text
        assert 'sendwise_api_errors_total{code="record_unreadable"} 2.0' in metrics
