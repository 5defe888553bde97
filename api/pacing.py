"""Channel send-rate pacing: a tenant-wide limit per channel on top of the per-user commit.

The design and its bound are in docs/pacing.md; in short:

- Counters are sharded: the shard of a decision is a hash of the recipient's id, each shard
  lives on its own cluster slot (``sw:pace:{tenant:channel:shard}:...``, api/keys.py) and
  owns an exact share of every limit (the shares sum to the limit), so ``pace.lua``
  checks and increments atomically on one slot and the sum over shards can never exceed
  the limit, however many workers race.
- The per-user commit (commit.lua) and a pacing shard are on different slots, so no script
  can do both. The order makes the contested resource safe: a *dry* commit says where the
  recipient's own rules put the message, pacing *reserves* capacity from that instant on,
  and only then does the real commit run, with the full buckets added to the plan as a
  ``channel_pacing`` time block. The commit therefore stays the single place that decides
  (caps, quiet hours and idempotency stay exact, nothing half-written), and the reason
  chain cites the pacing limit with the instant capacity frees like any other rule.
- A tenant without ``pacing`` pays nothing: no extra round trip, no extra code path.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import msgspec
import structlog

from api.ids import IdKey
from api.keys import pace_keys
from api.localtime import utc_to_ms
from api.plan import Block, Plan, encode_plan
from api.policy import ChannelPacing, Policy
from api.reasons import ReasonCode
from api.render import decode_outcome, render_record
from api.store import CommitReply, Store

log = structlog.get_logger("sendwise.pacing")

SECOND_MS = 1000
MINUTE_MS = 60 * SECOND_MS
DAY_MS = 24 * 60 * MINUTE_MS
#: buckets (or unique-limit blocks) one pace.lua call may step over before it gives up: bounds
#: the script's work (a few ms at most) whatever the backlog
MAX_SEARCH_STEPS = 2000
#: dry commit + reserve rounds before the real commit goes ahead regardless (each round
#: costs two round trips; one round is the normal case, two when a deferral lands in a
#: time the recipient's rules forbid)
MAX_ROUNDS = 4


def shard_count(limits: ChannelPacing, shards: int) -> int:
    """Never more shards than the smallest limit: every shard must own at least one unit of
    every limit, or a recipient hashed there could never be served."""
    values = [v for v in (limits.per_second, limits.per_minute,
                          limits.unique_recipients_per_24h) if v is not None]
    return max(1, min([shards, *values]))


def share(limit: int, shards: int, shard: int) -> int:
    """Shard ``shard``'s exact share: the shares differ by at most one and sum to ``limit``."""
    return limit // shards + (1 if shard < limit % shards else 0)


def shard_of(user_id: str, shards: int) -> int:
    return zlib.crc32(user_id.encode()) % shards


@dataclass(frozen=True)
class ShardLimits:
    """What pace.lua needs for one (tenant, channel, recipient): the shard and its shares."""

    channel: str
    shard: int
    #: (bucket length ms, this shard's share, limit name)
    rates: tuple[tuple[int, int, str], ...]
    #: (window ms, this shard's share, limit name), or None
    unique: tuple[int, int, str] | None

    @property
    def first(self) -> str:
        """The name cited when a search ran out without a limit pushing it (rare)."""
        return self.rates[0][2] if self.rates else "unique_recipients_per_24h"

    def args(self) -> list[Any]:
        flat: list[Any] = [len(self.rates)]
        for g, cap, name in self.rates:
            flat += [g, cap, name]
        window, cap, _ = self.unique or (0, 0, "")
        return [*flat, window, cap]

    def same_token(self, held: int, at: int) -> bool:
        """Does the capacity taken at ``held`` cover a send at ``at``? Same rate buckets, and
        for the unique limit the very instant (the conversation start recorded)."""
        if self.unique is not None and held != at:
            return False
        return all(held // g == at // g for g, _, _ in self.rates)


def limits_for(policy: Policy, channel: str, user_id: str) -> ShardLimits | None:
    paced = policy.pacing.channels.of(channel)
    if paced is None:
        return None
    n = shard_count(paced, policy.pacing.shards)
    shard = shard_of(user_id, n)
    rates: list[tuple[int, int, str]] = []
    if paced.per_second is not None:
        rates.append((SECOND_MS, share(paced.per_second, n, shard), "per_second"))
    if paced.per_minute is not None:
        rates.append((MINUTE_MS, share(paced.per_minute, n, shard), "per_minute"))
    unique = None
    if paced.unique_recipients_per_24h is not None:
        unique = (DAY_MS, share(paced.unique_recipients_per_24h, n, shard),
                  "unique_recipients_per_24h")
    return ShardLimits(channel, shard, tuple(rates), unique)


class PaceReply(msgspec.Struct, frozen=True):
    status: str
    at: int
    name: str


@dataclass(frozen=True)
class Held:
    limits: ShardLimits
    at: int


def with_pacing_blocks(plan: Plan, blocked: dict[str, list[tuple[int, int]]],
                       rules: dict[str, str]) -> Plan:
    """The plan plus one ``channel_pacing`` time block per paced channel: the commit then
    treats full buckets like any other time rule (earliest free instant, reason chain)."""
    blocks = list(plan.blocks)
    index: dict[str, int] = {}
    for channel, ivs in blocked.items():
        index[channel] = len(blocks)
        blocks.append(Block(ReasonCode.CHANNEL_PACING, rules[channel], sorted(ivs)))
    cands = [msgspec.structs.replace(c, pb=[*c.pb, index[c.ch]]) if c.ch in index else c
             for c in plan.cands]
    return msgspec.structs.replace(plan, blocks=blocks, cands=cands)


class Pacer:
    def __init__(self, store: Store, ids: IdKey) -> None:
        self.store = store
        self.ids = ids
        script = resources.files("api").joinpath("lua", "pace.lua").read_text(encoding="utf-8")
        self._pace = store.client.register_script(script)

    async def call(self, tenant: str, user_id: str, limits: ShardLimits, mode: str, at: int,
                   end: int, now: int) -> PaceReply:
        keys = pace_keys(tenant, limits.channel, limits.shard)
        who = self.ids.pseudonym(user_id)
        args = [mode, at, end, now, MAX_SEARCH_STEPS, *limits.args(), who,
                limits.unique[2] if limits.unique else ""]
        # the store's gate: the cluster client has no blocking pool (api/store.py)
        async with self.store._gate:
            status, instant, name = await self._pace(keys=list(keys), args=args)
        return PaceReply(status.decode(), int(instant), name.decode())

    async def release(self, tenant: str, user_id: str, held: Held | None, now: int) -> None:
        if held is not None:
            await self.call(tenant, user_id, held.limits, "release", held.at, held.at + 1, now)

    async def commit(self, tenant: str, user_id: str, message_id: str, policy: Policy,
                     plan: Plan, annotations: Sequence[bytes], context: bytes) -> CommitReply:
        """The decision commit, paced (module docstring). Unpaced channels: exactly one
        ``Store.commit``. A dry run reads the counters and never writes them."""
        paced = {c.ch: lim for c in plan.cands
                 if (lim := limits_for(policy, c.ch, user_id)) is not None}
        if not paced:
            return await self.store.commit(tenant, user_id, message_id,
                                           encode_plan(plan, annotations), context)
        now, dry = plan.now, plan.dry == 1
        ends = {ch: max(c.b for c in plan.cands if c.ch == ch) for ch in paced}
        blocked: dict[str, list[tuple[int, int]]] = {}
        rules: dict[str, str] = {}
        current = plan
        held: Held | None = None
        for _ in range(MAX_ROUNDS):
            probe = await self.store.commit(
                tenant, user_id, message_id,
                encode_plan(msgspec.structs.replace(current, dry=1), annotations), context)
            if probe.status != "new":  # a retry, a record, stale preferences: as unpaced
                await self.release(tenant, user_id, held, now)
                return probe
            out = decode_outcome(probe.payload)
            if out.t is None or out.ch not in paced:
                if dry:
                    return probe
                break
            limits = paced[out.ch]
            if held is not None and held.limits.channel == out.ch and \
                    limits.same_token(held.at, out.t):
                break
            await self.release(tenant, user_id, held, now)
            held = None
            reply = await self.call(tenant, user_id, limits, "peek" if dry else "reserve",
                                    out.t, ends[out.ch], now)
            if reply.status == "ok" and not dry:
                held = Held(limits, reply.at)
            if reply.status == "ok" and reply.at == out.t:
                if dry:
                    return probe
                break
            rules.setdefault(out.ch, f"pacing.channels.{out.ch}.{reply.name or limits.first}")
            blocked.setdefault(out.ch, []).append((out.t, reply.at))
            current = with_pacing_blocks(plan, blocked, rules)
        final = await self.store.commit(tenant, user_id, message_id,
                                        encode_plan(current, annotations), context)
        if dry:
            return final
        await self._settle(tenant, user_id, final, paced, held, now)
        return final

    async def _settle(self, tenant: str, user_id: str, final: CommitReply,
                      paced: dict[str, ShardLimits], held: Held | None, now: int) -> None:
        """Match the capacity held to what the commit reserved. Normally they agree. They
        differ only when a concurrent decision for the same recipient changed their ledger
        between the dry and the real commit (or the rounds ran out): the token held is given
        back and the send is counted where it landed, over the limit if that bucket is full
        (the one overshoot docs/pacing.md allows, logged as ``pacing_overbooked``)."""
        out = decode_outcome(final.payload) if final.status == "new" else None
        landed = out.ch if out is not None and out.t is not None else None
        if out is not None and out.t is not None and landed in paced:
            limits = paced[landed]
            if held is not None and held.limits.channel == landed and \
                    limits.same_token(held.at, out.t):
                return
            await self.release(tenant, user_id, held, now)
            forced = await self.call(tenant, user_id, limits, "force", out.t, out.t + 1, now)
            if forced.name == "1":
                log.warning("pacing_overbooked", tenant=tenant, channel=landed, at=out.t,
                            shard=limits.shard)
            return
        await self.release(tenant, user_id, held, now)

    async def release_cancelled(self, tenant: str, user_id: str, record: bytes,
                                policy: Policy, now: int) -> bool:
        """A cancelled decision that was not due yet gives its rate tokens back (its
        conversation start stays counted: another message may share that conversation)."""
        ctx, answer = render_record(record)
        if answer.channel is None or answer.send_at is None or ctx.uid != user_id:
            return False  # nothing reserved, or a merged id: its shard may differ
        at = utc_to_ms(answer.send_at)
        limits = limits_for(policy, answer.channel, user_id)
        if limits is None or at <= now or not limits.rates:
            return False
        await self.call(tenant, user_id, limits, "release", at, at + 1, now)
        return True
