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
- The real commit carries the tokens held (``Plan.pe``): commit.lua writes a paced send,
  or a displaced message's new paced instant, only inside one, else it writes nothing and
  says where it would land (``moved`` / ``repace``), and pacing reserves there. That is
  what makes the bound exact even when decisions for one recipient race or preemption
  moves a message (docs/pacing.md, "The bound").
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
from api.plan import (
    Block,
    DisplacedPace,
    PaceExpect,
    Plan,
    RecordOwner,
    decode_member,
    encode_plan,
)
from api.policy import ChannelPacing, Policy
from api.reasons import ReasonCode
from api.record_codes import RECORD_FORMAT
from api.render import Slot, UnreadableRecordError, decode_slot, render_record
from api.store import CommitReply, Store
from api.userstate import CommitCheck

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


def landed_on(reply: CommitReply, held: Held, now: int) -> bool:
    """Did the committed send take the held token (else the token goes back)? ``now``: the
    decision's instant (its outcome's instants count from it in record format 5)."""
    out = decode_slot(reply.payload, now)
    return out.ch == held.limits.channel and out.t is not None and \
        held.limits.same_token(held.at, out.t)


def paced_channels(policy: Policy) -> list[str]:
    """Every channel the tenant paces (the commit checks displaced messages against them)."""
    return sorted(ch for ch, value in msgspec.structs.asdict(policy.pacing.channels).items()
                  if value is not None)


#: how far a displaced message's new token may be searched for (its own horizon is at most
#: ``max_defer_minutes``, 30 days; its re-decision in commit.lua applies it)
DISPLACED_SEARCH_MS = 31 * DAY_MS


class _Run:
    """The tokens one paced commit holds while it runs: the decision's own (``held``) and one
    per displaced message moved to a paced channel (``moved``, by message id), with the full
    spans found for those (``blocked``). ``settle`` keeps the tokens the commit used and
    gives the others back, ``release_all`` gives everything back (nothing was written)."""

    def __init__(self, pacer: Pacer, tenant: str, user_id: str, policy: Policy,
                 now: int) -> None:
        self.pacer, self.tenant, self.user_id, self.policy, self.now = (
            pacer, tenant, user_id, policy, now)
        self.paced = paced_channels(policy)
        self.held: Held | None = None
        self.moved: dict[str, Held] = {}
        self.blocked: dict[str, dict[str, Block]] = {}

    async def drop_main(self) -> None:
        await self.pacer.release(self.tenant, self.user_id, self.held, self.now)
        self.held = None

    async def release_all(self) -> None:
        await self.drop_main()
        for mid in list(self.moved):
            await self.pacer.release(self.tenant, self.user_id, self.moved.pop(mid), self.now)

    def expectation(self) -> PaceExpect:
        """What the real commit may write on a paced channel: only inside the held tokens."""
        dx: dict[str, DisplacedPace] = {}
        for mid in {*self.moved, *self.blocked}:
            h = self.moved.get(mid)
            lo, hi = token_span(h.limits, h.at) if h is not None else (0, 0)
            dx[mid] = DisplacedPace(h.limits.channel if h is not None else "", lo, hi,
                                    self.blocked.get(mid, {}))
        if self.held is None:
            return PaceExpect(self.paced, dx=dx)
        lo, hi = token_span(self.held.limits, self.held.at)
        return PaceExpect(self.paced, self.held.limits.channel, lo, hi, dx)

    async def repace(self, moves: Sequence[tuple[str, str, int]]) -> None:
        """Displaced messages the commit would move to paced instants without a token: take
        one from each such instant on. When capacity is only found later, the full span
        becomes a ``channel_pacing`` time rule of that message's re-decision (it is then
        re-checked against its own rules, like a paced decision's deferral)."""
        for mid, channel, at in moves:
            limits = limits_for(self.policy, channel, self.user_id)
            if limits is None:  # pragma: no cover - commit.lua only names paced channels
                continue
            await self.pacer.release(self.tenant, self.user_id, self.moved.pop(mid, None),
                                     self.now)
            reply = await self.pacer.call(self.tenant, self.user_id, limits, "reserve", at,
                                          at + DISPLACED_SEARCH_MS, self.now)
            if reply.status == "ok":
                self.moved[mid] = Held(limits, reply.at)
            if reply.status != "ok" or reply.at != at:
                blocks = self.blocked.setdefault(mid, {})
                old = blocks.get(channel)
                rule = old.r if old is not None else \
                    f"pacing.channels.{channel}.{reply.name or limits.first}"
                ivs = [*(old.iv if old is not None else []), (at, reply.at)]
                blocks[channel] = Block(ReasonCode.CHANNEL_PACING, rule, sorted(ivs))

    async def settle(self, reply: CommitReply) -> None:
        """The commit wrote: keep the tokens it used (commit.lua wrote paced sends only
        inside them), give back the rest, and give back each displaced message's token at
        its old instant (it was not due yet: only future reservations are displaced)."""
        if self.held is not None and not landed_on(reply, self.held, self.now):
            await self.drop_main()
        used: set[str] = set()
        for (record, member), old_at in zip(reply.displaced, reply.displaced_at, strict=True):
            entry = decode_member(member)
            mid = str(entry[0])
            try:
                ctx, answer = render_record(
                    record, RecordOwner(self.tenant, self.user_id, mid, self.pacer.ids))
            except UnreadableRecordError:  # its token is kept where it was (conservative)
                log.warning("record_unreadable", message_id=mid, during="pacing_settle")
                used.add(mid)
                continue
            h = self.moved.get(mid)
            if h is not None and answer.channel == h.limits.channel and \
                    answer.send_at is not None and \
                    h.limits.same_token(h.at, utc_to_ms(answer.send_at)):
                used.add(mid)
            old = limits_for(self.policy, str(entry[1]), self.user_id)
            # a merged id's token may sit on another shard: keep it (conservative)
            if old is not None and old.rates and old_at > self.now and ctx.uid == self.user_id:
                await self.pacer.call(self.tenant, self.user_id, old, "release", old_at,
                                      old_at + 1, self.now)
        for mid in list(self.moved):
            if mid not in used:
                await self.pacer.release(self.tenant, self.user_id, self.moved.pop(mid),
                                         self.now)


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
                     plan: Plan, annotations: Sequence[bytes], context: bytes,
                     check: CommitCheck | None = None, *,
                     record_format: int = RECORD_FORMAT) -> CommitReply:
        """The decision commit, paced (module docstring). Unpaced channels: exactly one
        ``Store.commit`` (with preemption on in a tenant that paces a channel, the commit
        also checks where displaced messages move, one more commit only when one moves to
        a paced channel). A dry run reads the counters and never writes them. Never answers
        ``moved``/``repace``: when the rounds run out it gives its tokens back and answers
        ``contended`` (nothing written; the engine re-reads and retries, then answers a
        retryable 409). ``check`` goes with every commit, dry ones included
        (``Store.commit``); ``record_format``, the one ``context`` is written in, with every
        plan (``encode_plan``)."""
        paced = {c.ch: lim for c in plan.cands
                 if (lim := limits_for(policy, c.ch, user_id)) is not None}
        preempts = plan.pk > 0 and plan.dry == 0 and bool(paced_channels(policy))
        if not paced and not preempts:
            return await self.store.commit(tenant, user_id, message_id,
                                           encode_plan(plan, annotations,
                                                       record_format=record_format),
                                           context, check)
        run = _Run(self, tenant, user_id, policy, plan.now)
        # Redis failing half-way leaves the tokens taken counted until their buckets pass
        # (conservative: docs/pacing.md)
        reply = await self._paced(run, message_id, plan, paced, annotations, context, check,
                                  record_format)
        if reply.status == "new":
            await run.settle(reply)
        else:
            await run.release_all()
        return reply

    async def _paced(self, run: _Run, message_id: str, plan: Plan,
                     paced: dict[str, ShardLimits], annotations: Sequence[bytes],
                     context: bytes, check: CommitCheck | None,
                     record_format: int) -> CommitReply:
        tenant, user_id, now, dry = run.tenant, run.user_id, plan.now, plan.dry == 1

        def packed(plan: Plan) -> list[bytes]:
            return encode_plan(plan, annotations, record_format=record_format)

        ends = {ch: max(c.b for c in plan.cands if c.ch == ch) for ch in paced}
        blocked: dict[str, list[tuple[int, int]]] = {}
        rules: dict[str, str] = {}
        current = plan
        #: where the commit lands as far as we know (a dry commit's, a ``moved`` or a
        #: ``repace`` answer's outcome), still to be paced; None: ask a dry commit (only
        #: when a requested channel is paced)
        out: Slot | None = None
        probe: CommitReply | None = None
        for _ in range(MAX_ROUNDS):
            if out is None and paced:
                probe = await self.store.commit(
                    tenant, user_id, message_id,
                    packed(msgspec.structs.replace(current, dry=1)), context, check)
                if probe.status != "new":  # a retry, a record, stale preferences: as unpaced
                    return probe
                out = decode_slot(probe.payload, now)
            if out is not None and out.t is not None and out.ch in paced:
                limits = paced[out.ch]
                held = run.held
                if held is None or held.limits.channel != out.ch or \
                        not limits.same_token(held.at, out.t):
                    await run.drop_main()
                    reply = await self.call(tenant, user_id, limits,
                                            "peek" if dry else "reserve", out.t, ends[out.ch],
                                            now)
                    if reply.status == "ok" and not dry:
                        run.held = Held(limits, reply.at)
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
                packed(msgspec.structs.replace(current, pe=run.expectation())), context, check)
            if final.status == "moved":  # the ledger changed under us: pace where it lands
                out = decode_slot(final.payload, now)
                continue
            if final.status == "repace":  # displaced messages need tokens at their new instants
                out = decode_slot(final.payload, now)
                await run.repace(final.repaced)
                continue
            return final
        if dry:  # the rules and the counters kept pushing each other: answer what the
            # recipient's rules and the full buckets seen so far allow (nothing is written)
            return await self.store.commit(
                tenant, user_id, message_id,
                packed(msgspec.structs.replace(current, dry=1)), context, check)
        log.warning("pacing_rounds_exhausted", tenant=tenant, rounds=MAX_ROUNDS)
        return CommitReply("contended", b"")

    async def release_cancelled(self, tenant: str, user_id: str, message_id: str,
                                record: bytes, policy: Policy, now: int) -> bool:
        """A cancelled decision that was not due yet gives its rate tokens back (its
        conversation start stays counted: another message may share that conversation).
        ``record``: the decision's, read from ``user_id``'s records hash; an unreadable one
        raises ``UnreadableRecordError``."""
        ctx, answer = render_record(record, RecordOwner(tenant, user_id, message_id, self.ids))
        if answer.channel is None or answer.send_at is None or ctx.uid != user_id:
            return False  # nothing reserved, or a merged id: its shard may differ
        at = utc_to_ms(answer.send_at)
        limits = limits_for(policy, answer.channel, user_id)
        if limits is None or at <= now or not limits.rates:
            return False
        await self.call(tenant, user_id, limits, "release", at, at + 1, now)
        return True
