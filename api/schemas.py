"""Wire schemas of the public v1 contract (msgspec Structs).

Request structs are strict (``forbid_unknown_fields``) so a typo is a 4xx naming the field,
not a silently ignored option. Stored records (preferences) tolerate unknown fields so
older and newer workers can share Redis during a rolling deploy.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

Channel = Literal["email", "sms", "push", "whatsapp", "in_app", "web_push"]
CHANNELS: tuple[str, ...] = ("email", "sms", "push", "whatsapp", "in_app", "web_push")

Id = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f]+$")]
Name = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]
Tag = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f]+$")]
Hhmm = Annotated[str, Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
CountryCode = Annotated[str, Meta(pattern=r"^[A-Za-z]{2}$")]
RegionCode = Annotated[str, Meta(min_length=1, max_length=8, pattern=r"^[A-Za-z0-9-]+$")]
Phone = Annotated[str, Meta(min_length=3, max_length=20)]
ZoneName = Annotated[str, Meta(min_length=1, max_length=64)]
Decision = Literal["send", "defer", "suppress"]
ChannelSelection = Literal["best", "ordered"]
#: a message's priority when the request names none (and of ledger entries written before
#: priorities were recorded)
DEFAULT_PRIORITY = 5


class Offer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: Id
    group: Id


class DecisionRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/decisions``: one message a platform is about to send."""

    message_id: Id
    user_id: Id
    channels: Annotated[list[Channel], Meta(min_length=1, max_length=6)]
    category: Name = "promotional"
    campaign_id: Id | None = None
    tags: Annotated[list[Tag], Meta(max_length=32)] = []
    offer: Offer | None = None
    #: 0-10: who gets a scarce slot (cap ``reserve``, preemption); higher wins
    priority: Annotated[int, Meta(ge=0, le=10)] = DEFAULT_PRIORITY
    not_before: dt.datetime | None = None
    deadline: dt.datetime | None = None
    timezone: ZoneName | None = None
    phone: Phone | None = None
    country: CountryCode | None = None
    region: RegionCode | None = None
    dry_run: bool = False
    #: "best": the channel and slot of the highest expected value (the request's channel
    #: order breaks ties); "ordered": the first channel in ``channels`` that has any
    #: allowed instant, at its best slot (README, "The model in the decision loop")
    channel_selection: ChannelSelection = "best"


class Reason(msgspec.Struct, frozen=True, omit_defaults=True):
    """Why the decision is what it is: a closed-set code, the rule that fired, and when
    that rule stops blocking (``until``), per channel where it applies to one channel."""

    code: str
    rule: str
    until: dt.datetime | None = None
    channel: str | None = None


class DecisionResponse(msgspec.Struct, frozen=True, kw_only=True):
    decision_id: str
    message_id: str
    decision: Decision
    channel: str | None
    send_at: dt.datetime | None
    local_send_at: dt.datetime | None
    timezone: str
    reasons: list[Reason]
    policy_version: str
    decided_at: dt.datetime
    #: P(engagement) of the reserved slot, by ``model_version`` (a LightGBM model's sha256
    #: prefix, or ``heuristic-v2``); ``score_now``: the same channel sent at once
    score: float | None = None
    score_now: float | None = None
    model_version: str | None = None
    #: "profile" (the user's event history) or "prior" (no history: the tenant's priors)
    features_source: str | None = None
    #: probability the decision policy had of choosing this slot (exploration included)
    propensity: float | None = None
    dry_run: bool = False
    replayed: bool = False
    cancelled_at: dt.datetime | None = None
    #: decision ids of lower-priority reservations this decision displaced (policy
    #: ``preemption``): each is now suppressed with reason ``preempted``
    displaced: list[str] = []


DecisionState = Literal["send", "defer", "suppress", "cancelled", "preempted"]


class DecisionStatus(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /v1/decisions/{decision_id}``: a decision as it stands now. A deferred message
    should be confirmed here just before it is sent: a cancel or a preemption (a
    higher-priority message took its slot) changes ``state`` after the answer was given."""

    decision_id: str
    message_id: str
    state: DecisionState
    #: channel and instant of the live reservation (None once cancelled, preempted or
    #: suppressed)
    channel: str | None
    send_at: dt.datetime | None
    local_send_at: dt.datetime | None
    timezone: str
    reasons: list[Reason]
    decided_at: dt.datetime
    cancelled_at: dt.datetime | None = None


class CancelResponse(msgspec.Struct, frozen=True, kw_only=True):
    decision_id: str
    message_id: str
    released: bool
    cancelled_at: dt.datetime


# ---------------------------------------------------------------- preferences

Consent = Literal["opted_in", "opted_out", "unknown"]


class ChannelPreference(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    consent: Consent = "unknown"


class FrequencyLimit(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The recipient's own limit: ``limit`` messages per rolling ``window_minutes`` or per
    local ``calendar`` day/week, optionally only on some channels."""

    limit: Annotated[int, Meta(ge=0, le=10_000)]
    window_minutes: Annotated[int, Meta(ge=1, le=43_200)] | None = None
    calendar: Literal["day", "week"] | None = None
    channels: list[Channel] = []


class QuietHours(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    start: Hhmm
    end: Hhmm
    weekdays: list[Annotated[int, Meta(ge=0, le=6)]] | None = None


class Preferences(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``PUT /v1/users/{user_id}/preferences``: the preference centre's state (replaced whole)."""

    timezone: ZoneName | None = None
    phone: Phone | None = None
    country: CountryCode | None = None
    region: RegionCode | None = None
    channels: dict[Channel, ChannelPreference] = {}
    frequency_limits: Annotated[list[FrequencyLimit], Meta(max_length=16)] = []
    quiet_hours: Annotated[list[QuietHours], Meta(max_length=16)] = []
    topic_opt_outs: Annotated[list[Tag], Meta(max_length=256)] = []


class StoredPreferences(msgspec.Struct, frozen=True, kw_only=True):
    """What ``GET`` returns: the document, channels opted out by events, and the revision
    (bumped by every change, so a decision racing a change is retried)."""

    user_id: str
    preferences: Preferences
    event_opt_outs: dict[str, dt.datetime] = {}
    revision: int = 0


# --------------------------------------------------------------------- events

EventType = Literal[
    "delivered", "opened", "clicked", "converted", "unsubscribed", "bounced", "complained",
    "activity",
]


class Event(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    type: EventType
    user_id: Id
    at: dt.datetime
    message_id: Id | None = None
    campaign_id: Id | None = None
    channel: Channel | None = None
    #: ``activity`` only: what the sign of life was (session, visit, purchase...); kept for
    #: the logs, the profile counts every kind the same way (``docs/model.md``)
    kind: Name | None = None
    #: IANA zone the event's local hour is counted in (the profile's hour-of-week);
    #: default: the user's stored time zone, else the tenant's default
    timezone: ZoneName | None = None


class EventBatch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    events: Annotated[list[Event], Meta(min_length=1)]


class EventsAccepted(msgspec.Struct, frozen=True, kw_only=True):
    accepted: int
    opt_outs: int
    conversions: int
    #: events that changed a send-time profile (duplicates and events without a timing
    #: signal do not)
    profile_updates: int = 0


# ------------------------------------------------------------------- timeline


class TimelineEntry(msgspec.Struct, frozen=True, kw_only=True):
    message_id: str
    channel: str
    category: str
    campaign_id: str | None
    tags: list[str]
    offer: Offer | None
    send_at: dt.datetime
    local_send_at: dt.datetime
    status: Literal["sent", "scheduled"]
    decision_id: str
    decision: Decision | None = None
    reasons: list[Reason] | None = None
    priority: int = DEFAULT_PRIORITY


class Timeline(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    timezone: str
    entries: list[TimelineEntry]


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """Every 4xx/5xx body: a stable machine code, a message, and the offending field."""

    code: str
    message: str
    field: str | None = None


# ------------------------------------------------------- user data lifecycle


class MergeRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/users/{user_id}/merge``: ``user_id`` and ``into_user_id`` are one person."""

    into_user_id: Id


class MergeMoved(msgspec.Struct, frozen=True, kw_only=True):
    """What the merge did: ledger entries and decision records newly added to the target
    (0 on a retry that found them there already); conversions and event opt-outs found on
    the source (folded in by the conflict rules)."""

    ledger_entries: int
    decisions: int
    conversions: int
    event_opt_outs: int


class MergeResponse(msgspec.Struct, frozen=True, kw_only=True):
    from_user_id: str
    into_user_id: str
    moved: MergeMoved
    #: the target's preferences after the merge
    preferences: StoredPreferences


class ErasedCounts(msgspec.Struct, frozen=True, kw_only=True):
    ledger_entries: int = 0
    decisions: int = 0
    conversions: int = 0
    event_opt_outs: int = 0
    preferences: int = 0
    keys: int = 0


class EraseResponse(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    #: ids merged into this one earlier: the same person, erased too
    merged_ids: list[str]
    erased: ErasedCounts


class ProfileExport(msgspec.Struct, frozen=True, kw_only=True):
    """The send-time profile kept for the user (``docs/model.md``): counts of activity and
    engagements by local hour-of-week (168, Monday 00h first), the decayed counters
    (168 hours, then sends and engagements per model channel) as of ``decayed_as_of``."""

    events: int
    counts_by_local_hour_of_week: list[int]
    decayed_as_of: dt.datetime | None
    decayed: list[float]
    first_seen: dt.datetime | None
    last_active: dt.datetime | None
    last_send: dict[str, dt.datetime | None]
    last_engagement: dict[str, dt.datetime | None]
    recent_sends: list[tuple[dt.datetime | None, str]]


class UserExport(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /v1/users/{user_id}/export``: everything stored about one user id."""

    user_id: str
    exported_at: dt.datetime
    #: set when this id was merged into another (its data lives there now)
    merged_into: str | None
    #: ids merged into this one, with when
    merged_from: dict[str, dt.datetime]
    preferences: Preferences
    revision: int
    event_opt_outs: dict[str, dt.datetime]
    conversions: dict[str, dt.datetime]
    ledger: list[TimelineEntry]
    #: every idempotency record, rendered as the decision answer it replays
    decisions: list[DecisionResponse]
    #: the send-time profile built from the user's events (None: no events yet)
    profile: ProfileExport | None = None
