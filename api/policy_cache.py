"""Per-worker policy cache: policy reads must not cost a Redis round trip per decision.

Each tenant's policy is re-checked at most every ``refresh_seconds`` (one small HGET), so
a PUT on any worker takes effect everywhere within that bound; the worker that served the
PUT sees it at once. When Redis is down the last known policy keeps serving (or the
default, for a tenant never seen), which is what the fallback decision needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from api.policy import DEFAULT_POLICY, Policy
from api.store import Store


class PolicyCache:
    def __init__(self, store: Store, *, refresh_seconds: float = 1.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """``monotonic`` is injectable so tests move time instead of sleeping."""
        self._store = store
        self._refresh = refresh_seconds
        self._monotonic = monotonic
        self._entries: dict[str, tuple[Policy, float]] = {}

    def peek(self, tenant: str) -> Policy:
        entry = self._entries.get(tenant)
        return entry[0] if entry else DEFAULT_POLICY

    async def get(self, tenant: str) -> Policy:
        entry = self._entries.get(tenant)
        now = self._monotonic()
        if entry is not None and now - entry[1] < self._refresh:
            return entry[0]
        if entry is not None:
            version = await self._store.get_policy_version(tenant)
            if version == entry[0].version:
                self._entries[tenant] = (entry[0], now)
                return entry[0]
        policy = await self._store.get_policy(tenant) or DEFAULT_POLICY
        self._entries[tenant] = (policy, now)
        return policy

    def put(self, tenant: str, policy: Policy) -> None:
        self._entries[tenant] = (policy, self._monotonic())
