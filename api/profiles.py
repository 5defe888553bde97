"""Send-time profiles from events: ``POST /v1/events`` folds every event into the user's
``models.profile.Profile`` kept in Redis (key ``api.keys.UserKeys.profile``).

The update rule is ``models.profile``'s and only there: this module maps an event to one
of its ``record_*`` calls, reads the stored profile, applies the user's whole batch in
Python and writes it back with a compare-and-set on the profile's revision
(``lua/profile_put.lua``). A batch is therefore applied atomically per user: a concurrent
writer makes the compare fail and the batch is re-applied to the fresh value, never
half-applied or lost. No WATCH (it pins a connection and is unavailable through the
cluster client's pool).

Which events change what (the training schema's meaning, ``docs/model.md``):

* ``activity`` -> ``record_activity`` (a sign of life at its local hour-of-week);
* ``delivered`` with a channel -> ``record_send`` (the message reached the user);
* ``opened`` / ``clicked`` -> ``record_engagement``, once per message (its first open or
  click, as training counts it); without a channel (or on ``web_push``, which the model
  has no column for) it is counted as activity;
* ``converted``, ``unsubscribed``, ``bounced``, ``complained`` carry no timing signal in
  the training schema and leave the profile unchanged.

**Late events** need nothing special: the rule folds an event in at its own instant, so
arrival order does not matter (``tests/models/test_profile.py``). **Duplicates** (a
platform retrying a batch) are recognised by an 8-byte fingerprint of (type, instant,
message, channel, kind) among the user's last ``SEEN_KEPT`` events; a second open of a
message by its message id among the last ``SEEN_KEPT`` engaged messages: the first open
or click *to arrive* is the one counted, so a click that arrives before its message's
earlier open is counted at the click's instant (training counts the earlier one; the
difference is the minutes between them, a decay factor of ~1 - 5e-5 for two minutes, and
an hour-of-week bin only when they straddle an hour). Past those
bounds a duplicate would count twice: a retry arrives within seconds, long before a user
has 256 newer events. The local hour-of-week uses the event's ``timezone``, else the
user's stored time zone, else the tenant default, at the time the event is applied.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from api.keys import user_keys
from api.localtime import utc_to_ms
from api.schemas import Event, ProfileExport
from api.store import Store
from models.profile import Profile, ProfileFormatError
from models.timeutil import hour_of_week, local_seconds, zone
from models.vocab import CHANNELS, channel_index

#: fingerprints kept per user for duplicate detection (8 bytes each)
SEEN_KEPT = 256
_FP = 8
#: a profile untouched for this long expires (its long memory is a year of rhythm)
PROFILE_TTL_MS = 400 * 24 * 3600 * 1000
_MAX_CAS_RETRIES = 8


class ProfileUpdateConflictError(RuntimeError):
    """Other writers kept winning the compare-and-set (pathological contention)."""


def event_fingerprint(event: Event) -> bytes:
    """Identity of one event, for recognising a redelivered copy."""
    text = "\x1f".join([event.type, str(utc_to_ms(event.at)), event.message_id or "",
                        event.channel or "", event.kind or ""])
    return hashlib.blake2b(text.encode(), digest_size=_FP).digest()


def message_fingerprint(message_id: str) -> bytes:
    return hashlib.blake2b(message_id.encode(), digest_size=_FP).digest()


def _split(raw: bytes | None) -> list[bytes]:
    data = raw or b""
    return [data[i:i + _FP] for i in range(0, len(data) - _FP + 1, _FP)]


def how_of(at_seconds: int, zone_name: str) -> int:
    """Local hour-of-week of an instant (what the profile counts)."""
    local = local_seconds(zone(zone_name), np.array([at_seconds], dtype=np.int64))
    return int(hour_of_week(local)[0])


def apply_to_profile(profile: Profile, events: Sequence[Event], user_zone: str,
                     seen: list[bytes], engaged: list[bytes]) -> int:
    """Fold ``events`` into ``profile`` (in place) with ``models.profile``'s rule; ``seen``
    and ``engaged`` are updated too (bounded). An event's own ``timezone`` wins over
    ``user_zone``. Returns how many events changed it."""
    applied = 0
    seen_set, engaged_set = set(seen), set(engaged)
    for event in events:
        fp = event_fingerprint(event)
        if fp in seen_set:
            continue
        seen_set.add(fp)
        seen.append(fp)
        at = utc_to_ms(event.at) // 1000
        zone_name = event.timezone or user_zone
        if event.type == "activity":
            profile.record_activity(at, how_of(at, zone_name))
        elif event.type == "delivered" and event.channel in CHANNELS:
            profile.record_send(at, channel_index(event.channel))
        elif event.type in ("opened", "clicked"):
            if event.message_id is not None:
                mfp = message_fingerprint(event.message_id)
                if mfp in engaged_set:
                    continue
                engaged_set.add(mfp)
                engaged.append(mfp)
            if event.channel not in CHANNELS:
                profile.record_activity(at, how_of(at, zone_name))
            else:
                profile.record_engagement(at, channel_index(event.channel),
                                          how_of(at, zone_name))
        else:
            continue
        applied += 1
    del seen[:-SEEN_KEPT]
    del engaged[:-SEEN_KEPT]
    return applied


def decode_profile(raw: bytes | None) -> Profile | None:
    """The stored profile, or None (none yet, or a format this version does not read: the
    user is then scored like a new one instead of failing the decision)."""
    if not raw:
        return None
    try:
        return Profile.from_bytes(raw)
    except ProfileFormatError:
        return None


async def apply_profile_events(store: Store, tenant: str, events: Sequence[Event],
                               zone_of: Callable[[dict[bytes, bytes]], str],
                               zones: dict[str, str] | None = None) -> int:
    """Fold a batch into every concerned user's profile; one compare-and-set per user,
    users concurrently. ``zone_of`` turns the user's preference hash into a zone name.
    Returns the number of events that changed a profile; ``zones`` (if given) receives
    the zone each user's events were counted in."""
    by_user: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        by_user[event.user_id].append(event)
    out = zones if zones is not None else {}
    counts = await asyncio.gather(*(_apply_user(store, tenant, user, evs, zone_of, out)
                                    for user, evs in by_user.items()))
    return sum(counts)


async def _apply_user(store: Store, tenant: str, user_id: str, events: Sequence[Event],
                      zone_of: Callable[[dict[bytes, bytes]], str],
                      zones: dict[str, str]) -> int:
    original = user_id
    prefs = await store.preference_fields(tenant, user_id)
    moved = prefs.get(b"moved_into")
    if moved is not None:  # merged: the person's profile lives under the new id
        user_id = moved.decode()
        prefs = await store.preference_fields(tenant, user_id)
    zone_name = zone_of(prefs)
    zones[original] = zone_name
    key = user_keys(tenant, user_id).profile
    for _ in range(_MAX_CAS_RETRIES):
        fields = await store.profile_fields(key)
        profile = decode_profile(fields.get(b"p")) or Profile()
        seen, engaged = _split(fields.get(b"seen")), _split(fields.get(b"eng"))
        applied = apply_to_profile(profile, events, zone_name, seen, engaged)
        if applied == 0:
            return 0  # duplicates or events without timing signal: nothing to write
        rev = fields.get(b"rev", b"0").decode()
        if await store.put_profile(key, rev, profile.to_compact_bytes(), b"".join(seen),
                                   b"".join(engaged), PROFILE_TTL_MS):
            return applied
    raise ProfileUpdateConflictError(f"profile of {user_id!r} kept changing; retry the batch")


async def merge_profiles(store: Store, tenant: str, source: str, target: str) -> bool:
    """Fold ``source``'s profile into ``target``'s (``Profile.absorb``) and drop the
    source's. The target records ``merged:<source>`` in the same compare-and-set, so a
    retried merge never folds twice. Returns whether there was a profile to move."""
    src_key = user_keys(tenant, source).profile
    dst_key = user_keys(tenant, target).profile
    marker = f"merged:{source}"
    for _ in range(_MAX_CAS_RETRIES):
        src = await store.profile_fields(src_key)
        other = decode_profile(src.get(b"p"))
        if other is None:
            return False
        dst = await store.profile_fields(dst_key)
        if marker.encode() in dst:
            break  # an interrupted earlier merge folded it already
        profile = decode_profile(dst.get(b"p")) or Profile()
        profile.absorb(other)
        seen = [*_split(dst.get(b"seen")), *_split(src.get(b"seen"))][-SEEN_KEPT:]
        engaged = [*_split(dst.get(b"eng")), *_split(src.get(b"eng"))][-SEEN_KEPT:]
        if await store.put_profile(dst_key, dst.get(b"rev", b"0").decode(),
                                   profile.to_compact_bytes(),
                                   b"".join(seen), b"".join(engaged), PROFILE_TTL_MS,
                                   marker=marker):
            break
    else:
        raise ProfileUpdateConflictError(f"profile of {target!r} kept changing; retry")
    await store.delete_key(src_key)
    return True


def export_profile(raw: bytes | None) -> ProfileExport | None:
    """The stored profile in readable form (``GET /v1/users/{id}/export``)."""
    profile = decode_profile(raw)
    if profile is None:
        return None

    def instant(seconds: int) -> dt.datetime | None:
        return dt.datetime.fromtimestamp(seconds, dt.UTC) if seconds else None

    return ProfileExport(
        events=int(profile.counts.sum()),
        counts_by_local_hour_of_week=[int(x) for x in profile.counts],
        decayed_as_of=instant(profile.ref),
        decayed=[round(float(x), 6) for x in profile.decayed],
        first_seen=instant(profile.first_seen), last_active=instant(profile.last_active),
        last_send={c: instant(int(t)) for c, t in zip(CHANNELS, profile.last_send, strict=True)
                   if t},
        last_engagement={c: instant(int(t)) for c, t in
                         zip(CHANNELS, profile.last_engagement, strict=True) if t},
        recent_sends=[(instant(int(t)), CHANNELS[int(c)]) for t, c in
                      zip(profile.recent_at, profile.recent_channel, strict=True) if t])
