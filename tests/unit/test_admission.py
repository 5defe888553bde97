"""The admission gate (api/admission.py) on its own: places, arrival order, the overflow
that keeps it from ever making things worse, and cancellation that loses no place."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.admission import AdmissionGate, Entry


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_waiters_start_in_arrival_order_and_overflow_goes_straight_in() -> None:
    gate = AdmissionGate(limit=2, max_waiting=2)
    assert await gate.enter() == "immediate"
    assert await gate.enter() == "immediate"
    order: list[str] = []

    async def wait(name: str) -> Entry:
        entry = await gate.enter()
        order.append(name)
        return entry

    first, second = asyncio.create_task(wait("a")), asyncio.create_task(wait("b"))
    await _settle()
    assert gate.waiting == 2 and not order
    assert await gate.enter() == "overflow"  # the queue is full: no waiting, no place taken
    gate.leave("overflow")
    assert gate.active == 2
    gate.leave("immediate")
    await _settle()
    assert order == ["a"] and await first == "queued" and gate.active == 2
    gate.leave("immediate")
    assert await second == "queued" and order == ["a", "b"]
    gate.leave("queued")
    gate.leave("queued")
    assert gate.active == 0 and gate.waiting == 0


async def _held_with_two_waiters() -> tuple[AdmissionGate, asyncio.Task[Entry],
                                           asyncio.Task[Entry]]:
    """A gate of one place, held, with two requests waiting behind it in that order."""
    gate = AdmissionGate(limit=1, max_waiting=4)
    assert await gate.enter() == "immediate"
    first = asyncio.create_task(gate.enter())
    second = asyncio.create_task(gate.enter())
    await _settle()
    return gate, first, second


async def test_a_cancelled_waiter_loses_its_turn_and_no_place() -> None:
    gate, cancelled, later = await _held_with_two_waiters()
    cancelled.cancel()
    await _settle()
    assert gate.waiting == 1
    gate.leave("immediate")
    assert await later == "queued" and gate.active == 1
    gate.leave("queued")
    assert gate.active == 0


async def test_a_place_handed_to_a_waiter_cancelled_at_that_moment_passes_on() -> None:
    gate, handed, nxt = await _held_with_two_waiters()
    gate.leave("immediate")  # the place goes to ``handed``, which has not resumed yet
    handed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handed
    assert await nxt == "queued" and gate.active == 1


@settings(max_examples=60, deadline=None)
@given(limit=st.integers(1, 4), max_waiting=st.integers(0, 6),
       work=st.lists(st.integers(0, 3), min_size=1, max_size=30))
def test_never_more_than_limit_holders_and_every_request_gets_in(
        limit: int, max_waiting: int, work: list[int]) -> None:
    """Requests of random lengths (event-loop turns): holders never exceed ``limit``, the
    overflow runs beside them, and every request finishes with the gate empty again."""

    async def scenario() -> None:
        gate = AdmissionGate(limit, max_waiting)
        holders, peak, done = 0, 0, 0

        async def request(turns: int) -> None:
            nonlocal holders, peak, done
            entry = await gate.enter()
            if entry != "overflow":
                holders += 1
                peak = max(peak, holders)
            for _ in range(turns):
                await asyncio.sleep(0)
            if entry != "overflow":
                holders -= 1
            gate.leave(entry)
            done += 1

        await asyncio.gather(*(request(t) for t in work))
        assert peak <= limit and done == len(work)
        assert gate.active == 0 and gate.waiting == 0

    asyncio.run(scenario())


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="limit must be"):
        AdmissionGate(0, 4)
    with pytest.raises(ValueError, match="limit must be"):
        AdmissionGate(1, -1)
