"""Per-worker policy cache: policy reads must not cost a Redis round trip per decision.

Each tenant's policy is re-checked at most every ``refresh_seconds`` (one small HMGET), so
a PUT on any worker takes effect everywhere within that bound; the worker that served the
PUT sees it at once. The same check reads whether the tenant has a shadow policy
(``api/shadow.py``) and its version, so a tenant without one pays nothing for the feature.
When Redis is down the last known policy keeps serving (or the default, for a tenant never
seen), which is what the fallback decision needs.
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
        #: tenant -> version of its shadow policy (0 or absent: none), as of the last check
        self._shadows: dict[str, int] = {}

    def shadow_version(self, tenant: str) -> int:
        """The tenant's shadow policy version as last seen (0: none); no I/O."""
        return self._shadows.get(tenant, 0)

    def put_shadow_version(self, tenant: str, version: int) -> None:
        self._shadows[tenant] = version

    def peek(self, tenant: str) -> Policy:
        entry = self._entries.get(tenant)
        return entry[0] if entry else DEFAULT_POLICY

    async def get(self, tenant: str) -> Policy:
        entry = self._entries.get(tenant)
        now = self._monotonic()
        if entry is not None and now - entry[1] < self._refresh:
            return entry[0]
        if entry is not None:
            version, shadow = await self._store.get_policy_versions(tenant)
            self._shadows[tenant] = shadow
            if version == entry[0].version:
                self._entries[tenant] = (entry[0], now)
                return entry[0]
        stored, shadow = await self._store.get_policy_and_shadow(tenant)
        policy = stored or DEFAULT_POLICY
        self._entries[tenant] = (policy, now)
        self._shadows[tenant] = shadow
        return policy

    def put(self, tenant: str, policy: Policy) -> None:
        self._entries[tenant] = (policy, self._monotonic())
