"""The durable log of decisions and events: what ``sendwise export`` turns into training
data (``training/export.py``), so the loop serve -> export -> train -> reload closes.

One Redis Stream per (tenant, bucket of users) (``api.keys.log_key``): a tenant's log
spreads over ``LOG_BUCKETS`` cluster slots instead of pinning one node. An entry is one
plain ``XADD`` that trims as it appends, approximately (whole stream nodes, so trimming
stays O(1)). One ``XADD`` takes one trim rule: by age (``MINID``,
``decision_log_retention_days``), and on every ``LENGTH_TRIM_EVERY``-th append of this
worker by length instead (``MAXLEN`` per bucket), so a stream can exceed its length bound
by that many appends per worker. A plain command rather than a script: Redis spends ~2.5 µs
on it against ~9 µs for the same append and trims in Lua (docs/benchmarks.md). An append
is written after the commit (a different slot, so it cannot be part of the commit script):
the decision is already stored when it runs, so a lost append loses a training row, never a
reservation. A failed append is logged and counted, never an error for the caller. Only new
decisions are logged (a replay is the same decision) and dry runs never are.

The answer does not wait for the append's reply: the ``XADD`` is written on the
auto-pipeline's kept connection before the request is answered, and its reply settles
later (``Store.append_log_now``), so a decision costs one round trip less. No task is
spawned for it (a task could outlive its event loop and connection); the worker's shutdown
waits for the replies still open (``Store.settle``). Without a kept connection (no
auto-pipeline, a Cluster, or a connection being replaced) the append is awaited as before.

An entry's layout: ``api/log_entry.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from api.holdout import group_of_rule
from api.keys import log_bucket, log_key
from api.localtime import utc_to_ms
from api.log_entry import encode_entry
from api.reasons import ReasonCode
from api.schemas import DecisionRequest, DecisionResponse, Event
from api.store import Store

log = structlog.get_logger("sendwise.log")

DAY_MS = 86_400_000
#: one append in this many trims the stream by length instead of by age
LENGTH_TRIM_EVERY = 16


class DecisionLog:
    def __init__(self, store: Store, *, max_len: int = 1_000_000,
                 retention_days: int = 30, enabled: bool = True,
                 on_failure: Callable[[], object] | None = None) -> None:
        self.store = store
        #: called once per failed append (the worker's ``sendwise_decision_log_failures_total``):
        #: an answer no longer waits for its append, so a failure shows only here and in the log
        self.on_failure = on_failure
        self.max_len = max_len
        self.retention_ms = retention_days * DAY_MS
        self.enabled = enabled
        self.failures = 0
        #: appends so far (which one trims by length: ``LENGTH_TRIM_EVERY``)
        self.appends = 0

    def _trim(self, now: int) -> tuple[str, str, int]:
        """This append's trim: by length on every ``LENGTH_TRIM_EVERY``-th, else by age."""
        self.appends += 1
        if self.appends % LENGTH_TRIM_EVERY == 1:
            return "MAXLEN", "~", self.max_len
        return "MINID", "~", max(0, now - self.retention_ms)

    async def _append(self, entries: Sequence[tuple[str, tuple[str | bytes, ...]]], now: int
                      ) -> None:
        """``entries``: each entry's stream key and its fields, flat (``encode_entry``), all
        written together (one write on the kept connection, else one pipeline)."""
        commands: list[tuple[str | bytes | int, ...]] = [
            ("XADD", key, *self._trim(now), "*", *fields) for key, fields in entries]
        futures = self.store.append_log_now(commands)
        if futures is not None:
            for future in futures:
                future.add_done_callback(self._settled)
            return
        try:
            await self.store.append_log(commands)
        except Exception as exc:  # the log must never fail a decision
            self._failed(exc)

    def _settled(self, future: asyncio.Future[Any]) -> None:
        """An append's reply, when the answer did not wait for it."""
        if future.cancelled():
            self._failed(asyncio.CancelledError())
        elif (exc := future.exception()) is not None:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        if self.on_failure is not None:
            self.on_failure()
        log.warning("log_append_failed", error=f"{type(exc).__name__}: {exc}")

    async def decision(self, tenant: str, request: DecisionRequest,
                       response: DecisionResponse, now: int) -> None:
        if not self.enabled or response.replayed or response.dry_run:
            return
        fields = {
            "message_id": request.message_id, "decision": response.decision,
            "channel": response.channel or "",
            "send_at": "" if response.send_at is None else str(utc_to_ms(response.send_at)),
            "decided_at": str(now), "timezone": response.timezone,
            "category": request.category, "campaign": request.campaign_id or "",
            "score": "" if response.score is None else repr(response.score),
            "propensity": "" if response.propensity is None else repr(response.propensity),
            "model_version": response.model_version or "",
            "features_source": response.features_source or "",
            # what `sendwise uplift` needs: every reason code (holdout, exploration...) and
            # the holdout group of a held-out decision
            "reasons": ",".join(r.code for r in response.reasons),
            "holdout": next((group_of_rule(r.rule) for r in response.reasons
                             if r.code == ReasonCode.HOLDOUT), ""),
        }
        await self._append([(log_key(tenant, log_bucket(request.user_id)),
                             encode_entry("decision", request.user_id, fields))], now)

    async def displaced(self, tenant: str, user_id: str, response: DecisionResponse, *,
                        category: str, campaign: str, now: int) -> None:
        """A reservation a higher-priority message displaced (preemption): its new state
        (moved to a later instant, or suppressed), logged like a decision with ``reason``
        preempted, so the log says when (and whether) the message really goes out."""
        if not self.enabled:
            return
        fields = {
            "message_id": response.message_id, "decision": response.decision,
            "channel": response.channel or "",
            "send_at": "" if response.send_at is None else str(utc_to_ms(response.send_at)),
            "decided_at": str(now), "timezone": response.timezone, "category": category,
            "campaign": campaign, "reason": "preempted",
        }
        await self._append([(log_key(tenant, log_bucket(user_id)),
                             encode_entry("decision", user_id, fields))], now)

    async def events(self, tenant: str, events: Sequence[Event], zones: dict[str, str],
                     now: int) -> None:
        """``zones``: the zone each user's profile counted the events in."""
        if not self.enabled:
            return
        # every bucket's entries in one write
        await self._append([(log_key(tenant, log_bucket(event.user_id)), encode_entry(
            "event", event.user_id, {
                "type": event.type, "at": str(utc_to_ms(event.at)),
                "message_id": event.message_id or "", "channel": event.channel or "",
                "campaign": event.campaign_id or "", "event_kind": event.kind or "",
                "timezone": event.timezone or zones.get(event.user_id, ""),
            })) for event in events], now)
