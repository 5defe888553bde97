"""The durable log of decisions and events: what ``sendwise export`` turns into training
data (``training/export.py``), so the loop serve -> export -> train -> reload closes.

One Redis Stream per (tenant, bucket of users) (``api.keys.log_key``): a tenant's log
spreads over ``LOG_BUCKETS`` cluster slots instead of pinning one node. Each append trims
by age (``MINID``, ``log_retention_days``) and length (``MAXLEN`` per bucket, approximate,
so trimming stays O(1)). Appends run after the answer is decided, off the request's
critical path (a background task); a failed append is logged and counted, never an error
for the caller: the log is for learning, the decision already stands. Only new decisions
are logged (a replay is the same decision) and dry runs never are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from api.keys import log_bucket, log_key
from api.localtime import utc_to_ms
from api.redis_client import RedisClient
from api.schemas import DecisionRequest, DecisionResponse, Event

log = structlog.get_logger("sendwise.log")

DAY_MS = 86_400_000


class DecisionLog:
    def __init__(self, client: RedisClient, *, max_len: int = 1_000_000,
                 retention_days: int = 30, enabled: bool = True) -> None:
        self.client = client
        self.max_len = max_len
        self.retention_ms = retention_days * DAY_MS
        self.enabled = enabled
        self._pending: set[asyncio.Task[None]] = set()
        self.failures = 0

    def _spawn(self, coro: asyncio.Future[None] | object) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        """Wait for the appends under way (tests, shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def _append(self, key: str, entries: list[dict[str, str]], now: int) -> None:
        try:
            pipe = self.client.pipeline(transaction=False)
            for fields in entries:
                pipe.xadd(key, fields,  # type: ignore[arg-type]
                          minid=str(max(0, now - self.retention_ms)), approximate=True)
            pipe.xtrim(key, maxlen=self.max_len, approximate=True)
            await pipe.execute()
        except Exception as exc:  # the log must never fail a decision
            self.failures += 1
            log.warning("log_append_failed", error=f"{type(exc).__name__}: {exc}")

    def decision(self, tenant: str, request: DecisionRequest, response: DecisionResponse,
                 now: int) -> None:
        if not self.enabled or response.replayed or response.dry_run:
            return
        fields = {
            "kind": "decision", "user_id": request.user_id, "message_id": request.message_id,
            "decision": response.decision, "channel": response.channel or "",
            "send_at": "" if response.send_at is None else str(utc_to_ms(response.send_at)),
            "decided_at": str(now), "timezone": response.timezone,
            "category": request.category, "campaign": request.campaign_id or "",
            "score": "" if response.score is None else repr(response.score),
            "propensity": "" if response.propensity is None else repr(response.propensity),
            "model_version": response.model_version or "",
            "features_source": response.features_source or "",
        }
        self._spawn(self._append(log_key(tenant, log_bucket(request.user_id)), [fields], now))

    def events(self, tenant: str, events: Sequence[Event], zones: dict[str, str],
               now: int) -> None:
        """``zones``: the zone each user's profile counted the events in."""
        if not self.enabled:
            return
        by_key: dict[str, list[dict[str, str]]] = {}
        for event in events:
            by_key.setdefault(log_key(tenant, log_bucket(event.user_id)), []).append({
                "kind": "event", "type": event.type, "user_id": event.user_id,
                "at": str(utc_to_ms(event.at)), "message_id": event.message_id or "",
                "channel": event.channel or "", "campaign": event.campaign_id or "",
                "event_kind": event.kind or "",
                "timezone": event.timezone or zones.get(event.user_id, ""),
            })
        for key, entries in by_key.items():  # one pipeline per bucket
            self._spawn(self._append(key, entries, now))
