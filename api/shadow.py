"""Shadow policies: a candidate policy evaluated beside the live one, with no effect.

``PUT /v1/policy`` with ``"mode": "shadow"`` installs a candidate. On every real decision
(not a replay, not a dry run) of a tenant that has one, the same request is decided again
under the shadow policy, against the same user state, with a *dry* commit (commit.lua with
``dry = 1`` evaluates caps, offers and time rules and writes nothing). It runs before the
live commit: after it the ledger already holds the live reservation, which would make the
shadow see one message more than the live policy did. The live answer and the ledger are
exactly what they would be without a shadow; a shadow that fails is logged and counted,
never raised.

Cost: nothing for a tenant without a shadow (the policy cache's once-a-second version
check also reads the shadow's version: no extra round trip, no await). With a shadow, one
more Redis round trip per sampled decision (``sample_rate`` bounds that), plus one report
flush per worker and tenant at most every ``FLUSH_SECONDS`` or ``FLUSH_DECISIONS``.

Counts go two ways: Prometheus counters at once, and a per-tenant Redis report (the
numbers ``GET /v1/policy/shadow/report`` shows) batched per worker and flushed by one
script. A worker that crashes loses its unflushed counts: at most ``FLUSH_SECONDS`` or
``FLUSH_DECISIONS`` of that worker's decisions, whichever comes first. Counts are tagged
with the shadow's version, and a flush for a shadow that was replaced, removed or promoted
is dropped, so a report only ever counts its own shadow.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Literal

import msgspec
import structlog
from msgspec import Meta

from api.errors import InvalidRequestError
from api.localtime import ms_to_utc
from api.plan import Context, RecordOwner, encode_plan
from api.policy import Policy
from api.policy_cache import PolicyCache
from api.render import decode_outcome, render
from api.schemas import DecisionRequest, DecisionResponse
from api.store import ShadowCounts, Store, StoredShadow
from api.userstate import UserState

if TYPE_CHECKING:
    from api.engine import Engine

log = structlog.get_logger("sendwise.shadow")

#: a worker flushes its batched report counts at least this often (while decisions come)
FLUSH_SECONDS = 1.0
#: ... and as soon as it holds this many evaluated decisions of one tenant
FLUSH_DECISIONS = 500
#: changed decisions kept as examples in the report (the newest)
MAX_SAMPLES = 20
#: reason codes listed in each of the report's "added" and "removed" tops
TOP_REASONS = 10
#: the shadow's outcome when the shadow policy would have refused the request (e.g. its
#: ``categories`` lack the request's category): the live service answers, the shadow 400
INVALID = "invalid"


# ------------------------------------------------------------------ documents


class PolicyDocument(Policy, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What ``PUT /v1/policy`` accepts and answers: a policy document plus where it goes.
    ``mode`` and ``sample_rate`` are not part of the policy itself and are never stored in
    it; ``GET /v1/policy/shadow`` answers the same shape, so a document read can be edited
    and put back (its ``version`` then guards against a concurrent change)."""

    #: ``live`` replaces the policy in force; ``shadow`` installs a candidate evaluated
    #: beside it without effect (``version`` is then the shadow's own version)
    mode: Literal["live", "shadow"] = "live"
    #: shadow only: the share of decisions also evaluated under the shadow (default 1.0);
    #: sampling is deterministic per message id
    sample_rate: Annotated[float, Meta(gt=0.0, le=1.0)] | None = None


def policy_of(doc: PolicyDocument) -> Policy:
    """The policy a document carries, without ``mode`` and ``sample_rate``."""
    return Policy(**{name: getattr(doc, name) for name in Policy.__struct_fields__})


def document(policy: Policy, mode: Literal["live", "shadow"],
             sample_rate: float | None) -> PolicyDocument:
    return PolicyDocument(**{name: getattr(policy, name) for name in Policy.__struct_fields__},
                          mode=mode, sample_rate=sample_rate)


class ReasonCount(msgspec.Struct, frozen=True):
    code: str
    decisions: int


class SideOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """One side's answer, as far as the comparison goes."""

    decision: str
    channel: str | None = None
    send_at: dt.datetime | None = None
    #: the reason codes the answer cites (sorted, each once)
    reasons: list[str] = []
    #: decision ``invalid`` only: the request field the shadow policy would have refused
    field: str | None = None


class ShadowSample(msgspec.Struct, frozen=True, kw_only=True):
    """One decision the shadow would have answered differently."""

    decision_id: str
    message_id: str
    decided_at: dt.datetime
    live: SideOutcome
    shadow: SideOutcome


class ShadowReport(msgspec.Struct, frozen=True, kw_only=True):
    """What the shadow policy would have changed since it was installed."""

    #: the shadow policy's version and when it was installed (the report starts then)
    version: int
    installed_at: dt.datetime
    sample_rate: float
    #: decisions evaluated under both policies
    evaluated: int
    #: of those, answers that would have differed in decision, channel or instant
    changed: int
    decision_changed: int
    channel_changed: int
    instant_changed: int
    #: shadow evaluations that failed (not counted in ``evaluated``)
    errors: int
    #: live decision -> shadow decision -> count (sums to ``evaluated``)
    transitions: dict[str, dict[str, int]]
    #: reason codes the shadow's answer cites and the live one does not, most frequent first
    reasons_added: list[ReasonCount]
    reasons_removed: list[ReasonCount]
    #: the newest changed decisions (at most 20)
    samples: list[ShadowSample]


class PromoteResponse(msgspec.Struct, frozen=True, kw_only=True):
    #: the new live policy
    policy: Policy
    #: the shadow's final report (it is removed with the shadow)
    report: ShadowReport


# ------------------------------------------------------------------ evaluation


@dataclass
class ShadowRun:
    """The shadow's answer to one decision, waiting for the live answer to compare with."""

    version: int
    outcome: SideOutcome


@dataclass
class _Pending:
    """One worker's counts of one tenant's shadow, not yet flushed."""

    version: int
    since: float
    decisions: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    samples: list[bytes] = field(default_factory=list)


def sampled(message_id: str, rate: float) -> bool:
    """Deterministic per message: a retry (or another worker) samples the same way."""
    if rate >= 1.0:
        return True
    digest = hashlib.blake2b(message_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < rate * 2.0**64


def _side(response: DecisionResponse) -> SideOutcome:
    return SideOutcome(decision=response.decision, channel=response.channel,
                       send_at=response.send_at,
                       reasons=sorted({r.code for r in response.reasons}))


_encoder = msgspec.json.Encoder()
_sample_decoder = msgspec.json.Decoder(ShadowSample)


class ShadowService:
    """Evaluates, compares, counts and reports one worker's shadow decisions."""

    def __init__(self, store: Store, policies: PolicyCache, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """``monotonic`` paces the report flushes (tests move it instead of sleeping)."""
        self._store = store
        self._policies = policies
        self._monotonic = monotonic
        self._loaded: dict[str, StoredShadow] = {}
        self._pending: dict[str, _Pending] = {}

    def active(self, tenant: str, request: DecisionRequest) -> bool:
        """Whether this decision gets a shadow evaluation: no I/O, so a tenant without a
        shadow pays nothing. Dry runs are left out: they are previews, which the live
        policy does not count either, and a platform that previews then decides would
        count every message twice."""
        return bool(self._policies.shadow_version(tenant)) and not request.dry_run

    async def _shadow(self, tenant: str) -> StoredShadow | None:
        version = self._policies.shadow_version(tenant)
        cached = self._loaded.get(tenant)
        if cached is not None and cached.policy.version == version:
            return cached
        loaded = await self._store.get_shadow(tenant)  # once per shadow version and worker
        if loaded is None:
            self._loaded.pop(tenant, None)
            self._policies.put_shadow_version(tenant, 0)  # removed since the last check
            return None
        self._loaded[tenant] = loaded
        # newer than the last policy check, perhaps: no reload per decision until the next
        self._policies.put_shadow_version(tenant, loaded.policy.version)
        return loaded

    async def evaluate(self, engine: Engine, tenant: str, user: str, request: DecisionRequest,
                       state: UserState, did: str, fp: str, now: int) -> ShadowRun | None:
        """The request decided under the shadow policy with a dry commit, or None (no
        shadow, not sampled, the state moved under it, or a failure: logged and counted,
        never raised, so the live answer cannot depend on the shadow)."""
        try:
            shadow = await self._shadow(tenant)
            if shadow is None or not sampled(request.message_id, shadow.sample_rate):
                return None
            return await self._evaluate(engine, tenant, user, request, state, shadow, did, fp,
                                        now)
        except Exception as exc:  # degrade, do not fail: the live decision goes on
            engine.metrics.shadow_errors.labels("evaluate").inc()
            log.error("shadow_failed", tenant=tenant, error=f"{type(exc).__name__}: {exc}")
            # counted in the batch, which the next evaluated decision (or the report) flushes:
            # no flush here, where Redis may well be what failed
            self._count(tenant, self._policies.shadow_version(tenant), {"errors": 1})
            return None

    async def _evaluate(self, engine: Engine, tenant: str, user: str, request: DecisionRequest,
                        state: UserState, shadow: StoredShadow, did: str, fp: str,
                        now: int) -> ShadowRun | None:
        policy = shadow.policy
        version = policy.version
        try:  # the live path's own steps (and request checks), under the shadow policy;
            # without the scoring metric: a shadow evaluation is not a decision
            engine.check_category(request, policy)
            location, pre, choice = await engine.prepare(tenant, user, request, policy, state,
                                                         now, observe=False)
        except InvalidRequestError as exc:
            return ShadowRun(version, SideOutcome(decision=INVALID, field=exc.field))
        zone = location.zones[0]
        dry = msgspec.structs.replace(choice.plan, dry=1)  # evaluates, writes nothing
        ctx = Context(did=did, mid=request.message_id, uid=request.user_id,
                      pv=policy.version_label, zone=zone, now=now, fp=fp, dry=True, pre=pre,
                      mv=choice.version, fs=choice.source)
        with engine.metrics.redis_shadow.time():
            plan = encode_plan(dry, choice.annotations,
                               record_format=engine.settings.record_format)
            reply = await self._store.commit(tenant, user, request.message_id, plan,
                                             engine.encode_context(ctx, user))
        if reply.status != "new":  # stale / already decided: the live commit says so too
            return None
        owner = RecordOwner(tenant, user, request.message_id, engine.ids)
        return ShadowRun(version, _side(render(ctx, decode_outcome(reply.payload, owner, ctx.now))))

    async def record(self, engine: Engine, tenant: str, run: ShadowRun,
                     response: DecisionResponse) -> None:
        """Compare the live answer with the shadow's and count the difference; flush this
        worker's batch when it is due. Never raises."""
        try:
            live, shadow = _side(response), run.outcome
            decision = live.decision != shadow.decision
            channel = live.channel != shadow.channel
            instant = live.send_at != shadow.send_at
            changed = decision or channel or instant
            added = sorted(set(shadow.reasons) - set(live.reasons))
            removed = sorted(set(live.reasons) - set(shadow.reasons))
            if shadow.decision == INVALID:  # no answer, so no reasons to compare
                added = removed = []
            m = engine.metrics
            m.shadow_decisions.labels(tenant, live.decision, shadow.decision,
                                      "true" if changed else "false").inc()
            counts = {"total": 1, f"t:{live.decision}>{shadow.decision}": 1}
            for flag, name in ((changed, "changed"), (decision, "decision"),
                               (channel, "channel"), (instant, "instant")):
                if flag:
                    counts[name] = 1
            for code in added:
                m.shadow_reasons.labels(tenant, "added", code).inc()
                counts[f"r+:{code}"] = 1
            for code in removed:
                m.shadow_reasons.labels(tenant, "removed", code).inc()
                counts[f"r-:{code}"] = 1
            sample = None
            if changed:
                sample = _encoder.encode(ShadowSample(
                    decision_id=response.decision_id, message_id=response.message_id,
                    decided_at=response.decided_at, live=live, shadow=shadow))
            if self._due(self._count(tenant, run.version, counts, sample)):
                await self.flush(engine, tenant)
        except Exception as exc:  # counting must never fail a decision
            engine.metrics.shadow_errors.labels("evaluate").inc()
            log.error("shadow_record_failed", tenant=tenant, error=f"{type(exc).__name__}: {exc}")

    def _due(self, pending: _Pending) -> bool:
        return (pending.decisions >= FLUSH_DECISIONS
                or self._monotonic() - pending.since >= FLUSH_SECONDS)

    def _count(self, tenant: str, version: int, counts: dict[str, int],
               sample: bytes | None = None) -> _Pending:
        pending = self._pending.get(tenant)
        if pending is None or pending.version != version:
            # a new shadow: an old one's unflushed counts would be dropped by the flush
            pending = self._pending[tenant] = _Pending(version, self._monotonic())
        pending.counts.update(counts)
        if "total" in counts:
            pending.decisions += 1
        if sample is not None:
            pending.samples = [*pending.samples, sample][-MAX_SAMPLES:]
        return pending

    async def flush(self, engine: Engine, tenant: str) -> None:
        """Send this worker's batch for ``tenant`` in one script call. Taken out of the
        batch before the await, so concurrent decisions never flush the same counts twice;
        a failed flush loses them (counted in ``sendwise_shadow_errors_total{stage="flush"}``)."""
        pending = self._pending.pop(tenant, None)
        if pending is None or not pending.counts:
            return
        try:
            await self._store.flush_shadow(tenant, pending.version, dict(pending.counts),
                                           pending.samples, MAX_SAMPLES)
        except Exception as exc:
            engine.metrics.shadow_errors.labels("flush").inc()
            log.error("shadow_flush_failed", tenant=tenant, error=f"{type(exc).__name__}: {exc}")

    async def flush_all(self, engine: Engine) -> None:
        """Every tenant's batch (at shutdown)."""
        for tenant in list(self._pending):
            await self.flush(engine, tenant)

    # ---------------------------------------------------------------- admin

    async def install(self, engine: Engine, tenant: str, policy: Policy, sample_rate: float,
                      expected: int | None) -> PolicyDocument:
        stored = await self._store.put_shadow(tenant, policy, sample_rate, expected,
                                              engine.clock.now_ms())
        self._pending.pop(tenant, None)
        self._loaded[tenant] = stored
        self._policies.put_shadow_version(tenant, stored.policy.version)
        return document(stored.policy, "shadow", stored.sample_rate)

    async def get(self, tenant: str) -> PolicyDocument | None:
        stored = await self._store.get_shadow(tenant)
        return None if stored is None else document(stored.policy, "shadow", stored.sample_rate)

    async def remove(self, tenant: str, expected: int | None) -> bool:
        removed = await self._store.delete_shadow(tenant, expected)
        self._pending.pop(tenant, None)
        self._loaded.pop(tenant, None)
        self._policies.put_shadow_version(tenant, 0)
        return removed

    async def report(self, engine: Engine, tenant: str) -> ShadowReport | None:
        """This worker's batch is flushed first, so a single worker's report is exact;
        other workers' counts arrive within their flush interval."""
        await self.flush(engine, tenant)
        counts = await self._store.shadow_counts(tenant)
        return None if counts is None else build_report(counts)

    async def promote(self, engine: Engine, tenant: str, expected_shadow: int | None,
                      expected_live: int | None) -> PromoteResponse | None:
        """The shadow becomes the live policy in one script; its final report (this
        worker's counts flushed first) is answered and removed with it."""
        await self.flush(engine, tenant)
        promoted = await self._store.promote_shadow(tenant, expected_shadow, expected_live,
                                                    engine.clock.now_ms())
        if promoted is None:
            return None
        self._pending.pop(tenant, None)
        self._loaded.pop(tenant, None)
        self._policies.put_shadow_version(tenant, 0)
        self._policies.put(tenant, promoted.policy)
        return PromoteResponse(policy=promoted.policy, report=build_report(promoted.report))


def _top(counts: dict[str, int], prefix: str) -> list[ReasonCount]:
    found = [ReasonCount(k[len(prefix):], n) for k, n in counts.items() if k.startswith(prefix)]
    found.sort(key=lambda r: (-r.decisions, r.code))
    return found[:TOP_REASONS]


def build_report(raw: ShadowCounts) -> ShadowReport:
    """The public report from the stored counts (field names: ``ShadowService.record``)."""
    c = raw.counts
    transitions: dict[str, dict[str, int]] = {}
    for key, n in c.items():
        if key.startswith("t:"):
            live, _, shadow = key[2:].partition(">")
            transitions.setdefault(live, {})[shadow] = n
    return ShadowReport(
        version=raw.version, installed_at=ms_to_utc(raw.installed_at),
        sample_rate=raw.sample_rate, evaluated=c.get("total", 0), changed=c.get("changed", 0),
        decision_changed=c.get("decision", 0), channel_changed=c.get("channel", 0),
        instant_changed=c.get("instant", 0), errors=c.get("errors", 0),
        transitions=transitions, reasons_added=_top(c, "r+:"),
        reasons_removed=_top(c, "r-:"),
        samples=[_sample_decoder.decode(s) for s in raw.samples])
