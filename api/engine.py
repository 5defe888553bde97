"""The decision service: validation, the two Redis round trips, rendering, fallback.

HTTP-free so it can be driven directly by tests and benchmarks; api/app.py is a thin
litestar shell around it.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import msgspec
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.admission import AdmissionGate
from api.clock import Clock
from api.decision_log import DecisionLog
from api.errors import ConflictError, InvalidRequestError, NotFoundError
from api.ids import IdKey, load_or_create_secret
from api.locale import (
    Location,
    is_valid_zone,
    normalize_country,
    normalize_region,
    parse_phone,
    resolve_location,
)
from api.localtime import ms_to_utc, utc_to_ms
from api.metrics import Metrics
from api.model_pointer import TenantModels
from api.pacing import Pacer
from api.plan import (
    Context,
    Plan,
    PreReason,
    RecordOwner,
    build_plan,
    decode_member,
    encode_context,
    encode_context_v2,
    encode_context_v4,
    encode_context_v6,
    fingerprint,
    member_prefix,
    pre_checks,
)
from api.policy import Policy
from api.policy_cache import PolicyCache
from api.profiles import apply_profile_events, decode_profile
from api.reasons import ReasonCode
from api.render import (
    Outcome,
    UnreadableRecordError,
    decision_status,
    decode_outcome,
    readable_answer,
    render,
    render_record,
    timeline_entry,
)
from api.schemas import (
    CancelResponse,
    DecisionRequest,
    DecisionResponse,
    DecisionStatus,
    Event,
    EventsAccepted,
    Preferences,
    Timeline,
)
from api.scoring import (
    FLOOR_RULE,
    ActiveModel,
    Choice,
    ModelRefusedError,
    ModelRegistry,
    choose,
    score_without_profile,
)
from api.settings import Settings
from api.shadow import ShadowService
from api.statecache import StateCache
from api.store import Store
from api.userstate import MAX_MERGE_HOPS, CommitCheck, UserState, decode_preferences

log = structlog.get_logger("sendwise.decisions")

#: Redis failures that trigger the documented fallback instead of an error
STORE_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, OSError)
_MAX_STALE_RETRIES = 3


def check_instant(value: dt.datetime | None, field: str) -> None:
    """An instant the service can compute with: it has an offset, and it is still a valid
    datetime in UTC (``9999-12-31T23:59:59-23:59`` is year 10000 there, which Python's
    datetime cannot hold: refused here instead of overflowing while rendering)."""
    if value is None:
        return
    if value.tzinfo is None:
        raise InvalidRequestError("must be an RFC 3339 instant with an offset (e.g. Z)", field=field,
                                  code="invalid_field")
    try:
        value.astimezone(dt.UTC)
    except OverflowError as exc:
        raise InvalidRequestError("instant is out of range (it must fall in years 1-9999 in UTC)",
                                  field=field, code="invalid_field") from exc


def check_location_fields(timezone: str | None, phone: str | None, country: str | None,
                          region: str | None) -> None:
    """The location fields a request or a preference document may carry, checked the same
    way everywhere: a 4xx naming the field, before anything is stored."""
    if timezone is not None and not is_valid_zone(timezone):
        raise InvalidRequestError(f"unknown IANA time zone {timezone!r} (use a name such as "
                                  "'America/New_York')", field="timezone",
                                  code="invalid_timezone")
    if phone is not None:
        try:
            parse_phone(phone)
        except ValueError as exc:
            raise InvalidRequestError(str(exc), field="phone", code="invalid_phone") from exc
    try:
        normalize_country(country)
    except ValueError as exc:
        raise InvalidRequestError(str(exc), field="country", code="invalid_field") from exc
    try:
        normalize_region(country, region)
    except ValueError as exc:
        raise InvalidRequestError(str(exc), field="region", code="invalid_field") from exc


class Engine:
    def __init__(self, store: Store, settings: Settings, clock: Clock,
                 metrics: Metrics | None = None, ids: IdKey | None = None,
                 models: ModelRegistry | None = None) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        #: seals decision ids; without SENDWISE_ID_KEY, the data dir's persistent secret
        self.ids = ids if ids is not None else IdKey(
            settings.id_key or load_or_create_secret(settings.data_dir), settings.id_keys_previous)
        self.policies = PolicyCache(store)
        #: the tenant's shadow policy, evaluated beside the live one (api/shadow.py)
        self.shadow = ShadowService(store, self.policies)
        self.metrics = metrics or Metrics()
        #: decisions and events for training (``sendwise export``)
        self.log = DecisionLog(store, max_len=settings.decision_log_max_len,
                               retention_days=settings.decision_log_retention_days,
                               enabled=settings.decision_log,
                               on_failure=self.metrics.log_failures.inc)
        #: the model scoring decisions (the heuristic until one is loaded and vetted)
        self.models = models if models is not None else ModelRegistry()
        #: tenant-wide channel send rates (policy ``pacing``)
        self.pacing = Pacer(store, self.ids)
        if models is None and settings.model_dir:
            try:
                self.models.load(settings.model_dir)
            except ModelRefusedError as exc:  # degrade, don't fail: the heuristic serves
                self.metrics.model_refused.inc()
                log.error("model_refused", directory=settings.model_dir, error=str(exc))
        self.metrics.set_model(self.models.active.version)
        #: recently read recipient state: one round trip for a recipient decided again soon
        self.state_cache = StateCache(settings.state_cache_seconds, settings.state_cache_size)
        #: decisions in progress at once (``Settings.decision_concurrency``; None: no limit),
        #: with a queue of four times as many before requests go straight in
        self.admission = (AdmissionGate(settings.decision_concurrency,
                                        4 * settings.decision_concurrency)
                          if settings.decision_concurrency else None)
        #: the pointed models (per tenant, global) every worker follows; ``models`` above
        #: is the startup default they fall back to
        self.tenant_models = TenantModels(store, self.models, self.metrics,
                                          refresh_seconds=settings.model_refresh_seconds,
                                          capacity=settings.model_cache_size)

    # ------------------------------------------------------------- validation

    @staticmethod
    def check_category(request: DecisionRequest, policy: Policy) -> None:
        """Categories are the tenant's: judged only against its current policy."""
        if request.category not in policy.categories:
            raise InvalidRequestError(
                f"unknown category {request.category!r}; the policy defines "
                f"{', '.join(policy.categories)}", field="category", code="invalid_field")

    def validate(self, request: DecisionRequest, now: int) -> None:
        """Semantic checks msgspec cannot express; raise before anything touches Redis."""
        if len(set(request.channels)) != len(request.channels):
            raise InvalidRequestError("channels must not repeat", field="channels", code="invalid_field")
        check_instant(request.not_before, "not_before")
        check_instant(request.deadline, "deadline")
        if request.deadline is not None:
            if utc_to_ms(request.deadline) < now:
                raise InvalidRequestError("deadline is in the past", field="deadline",
                                     code="deadline_in_past")
            if request.not_before is not None and request.not_before > request.deadline:
                raise InvalidRequestError("not_before is after deadline", field="not_before",
                                     code="invalid_field")
        check_location_fields(request.timezone, request.phone, request.country, request.region)

    @staticmethod
    def locate(request: DecisionRequest | None, prefs: Preferences | None,
               policy: Policy) -> Location:
        """Request > stored preferences > phone > tenant default. Request values were
        validated already and invalid stored values are skipped; the one request check left
        is a bare ``region`` against the country it resolves to (a 4xx naming the field)."""
        try:
            return Engine._resolve(request, prefs, policy)
        except ValueError as exc:
            field, _, _ = str(exc).partition(":")
            raise InvalidRequestError(str(exc), field=field, code="invalid_field") from exc

    @staticmethod
    def _resolve(request: DecisionRequest | None, prefs: Preferences | None,
                 policy: Policy) -> Location:
        return resolve_location(
            request_zone=request.timezone if request else None,
            request_country=request.country if request else None,
            request_region=request.region if request else None,
            request_phone=request.phone if request else None,
            pref_zone=prefs.timezone if prefs else None,
            pref_country=prefs.country if prefs else None,
            pref_region=prefs.region if prefs else None,
            pref_phone=prefs.phone if prefs else None,
            default_zone=policy.default_timezone, default_country=policy.default_country)

    # --------------------------------------------------------------- decisions

    async def decide(self, tenant: str, request: DecisionRequest) -> DecisionResponse:
        gate = self.admission
        if gate is None:
            with self.metrics.decision_seconds.time():
                return await self._decide_observed(tenant, request)
        # at most ``decision_concurrency`` decisions in progress, the others wait their turn
        # in arrival order (api/admission.py); the time waited counts as decision time
        with self.metrics.decision_seconds.time():
            entry = await gate.enter()
            self.metrics.admissions[entry].inc()
            try:
                return await self._decide_observed(tenant, request)
            finally:
                gate.leave(entry)

    async def _decide_observed(self, tenant: str, request: DecisionRequest) -> DecisionResponse:
        now = self.clock.now_ms()
        self.validate(request, now)
        try:
            policy = await self.policies.get(tenant)
            self.metrics.policy_version.labels(tenant).set(policy.version)
            self.check_category(request, policy)
            response = await self._decide(tenant, request, policy, now)
        except STORE_DOWN as exc:
            self.metrics.fallbacks.inc()
            self.metrics.redis_errors.labels("decision").inc()
            log.warning("store_unavailable", error=type(exc).__name__, tenant=tenant)
            response = self.fallback(tenant, request, self.policies.peek(tenant), now)
        self.metrics.decisions.labels(response.decision, response.channel or "none").inc()
        for code in {reason.code for reason in response.reasons}:
            self.metrics.decision_reasons.labels(response.decision, code).inc()
        if self.settings.log_decisions:
            # never the raw user id (often an email address) or phone: a keyed pseudonym
            log.info("decision", tenant=tenant, decision_id=response.decision_id,
                     message_id=response.message_id, user=self.ids.pseudonym(request.user_id),
                     decision=response.decision,
                     channel=response.channel,
                     send_at=None if response.send_at is None else response.send_at.isoformat(),
                     reasons=[r.code for r in response.reasons],
                     policy_version=response.policy_version, replayed=response.replayed,
                     dry_run=response.dry_run)
        return response

    async def _decide(self, tenant: str, request: DecisionRequest, policy: Policy,
                      now: int) -> DecisionResponse:
        fp = fingerprint(request)
        did = self.ids.decision_id(tenant, request.user_id, request.message_id)
        user = request.user_id
        cache = self.state_cache
        #: the first attempt may plan from this worker's cached state (api/statecache.py);
        #: the commit re-checks it, and a mismatch falls back to a read, not counted below
        look = cache.enabled
        reads = 0
        while True:
            state = cache.get(tenant, user, request.campaign_id) if look else None
            cached = state is not None
            if look:
                (self.metrics.state_cache_hits if cached else self.metrics.state_cache_misses).inc()
                look = False
            if state is None:
                if reads == _MAX_STALE_RETRIES:
                    break
                reads += 1
                read_at = cache.now()
                with self.metrics.redis_read.time():  # one observation, merge hops included
                    state = await self.store.read_user(tenant, user, request.message_id,
                                                       request.campaign_id, now=now)
                    for _hop in range(MAX_MERGE_HOPS):  # a merged id: decide for the new id
                        if state.moved_into is None:
                            break
                        user = state.moved_into
                        state = await self.store.read_user(tenant, user, request.message_id,
                                                           request.campaign_id, now=now)
                if user == request.user_id:
                    cache.put(tenant, user, request.campaign_id, state, read_at)
            owner = RecordOwner(tenant, user, request.message_id, self.ids)
            if state.record is not None:
                return self._replay(state.record, owner, fp, request.dry_run)
            try:
                location, pre, choice = await self.prepare(tenant, user, request, policy,
                                                           state, now)
            except InvalidRequestError:
                if not cached:
                    raise
                # the stored location it judged by may have changed: judge a fresh read
                self.metrics.state_cache_stale.inc()
                cache.drop(tenant, user)
                continue
            ctx = Context(did=did, mid=request.message_id, uid=request.user_id,
                          pv=policy.version_label, zone=location.zones[0], now=now, fp=fp,
                          dry=request.dry_run, pre=pre, mv=choice.version, fs=choice.source,
                          s=choice.suppressed)
            # before the live commit, which would add its own reservation to what it sees
            shadow = (await self.shadow.evaluate(self, tenant, user, request, state, did, fp,
                                                 now)
                      if self.shadow.active(tenant, request) else None)
            with self.metrics.redis_commit.time():  # paced channels: docs/pacing.md
                reply = await self.pacing.commit(tenant, user, request.message_id, policy,
                                                 choice.plan, choice.annotations,
                                                 self.encode_context(ctx, user),
                                                 # a state read just now: rev suffices, as
                                                 # before (every write to it bumps rev)
                                                 CommitCheck.of(state, request.campaign_id)
                                                 if cached else None,
                                                 record_format=self.settings.record_format)
            if reply.status == "stale":
                if cached:
                    self.metrics.state_cache_stale.inc()
                    cache.drop(tenant, user)
                continue
            if reply.status == "contended":  # pacing's rounds ran out: the state was right
                continue
            if reply.status == "new" and user == request.user_id:
                cache.confirm(tenant, user, request.campaign_id, state.converted_at)
            if reply.status == "dup":
                return self._replay(reply.payload, owner, fp, request.dry_run)
            if reply.status == "dup_ledger":
                return self._replay_from_ledger(ctx, reply.payload, reply.score or now)
            response = render(ctx, decode_outcome(reply.payload, owner, ctx.now))
            if shadow is not None:
                await self.shadow.record(self, tenant, shadow, response)
            await self.log.decision(tenant, request, response, now)
            for record, member in reply.displaced:  # preempted by this one: logged too
                entry = decode_member(member)
                try:
                    old_ctx, old_answer = render_record(
                        record, RecordOwner(tenant, user, str(entry[0]), self.ids))
                except UnreadableRecordError as exc:  # this decision stands; its log entry
                    log.warning("record_unreadable", message_id=exc.message_id,
                                displaced_by=request.message_id, error=str(exc.__cause__))
                    continue
                await self.log.displaced(tenant, old_ctx.uid, old_answer,
                                         category=entry[2], campaign=entry[3], now=now)
            return response
        raise ConflictError("the recipient's preferences or reservations kept changing during "
                            "the decision; retry", code="concurrent_update")

    async def prepare(self, tenant: str, user: str, request: DecisionRequest, policy: Policy,
                      state: UserState, now: int, *,
                      observe: bool = True) -> tuple[Location, list[PreReason], Choice]:
        """Steps 4-6 of a decision (docs/architecture.md): locate, pre-checks, plan, score.
        The one place that turns (request, policy, state) into ranked candidates, so the live
        decision and its shadow (api/shadow.py) differ by nothing but the policy. ``user`` is
        the id decided for (a merged id's current one); ``observe`` False keeps a shadow
        evaluation out of the scoring metric."""
        location = self.locate(request, state.preferences, policy)
        permitted, pre, suppressed = pre_checks(request, policy, state, now,
                                                tenant=tenant, user_id=user)
        plan = build_plan(request, policy, state, location, now=now,
                          idempotency_ttl_ms=self.settings.idempotency_ttl_seconds * 1000,
                          candidate_channels=permitted, pre_suppressed=suppressed,
                          tenant=tenant)
        model = await self.tenant_models.model_for(tenant)
        choice = self._choose(model, request, policy, state, plan, location.zones[0], now,
                              observe=observe)
        if choice.suppressed is not None:  # the value floor: a pre-commit suppression
            pre = [*pre, PreReason(ReasonCode.LOW_EXPECTED_VALUE, FLOOR_RULE)]
        return location, pre, choice

    def _choose(self, model: ActiveModel, request: DecisionRequest, policy: Policy,
                state: UserState, plan: Plan, zone: str, now: int, *,
                observe: bool = True) -> Choice:
        """Score and rank the plan's candidates (api/scoring.py). A scoring failure never
        fails the decision: the plan goes unscored, its earliest allowed instant wins."""
        try:
            if not observe:
                return self._score(model, request, policy, state, plan, zone, now)
            with self.metrics.model_seconds.time():
                return self._score(model, request, policy, state, plan, zone, now)
        except Exception as exc:  # degrade, do not fail
            log.error("scoring_failed", error=f"{type(exc).__name__}: {exc}")
            return Choice(plan, [], None, None)

    @staticmethod
    def _score(model: ActiveModel, request: DecisionRequest, policy: Policy, state: UserState,
               plan: Plan, zone: str, now: int) -> Choice:
        return choose(model, plan, decode_profile(state.profile), zone_name=zone,
                      category=request.category, message_id=request.message_id,
                      exempt=request.category in policy.exempt_categories, policy=policy,
                      now=now, selection=request.channel_selection)

    async def record_events(self, tenant: str, events: list[Event]) -> EventsAccepted:
        """Opt-outs and conversions (decision state), then the send-time profiles."""
        opt_outs, conversions = await self.store.apply_events(tenant, events)
        policy = await self.policies.get(tenant)

        def zone_of(fields: dict[bytes, bytes]) -> str:
            try:
                prefs = decode_preferences(fields.get(b"doc"))
                return self.locate(None, prefs, policy).zones[0]
            except (InvalidRequestError, ValueError):
                return policy.default_timezone

        zones: dict[str, str] = {}
        updates = await apply_profile_events(self.store, tenant, events, zone_of, zones)
        for event in events:  # opt-outs, conversions, the profile: the next decision reads
            self.state_cache.drop(tenant, event.user_id)
        await self.log.events(tenant, events, zones, self.clock.now_ms())
        return EventsAccepted(accepted=len(events), opt_outs=opt_outs,
                              conversions=conversions, profile_updates=updates)

    def encode_context(self, ctx: Context, user: str) -> bytes:
        """The record's context line in the configured format (``SENDWISE_RECORD_FORMAT``);
        ``user``: the user whose records hash the commit writes (api/plan.py)."""
        if self.settings.record_format == 2:
            return encode_context_v2(ctx)
        if self.settings.record_format == 3:
            return encode_context(ctx, user=user, tag=self.ids.tag)
        if self.settings.record_format == 6:
            return encode_context_v6(ctx, user=user, tag=self.ids.tag)
        return encode_context_v4(ctx, user=user, tag=self.ids.tag,
                                 rules=self.settings.record_format >= 5)

    def _replay(self, record: bytes, owner: RecordOwner, fp: str,
                dry_run: bool) -> DecisionResponse:
        ctx, response = render_record(record, owner)
        if ctx.fp != fp:
            raise ConflictError("message_id was already decided for a different message "
                           "(idempotency key reuse)", field="message_id",
                           code="idempotency_conflict")
        return msgspec.structs.replace(response, dry_run=dry_run) if dry_run else response

    def _replay_from_ledger(self, ctx: Context, member: bytes, score: int) -> DecisionResponse:
        """The record expired but the reservation is still in the ledger: the message was
        counted already, so answer with that reservation instead of counting it twice."""
        entry = decode_member(member)
        outcome = Outcome("send" if score <= ctx.now else "defer", entry[1], score, [])
        return render(ctx, outcome, replayed=True)

    def fallback(self, tenant: str, request: DecisionRequest, policy: Policy,
                 now: int) -> DecisionResponse:
        """Invariant 7 (docs/architecture.md): Redis down is no 5xx. Exempt (transactional)
        messages send now on the first requested channel; the rest defer by the configured
        delay. Nothing is reserved, so the platform should ask again at send time."""
        zone = self.locate(request, None, policy).zones[0]
        exempt = request.category in policy.exempt_categories
        at = now if exempt else now + self.settings.fallback_defer_seconds * 1000
        model = self.tenant_models.peek(tenant)
        try:  # the tenant prior's score: the profile is in the Redis that is down
            score, score_now = score_without_profile(
                model, request.channels[0], [at, now], zone_name=zone,
                category=request.category, now=now)
            note: tuple[float, float, float] | None = (score, score_now, 1.0)
        except Exception as exc:  # degrade, do not fail
            log.error("scoring_failed", error=f"{type(exc).__name__}: {exc}")
            note = None
        ctx = Context(did=self.ids.decision_id(tenant, request.user_id, request.message_id),
                      mid=request.message_id, uid=request.user_id, pv=policy.version_label,
                      zone=zone, now=now, fp="", dry=request.dry_run, pre=[],
                      mv=model.version if note else None, fs="prior" if note else None)
        outcome = Outcome("send" if exempt else "defer", request.channels[0], at,
                          [(ReasonCode.POLICY_STORE_UNAVAILABLE, "fallback", None, None)], note)
        return render(ctx, outcome)

    async def probe(self, tenant: str, request: DecisionRequest) -> DecisionResponse:
        """What a decision would answer now, without reserving, counting it in the metrics
        or writing the decision log: the timeline page's "if a message were asked now"
        (``request`` must be a dry run). The same code path as a real decision, so the page
        can never disagree with the service."""
        if not request.dry_run:
            raise ValueError("a probe is a dry run")
        now = self.clock.now_ms()
        self.validate(request, now)
        policy = await self.policies.get(tenant)
        self.check_category(request, policy)
        return await self._decide(tenant, request, policy, now)

    # ------------------------------------------------------------------ cancel

    async def cancel(self, tenant: str, decision: str) -> CancelResponse:
        try:
            user_id, message_id = self.ids.parse_decision_id(tenant, decision)
        except ValueError as exc:
            raise NotFoundError("no such decision", field="decision_id") from exc
        now = self.clock.now_ms()
        reply = await self.store.cancel(tenant, user_id, message_id, member_prefix(message_id),
                                        now)
        for _hop in range(MAX_MERGE_HOPS):  # the user was merged: its decisions moved too
            if reply.status != "missing":
                break
            moved = await self.store.moved_into(tenant, user_id)
            if moved is None:
                break
            user_id = moved
            reply = await self.store.cancel(tenant, user_id, message_id,
                                            member_prefix(message_id), now)
        if reply.status == "missing":
            raise NotFoundError("no such decision (or it has expired)", field="decision_id")
        cancelled_at = ms_to_utc(now)
        try:
            if reply.status == "cancelled" and reply.record is not None:
                await self.pacing.release_cancelled(tenant, user_id, message_id, reply.record,
                                                    await self.policies.get(tenant), now)
            if reply.status == "already" and reply.record is not None:
                owner = RecordOwner(tenant, user_id, message_id, self.ids)
                cancelled_at = render_record(reply.record, owner)[1].cancelled_at or cancelled_at
        except UnreadableRecordError as exc:
            # the reservation is what a cancel is for, and cancel.lua released it without
            # reading the record; what is lost: a paced channel's token stays taken (a
            # conservative error) and an earlier cancel's instant (this one's is answered)
            log.warning("record_unreadable", message_id=message_id, during="cancel",
                        error=str(exc.__cause__))
        return CancelResponse(decision_id=decision, message_id=message_id,
                              released=reply.removed > 0, cancelled_at=cancelled_at)

    async def status(self, tenant: str, decision: str) -> DecisionStatus:
        """``GET /v1/decisions/{id}``: the decision as it stands now (a cancel or a
        preemption changes it after the answer), following merged users like cancel."""
        try:
            user_id, message_id = self.ids.parse_decision_id(tenant, decision)
        except ValueError as exc:
            raise NotFoundError("no such decision", field="decision_id") from exc
        now = self.clock.now_ms()
        for _hop in range(MAX_MERGE_HOPS + 1):
            record = (await self.store.records(tenant, user_id, [message_id], now))[0]
            if record is not None:
                try:
                    return decision_status(record, RecordOwner(tenant, user_id, message_id,
                                                               self.ids))
                except UnreadableRecordError as exc:
                    raise UnreadableRecordError(message_id, field="decision_id") from exc
            moved = await self.store.moved_into(tenant, user_id)
            if moved is None:
                break
            user_id = moved
        raise NotFoundError("no such decision (or it has expired)", field="decision_id")

    # ---------------------------------------------------------------- timeline

    async def timeline(self, tenant: str, user_id: str) -> Timeline:
        now = self.clock.now_ms()
        policy = await self.policies.get(tenant)
        stored = await self.store.get_preferences(tenant, user_id)
        zone = ZoneInfo(self.locate(None, stored.preferences, policy).zones[0])
        ledger = await self.store.ledger(tenant, user_id)
        mids = [decode_member(member)[0] for member, _ in ledger]
        records = await self.store.records(tenant, user_id, mids, now)
        entries = [
            timeline_entry(member, int(score), zone, now,
                           self.ids.decision_id(tenant, user_id, mid),
                           None if record is None else
                           readable_answer(record, RecordOwner(tenant, user_id, mid, self.ids)))
            for (member, score), mid, record in zip(ledger, mids, records, strict=True)]
        return Timeline(user_id=user_id, timezone=zone.key, entries=entries)
