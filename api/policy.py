"""The tenant policy: one versioned JSON document, validated whole, with a useful default.

``GET/PUT /v1/policy`` read and replace it. Structural errors come from msgspec (type,
range, unknown field); ``validate_policy`` adds the cross-field checks. Either way the
error names the field path (``caps[1].window_minutes``) and nothing is stored.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from api.holdout import HoldoutSettings, validate_holdout
from api.jurisdictions import JurisdictionPack, load_builtin_packs, validate_pack
from api.locale import is_valid_zone, normalize_country
from api.schemas import CHANNELS, Channel, CountryCode, Hhmm, Id, Name, Tag, ZoneName

DEFAULT_CONFLICT_WINDOW_MINUTES = 72 * 60


class PolicyInvalidError(ValueError):
    """A policy document that parses but contradicts itself; ``field`` is its path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class Scope(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which messages a cap counts. Empty lists match everything (a global cap)."""

    channels: list[Channel] = []
    categories: list[Name] = []
    campaigns: list[Id] = []
    tags: list[Tag] = []


class CapReserve(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Part of a cap kept for important messages: a message with ``priority`` below
    ``below_priority`` sees ``limit`` instead of the cap's limit (every matching message
    still counts), so the last slots stay free for higher priorities."""

    below_priority: Annotated[int, Meta(ge=1, le=10)]
    limit: Annotated[int, Meta(ge=1, le=10_000)]


class CapRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """At most ``limit`` matching messages in any rolling ``window_minutes`` (or in one
    local ``calendar`` day/week of the recipient)."""

    id: Name
    limit: Annotated[int, Meta(ge=1, le=10_000)]
    window_minutes: Annotated[int, Meta(ge=1, le=43_200)] | None = None
    calendar: Literal["day", "week"] | None = None
    scope: Scope = msgspec.field(default_factory=Scope)
    reserve: CapReserve | None = None

    def limit_for(self, priority: int) -> int:
        """The limit a message of ``priority`` sees (the reserve's, below its threshold)."""
        if self.reserve is not None and priority < self.reserve.below_priority:
            return self.reserve.limit
        return self.limit


class QuietHoursRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """No sends while the recipient's wall clock is in [start, end) (wrapping midnight).
    Empty ``channels``/``categories`` mean all channels / all non-exempt categories."""

    id: Name
    start: Hhmm
    end: Hhmm
    channels: list[Channel] = []
    categories: list[Name] = []
    weekdays: list[Annotated[int, Meta(ge=0, le=6)]] | None = None


class ConflictGroup(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Offers sharing ``group`` conflict within ``window_minutes``; ``*`` covers any group
    without its own entry."""

    group: Id
    window_minutes: Annotated[int, Meta(ge=1, le=43_200)] = DEFAULT_CONFLICT_WINDOW_MINUTES


class JurisdictionSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: pack ids to apply; None applies every built-in and custom pack.
    enabled: list[str] | None = None
    #: the tenant's own packs, applied beside the built-in ones.
    packs: list[JurisdictionPack] = []


def _default_caps() -> list[CapRule]:
    return [
        CapRule(id="promotional-daily", limit=3, window_minutes=24 * 60,
                scope=Scope(categories=["promotional"])),
        CapRule(id="promotional-weekly", limit=10, window_minutes=7 * 24 * 60,
                scope=Scope(categories=["promotional"])),
        # minimum spacing: two promotional messages to one person at least 30 minutes
        # apart, across channels
        CapRule(id="promotional-spacing", limit=1, window_minutes=30,
                scope=Scope(categories=["promotional"])),
    ]


def _default_quiet_hours() -> list[QuietHoursRule]:
    return [QuietHoursRule(id="default-quiet-hours", start="21:00", end="08:00")]


def _default_conflicts() -> list[ConflictGroup]:
    return [ConflictGroup(group="*", window_minutes=DEFAULT_CONFLICT_WINDOW_MINUTES)]


def _default_values() -> dict[Channel, float]:
    return {"email": 1.0, "push": 1.0, "web_push": 1.0, "sms": 1.0, "whatsapp": 1.0,
            "in_app": 1.0}


def _default_costs() -> dict[Channel, float]:
    """Paid channels cost a little, so equal engagement prefers the free ones."""
    return {"email": 0.0, "push": 0.0, "web_push": 0.0, "sms": 0.005, "whatsapp": 0.005,
            "in_app": 0.0}


class SendTimeSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the model's scores choose the channel and the instant (``docs/model.md``,
    "Serving"). A candidate's expected value is ``P(engagement) * value[channel] -
    cost[channel] - fatigue_cost * sends in the 24 h before it``, in the tenant's own unit
    (values 1 and costs 0 rank by probability)."""

    #: how far past ``not_before`` (or now) candidates are scored when there is no earlier
    #: deadline: "now" plus every local hour start up to it
    horizon_minutes: Annotated[int, Meta(ge=60, le=10_080)] = 24 * 60
    #: a later slot wins only if its expected value beats sending now by this share
    margin: Annotated[float, Meta(ge=0.0, le=10.0)] = 0.1
    #: users with fewer profile events keep the earliest allowed instant (their score is
    #: the tenant prior, which says nothing about this user; 0 lets the prior move them)
    min_history_events: Annotated[int, Meta(ge=0, le=1_000_000)] = 1
    channel_values: dict[Channel, Annotated[float, Meta(ge=0.0, le=1e6)]] = msgspec.field(
        default_factory=_default_values)
    channel_costs: dict[Channel, Annotated[float, Meta(ge=0.0, le=1e6)]] = msgspec.field(
        default_factory=_default_costs)
    #: share of promotional decisions that take a random allowed slot (deterministic per
    #: message), so logs keep showing what other hours would have done
    exploration_rate: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.05
    #: deferred messages land at a deterministic per-message offset in [0, spread_minutes)
    #: after the instant they become allowed (when still allowed then), so a quiet-hours
    #: end or a freed cap does not release every deferred message at once; 0 disables
    spread_minutes: Annotated[int, Meta(ge=0, le=1_440)] = 30
    #: cost (same unit as values) of each message delivered to the user in the 24 h before
    #: a candidate slot (the profile's recent sends, read with it): it makes a slot after a
    #: burst of sends worth less, and lowers the value of sending at all; 0 disables
    fatigue_cost: Annotated[float, Meta(ge=0.0, le=1e6)] = 0.0
    #: a promotional message whose best slot's expected value is below this is suppressed
    #: (reason ``low_expected_value``); None (the default) never suppresses on value
    min_expected_value: Annotated[float, Meta(ge=-1e6, le=1e6)] | None = None


class PreemptionSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A higher-priority message may take the cap slot of a lower-priority reservation
    that is not yet due; the displaced message is re-decided in the same commit (moved to
    its next allowed instant, or suppressed), with reason ``preempted`` (README, "Priority
    and preemption"). Off by default: only a platform that confirms a deferred message
    (``GET /v1/decisions/{id}``) just before sending it learns of a displacement."""

    enabled: bool = False
    #: at most this many reservations displaced by one decision
    max_displaced: Annotated[int, Meta(ge=1, le=10)] = 2


class ChannelPacing(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True,
                    omit_defaults=True):
    """A provider's throughput limit for one channel of the tenant (docs/pacing.md). Rates
    count sends per aligned UTC second/minute; ``unique_recipients_per_24h`` counts
    conversation starts (WhatsApp's business-initiated limit) in any rolling 24 h."""

    per_second: Annotated[int, Meta(ge=1, le=100_000)] | None = None
    per_minute: Annotated[int, Meta(ge=1, le=6_000_000)] | None = None
    unique_recipients_per_24h: Annotated[int, Meta(ge=1, le=1_000_000)] | None = None


class PacingChannels(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True,
                     omit_defaults=True):
    """One optional entry per channel. A struct rather than a dict so that an error names
    the channel (``pacing.channels.sms.per_second``), which msgspec cannot do for dict keys."""

    email: ChannelPacing | None = None
    sms: ChannelPacing | None = None
    push: ChannelPacing | None = None
    whatsapp: ChannelPacing | None = None
    in_app: ChannelPacing | None = None
    web_push: ChannelPacing | None = None

    def of(self, channel: str) -> ChannelPacing | None:
        value: ChannelPacing | None = getattr(self, channel, None)
        return value


class PacingSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Tenant-wide send-rate limits per channel, off unless a channel is listed. ``shards``
    spreads each counter over that many Redis Cluster slots (each gets an exact share of
    the limit, so the shares sum to the limit: docs/pacing.md, "The bound")."""

    channels: PacingChannels = msgspec.field(default_factory=PacingChannels)
    shards: Annotated[int, Meta(ge=1, le=64)] = 8


class Policy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A tenant's rules. ``version`` is assigned by the server on every accepted PUT; a PUT
    that carries one must match the current version (optimistic concurrency)."""

    version: int = 0
    updated_at: dt.datetime | None = None
    categories: list[Name] = msgspec.field(
        default_factory=lambda: ["transactional", "promotional"])
    exempt_categories: list[Name] = msgspec.field(default_factory=lambda: ["transactional"])
    #: whether exempt (transactional) messages still count toward caps
    exempt_count_toward_caps: bool = False
    caps: list[CapRule] = msgspec.field(default_factory=_default_caps)
    quiet_hours: list[QuietHoursRule] = msgspec.field(default_factory=_default_quiet_hours)
    jurisdictions: JurisdictionSettings = msgspec.field(default_factory=JurisdictionSettings)
    conflict_groups: list[ConflictGroup] = msgspec.field(default_factory=_default_conflicts)
    opt_in_only_channels: list[Channel] = msgspec.field(default_factory=lambda: ["whatsapp"])
    default_timezone: ZoneName = "UTC"
    default_country: CountryCode | None = None
    #: how far a message without a deadline may be deferred before it is suppressed
    max_defer_minutes: Annotated[int, Meta(ge=1, le=43_200)] = 7 * 24 * 60
    #: how long a `converted` event suppresses further messages of its campaign
    converted_suppression_days: Annotated[int, Meta(ge=0, le=365)] = 30
    send_time: SendTimeSettings = msgspec.field(default_factory=SendTimeSettings)
    #: global control group and per-campaign holdouts (``api/holdout.py``); None: none
    holdout: HoldoutSettings | None = None
    preemption: PreemptionSettings = msgspec.field(default_factory=PreemptionSettings)
    #: per-channel send-rate limits (docs/pacing.md); off by default
    pacing: PacingSettings = msgspec.field(default_factory=PacingSettings)

    @property
    def version_label(self) -> str:
        return str(self.version)


DEFAULT_POLICY = Policy()


def _unique(ids: list[str], field: str) -> None:
    seen: set[str] = set()
    for i, value in enumerate(ids):
        if value in seen:
            raise PolicyInvalidError(f"{field}[{i}]", f"duplicate id {value!r}")
        seen.add(value)


def validate_policy(policy: Policy) -> None:
    """Cross-field checks msgspec cannot express. Raises PolicyInvalidError naming the field."""
    categories = set(policy.categories)
    _unique(policy.categories, "categories")
    for i, cat in enumerate(policy.exempt_categories):
        if cat not in categories:
            raise PolicyInvalidError(f"exempt_categories[{i}]", f"unknown category {cat!r}")
    _unique([c.id for c in policy.caps], "caps")
    for i, cap in enumerate(policy.caps):
        if (cap.window_minutes is None) == (cap.calendar is None):
            raise PolicyInvalidError(f"caps[{i}].window_minutes",
                                "a cap needs exactly one of window_minutes or calendar")
        for j, cat in enumerate(cap.scope.categories):
            if cat not in categories:
                raise PolicyInvalidError(f"caps[{i}].scope.categories[{j}]", f"unknown category {cat!r}")
        if cap.reserve is not None and cap.reserve.limit >= cap.limit:
            raise PolicyInvalidError(f"caps[{i}].reserve.limit",
                                     f"a reserve must leave slots: limit {cap.reserve.limit} is "
                                     f"not below the cap's limit {cap.limit}")
    _unique([q.id for q in policy.quiet_hours], "quiet_hours")
    for i, quiet in enumerate(policy.quiet_hours):
        for j, cat in enumerate(quiet.categories):
            if cat not in categories:
                raise PolicyInvalidError(f"quiet_hours[{i}].categories[{j}]",
                                    f"unknown category {cat!r}")
    _unique([g.group for g in policy.conflict_groups], "conflict_groups")
    if not is_valid_zone(policy.default_timezone):
        raise PolicyInvalidError("default_timezone", f"unknown IANA time zone {policy.default_timezone!r}")
    try:
        normalize_country(policy.default_country)
    except ValueError as exc:
        raise PolicyInvalidError("default_country", str(exc)) from exc
    if policy.holdout is not None and (problem := validate_holdout(policy.holdout)):
        raise PolicyInvalidError(*problem)
    for channel in CHANNELS:
        paced = policy.pacing.channels.of(channel)
        if paced is not None and (paced.per_second, paced.per_minute,
                                  paced.unique_recipients_per_24h) == (None, None, None):
            raise PolicyInvalidError(f"pacing.channels.{channel}", "set at least one of "
                                     "per_second, per_minute, unique_recipients_per_24h")
    builtin_ids = {p.id for p in load_builtin_packs()}
    custom_ids: set[str] = set()
    for i, pack in enumerate(policy.jurisdictions.packs):
        try:
            validate_pack(pack)
        except ValueError as exc:
            raise PolicyInvalidError(f"jurisdictions.packs[{i}]", str(exc)) from exc
        if pack.id in builtin_ids or pack.id in custom_ids:
            raise PolicyInvalidError(f"jurisdictions.packs[{i}].id", f"duplicate pack id {pack.id!r}")
        custom_ids.add(pack.id)
    if policy.jurisdictions.enabled is not None:
        for i, pack_id in enumerate(policy.jurisdictions.enabled):
            if pack_id not in builtin_ids and pack_id not in custom_ids:
                raise PolicyInvalidError(f"jurisdictions.enabled[{i}]", f"unknown pack {pack_id!r}")


def active_packs(policy: Policy) -> list[JurisdictionPack]:
    packs = [*load_builtin_packs(), *policy.jurisdictions.packs]
    if policy.jurisdictions.enabled is None:
        return packs
    enabled = set(policy.jurisdictions.enabled)
    return [p for p in packs if p.id in enabled]


def conflict_window_minutes(policy: Policy, group: str) -> int | None:
    """The window of ``group``, falling back to the ``*`` entry; None: no conflict rule."""
    fallback: int | None = None
    for entry in policy.conflict_groups:
        if entry.group == group:
            return entry.window_minutes
        if entry.group == "*":
            fallback = entry.window_minutes
    return fallback
