"""Engine fixtures: a real Redis, a fixed clock, the default policy unless a test sets one."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from api.clock import FixedClock
from api.engine import Engine
from api.policy import Policy, validate_policy
from api.redis_client import RedisClient
from api.schemas import DecisionRequest
from api.settings import Settings
from api.store import Store
from tests.conftest import TEST_ID_KEY

#: Wednesday 2026-06-10 12:00 in New York (EDT, UTC-4)
NOON_NY = int(dt.datetime(2026, 6, 10, 16, 0, tzinfo=dt.UTC).timestamp() * 1000)
TENANT = "acme"
#: policy fields for tests about exact instants (a rule's end, a cap's freeing): deferred
#: messages are not spread (``send_time.spread_minutes``, tested on its own)
EXACT: dict[str, Any] = {"send_time": {"spread_minutes": 0}}


def deterministic(fields: dict[str, Any]) -> dict[str, Any]:
    """Policy fields with exploration off unless they set it (see ``set_policy``)."""
    send_time = {"exploration_rate": 0.0, **fields.get("send_time", {})}
    return {**fields, "send_time": send_time}


def at(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).timestamp() * 1000)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOON_NY)


@pytest.fixture
async def engine(redis_client: RedisClient, clock: FixedClock) -> Engine:
    return Engine(Store(redis_client), Settings(redis_url="unused", id_key=TEST_ID_KEY), clock)


@pytest.fixture
def set_policy(engine: Engine, clock: FixedClock) -> Callable[..., Any]:
    """Install a policy for TENANT. Exploration is off unless the test sets
    ``send_time.exploration_rate``: a rule's test must not depend on which message ids
    happen to explore (exploration has its own tests)."""
    async def apply(**fields: Any) -> Policy:
        fields = deterministic(fields)
        policy = msgspec.convert(fields, Policy)
        validate_policy(policy)
        stored = await engine.store.put_policy(TENANT, policy, None, clock.now_ms())
        engine.policies.put(TENANT, stored)
        return stored

    return apply


def req(**fields: Any) -> DecisionRequest:
    base: dict[str, Any] = {"message_id": "m1", "user_id": "u1", "channels": ["email"],
                            "timezone": "America/New_York"}
    base.update(fields)
    return msgspec.convert(base, DecisionRequest)


def spy_store(engine: Engine, monkeypatch: pytest.MonkeyPatch,
              names: tuple[str, ...] = ("read_user", "commit")) -> list[str]:
    """The list the named Store calls of ``engine`` are appended to, in order (they still
    run): how many round trips a decision makes, and which."""
    calls: list[str] = []
    for name in names:
        original = getattr(engine.store, name)

        def spy(*args: Any, _name: str = name, _original: Any = original, **kw: Any) -> Any:
            calls.append(_name)
            return _original(*args, **kw)

        monkeypatch.setattr(engine.store, name, spy)
    return calls
