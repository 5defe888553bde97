"""Every Redis conversation of the service: one typed method per script or command group.

Scripts are package data files, loaded once and registered once (EVALSHA with automatic
SCRIPT LOAD on NOSCRIPT, so a restarted or failed-over Redis just works).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from importlib import resources
from typing import Any, Literal, cast

import msgspec
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from api.errors import ConflictError
from api.keys import (
    policy_key,
    shadow_key,
    shadow_report_key,
    shadow_samples_key,
    user_keys,
)
from api.localtime import ms_to_utc, utc_to_ms
from api.log_entry import entry_user
from api.policy import Policy
from api.redis_client import AutoPipeline, ClusterAutoPipeline, RedisClient, ScriptCaller
from api.schemas import CHANNELS, Event, Preferences, StoredPreferences
from api.userstate import (
    MAX_MERGE_HOPS,
    CommitCheck,
    UserState,
    decode_preferences,
    encode_preferences,
    parse_read_reply,
)

#: how long a `converted` marker and an event opt-out are kept at most
CONVERSION_TTL_MS = 366 * 24 * 3600 * 1000


def _script(name: str) -> str:
    return resources.files("api").joinpath("lua", name).read_text(encoding="utf-8")


class CommitReply(msgspec.Struct, frozen=True):
    #: "moved": a paced commit would land outside the token pacing holds (commit.lua step
    #: 6c); nothing was written and ``payload`` is where it would land (api/pacing.py
    #: reserves there and commits again; it never hands this status on)
    #: "repace": displaced messages would move to paced instants without a token
    #: (``repaced``: message id, channel, instant each); nothing was written either
    #: "contended": pacing's rounds ran out (api/pacing.py; never from commit.lua): nothing
    #: written, the engine reads and tries again, like "stale" but without blaming the
    #: state it planned from
    status: Literal["new", "dup", "dup_ledger", "stale", "moved", "repace", "contended"]
    payload: bytes
    score: int | None = None
    #: (new record, ledger member) of each reservation this commit displaced (preemption)
    displaced: list[tuple[bytes, bytes]] = []
    #: the instant (ms) each displaced reservation held before it was moved: pacing gives
    #: its token back there
    displaced_at: list[int] = []
    repaced: list[tuple[str, str, int]] = []


class CancelReply(msgspec.Struct, frozen=True):
    status: Literal["cancelled", "already", "ledger", "missing"]
    removed: int
    record: bytes | None


class UserMergedError(ConflictError):
    """A write addressed to a user id that was merged into another one."""

    def __init__(self, user_id: str, into: str) -> None:
        super().__init__(f"user {user_id!r} was merged into {into!r}; use that id",
                         field="user_id", code="user_merged")
        self.into = into


class PolicyConflictError(Exception):
    def __init__(self, current: int) -> None:
        super().__init__(f"policy version is {current}")
        self.current = current


class ShadowConflictError(PolicyConflictError):
    """The shadow policy's version is not the one the caller expected."""


class StoredShadow(msgspec.Struct, frozen=True):
    """A tenant's shadow policy: ``policy.version`` is the shadow's own version and
    ``policy.updated_at`` when it was installed."""

    policy: Policy
    sample_rate: float


class ShadowCounts(msgspec.Struct, frozen=True):
    """The raw report of one shadow (api/shadow.py turns it into the public report)."""

    version: int
    installed_at: int
    sample_rate: float
    counts: dict[str, int]
    #: JSON documents, newest first
    samples: list[bytes]


class ShadowPromoted(msgspec.Struct, frozen=True):
    policy: Policy
    report: ShadowCounts


_policy_decoder = msgspec.json.Decoder(Policy)
_json = msgspec.json.Encoder()


class Store:
    def __init__(self, client: RedisClient, *, max_in_flight: int = 64,
                 auto_pipeline: bool = True, preferences_format: int = 2) -> None:
        """``max_in_flight`` should equal the client's connection limit: a burst of
        requests then queues here instead of failing fast (redis-py's cluster client has
        no blocking pool and raises MaxConnectionsError when a node's pool is empty). The
        gate lets one fewer through when the auto-pipeline keeps a connection per node
        for itself (``AutoPipeline.keeps``)."""
        self.client = client
        #: the format preference documents are written in (``SENDWISE_PREFERENCES_FORMAT``)
        self.preferences_format = preferences_format
        self._gate = asyncio.Semaphore(max_in_flight)
        self._read = client.register_script(_script("read.lua"))
        self._commit = client.register_script(_script("commit.lua"))
        self._cancel = client.register_script(_script("cancel.lua"))
        self._records = client.register_script(_script("records.lua"))
        self._policy_put = client.register_script(_script("policy_put.lua"))
        self._prefs_put = client.register_script(_script("prefs_put.lua"))
        self._events = client.register_script(_script("events.lua"))
        self._dump = client.register_script(_script("user_dump.lua"))
        self._merge_mark = client.register_script(_script("merge_mark.lua"))
        self._merge_apply = client.register_script(_script("merge_apply.lua"))
        self._merge_clear = client.register_script(_script("merge_clear.lua"))
        self._erase = client.register_script(_script("erase.lua"))
        self._profile_put = client.register_script(_script("profile_put.lua"))
        self._shadow_put = client.register_script(_script("shadow_put.lua"))
        self._shadow_delete = client.register_script(_script("shadow_delete.lua"))
        self._shadow_promote = client.register_script(_script("shadow_promote.lua"))
        self._shadow_flush = client.register_script(_script("shadow_flush.lua"))
        self._shadow_report = client.register_script(_script("shadow_report.lua"))
        self._model_pointer_put = client.register_script(_script("model_pointer_put.lua"))
        #: the benchmark's floor (``/v1/_floor``): one script call that reads one key
        self._floor = client.register_script("return redis.call('EXISTS', KEYS[1])")
        #: replies not awaited by anyone (``append_log_now``), until they arrive
        self._unanswered: set[asyncio.Future[Any]] = set()
        self._share_writes(auto_pipeline)
        if self._pipeline is not None and self._pipeline.keeps:
            self._gate = asyncio.Semaphore(max(1, max_in_flight - self._pipeline.keeps))

    def _share_writes(self, enabled: bool) -> None:
        """Every script registered above is called through one auto-pipeline
        (``AutoPipeline``, or ``ClusterAutoPipeline`` per master on a Cluster): concurrent
        calls share writes (api/redis_client.py)."""
        self._pipeline: AutoPipeline | ClusterAutoPipeline | None = None
        if enabled:
            self._pipeline = (ClusterAutoPipeline(self.client)
                              if isinstance(self.client, RedisCluster)
                              else AutoPipeline(self.client))
        for name, value in list(vars(self).items()):
            if isinstance(value, AsyncScript):
                setattr(self, name, ScriptCaller(value, self._pipeline))

    async def ping(self) -> bool:
        async with self._gate:
            return bool(await self.client.ping())

    async def floor_call(self, tenant: str, user_id: str) -> int:
        """One trivial script on the user's slot, through the same client path as a
        decision's scripts: what the least Redis-touching request costs (docs/benchmarks.md)."""
        async with self._gate:
            return int(await self._floor(keys=[user_keys(tenant, user_id).prefs]))

    # ---------------------------------------------------------------- decisions

    async def read_user(self, tenant: str, user_id: str, message_id: str,
                        campaign_id: str | None, *, now: int) -> UserState:
        """``now`` (ms) decides whether the message's record has expired."""
        keys = user_keys(tenant, user_id)
        async with self._gate:
            reply = await self._read(
                keys=[keys.prefs, keys.records, keys.conv, keys.profile,
                      keys.record(message_id)],
                args=[campaign_id or "", message_id, now])
        return parse_read_reply(reply)

    async def commit(self, tenant: str, user_id: str, message_id: str, plan: Sequence[bytes],
                     context: bytes, check: CommitCheck | None = None) -> CommitReply:
        """``plan`` is ``encode_plan``'s output: the packed plan, then its binary parts.
        ``check``: the state the plan was made from, re-checked by the script (``stale``
        when it differs); without it only the idempotency record and ``rev`` are."""
        keys = user_keys(tenant, user_id)
        key_list = [keys.ledger, keys.records, keys.prefs, keys.record_prefix,
                    keys.replan_prefix, keys.record(message_id)]
        args: list[bytes | str] = [plan[0], context, *plan[1:]]
        if check is not None:
            key_list += [keys.conv, keys.profile]
            args += check.args()
        async with self._gate:
            reply: list[Any] = await self._commit(keys=key_list, args=args)
        status = reply[0].decode()
        if status == "dup_ledger":
            return CommitReply("dup_ledger", reply[1], int(float(reply[2])))
        if status == "repace":
            return CommitReply("repace", reply[1], repaced=[
                (m.decode(), c.decode(), int(t))
                for m, c, t in zip(reply[2::3], reply[3::3], reply[4::3], strict=True)])
        return CommitReply(status, reply[1],
                           displaced=list(zip(reply[2::3], reply[3::3], strict=True)),
                           displaced_at=[int(x) for x in reply[4::3]])

    async def cancel(self, tenant: str, user_id: str, message_id: str, member_prefix: bytes,
                     now: int) -> CancelReply:
        keys = user_keys(tenant, user_id)
        async with self._gate:
            status, removed, record = await self._cancel(
                keys=[keys.ledger, keys.records, keys.record(message_id)],
                args=[member_prefix, now, message_id])
        return CancelReply(status.decode(), int(removed),
                           record if isinstance(record, bytes) else None)

    async def ledger(self, tenant: str, user_id: str) -> list[tuple[bytes, float]]:
        keys = user_keys(tenant, user_id)
        async with self._gate:
            entries = await self.client.zrange(keys.ledger, 0, -1, withscores=True)
        return cast(list[tuple[bytes, float]], entries)

    async def records(self, tenant: str, user_id: str, message_ids: Sequence[str],
                      now: int) -> list[bytes | None]:
        """The idempotency record of each message (None: none, or expired at ``now``)."""
        if not message_ids:
            return []
        keys = user_keys(tenant, user_id)
        async with self._gate:
            values: list[Any] = await self._records(
                keys=[keys.records, *(keys.record(m) for m in message_ids)],
                args=[now, *message_ids])
        return [v if isinstance(v, bytes) else None for v in values]

    # -------------------------------------------------------------- preferences

    async def get_preferences(self, tenant: str, user_id: str) -> StoredPreferences:
        keys = user_keys(tenant, user_id)
        async with self._gate:
            fields = cast(dict[bytes, bytes], await self.client.hgetall(keys.prefs))
        return StoredPreferences(
            user_id=user_id,
            preferences=decode_preferences(fields.get(b"doc")),
            event_opt_outs={
                k[len(b"optout:"):].decode(): ms_to_utc(int(v))
                for k, v in fields.items() if k.startswith(b"optout:")
            },
            revision=int(fields.get(b"rev", b"0")),
        )

    async def put_preferences(self, tenant: str, user_id: str, prefs: Preferences) -> None:
        """Replace the document; an explicit opt-in clears that channel's event opt-out
        (the recipient re-subscribed through the preference centre)."""
        keys = user_keys(tenant, user_id)
        reopened = [ch for ch, p in prefs.channels.items() if p.consent == "opted_in"]
        async with self._gate:
            reply = await self._prefs_put(keys=[keys.prefs],
                                          args=[encode_preferences(
                                              prefs, document_format=self.preferences_format),
                                              *reopened])
        if isinstance(reply, list):
            raise UserMergedError(user_id, cast(bytes, reply[1]).decode())

    # ------------------------------------------------------------------ events

    async def apply_events(self, tenant: str, events: Sequence[Event]) -> tuple[int, int]:
        """Opt-outs and conversions: one atomic script per user (a user's keys share a
        slot), users' scripts run concurrently. Returns (opt-outs,
        conversions) applied; engagement events change no decision state yet."""
        by_user: dict[str, list[str | int]] = defaultdict(list)
        opt_outs = conversions = 0
        for event in events:
            ops = by_user[event.user_id]
            if event.type in ("unsubscribed", "complained"):
                for channel in [event.channel] if event.channel else CHANNELS:
                    ops += ["o", channel, utc_to_ms(event.at)]
                opt_outs += 1
            elif event.type == "converted" and event.campaign_id:
                ops += ["c", event.campaign_id, utc_to_ms(event.at)]
                conversions += 1
        # concurrent calls, not a pipeline: redis-py refuses EVALSHA in cluster pipelines,
        # and concurrent calls spread over the pool (and the cluster's nodes) just as well
        await asyncio.gather(*(self._apply_user_events(tenant, user, ops)
                               for user, ops in by_user.items() if ops))
        return opt_outs, conversions

    async def _apply_user_events(self, tenant: str, user_id: str, ops: list[str | int],
                                 hops: int = 0) -> None:
        keys = user_keys(tenant, user_id)
        async with self._gate:
            reply = await self._events(keys=[keys.prefs, keys.conv],
                                       args=[CONVERSION_TTL_MS, *ops])
        if isinstance(reply, list) and hops < MAX_MERGE_HOPS:
            # merged into another id: an opt-out sent for the old id binds the person
            await self._apply_user_events(tenant, cast(bytes, reply[1]).decode(), ops, hops + 1)

    async def profile_fields(self, key: str) -> dict[bytes, bytes]:
        """The send-time profile hash (``key`` from ``api.keys``; api/profiles.py)."""
        async with self._gate:
            fields = await self.client.hgetall(key)
        return cast(dict[bytes, bytes], fields)

    async def put_profile(self, key: str, expected_rev: str, profile: bytes, seen: bytes,
                          engaged: bytes, ttl_ms: int, marker: str | None = None) -> bool:
        """profile_put.lua: write unless the revision moved since the read."""
        args: list[bytes | str | int] = [expected_rev, profile, seen, engaged, ttl_ms]
        async with self._gate:
            ok = await self._profile_put(keys=[key], args=[*args, *([marker] if marker else [])])
        return bool(int(ok))

    def append_log_now(self, commands: Sequence[tuple[str | bytes | int, ...]]
                       ) -> list[asyncio.Future[Any]] | None:
        """The decision log's ``XADD`` commands written at once on the auto-pipeline's kept
        connection, without waiting for their replies (``AutoPipeline.send_now``): the
        futures, which settle as the replies arrive; None when they cannot go that way (no
        auto-pipeline, a Cluster, no usable kept connection), and then ``append_log`` sends
        them. ``settle`` waits for the futures still open when the worker stops."""
        pipeline = self._pipeline
        if not isinstance(pipeline, AutoPipeline):
            return None
        futures = pipeline.send_now(commands)
        if futures is not None:
            unanswered = self._unanswered
            for future in futures:
                unanswered.add(future)
                future.add_done_callback(unanswered.discard)
        return futures

    async def settle(self, within: float = 2.0) -> int:
        """Wait at most ``within`` seconds for the replies of commands sent without waiting
        (``append_log_now``), so that a stopping worker does not close its connection under
        them. Returns how many were still unanswered when it gave up."""
        pending = [future for future in self._unanswered if not future.done()]
        if not pending:
            return 0
        _, still = await asyncio.wait(pending, timeout=within)
        return len(still)

    async def append_log(self, commands: Sequence[tuple[str | bytes | int, ...]]) -> None:
        """The decision log's ``XADD`` commands (api/decision_log.py builds them), sent
        together: through the auto-pipeline with the scripts of the same loop iteration, or
        else as one pipeline. Each entry is written or not on its own (a lost entry is a
        lost training row, never a reservation)."""
        async with self._gate:
            if self._pipeline is not None:
                if len(commands) == 1:  # a decision's one entry: no task for a gather
                    await self._pipeline.execute(*commands[0])
                else:
                    await asyncio.gather(*(self._pipeline.execute(*c) for c in commands))
                return
            pipe = self.client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            await pipe.execute()

    async def erase_log_entries(self, key: str, user_id: str) -> int:
        """Delete ``user_id``'s entries from one log stream, 1000 entries per step, so a long
        stream never blocks Redis in one call. Returns how many went."""
        removed, start = 0, "-"
        while True:
            async with self._gate:
                batch = cast(list[tuple[bytes, dict[bytes, bytes]]], await self.client.xrange(
                    key, min=start, max="+", count=1000))
            if start != "-":
                batch = batch[1:]  # the inclusive start repeats the last entry seen
            if not batch:
                return removed
            mine = [entry_id for entry_id, fields in batch
                    if entry_user(fields) == user_id.encode()]
            if mine:
                async with self._gate:
                    removed += int(await self.client.xdel(key, *mine))
            start = batch[-1][0].decode()

    async def hash_fields(self, key: str, fields: Sequence[str]) -> list[bytes | None]:
        """A few fields of one hash (``key`` from ``api.keys``: the model pointers)."""
        async with self._gate:
            return cast(list[bytes | None], await self.client.hmget(key, list(fields)))

    async def put_model_pointer(self, key: str, doc: bytes, pointer_id: str) -> int:
        """model_pointer_put.lua: store a model pointer; returns its new revision."""
        async with self._gate:
            return int(await self._model_pointer_put(keys=[key], args=[doc, pointer_id]))

    async def delete_key(self, key: str) -> None:
        async with self._gate:
            await self.client.delete(key)

    # ------------------------------------------------------------------ policy

    async def get_policy(self, tenant: str) -> Policy | None:
        return (await self.get_policy_and_shadow(tenant))[0]

    async def get_policy_and_shadow(self, tenant: str) -> tuple[Policy | None, int]:
        """The live policy (None: never set) and the shadow's version (0: no shadow), in
        one read: the hash holds a ``shadow`` field while a shadow is installed (and only
        that field for a tenant with a shadow but no live policy of its own)."""
        async with self._gate:
            fields = cast(dict[bytes, bytes], await self.client.hgetall(policy_key(tenant)))
        shadow = int(fields.get(b"shadow", b"0"))
        if b"doc" not in fields:
            return None, shadow
        policy = _policy_decoder.decode(fields[b"doc"])
        return msgspec.structs.replace(
            policy, version=int(fields[b"version"]),
            updated_at=ms_to_utc(int(fields[b"updated_at"]))), shadow

    async def get_policy_version(self, tenant: str) -> int:
        async with self._gate:
            raw = await self.client.hget(policy_key(tenant), "version")
        return int(raw) if raw else 0

    async def put_policy(self, tenant: str, policy: Policy, expected: int | None,
                         now: int) -> Policy:
        doc = _json.encode(msgspec.structs.replace(policy, version=0, updated_at=None))
        async with self._gate:
            status, version = await self._policy_put(
                keys=[policy_key(tenant)],
                args=["" if expected is None else str(expected), doc, now])
        if status == b"conflict":
            raise PolicyConflictError(int(version))
        return msgspec.structs.replace(
            policy, version=int(version), updated_at=ms_to_utc(now))

    async def get_policy_versions(self, tenant: str) -> tuple[int, int]:
        """(live version, shadow version or 0): the policy cache's once-a-second check,
        the same single round trip as ``get_policy_version``."""
        async with self._gate:
            live, shadow = await self.client.hmget(policy_key(tenant), ["version", "shadow"])
        return int(live) if live else 0, int(shadow) if shadow else 0

    # ------------------------------------------------------------ shadow policy

    def _shadow_keys(self, tenant: str) -> list[str]:
        return [policy_key(tenant), shadow_key(tenant), shadow_report_key(tenant),
                shadow_samples_key(tenant)]

    async def get_shadow(self, tenant: str) -> StoredShadow | None:
        async with self._gate:
            fields = cast(dict[bytes, bytes], await self.client.hgetall(shadow_key(tenant)))
        if b"doc" not in fields:
            return None
        policy = msgspec.structs.replace(
            _policy_decoder.decode(fields[b"doc"]), version=int(fields[b"version"]),
            updated_at=ms_to_utc(int(fields[b"installed_at"])))
        return StoredShadow(policy, float(fields[b"sample_rate"]))

    async def put_shadow(self, tenant: str, policy: Policy, sample_rate: float,
                         expected: int | None, now: int) -> StoredShadow:
        """shadow_put.lua; ShadowConflictError when ``expected`` is not the shadow's version."""
        doc = _json.encode(msgspec.structs.replace(policy, version=0, updated_at=None))
        async with self._gate:
            status, version = await self._shadow_put(
                keys=self._shadow_keys(tenant),
                args=["" if expected is None else str(expected), doc, now, repr(sample_rate)])
        if status == b"conflict":
            raise ShadowConflictError(int(version))
        return StoredShadow(msgspec.structs.replace(policy, version=int(version),
                                                    updated_at=ms_to_utc(now)), sample_rate)

    async def delete_shadow(self, tenant: str, expected: int | None) -> bool:
        """shadow_delete.lua: False when there is no shadow."""
        async with self._gate:
            status, version = await self._shadow_delete(
                keys=self._shadow_keys(tenant),
                args=["" if expected is None else str(expected)])
        if status == b"conflict":
            raise ShadowConflictError(int(version))
        return bool(status == b"ok")

    async def promote_shadow(self, tenant: str, expected_shadow: int | None,
                             expected_live: int | None, now: int) -> ShadowPromoted | None:
        """shadow_promote.lua: None when there is no shadow; ShadowConflictError or
        PolicyConflictError when a version does not match."""
        async with self._gate:
            reply: list[Any] = await self._shadow_promote(
                keys=self._shadow_keys(tenant),
                args=["" if expected_shadow is None else str(expected_shadow),
                      "" if expected_live is None else str(expected_live), now])
        status = reply[0]
        if status == b"missing":
            return None
        if status == b"shadow_conflict":
            raise ShadowConflictError(int(reply[1]))
        if status == b"conflict":
            raise PolicyConflictError(int(reply[1]))
        live = await self.get_policy(tenant)
        if live is None:  # pragma: no cover - the script has just written it
            raise RuntimeError("promoted policy vanished")
        counts = _shadow_counts(int(reply[2]), reply[3], reply[4], reply[5], reply[6])
        return ShadowPromoted(live, counts)

    async def shadow_counts(self, tenant: str) -> ShadowCounts | None:
        """shadow_report.lua: None when there is no shadow."""
        async with self._gate:
            reply: list[Any] = await self._shadow_report(keys=self._shadow_keys(tenant)[1:])
        if not reply:
            return None
        return _shadow_counts(int(reply[0]), reply[1], reply[2], reply[3], reply[4])

    async def flush_shadow(self, tenant: str, version: int, counts: dict[str, int],
                           samples: Sequence[bytes], max_samples: int) -> bool:
        """shadow_flush.lua: False when that shadow version is no longer installed."""
        pairs: list[str | int] = [x for field, n in counts.items() for x in (field, n)]
        async with self._gate:
            added = await self._shadow_flush(
                keys=self._shadow_keys(tenant)[1:],
                args=[version, max_samples, len(counts), *pairs, *samples])
        return bool(int(added))

    # --------------------------------------------------------- user data lifecycle

    async def scan_user(self, tenant: str, user_id: str) -> list[str]:
        """Every key carrying the user's hash tag. SCAN MATCH walks the whole keyspace of the
        node that owns the user's slot (O(keys on that node), in steps of 1000), so it is for
        the rare admin calls (erase, export, merge), never for decisions. In a cluster the
        SCAN goes to that node only: the user's keys all live there."""
        keys = user_keys(tenant, user_id)
        found: set[str] = set()
        cursor: int = 0
        async with self._gate:
            while True:
                if isinstance(self.client, RedisCluster):
                    node = self.client.get_node_from_key(keys.prefs)
                    if node is None:  # pragma: no cover - the slot map has a hole
                        raise ConnectionError(f"no cluster node owns {keys.prefs!r}")
                    reply = await self.client.execute_command(
                        "SCAN", cursor, "MATCH", keys.pattern, "COUNT", 1000, target_nodes=node)
                    # the cluster client answers ({node name: cursor}, keys)
                    raw, batch = reply
                    cursor = int(raw[node.name] if isinstance(raw, dict) else raw)
                else:
                    cursor, batch = await self.client.scan(cursor, match=keys.pattern,
                                                           count=1000)
                found.update(k.decode() if isinstance(k, bytes) else str(k) for k in batch)
                if cursor == 0:
                    return sorted(found)

    async def dump_user(self, tenant: str, user_id: str, record_keys: Sequence[str],
                        now: int) -> list[Any]:
        """user_dump.lua's raw snapshot (api/lifecycle.py decodes it); ``record_keys`` are
        the user's record keys of a previous release."""
        keys = user_keys(tenant, user_id)
        async with self._gate:
            reply: list[Any] = await self._dump(
                keys=[keys.ledger, keys.prefs, keys.conv, keys.records, *record_keys],
                args=[now])
        return reply

    async def moved_into(self, tenant: str, user_id: str) -> str | None:
        """The id this user was merged into, if it was."""
        async with self._gate:
            raw = await self.client.hget(user_keys(tenant, user_id).prefs, "moved_into")
        return None if raw is None else cast(bytes, raw).decode()

    async def preference_fields(self, tenant: str, user_id: str) -> dict[bytes, bytes]:
        async with self._gate:
            fields = await self.client.hgetall(user_keys(tenant, user_id).prefs)
        return cast(dict[bytes, bytes], fields)

    async def mark_merge(self, tenant: str, source: str, target: str, *,
                         undo: bool = False) -> tuple[bool, str | None]:
        """Set (or, with ``undo``, remove) the source's tombstone. Returns (whether this
        call set it, the other id the source is already merged into if so)."""
        async with self._gate:
            status, where = await self._merge_mark(
                keys=[user_keys(tenant, source).prefs],
                args=[target, "unmark" if undo else "mark"])
        return status == b"marked", cast(bytes, where).decode() if status == b"elsewhere" \
            else None

    async def repoint_merged(self, tenant: str, user_id: str, was: str, now_into: str) -> None:
        """``user_id`` was merged into ``was``, which has been merged into ``now_into``."""
        async with self._gate:
            await self._merge_mark(keys=[user_keys(tenant, user_id).prefs],
                                   args=[now_into, "repoint", was])

    async def apply_merge(self, tenant: str, target: str, args: Sequence[bytes | str | int],
                          message_ids: Sequence[str]) -> list[Any]:
        """merge_apply.lua on the target; ``args`` as that script documents, with one record
        triple per message id."""
        keys = user_keys(tenant, target)
        async with self._gate:
            reply: list[Any] = await self._merge_apply(
                keys=[keys.ledger, keys.prefs, keys.conv, keys.records,
                      *(keys.record(m) for m in message_ids)], args=list(args))
        return reply

    async def clear_merged(self, tenant: str, source: str, target: str,
                           record_keys: Sequence[str]) -> int:
        """merge_clear.lua; ``record_keys``: the source's record keys of a previous release
        (its records hash goes too)."""
        keys = user_keys(tenant, source)
        async with self._gate:
            removed = await self._merge_clear(
                keys=[keys.ledger, keys.prefs, keys.conv, keys.records, *record_keys],
                args=[target])
        return int(removed)

    async def erase_user(self, tenant: str, user_id: str, other_keys: Sequence[str],
                         now: int) -> list[int]:
        """erase.lua: [ledger entries, event opt-outs, document (0/1), conversions,
        idempotency records (those not expired at ``now``), keys removed]."""
        keys = user_keys(tenant, user_id)
        async with self._gate:
            reply = await self._erase(keys=[keys.ledger, keys.prefs, keys.conv, *other_keys],
                                      args=[keys.record_prefix, keys.records, now])
        return [int(x) for x in reply]

    async def forget_merged_from(self, tenant: str, user_id: str, source: str) -> None:
        """Drop the trace of ``source`` from the id it was merged into (source erased)."""
        async with self._gate:
            await self.client.hdel(user_keys(tenant, user_id).prefs, f"merged_from:{source}")


def _shadow_counts(version: int, installed_at: bytes, sample_rate: bytes,
                   flat: list[bytes], samples: list[bytes]) -> ShadowCounts:
    counts = {flat[i].decode(): int(flat[i + 1]) for i in range(0, len(flat), 2)}
    return ShadowCounts(version, int(installed_at), float(sample_rate), counts, list(samples))
