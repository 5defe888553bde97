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
from api.plan import Block, PaceExpect, Plan, decode_member, encode_plan
from api.policy import ChannelPacing, Policy
from api.reasons import ReasonCode
from api.render import Outcome, decode_outcome, render_record
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


def token_span(limits: ShardLimits, at: int) -> tuple[int, int]:
    """The instants ``[lo, hi)`` a token taken at ``at`` covers: the intersection of its
    rate buckets, and ``at`` alone when the unique limit is paced (the conversation start is
    recorded at that very instant). Equivalent to ``same_token(at, x)`` for x in the span."""
    if limits.unique is not None:
        return at, at + 1
    lo, hi = 0, 2 ** 62
    for g, _, _ in limits.rates:
        lo, hi = max(lo, at // g * g), min(hi, (at // g + 1) * g)
    return lo, hi


def expectation(paced: dict[str, ShardLimits], held: Held | None) -> PaceExpect:
    """What the real commit may write on a paced channel: only inside the held token."""
    if held is None:
        return PaceExpect(sorted(paced))
    lo, hi = token_span(held.limits, held.at)
    return PaceExpect(sorted(paced), held.limits.channel, lo, hi)


def landed_on(reply: CommitReply, held: Held) -> bool:
    """Did the committed send take the held token (else the token goes back)?"""
    out = decode_outcome(reply.payload)
    return out.ch == held.limits.channel and out.t is not None and \
        held.limits.same_token(held.at, out.t)


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
        ``Store.commit``. A dry run reads the counters and never writes them. Never answers
        ``moved``: when the rounds run out it gives its token back and answers ``stale``
        (nothing written; the engine re-reads and retries, then answers a retryable 409)."""
        paced = {c.ch: lim for c in plan.cands
                 if (lim := limits_for(policy, c.ch, user_id)) is not None}
        if not paced:
            reply = await self.store.commit(tenant, user_id, message_id,
                                            encode_plan(plan, annotations), context)
        else:
            reply = await self._paced(tenant, user_id, message_id, plan, paced, annotations,
                                      context)
        if reply.displaced:  # preemption moved reservations: their tokens follow
            await self._move_displaced(tenant, user_id, policy, reply, plan.now)
        return reply

    async def _paced(self, tenant: str, user_id: str, message_id: str, plan: Plan,
                     paced: dict[str, ShardLimits], annotations: Sequence[bytes],
                     context: bytes) -> CommitReply:
        now, dry = plan.now, plan.dry == 1
        ends = {ch: max(c.b for c in plan.cands if c.ch == ch) for ch in paced}
        blocked: dict[str, list[tuple[int, int]]] = {}
        rules: dict[str, str] = {}
        current = plan
        held: Held | None = None
        #: where the commit lands as far as we know (a dry commit's or a ``moved`` answer's
        #: outcome), still to be paced; None: ask a dry commit
        out: Outcome | None = None
        probe: CommitReply | None = None
        for _ in range(MAX_ROUNDS):
            if out is None:
                probe = await self.store.commit(
                    tenant, user_id, message_id,
                    encode_plan(msgspec.structs.replace(current, dry=1), annotations), context)
                if probe.status != "new":  # a retry, a record, stale preferences: as unpaced
                    await self.release(tenant, user_id, held, now)
                    return probe
                out = decode_outcome(probe.payload)
            if out.t is not None and out.ch in paced:
                limits = paced[out.ch]
                if held is None or held.limits.channel != out.ch or \
                        not limits.same_token(held.at, out.t):
                    await self.release(tenant, user_id, held, now)
                    held = None
                    reply = await self.call(tenant, user_id, limits,
                                            "peek" if dry else "reserve", out.t, ends[out.ch],
                                            now)
                    if reply.status == "ok" and not dry:
                        held = Held(limits, reply.at)
                    if reply.status != "ok" or reply.at != out.t:
                        rules.setdefault(
                            out.ch, f"pacing.channels.{out.ch}.{reply.name or limits.first}")
                        blocked.setdefault(out.ch, []).append((out.t, reply.at))
                        current = with_pacing_blocks(plan, blocked, rules)
                        out = None
                        continue
            if dry and probe is not None:
                return probe
            final = await self.store.commit(
                tenant, user_id, message_id,
                encode_plan(msgspec.structs.replace(current, pe=expectation(paced, held)),
                            annotations), context)
            if final.status == "moved":  # the ledger changed under us: pace where it lands
                out = decode_outcome(final.payload)
                continue
            if not (final.status == "new" and held is not None and landed_on(final, held)):
                await self.release(tenant, user_id, held, now)
            return final
        await self.release(tenant, user_id, held, now)
        if dry:  # the rules and the counters kept pushing each other: answer what the
            # recipient's rules and the full buckets seen so far allow (nothing is written)
            return await self.store.commit(
                tenant, user_id, message_id,
                encode_plan(msgspec.structs.replace(current, dry=1), annotations), context)
        log.warning("pacing_rounds_exhausted", tenant=tenant, rounds=MAX_ROUNDS)
        return CommitReply("stale", b"")

    async def _move_displaced(self, tenant: str, user_id: str, policy: Policy,
                              reply: CommitReply, now: int) -> None:
        """Preemption moved reservations inside the commit (commit.lua step 6b); their
        tokens follow them. Each one's token goes back at its old instant (it was not due
        yet: only future reservations are displaced) and is counted at its new one. The new
        instant was chosen by the recipient's rules alone, so its bucket can be full: it is
        counted anyway (the record and ledger already say that instant, and the counters
        must match them) and logged as ``pacing_overbooked``, the one overshoot left
        (docs/pacing.md, "The bound")."""
        for (record, member), old_at in zip(reply.displaced, reply.displaced_at, strict=True):
            ctx, answer = render_record(record)
            old = limits_for(policy, str(decode_member(member)[1]), user_id)
            # a merged id's token may sit on another shard: keep it (conservative)
            if old is not None and old.rates and old_at > now and ctx.uid == user_id:
                await self.call(tenant, user_id, old, "release", old_at, old_at + 1, now)
            if answer.channel is None or answer.send_at is None:
                continue  # suppressed: nothing to count
            new = limits_for(policy, answer.channel, user_id)
            if new is None:
                continue
            at = utc_to_ms(answer.send_at)
            forced = await self.call(tenant, user_id, new, "force", at, at + 1, now)
            if forced.name == "1":
                log.warning("pacing_overbooked", tenant=tenant, channel=answer.channel, at=at,
                            shard=new.shard, cause="preempted")

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
