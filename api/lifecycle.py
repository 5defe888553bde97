"""User data lifecycle: identity merge, erasure and export (admin endpoints).

**Merge** (``POST /v1/users/{user_id}/merge``, body ``{"into_user_id": T}``): the two ids are
one person, so from then on caps, consent and conflicts apply to the person. The source's
keys and the target's keys hash to different cluster slots, so no one script can touch
both; the merge is three single-slot steps, each safe to repeat:

1. *mark* (``merge_mark.lua`` on the source): the tombstone ``moved_into = T`` and a
   revision bump. From here on a decision for the source is decided against the target
   (a decision that read the source before the mark fails its commit's revision check and
   re-reads), a cancel of the source's decision ids and events for the source follow the
   tombstone, and a preference ``PUT`` for the source answers 409 ``user_merged``. Then a
   snapshot (``user_dump.lua``) of everything the source holds; nothing can be added to it
   after the mark.
2. *apply* (``merge_apply.lua`` on the target), atomic and idempotent: ledger members are a
   set (``ZADD NX``, each keeps its instant), idempotency records ``SET NX`` with their
   remaining TTL (so a retried ``message_id`` of the source replays its original answer),
   event opt-outs keep the earliest instant, conversions the latest, and the preference
   document becomes ``merge_preferences(target, source)`` checked against the target's
   revision (a concurrent change makes it recompute).
3. *clear* (``merge_clear.lua`` on the source): drop what was copied; only the tombstone
   and the (bumped, never reset) revision stay. Ids merged into the source earlier are
   first re-pointed at the target, so every tombstone names the person's current id.

A crash or timeout anywhere leaves a state the same call completes: the mark is kept for
the same target (or for an id that has since been merged into it), the apply is
idempotent, the clear only runs on a marked source. When the apply is refused (the target
was itself merged meanwhile, or the joint document would exceed a list limit) a mark this
call made is removed again and nothing else was written. The tombstone stays until the old
id is erased: any later call with the old id keeps reaching the person.

**Conflict rules** of ``merge_preferences``: per channel the most restrictive consent wins
(``opted_out`` > ``opted_in`` > ``unknown``); topic opt-outs, frequency limits and quiet
hours are unions (every limit and every quiet window of either id applies, so the stricter
ones always bind); time zone, phone, country and region are the target's where set, else the
source's. Event opt-outs of both ids are kept (earliest instant); conversions are unioned
(latest instant per campaign, the longest suppression). Reservations keep their instants:
the merged ledger may hold more than a cap for entries committed before the merge; they are
honoured, and every new decision sees the merged ledger. Decisions for the target that run
between steps 1 and 2 do not see the source's entries yet (milliseconds, or until a retry
after a crash). A message id used under both ids keeps the target's record.

**Erase** (``DELETE /v1/users/{user_id}``) removes every key carrying the user's hash tag
(found by SCAN on the node owning its slot: records may outlive ledger entries), and
first, the same way, every id merged into it. Resumable: a repeated call removes what is
left. A decision racing the erasure may write new state afterwards; stop sending first.

**Export** (``GET /v1/users/{user_id}/export``): one atomic snapshot, decoded.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import structlog
from litestar import Request, Router, delete, get, post
from litestar.datastructures import State
from litestar.params import FromPath
from litestar.status_codes import HTTP_200_OK

from api.app import tenant_of
from api.body import BodyDecoder
from api.engine import Engine
from api.errors import ConflictError, InvalidRequestError
from api.ids import IdKey
from api.keys import log_bucket, log_key, user_keys
from api.localtime import ms_to_utc
from api.openapi import AUTHENTICATED, errors
from api.plan import RecordOwner, decode_member
from api.profiles import export_profile, merge_profiles
from api.render import UnreadableRecordError, adopt_record, readable_answer, timeline_entry
from api.schemas import (
    CHANNELS,
    ChannelPreference,
    DecisionResponse,
    ErasedCounts,
    EraseResponse,
    MergeMoved,
    MergeRequest,
    MergeResponse,
    Preferences,
    UserExport,
)
from api.store import Store
from api.userstate import MAX_MERGE_HOPS, decode_preferences, encode_preferences

#: attempts at step 2 while the target's preferences keep changing underneath
MERGE_APPLY_ATTEMPTS = 5

_CONSENT_RANK = {"unknown": 0, "opted_in": 1, "opted_out": 2}
_json = msgspec.json.Encoder()

log = structlog.get_logger("sendwise.lifecycle")


def _union(first: list[Any], second: list[Any]) -> list[Any]:
    """``first`` in order, then what ``second`` adds: idempotent (a union with the same
    list again changes nothing), which the merge's retry safety relies on."""
    out = list(first)
    for item in second:
        if item not in out:
            out.append(item)
    return out


def merge_preferences(target: Preferences, source: Preferences) -> Preferences:
    """The person's document after a merge: the most restrictive of both (module doc).
    A join: merge(merge(t, s), s) == merge(t, s)."""
    channels: dict[Any, ChannelPreference] = {}
    for channel in CHANNELS:
        mine = target.channels.get(channel)  # type: ignore[call-overload]
        theirs = source.channels.get(channel)  # type: ignore[call-overload]
        picked = max((p for p in (mine, theirs) if p is not None),
                     key=lambda p: _CONSENT_RANK[p.consent], default=None)
        if picked is not None:
            channels[channel] = picked
    # country and region are one fact (a region belongs to its country): taken as a pair
    place_from_source = target.country is None and target.region is None
    return msgspec.structs.replace(
        target,
        timezone=target.timezone or source.timezone,
        phone=target.phone or source.phone,
        country=source.country if place_from_source else target.country,
        region=source.region if place_from_source else target.region,
        channels=channels,
        frequency_limits=_union(target.frequency_limits, source.frequency_limits),
        quiet_hours=_union(target.quiet_hours, source.quiet_hours),
        topic_opt_outs=_union(target.topic_opt_outs, source.topic_opt_outs),
    )


def check_document(prefs: Preferences) -> None:
    """The merged document must still be a valid document (list limits): the same
    constraints ``Preferences`` declares, so there is one definition of them."""
    try:
        msgspec.convert(msgspec.to_builtins(prefs), Preferences)
    except msgspec.ValidationError as exc:
        raise ConflictError(f"the merged preferences would be invalid: {exc}",
                            field="preferences", code="merge_limit_exceeded") from exc


class UserDump(msgspec.Struct, frozen=True, kw_only=True):
    """user_dump.lua's snapshot, decoded."""

    prefs: dict[bytes, bytes]
    conversions: dict[str, int]
    conversions_pttl: int
    ledger: list[tuple[bytes, int]]
    ledger_pttl: int
    #: message id -> (record, remaining ms; -1 without TTL)
    records: dict[str, tuple[bytes, int]]
    #: the record keys of a previous release among them (api/keys.py), for step 3
    legacy_record_keys: list[str] = []

    @property
    def preferences(self) -> Preferences:
        return decode_preferences(self.prefs.get(b"doc"))

    @property
    def event_opt_outs(self) -> dict[str, int]:
        return {k[len(b"optout:"):].decode(): int(v) for k, v in self.prefs.items()
                if k.startswith(b"optout:")}

    @property
    def merged_from(self) -> dict[str, int]:
        return {k[len(b"merged_from:"):].decode(): int(v) for k, v in self.prefs.items()
                if k.startswith(b"merged_from:")}

    @property
    def merged_into(self) -> str | None:
        raw = self.prefs.get(b"moved_into")
        return None if raw is None else raw.decode()


def _pairs(flat: list[Any]) -> list[tuple[Any, Any]]:
    return list(zip(flat[::2], flat[1::2], strict=True))


async def snapshot(store: Store, tenant: str, user_id: str, now: int) -> UserDump:
    """The user's data as it stands at ``now`` (records expired by then are left out): the
    records hash, and the per-message record keys a previous release wrote (the hash wins
    for a message found in both)."""
    keys = user_keys(tenant, user_id)
    names = await store.scan_user(tenant, user_id)
    record_keys = [k for k in names if keys.message_id_of(k) is not None]
    prefs, conv, conv_pttl, ledger, ledger_pttl, records, hashed = await store.dump_user(
        tenant, user_id, record_keys, now)
    found: dict[str, tuple[bytes, int]] = {}
    for key, (value, pttl) in zip(record_keys, _pairs(records), strict=True):
        mid = keys.message_id_of(key)
        if isinstance(value, bytes) and mid is not None and int(pttl) != -2:
            found[mid] = (value, int(pttl))
    for i in range(0, len(hashed), 3):
        found[hashed[i].decode()] = (hashed[i + 1], int(hashed[i + 2]))
    return UserDump(
        prefs=dict(_pairs(prefs)),
        conversions={k.decode(): int(v) for k, v in _pairs(conv)},
        conversions_pttl=int(conv_pttl),
        ledger=[(member, int(float(score))) for member, score in _pairs(ledger)],
        ledger_pttl=int(ledger_pttl),
        records=found,
        legacy_record_keys=record_keys,
    )


async def resolve(store: Store, tenant: str, user_id: str) -> str:
    """The id a user's data lives under now, following merge tombstones."""
    for _ in range(MAX_MERGE_HOPS):
        moved = await store.moved_into(tenant, user_id)
        if moved is None:
            return user_id
        user_id = moved
    return user_id


def _apply_args(dump: UserDump, source: str, expected_rev: str, doc: bytes,
                now: int) -> tuple[list[bytes | str | int], list[str]]:
    """merge_apply.lua's arguments (layout documented there) and the records' message ids."""
    opt_outs = dump.event_opt_outs
    args: list[bytes | str | int] = [
        expected_rev, doc, source, now, dump.ledger_pttl, dump.conversions_pttl,
        len(opt_outs), len(dump.conversions), len(dump.ledger)]
    for channel, at in opt_outs.items():
        args += [channel, at]
    for campaign, at in dump.conversions.items():
        args += [campaign, at]
    for member, score in dump.ledger:
        args += [member, score]
    merged_from = list(dump.merged_from)
    args += [len(merged_from), *merged_from]
    mids = list(dump.records)
    for mid in mids:
        value, pttl = dump.records[mid]
        # copied verbatim into the target's hash: a compact record names its user now; an
        # unreadable one moves as it is (it stays unreadable, and keeps its message from
        # being decided again, under its new owner)
        try:
            value = adopt_record(value, source)
        except UnreadableRecordError:
            log.warning("record_unreadable", message_id=mid, during="merge")
        args += [mid, value, pttl]
    return args, mids


async def merge(store: Store, tenant: str, source: str, target: str, now: int) -> MergeMoved:
    """Steps 1-3 of the module doc. Returns what step 2 copied."""
    if source == target:
        raise InvalidRequestError("a user cannot be merged into itself", field="into_user_id")
    into = await resolve(store, tenant, target)
    if into == source:
        raise ConflictError(f"{target!r} was merged into {source!r} already",
                            field="into_user_id", code="merge_cycle")
    # refuse an impossible document before anything is written
    source_doc = decode_preferences((await store.preference_fields(tenant, source)).get(b"doc"))
    target_doc = decode_preferences((await store.preference_fields(tenant, into)).get(b"doc"))
    check_document(merge_preferences(target_doc, source_doc))

    marked = into
    created, elsewhere = await store.mark_merge(tenant, source, into)
    if elsewhere is not None:
        if await resolve(store, tenant, elsewhere) != into:
            raise ConflictError(f"{source!r} was merged into {elsewhere!r} already",
                                field="user_id", code="already_merged")
        # an unfinished merge into an id that has since moved on to ``into``: finish it
        marked = elsewhere
    dump = await snapshot(store, tenant, source, now)
    moved = await _apply(store, tenant, dump, source, into, now, marked=marked,
                         undo_mark=created)
    await merge_profiles(store, tenant, source, into)
    for earlier in dump.merged_from:  # ids merged into the source point at the person now
        await store.repoint_merged(tenant, earlier, source, into)
    await clear(store, tenant, source, marked, dump)
    return moved


async def _apply(store: Store, tenant: str, dump: UserDump, source: str, into: str,
                 now: int, *, marked: str | None = None, undo_mark: bool = True) -> MergeMoved:
    """Step 2, recomputing the document while the target's revision moves. A refusal
    undoes step 1 when this call made it (``undo_mark``; the tombstone names ``marked``):
    nothing else was written then. A mark left by an earlier, interrupted call stays, since
    that call's apply may have succeeded: the retry completes it."""
    marked = marked or into

    async def refuse(error: ConflictError) -> ConflictError:
        if undo_mark:
            await store.mark_merge(tenant, source, marked, undo=True)
        return error

    for _ in range(MERGE_APPLY_ATTEMPTS):
        fields = await store.preference_fields(tenant, into)
        current = decode_preferences(fields.get(b"doc"))
        merged = merge_preferences(current, dump.preferences)
        try:
            check_document(merged)
        except ConflictError as exc:
            raise await refuse(exc) from None
        doc = (b"" if merged == current
               else encode_preferences(merged, document_format=store.preferences_format))
        args, mids = _apply_args(dump, source, fields.get(b"rev", b"0").decode(), doc, now)
        reply = await store.apply_merge(tenant, into, args, mids)
        if reply[0] == b"ok":
            return MergeMoved(ledger_entries=int(reply[1]), decisions=int(reply[2]),
                              conversions=len(dump.conversions),
                              event_opt_outs=len(dump.event_opt_outs))
        if reply[0] == b"moved":
            raise await refuse(ConflictError(
                f"{into!r} was itself merged into {reply[1].decode()!r}; retry",
                field="into_user_id", code="merge_target_moved"))
    raise await refuse(ConflictError(
        "the target's preferences kept changing during the merge; retry",
        code="concurrent_update"))


async def clear(store: Store, tenant: str, source: str, marked: str, dump: UserDump) -> None:
    """Step 3 (only on a source whose tombstone names ``marked``)."""
    await store.clear_merged(tenant, source, marked, dump.legacy_record_keys)


async def erase(store: Store, tenant: str, user_id: str, now: int) -> EraseResponse:
    """Every id merged into this one first (so an interrupted erasure still knows them on a
    retry), then the id itself; and the trace of this id in the id it was merged into."""
    fields = await store.preference_fields(tenant, user_id)
    merged_ids = sorted(k[len(b"merged_from:"):].decode() for k in fields
                        if k.startswith(b"merged_from:"))
    if b"moved_into" in fields:
        await store.forget_merged_from(tenant, fields[b"moved_into"].decode(), user_id)
    totals = [0] * 6
    for uid in [*merged_ids, user_id]:
        keys = user_keys(tenant, uid)
        fixed = {keys.ledger, keys.prefs, keys.conv}
        others = [k for k in await store.scan_user(tenant, uid) if k not in fixed]
        counts = await store.erase_user(tenant, uid, others, now)
        totals = [a + b for a, b in zip(totals, counts, strict=True)]
        # and the id's entries in the decision log (api/decision_log.py)
        await store.erase_log_entries(log_key(tenant, log_bucket(uid)), uid)
    return EraseResponse(user_id=user_id, merged_ids=merged_ids, erased=ErasedCounts(
        ledger_entries=totals[0], event_opt_outs=totals[1], preferences=totals[2],
        conversions=totals[3], decisions=totals[4], keys=totals[5]))


def render_export(dump: UserDump, tenant: str, user_id: str, zone_name: str, now: int,
                  ids: IdKey) -> UserExport:
    """``ids``: the tenant's id key (decision ids are sealed with it, see api/ids.py)."""
    zone = ZoneInfo(zone_name)
    responses: dict[str, DecisionResponse] = {}
    for mid, (record, _) in sorted(dump.records.items()):
        answer = readable_answer(record, RecordOwner(tenant, user_id, mid, ids))
        if answer is not None:
            responses[mid] = answer
    ledger = [timeline_entry(member, score, zone, now,
                             ids.decision_id(tenant, user_id, mid), responses.get(mid))
              for member, score in dump.ledger
              for mid in [decode_member(member)[0]]]
    return UserExport(
        user_id=user_id, exported_at=ms_to_utc(now), merged_into=dump.merged_into,
        merged_from={k: ms_to_utc(v) for k, v in sorted(dump.merged_from.items())},
        preferences=dump.preferences, revision=int(dump.prefs.get(b"rev", b"0")),
        event_opt_outs={k: ms_to_utc(v) for k, v in sorted(dump.event_opt_outs.items())},
        conversions={k: ms_to_utc(v) for k, v in sorted(dump.conversions.items())},
        ledger=ledger, decisions=list(responses.values()))


# ---------------------------------------------------------------------- HTTP


def _engine(request: Request[Any, Any, State]) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def _check_user_id(user_id: str, field: str = "user_id") -> None:
    if not 1 <= len(user_id) <= 128:
        raise InvalidRequestError("user_id must be 1-128 characters", field=field)


_MERGE_BODY = BodyDecoder(MergeRequest)

#: (path, method) -> body type, for the OpenAPI document (as app.REQUEST_BODIES)
LIFECYCLE_BODIES: dict[tuple[str, str], type[Any]] = {
    ("/v1/users/{user_id}/merge", "POST"): MergeRequest,
}


@post("/{user_id:str}/merge", status_code=HTTP_200_OK,
      summary="Merge a user id into another (one person)",
      responses=errors(400, 409, 413, 503, *AUTHENTICATED))
async def merge_user(request: Request[Any, Any, State], user_id: FromPath[str]) -> MergeResponse:
    """``user_id`` and ``into_user_id`` are one person: everything of ``user_id`` moves to
    ``into_user_id``, and later decisions, cancels and events for ``user_id`` follow it
    there. Conflict rules: the most restrictive consent per channel (opted_out > opted_in >
    unknown); topic opt-outs, frequency limits and quiet hours of both apply (unions);
    location fields are the target's where set; event opt-outs of both are kept (earliest
    instant), conversions unioned (latest instant). Existing reservations keep their
    instants and are honoured even where they now exceed a cap together; new decisions
    see the merged ledger. Safe to retry: a repeated or interrupted merge completes.
    409 ``already_merged`` / ``merge_cycle`` / ``merge_limit_exceeded`` change nothing."""
    tenant = tenant_of(request)
    data = await _MERGE_BODY.read(request)
    _check_user_id(user_id)
    engine = _engine(request)
    moved = await merge(engine.store, tenant, user_id, data.into_user_id,
                        engine.clock.now_ms())
    engine.state_cache.drop(tenant, user_id)  # the target's profile absorbed the source's
    engine.state_cache.drop(tenant, data.into_user_id)
    into = await resolve(engine.store, tenant, data.into_user_id)
    return MergeResponse(from_user_id=user_id, into_user_id=into, moved=moved,
                         preferences=await engine.store.get_preferences(tenant, into))


@delete("/{user_id:str}", status_code=HTTP_200_OK, summary="Erase everything about a user",
        responses=errors(400, 503, *AUTHENTICATED))
async def delete_user(request: Request[Any, Any, State], user_id: FromPath[str]) -> EraseResponse:
    """Removes every key of the user (ledger, preferences, event opt-outs, conversions,
    idempotency records) and of every id merged into it, and answers what was removed.
    Safe to repeat: a second call finds nothing and answers zeros."""
    _check_user_id(user_id)
    engine = _engine(request)
    erased = await erase(engine.store, tenant_of(request), user_id,
                         engine.clock.now_ms())
    # this worker forgets every cached profile at once (ids merged into the user went too);
    # other workers' entries age out within SENDWISE_STATE_CACHE_SECONDS
    engine.state_cache.clear()
    return erased


@get("/{user_id:str}/export", summary="Everything stored about a user, as JSON",
     responses=errors(400, 409, 503, *AUTHENTICATED))
async def export_user(request: Request[Any, Any, State], user_id: FromPath[str]) -> UserExport:
    """One atomic snapshot: the preference document, event opt-outs, conversions, the
    ledger (decoded, as the timeline shows it) and every decision still replayable,
    rendered as its answer. For a merged id it shows ``merged_into`` and what is left."""
    _check_user_id(user_id)
    engine = _engine(request)
    tenant = tenant_of(request)
    now = engine.clock.now_ms()
    dump = await snapshot(engine.store, tenant, user_id, now)
    policy = await engine.policies.get(tenant)
    zone = engine.locate(None, dump.preferences, policy).zones[0]
    export = render_export(dump, tenant, user_id, zone, now, engine.ids)
    fields = await engine.store.profile_fields(user_keys(tenant, user_id).profile)
    return msgspec.structs.replace(export, profile=export_profile(fields.get(b"p")))


#: the admin routes; create_app registers the router (a guard can be attached to it)
lifecycle_router = Router(path="/v1/users", route_handlers=[merge_user, delete_user, export_user],
                          tags=["user data lifecycle"])
